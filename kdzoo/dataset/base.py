"""The three views of a training set, shared by CIFAR-100 and ImageNet.

``view='plain'`` yields ``(img, target)``, ``'instance'`` ``(img, target, index)`` and ``'sample'``
``(img, target, index, sample_idx)`` as the reference CRD datasets do. Datasets load whole batches
(``__getitems__``, which ``DataLoader`` calls with a batch of indices), so images are augmented as
one tensor and contrastive indices are drawn for the batch at once.

Images come out as the reference's transforms leave them (``ToTensor`` then ``Normalize``: float32,
standardised per channel), so code written for the reference runs unchanged. ``uint8=True`` is the
fast path of this project's own loop: images stay uint8 (a quarter of the bytes to copy to the
device) and :class:`~kdzoo.dataset.transforms.Normalize` standardises them on the device.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from .sampling import ContrastiveSampler

VIEWS = ("plain", "instance", "sample")


class DataError(RuntimeError):
    """The data on disk is missing or not what it should be; the message says how to fix it."""


class ViewDataset(Dataset):
    """Base of the batched datasets. Subclasses implement :meth:`load_batch` and set ``labels``,
    ``mean`` and ``std`` (the per-channel normalisation, in [0, 1] units).

    ``uint8=False`` (default): images are normalised float32, as the reference returns them;
    ``uint8=True``: raw uint8 images, to be normalised on the device (this project's loop)."""

    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(self, view: str = "plain", k: int = 16384, mode: str = "exact", percent: float = 1.0,
                 uint8: bool = False) -> None:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        self.view = view
        self.uint8 = uint8
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

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 as the reference's ``ToTensor()`` + ``Normalize(mean, std)`` give them."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return images.float().div_(255).sub_(mean).div_(std)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The collated batch of ``indices``: the view's tuple, each field stacked over the batch."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images, targets = self.load_batch(index)
        if not self.uint8:
            images = self.normalized(images)
        if self.view == "plain":
            return images, targets
        if self.view == "instance":
            return images, targets, index
        return images, targets, index, self.contrastive.sample(index, targets)

    def __getitems__(self, indices: Sequence[int]) -> "SampleBatch":
        """What ``DataLoader`` fetches: :func:`collate_batch` passes the batch on as is, and torch's
        default collate (a reference-style ``DataLoader(dataset, batch_size, shuffle=True)``) gets
        per-sample tuples that it stacks back into the same batch."""
        return SampleBatch(self.batch(indices))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return SampleBatch(self.batch([i]))[0]


class SampleBatch(Sequence):
    """A collated batch (``tensors``) that also reads as the sequence of its samples."""

    def __init__(self, tensors: tuple[torch.Tensor, ...]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return tuple(t[i] for t in self.tensors)


def collate_batch(batch: SampleBatch | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The dataset already collated the batch (see ``ViewDataset.__getitems__``): hand it on."""
    return batch.tensors if isinstance(batch, SampleBatch) else batch
