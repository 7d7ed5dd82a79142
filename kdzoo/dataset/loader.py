"""DataLoaders for the batched datasets, single-process or sharded across ``torchrun`` ranks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .base import ViewDataset, collate_batch
from .cifar100 import CIFAR100Batched
from .imagenet import IMAGENET_SIZE, imagenet_splits


class ShardSampler(Sampler[int]):
    """Every index exactly once across ranks (rank r takes r, r+W, ...): evaluation counts each
    test image once, unlike ``DistributedSampler``, which pads ranks with repeats."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


@dataclass
class DataSpec:
    """What the loop needs to know about the data besides the loaders."""

    num_classes: int
    n_data: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def build_datasets(
    dataset: str, data_folder: str | Path, view: str = "plain", k: int = 16384, mode: str = "exact",
    percent: float = 1.0, train_limit: int | None = None, test_limit: int | None = None,
    image_size: int | None = None, uint8: bool = False,
) -> tuple[ViewDataset, ViewDataset]:
    """``(train, test)`` datasets of ``'cifar100'`` or ``'imagenet'`` with the given training view;
    ``image_size`` is the ImageNet crop (default 224); CIFAR-100 images are 32x32 and stay so.
    Images are normalised float32 unless ``uint8`` (this project's loop: normalised on the device)."""
    view_args = dict(view=view, k=k, mode=mode, percent=percent, uint8=uint8)
    if dataset == "cifar100":
        if image_size not in (None, 32):
            raise ValueError(f"--image_size {image_size}: CIFAR-100 images are 32x32; --image_size is for "
                             "--dataset imagenet")
        train = CIFAR100Batched(data_folder, train=True, limit=train_limit, **view_args)
        test = CIFAR100Batched(data_folder, train=False, limit=test_limit, uint8=uint8)
    elif dataset == "imagenet":
        train, test = imagenet_splits(data_folder, image_size=image_size or IMAGENET_SIZE, train_limit=train_limit,
                                      test_limit=test_limit, **view_args)
    else:
        raise ValueError(f"unknown dataset {dataset!r}: choose cifar100 or imagenet")
    return train, test


def build_loaders(
    train_set: ViewDataset, test_set: ViewDataset, batch_size: int, num_workers: int,
    seed: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader, DataSpec]:
    """Training and test loaders; ``batch_size`` is the global batch, split evenly over ranks.

    The training order of epoch e depends only on (seed, e) (``sampler.set_epoch``), so a resumed
    run sees the same batches as an uninterrupted one.
    """
    if batch_size % world_size:
        raise ValueError(f"--batch_size {batch_size} must be divisible by the number of processes ({world_size})")
    per_rank = batch_size // world_size
    common = dict(
        batch_size=per_rank, num_workers=num_workers, collate_fn=collate_batch, pin_memory=pin_memory,
        persistent_workers=False,
    )
    train_sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    train_loader = DataLoader(train_set, sampler=train_sampler, drop_last=False, **common)
    test_loader = DataLoader(test_set, sampler=ShardSampler(len(test_set), rank, world_size), **common)
    spec = DataSpec(
        num_classes=train_set.num_classes,
        n_data=len(train_set), mean=train_set.mean, std=train_set.std,
    )
    return train_loader, test_loader, spec


def _reference_loaders(train: ViewDataset, test: ViewDataset, batch_size: int,
                       num_workers: int) -> tuple[DataLoader, DataLoader]:
    """The reference's loaders: the training set reshuffled every epoch (no ``set_epoch`` needed),
    the test set in order with half the batch size and half the workers."""
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                              collate_fn=collate_batch)
    test_loader = DataLoader(test, batch_size=max(1, batch_size // 2), shuffle=False,
                             num_workers=num_workers // 2, collate_fn=collate_batch)
    return train_loader, test_loader


def get_cifar100_dataloaders(
    batch_size: int = 128, num_workers: int = 8, is_instance: bool = False, data_folder: str | Path = "./data",
    uint8: bool = False,
):
    """The reference's CIFAR-100 loaders: ``(train, test)``, or ``(train, test, n_data)`` with
    ``is_instance`` (training batches then carry the sample indices). Images are normalised float32
    as the reference's transforms return them; ``uint8=True`` gives raw uint8 images instead."""
    train, test = build_datasets("cifar100", data_folder, view="instance" if is_instance else "plain", uint8=uint8)
    train_loader, test_loader = _reference_loaders(train, test, batch_size, num_workers)
    return (train_loader, test_loader, len(train)) if is_instance else (train_loader, test_loader)


def get_cifar100_dataloaders_sample(
    batch_size: int = 128, num_workers: int = 8, k: int = 4096, mode: str = "exact", is_sample: bool = True,
    percent: float = 1.0, data_folder: str | Path = "./data", uint8: bool = False,
):
    """The reference's contrastive CIFAR-100 loaders: ``(train, test, n_data)``; training batches
    are ``(img, target, index, sample_idx)`` (``(img, target, index)`` without ``is_sample``), with
    normalised float32 images unless ``uint8``."""
    view = "sample" if is_sample else "instance"
    train, test = build_datasets("cifar100", data_folder, view=view, k=k, mode=mode, percent=percent, uint8=uint8)
    train_loader, test_loader = _reference_loaders(train, test, batch_size, num_workers)
    return train_loader, test_loader, len(train)
