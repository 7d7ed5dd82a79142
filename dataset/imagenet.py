"""ImageNet (or any class-per-folder tree) from ``<root>/train`` and ``<root>/val``."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision import datasets, transforms

from .base import DataError, ViewDataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD


def _train_transform(size: int) -> transforms.Compose:
    return transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )


def _eval_transform(size: int) -> transforms.Compose:
    return transforms.Compose(
        [transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size), transforms.PILToTensor()]
    )


class ImageFolderBatched(ViewDataset):
    """torchvision's ``ImageFolder`` behind the three views; JPEG decoding stays per image (it
    cannot be batched), normalisation happens on the training device like for CIFAR.

    Args:
        root: the split folder (``.../train`` or ``.../val``), one sub-folder per class.
        train: random-resized-crop + flip, or resize + centre crop.
        image_size: side of the crop (224 for ImageNet).
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(
        self, root: str | Path, train: bool = True, view: str = "plain", k: int = 16384,
        mode: str = "exact", percent: float = 1.0, image_size: int = 224,
    ) -> None:
        super().__init__(view, k, mode, percent)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist: expected one sub-folder per class under it")
        transform = _train_transform(image_size) if train else _eval_transform(image_size)
        try:
            self.folder = datasets.ImageFolder(str(root), transform=transform)
        except (FileNotFoundError, RuntimeError) as err:
            raise DataError(f"{root} is not a usable image folder: {err}") from err
        self.labels = torch.as_tensor(self.folder.targets, dtype=torch.long)
        self.classes = self.folder.classes
        self.num_classes = len(self.classes)
        self._finish_init()

    def load_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([self.folder[i][0] for i in index.tolist()])
        return images, self.labels[index]


def imagenet_splits(data_folder: str | Path, **kwargs) -> tuple[ImageFolderBatched, ImageFolderBatched]:
    """``(train, val)`` datasets from ``data_folder/train`` and ``data_folder/val``; the training
    view options in ``kwargs`` apply to the training split only."""
    root = Path(data_folder)
    size = kwargs.pop("image_size", 224)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"{root} must contain 'train' and 'val' folders (ImageFolder layout); '{split}' is missing")
    train = ImageFolderBatched(root / "train", train=True, image_size=size, **kwargs)
    val = ImageFolderBatched(root / "val", train=False, image_size=size)
    if val.classes != train.classes:
        raise DataError(f"{root}: the class folders of 'train' and 'val' differ")
    return train, val
