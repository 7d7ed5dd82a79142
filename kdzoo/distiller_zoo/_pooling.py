"""Shared by the losses that compare feature maps of different spatial sizes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_to_common_size(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever map is larger so both share the smaller (H, W).

    Height and width are handled independently, so non-square maps work (the reference pooled to
    a square ``(H, H)``); for square maps this is exactly "pool the larger map to the smaller".
    """
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b
