"""Batched augmentation on uint8 tensors, and normalisation on the training device.

Images stay uint8 (N, 3, H, W) from disk to the device: a quarter of the bytes of float32 to copy,
and cropping/flipping a whole batch is a handful of tensor ops instead of one PIL call per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def draw_crop_flip(n: int, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop offsets and flips for ``n`` images: int64 (n, 3) of (top, left, flip)."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n, 1), generator=generator)
    return torch.cat([offsets, flips], dim=1)


def random_crop_flip(images: torch.Tensor, padding: int = 4, params: torch.Tensor | None = None) -> torch.Tensor:
    """Per image: zero-pad by ``padding``, crop back to the original size at a random offset and
    flip horizontally with probability 1/2 (torchvision's ``RandomCrop(size, padding)`` then
    ``RandomHorizontalFlip()``, for a whole batch at once).

    ``params`` (from :func:`draw_crop_flip`) fixes the offsets and flips; by default they are drawn
    from torch's global generator.
    """
    n, _, h, w = images.shape
    if params is None:
        params = draw_crop_flip(n, padding)
    top, left, flip = (params[:, i].view(n, 1, 1) for i in range(3))
    padded = F.pad(images, (padding, padding, padding, padding))
    cols = torch.arange(w).view(1, 1, w)
    cols = torch.where(flip.bool(), w - 1 - cols, cols) + left
    rows = torch.arange(h).view(1, h, 1) + top
    batch = torch.arange(n).view(n, 1, 1)
    # Advanced indexing moves the channel axis last: (n, h, w, c) -> (n, c, h, w).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


class Normalize(torch.nn.Module):
    """uint8 images -> float, scaled to [0, 1], standardised per channel (on whatever device the
    batch is on)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, -1, 1, 1)), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            # A float batch is already normalised (the datasets' default): normalising it again
            # would train on garbage without any error.
            raise TypeError(
                f"Normalize expects uint8 images, got {images.dtype}: build the datasets with uint8=True "
                "(the fast path), or feed float batches to the model without Normalize"
            )
        return images.float().mul_(self.scale).sub_(self.shift)
