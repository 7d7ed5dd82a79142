"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention")."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._pooling import pool_to_common_size


class Attention(nn.Module):
    """Attention-map matching, one loss per pair of layers.

    ``Q(F) = normalize(vec(mean_c F_c^p))`` (L2 over spatial positions);
    ``loss_l = mean((Q(F_s^l) - Q(F_t^l))^2)``. The larger map is average-pooled to the smaller
    size first. Channel counts may differ. Pairs are formed with ``zip``, so extra layers on
    the longer side are ignored, as in the reference.
    """

    def __init__(self, p: float = 2) -> None:
        super().__init__()
        self.p = p

    def forward(self, g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.at_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def at_loss(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = pool_to_common_size(f_s, f_t)
        return (self.at(f_s) - self.at(f_t)).pow(2).mean()

    def at(self, f: torch.Tensor) -> torch.Tensor:
        """The attention map of ``f``: shape (B, H*W), unit L2 norm per sample."""
        return F.normalize(f.pow(self.p).mean(dim=1).flatten(1), dim=1)
