"""Target datasets of the linear-probe transfer (``transfer_student.py``).

STL-10, Tiny-ImageNet, any ImageFolder tree, and CIFAR-10 / CIFAR-100 python folders are decoded
once, resized to ``image_size x image_size`` (PIL bilinear, as torchvision's ``Resize`` does) and
held in memory as uint8, like CIFAR-100: training batches get CIFAR's random crop (padding 4) and
flip as tensor ops, test batches are returned as they are, and normalisation happens on the device.
At 32x32, STL-10 (5000 + 8000 images) takes 40 MB and Tiny-ImageNet (100k + 10k) 340 MB.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets

from .base import DataError
from .cifar100 import InMemoryBatched, read_cifar100, read_cifar_pickle, read_data_pickle

TRANSFER_DATASETS = ("stl10", "tinyimagenet", "cifar10", "cifar100", "imagefolder")

STL10_SIDE = 96
STL10_CLASSES = 10
CIFAR10_CLASSES = 10
_DECODE_BATCH = 256


def spread_indices(n: int, limit: int | None) -> torch.Tensor | None:
    """``limit`` indices spread evenly over ``range(n)`` (every class of a class-ordered list is
    represented), or ``None`` for all of them."""
    if limit is None or limit >= n:
        return None
    return torch.arange(limit) * n // limit


def _resized_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> uint8 tensor (3, size, size), bilinear: what torchvision's ``Resize((32, 32))``
    (the RRD authors' transform) does to a PIL image, without its per-call overhead."""
    resized = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)


class _ImageFiles(Dataset):
    """Image files decoded to RGB (grayscale JPEGs of Tiny-ImageNet included) and resized."""

    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            with Image.open(self.paths[i]) as image:
                return _resized_tensor(image, self.size)
        except OSError as err:
            raise DataError(f"cannot decode image {self.paths[i]} ({type(err).__name__}: {err})") from err


class _ArrayImages(Dataset):
    """uint8 images (N, 3, H, W) resized through PIL, as the files would be."""

    def __init__(self, images: torch.Tensor, size: int) -> None:
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return _resized_tensor(Image.fromarray(self.images[i].permute(1, 2, 0).numpy()), self.size)


def _decode(items: Dataset, num_workers: int) -> torch.Tensor:
    """Every image of ``items`` as one uint8 tensor (N, 3, S, S); workers decode in parallel."""
    loader = DataLoader(items, batch_size=_DECODE_BATCH, num_workers=num_workers)
    return torch.cat(list(loader))


def _resized(images: torch.Tensor, size: int, num_workers: int) -> torch.Tensor:
    return images if images.shape[-2:] == (size, size) else _decode(_ArrayImages(images, size), num_workers)


# ----------------------------------------------------------------------------------------- STL-10

def _locate(root: Path, subfolder: str, marker: str) -> Path | None:
    """``root/subfolder`` or ``root`` itself, whichever holds ``marker``."""
    for folder in (root / subfolder, root):
        if (folder / marker).exists():
            return folder
    return None


def ensure_stl10(data_folder: str | Path, download: bool = False) -> Path:
    """The ``stl10_binary`` folder under ``data_folder`` (or ``data_folder`` itself); fetched
    through torchvision with ``download``."""
    root = Path(data_folder).expanduser()
    folder = _locate(root, "stl10_binary", "train_X.bin")
    if folder is None and download:
        try:
            datasets.STL10(str(root), split="test", download=True)
        except Exception as err:  # network refused, disk full, bad archive: all need the same fix
            raise DataError(f"downloading STL-10 into {root} failed ({type(err).__name__}: {err})") from err
        folder = _locate(root, "stl10_binary", "train_X.bin")
    if folder is None:
        raise DataError(
            f"STL-10 is not in {root / 'stl10_binary'}: place the extracted stl10_binary/ folder of the official "
            f"archive (train_X.bin, train_y.bin, test_X.bin, test_y.bin) in {root}, or add --download to fetch "
            "it (2.6 GB)"
        )
    return folder


