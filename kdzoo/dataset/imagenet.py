"""ImageNet (or any class-per-folder tree) from ``<root>/train`` and ``<root>/val``."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision import datasets, transforms

from .base import DataError, ViewDataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD

IMAGENET_SIZE = 224  # the standard crop: training crops and test centre crops are this square


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
        limit: keep ``limit`` images evenly spaced over the folder (sorted by class, so every class
            keeps its share): quick runs.
        uint8: raw uint8 images (normalised on the device) instead of normalised float32 ones.
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(
        self, root: str | Path, train: bool = True, view: str = "plain", k: int = 16384,
        mode: str = "exact", percent: float = 1.0, image_size: int = IMAGENET_SIZE, limit: int | None = None,
        uint8: bool = False,
    ) -> None:
        super().__init__(view, k, mode, percent, uint8)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist: expected one sub-folder per class under it")
        transform = _train_transform(image_size) if train else _eval_transform(image_size)
        try:
            self.folder = datasets.ImageFolder(str(root), transform=transform)
        except (FileNotFoundError, RuntimeError) as err:
            raise DataError(f"{root} is not a usable image folder: {err}") from err
        if limit is not None and limit < len(self.folder.samples):
            # ImageFolder lists the images class by class: the first N would be a few classes only.
            n = len(self.folder.samples)
            keep = [i * n // limit for i in range(limit)]
            self.folder.samples = [self.folder.samples[i] for i in keep]
            self.folder.imgs = self.folder.samples
            self.folder.targets = [s[1] for s in self.folder.samples]
        self.labels = torch.as_tensor(self.folder.targets, dtype=torch.long)
        self.classes = self.folder.classes
        self.num_classes = len(self.classes)
        self._finish_init()

    def load_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([self.folder[i][0] for i in index.tolist()])
        return images, self.labels[index]


def imagenet_splits(
    data_folder: str | Path, image_size: int = IMAGENET_SIZE, train_limit: int | None = None,
    test_limit: int | None = None, uint8: bool = False, **kwargs,
) -> tuple[ImageFolderBatched, ImageFolderBatched]:
    """``(train, val)`` datasets from ``data_folder/train`` and ``data_folder/val`` (only
    ``train_limit`` / ``test_limit`` images of them, if given); the training view options in
    ``kwargs`` apply to the training split only."""
    root = Path(data_folder)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"{root} must contain 'train' and 'val' folders (ImageFolder layout); '{split}' is missing")
    train = ImageFolderBatched(root / "train", train=True, image_size=image_size, limit=train_limit, uint8=uint8,
                               **kwargs)
    val = ImageFolderBatched(root / "val", train=False, image_size=image_size, limit=test_limit, uint8=uint8)
    if val.classes != train.classes:
        raise DataError(f"{root}: the class folders of 'train' and 'val' differ")
    return train, val
