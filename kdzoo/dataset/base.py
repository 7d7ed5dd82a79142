"""The three views of a training set, shared by CIFAR-100 and ImageNet.

``view='plain'`` yields ``(img, target)``, ``'instance'`` ``(img, target, index)`` and ``'sample'``
``(img, target, index, sample_idx)`` as the reference CRD datasets do. Datasets load whole batches
(``__getitems__``, which ``DataLoader`` calls with a batch of indices), so images are augmented as
one tensor and contrastive indices are drawn for the batch at once.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from .sampling import ContrastiveSampler

VIEWS = ("plain", "instance", "sample")


class DataError(RuntimeError):
    """The data on disk is missing or not what it should be; the message says how to fix it."""


class ViewDataset(Dataset):
    """Base of the batched datasets. Subclasses implement :meth:`load_batch` and set ``labels``,
    ``mean`` and ``std`` (the normalisation the training device applies)."""

    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(self, view: str = "plain", k: int = 16384, mode: str = "exact", percent: float = 1.0) -> None:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        self.view = view
        self.contrastive: ContrastiveSampler | None = None
        self._contrastive_args = (k, mode, percent)

    def _finish_init(self) -> None:
        """Build the contrastive sampler once ``labels`` is known."""
        if self.view == "sample":
            k, mode, percent = self._contrastive_args
            self.contrastive = ContrastiveSampler(self.labels, k=k, mode=mode, percent=percent)

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """Called by the loop before each epoch; datasets with epoch-indexed randomness override it."""

    def __len__(self) -> int:
        return self.labels.numel()

    def load_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, 3, H, W), augmented if this is a training set, and their targets."""
        raise NotImplementedError  # pragma: no cover - abstract

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        images, targets = self.load_batch(index)
        if self.view == "plain":
            return images, targets
        if self.view == "instance":
            return images, targets, index
        return images, targets, index, self.contrastive.sample(index, targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.__getitems__([i]))


def collate_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The dataset already returns a collated batch (see ``ViewDataset.__getitems__``)."""
    return batch