def read_stl10(data_folder: str | Path, split: str, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 96, 96) and int64 labels 0..9 of STL-10's labelled ``'train'`` (5000) or
    ``'test'`` (8000) split, checked by content.

    The binary layout is torchvision's: ``<split>_X.bin`` holds each image as 3 planes stored
    column by column, ``<split>_y.bin`` one byte per image with labels 1..10. torchvision's reader is
    not used because it insists on the md5 of the 2.5 GB unlabelled split, which a probe never reads.
    """
    if split not in ("train", "test"):
        raise ValueError(f"STL-10 split must be 'train' or 'test', got {split!r}")
    folder = ensure_stl10(data_folder, download)
    image_file, label_file = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    for path in (image_file, label_file):
        if not path.is_file():
            raise DataError(f"{folder} lacks {path.name}: copy it from the official stl10_binary archive")
    raw = np.fromfile(image_file, dtype=np.uint8)
    plane = 3 * STL10_SIDE * STL10_SIDE
    if raw.size == 0 or raw.size % plane:
        raise DataError(f"{image_file}: {raw.size} bytes is not a whole number of 3x96x96 images")
    # Stored column-major: (N, C, W, H) -> (N, C, H, W).
    images = torch.from_numpy(raw.reshape(-1, 3, STL10_SIDE, STL10_SIDE)).transpose(2, 3).contiguous()
    labels = torch.from_numpy(np.fromfile(label_file, dtype=np.uint8).astype(np.int64)) - 1
    if labels.numel() != images.shape[0]:
        raise DataError(f"{folder}: {images.shape[0]} images in {image_file.name} but {labels.numel()} labels")
    if labels.min() < 0 or labels.max() >= STL10_CLASSES:
        raise DataError(f"{label_file}: labels must lie in 1..10, found {labels.min() + 1}..{labels.max() + 1}")
    return images, labels


# --------------------------------------------------------------------------------------- CIFAR-10

def _batch_number(path: Path) -> int:
    return int(re.sub(r"\D", "", path.name) or 0)


def read_cifar10(
    data_folder: str | Path, train: bool, download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """uint8 images, int64 labels and the number of classes of a folder in CIFAR-10's python layout
    (``data_batch_1..5``, ``test_batch``, ``'labels'``; ``batches.meta`` names the classes, 10 when
    absent): ``data_folder/cifar-10-batches-py`` or ``data_folder`` itself."""
    root = Path(data_folder).expanduser()
    folder = _locate(root, "cifar-10-batches-py", "test_batch")
    if folder is None and download:
        try:
            datasets.CIFAR10(str(root), train=True, download=True)
        except Exception as err:
            raise DataError(f"downloading CIFAR-10 into {root} failed ({type(err).__name__}: {err})") from err
        folder = _locate(root, "cifar-10-batches-py", "test_batch")
    if folder is None:
        raise DataError(
            f"no CIFAR-10 folder in {root}: expected {root / 'cifar-10-batches-py'} (or {root}) with data_batch_1..5 "
            "and test_batch from the official python archive; add --download to fetch CIFAR-10"
        )
    num_classes = CIFAR10_CLASSES
    if (folder / "batches.meta").is_file():
        meta = read_data_pickle(folder / "batches.meta")
        try:
            num_classes = len(meta["label_names"])
        except Exception as err:
            raise DataError(
                f"cannot read the class names of {folder / 'batches.meta'} ({type(err).__name__}: {err})"
            ) from err
    files = sorted(folder.glob("data_batch_*"), key=_batch_number) if train else [folder / "test_batch"]
    if not files:
        raise DataError(f"{folder} holds no data_batch_<i> files (the CIFAR-10 training split)")
    parts = [read_cifar_pickle(path, "labels", num_classes) for path in files]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), num_classes


# ------------------------------------------------------------------------ ImageFolder, Tiny-ImageNet

def read_val_annotations(split_dir: str | Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """``(image path, label)`` of Tiny-ImageNet's official ``val/`` layout: ``val/images/<file>``
    and ``val/val_annotations.txt`` with lines ``<file> <wnid> <x0> <y0> <x1> <y1>`` (tab-separated);
    labels are the training classes' indices."""
    split_dir = Path(split_dir)
    notes = split_dir / "val_annotations.txt"
    samples = []
    for number, line in enumerate(notes.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DataError(f"{notes}, line {number}: expected '<file> <class> ...', got {line!r}")
        name, wnid = fields[:2]
        if wnid not in class_to_idx:
            raise DataError(f"{notes}, line {number}: class {wnid!r} has no folder in the training split")
        path = split_dir / "images" / name
        if not path.is_file():
            raise DataError(f"{notes}, line {number}: image {path} does not exist")
        samples.append((str(path), class_to_idx[wnid]))
    if not samples:
        raise DataError(f"{notes} lists no images")
    return samples


def _image_folder(root: Path) -> datasets.ImageFolder:
    try:
        return datasets.ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{root} is not a usable image folder (one sub-folder of images per class): {err}") from err


def folder_samples(data_folder: str | Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """Class names and ``(path, label)`` lists of the training and test splits of a folder dataset:
    ``train/`` in ImageFolder layout (files may sit in sub-folders, as in Tiny-ImageNet's
    ``train/<wnid>/images/``) and ``val/`` (or ``test/``) either in ImageFolder layout, with classes
    that exist in ``train/``, or in Tiny-ImageNet's ``images/`` + ``val_annotations.txt`` layout.
    ``data_folder/tiny-imagenet-200`` is used when present."""
    root = Path(data_folder).expanduser()
    root = _locate(root, "tiny-imagenet-200", "train") or root
    train_dir = root / "train"
    test_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"{root} must contain train/ and val/ (or test/) folders, one sub-folder per class in train/")
    train = _image_folder(train_dir)
    if (test_dir / "val_annotations.txt").is_file():
        test_samples = read_val_annotations(test_dir, train.class_to_idx)
    else:
        test = _image_folder(test_dir)
        unknown = [name for name in test.classes if name not in train.class_to_idx]
        if unknown:
            raise DataError(
                f"{test_dir}: class folder(s) {', '.join(unknown[:5])} do not exist in {train_dir} (Tiny-ImageNet's "
                "test/ has no labels: use val/ with its val_annotations.txt)"
            )
        # Labels follow the training split's class order, even when val/ lacks some classes.
        test_samples = [(path, train.class_to_idx[test.classes[y]]) for path, y in test.samples]
    return train.classes, list(train.samples), test_samples


# ---------------------------------------------------------------------------------------- splits

def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units (computed in float64
    chunks: a float copy of Tiny-ImageNet would take 1.2 GB)."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].to(torch.float64).div_(255)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def load_transfer_data(
    dataset: str, data_folder: str | Path, image_size: int = 32, train_limit: int | None = None,
    test_limit: int | None = None, num_workers: int = 0, download: bool = False,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], int]:
    """``((train images, labels), (test images, labels), number of classes)``: uint8 images
    (N, 3, image_size, image_size). ``train_limit``/``test_limit`` keep N images: the first N of the
    (shuffled) CIFAR files, N spread evenly over the others (every class represented), chosen before
    decoding."""
    if dataset not in TRANSFER_DATASETS:
        raise ValueError(f"unknown transfer dataset {dataset!r}: choose one of {', '.join(TRANSFER_DATASETS)}")
    if dataset in ("cifar10", "cifar100"):
        splits = []
        for train, limit in ((True, train_limit), (False, test_limit)):
            if dataset == "cifar10":
                images, labels, num_classes = read_cifar10(data_folder, train, download)
            else:
                (images, labels), num_classes = read_cifar100(data_folder, train), 100
            if limit is not None:
                images, labels = images[:limit].clone(), labels[:limit].clone()
            splits.append((_resized(images, image_size, num_workers), labels))
        return splits[0], splits[1], num_classes
    if dataset == "stl10":
        splits = []
        for split, limit in (("train", train_limit), ("test", test_limit)):
            images, labels = read_stl10(data_folder, split, download)
            keep = spread_indices(len(labels), limit)
            if keep is not None:
                images, labels = images[keep], labels[keep]
            splits.append((_resized(images, image_size, num_workers), labels))
        return splits[0], splits[1], STL10_CLASSES
    # tinyimagenet and imagefolder: the same layouts are accepted for both.
    classes, train_samples, test_samples = folder_samples(data_folder)
    splits = []
    for samples, limit in ((train_samples, train_limit), (test_samples, test_limit)):
        keep = spread_indices(len(samples), limit)
        if keep is not None:
            samples = [samples[i] for i in keep.tolist()]
        images = _decode(_ImageFiles([path for path, _ in samples], image_size), num_workers)
        splits.append((images, torch.tensor([label for _, label in samples], dtype=torch.long)))
    return splits[0], splits[1], len(classes)


def transfer_splits(
    dataset: str, data_folder: str | Path, image_size: int = 32,
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None, train_limit: int | None = None,
    test_limit: int | None = None, num_workers: int = 0, download: bool = False, uint8: bool = False,
) -> tuple[InMemoryBatched, InMemoryBatched]:
    """``(train, test)`` datasets of a transfer target (see :func:`load_transfer_data`), normalised
    with ``normalization = (mean, std)`` on the device, or with the training images' own per-channel
    statistics when it is ``None``; normalised float32 batches, or uint8 ones with ``uint8``."""
    (train_x, train_y), (test_x, test_y), num_classes = load_transfer_data(
        dataset, data_folder, image_size, train_limit, test_limit, num_workers, download)
    mean, std = normalization if normalization is not None else channel_stats(train_x)
    train = InMemoryBatched(train_x, train_y, train=True, num_classes=num_classes, mean=mean, std=std, uint8=uint8)
    test = InMemoryBatched(test_x, test_y, train=False, num_classes=num_classes, mean=mean, std=std, uint8=uint8)
    return train, test
