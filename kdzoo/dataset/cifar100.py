"""CIFAR-100 from the standard ``cifar-100-python`` folder, decoded once and kept in memory."""
from __future__ import annotations

import functools
import pickle
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..helper.util import NUMPY_MULTIARRAY_NAMES, numpy_multiarray
from .base import DataError, ViewDataset
from .transforms import CIFAR100_MEAN, CIFAR100_STD, draw_crop_flip, random_crop_flip

NUM_CLASSES = 100
_FILES = ("train", "test", "meta")
_SIDE = 32
FOLDER = "cifar-100-python"
# What torchvision's download writes into the data folder besides FOLDER.
_ARCHIVE = "cifar-100-python.tar.gz"


def ensure_cifar100(data_folder: str | Path) -> Path:
    """Return the ``cifar-100-python`` folder: ``data_folder/cifar-100-python``, or ``data_folder``
    itself when it is that folder; download it through torchvision if it is absent. A failed
    download removes what it wrote (the archive, the folders it made), so the next run starts clean.

    torchvision's own loader is not used for reading because it insists on the md5 of the
    extracted files, which a valid re-pickled copy fails; we validate the contents instead.
    """
    root = Path(data_folder).expanduser()
    if root.name == FOLDER and not (root / FOLDER).is_dir():
        root, folder = root.parent, root  # the folder itself was given
    else:
        folder = root / FOLDER
    if folder.is_dir():
        missing = [name for name in _FILES[:2] if not (folder / name).is_file()]
        if missing:
            raise DataError(
                f"{folder} lacks the file(s) {', '.join(missing)}: it must hold train and test (and meta) "
                "from the official CIFAR-100 python archive."
            )
        return folder
    made_dirs = [d for d in (root, *root.parents) if not d.exists()]  # deepest first
    had = {name: (root / name).exists() for name in (FOLDER, _ARCHIVE)}
    try:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(root), train=True, download=True)
    except Exception as err:  # network refused, disk full, bad archive: all need the same fix
        _remove_download(root, [name for name, existed in had.items() if not existed], made_dirs)
        raise DataError(
            f"CIFAR-100 is not in {folder} and downloading it failed ({type(err).__name__}: {err}). "
            f"Place the extracted 'cifar-100-python' folder (files train, test, meta) in {root}, "
            "or point --data_folder at the folder that contains it (or at the folder itself)."
        ) from err
    return folder


def _remove_download(root: Path, new_names: list[str], made_dirs: list[Path]) -> None:
    """Undo a failed download: the archive and folder it wrote, then the folders it made, deepest
    first, as long as nothing else was put in them."""
    for name in new_names:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    for folder in made_dirs:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # something else was put there: keep it and the folders above
            break


def _latin1_encode(text: str, encoding: str) -> bytes:
    """What Python 3 pickles of bytes call (``_codecs.encode(text, 'latin1')``), for that codec only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"encoding {encoding!r} (data files encode bytes as latin1)")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    """What Python 3 pickles of ``b''`` call (``bytes()``); no argument, so no size to allocate."""
    return b""


@functools.cache
def _data_pickle_globals() -> dict[tuple[str, str], Any]:
    """Everything a CIFAR python file may ask the unpickler for: numpy's array and scalar
    reconstruction (under numpy 2's and numpy 1's module names) and bytes. None of it runs code of
    the file's choosing; containers, strings and numbers need no globals."""
    multiarray = numpy_multiarray()
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode,
                                           ("__builtin__", "bytes"): _empty_bytes}
    for module in NUMPY_MULTIARRAY_NAMES:
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds only what CIFAR's python files hold (dicts, lists, strings, bytes,
    numbers, numpy arrays): a file that names any other global is refused before it is built, so a
    tampered data folder cannot run code."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        found = _data_pickle_globals().get((module, name))
        if found is None:
            raise DataError(
                f"refused data file {self.path}: it asks to build {module}.{name}, which CIFAR data files never hold "
                "(only dicts, lists, strings, numbers and numpy arrays); nothing in it was run. Replace it with the "
                "file from the official CIFAR python archive"
            )
        return found


def read_data_pickle(path: str | Path) -> Any:
    """The contents of a CIFAR python file (``train``, ``test``, ``meta``, ``data_batch_<i>``,
    ``batches.meta``), unpickled by :class:`_DataUnpickler`. A file that cannot be read, or asks for
    anything beyond plain data and numpy arrays, is a :class:`DataError`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"cannot read {path} as a CIFAR python file ({type(err).__name__}: {err}); it is cut short, corrupted "
            "or not from the official archive"
        ) from err


def read_cifar_pickle(path: str | Path, label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One split file of a CIFAR python archive (CIFAR-100 ``train``/``test`` with ``fine_labels``,
    CIFAR-10 ``data_batch_<i>``/``test_batch`` with ``labels``): uint8 images (N, 3, 32, 32) and int64
    labels, checked for shape and range."""
    entry = read_data_pickle(path)
    try:
        images = torch.as_tensor(entry["data"])
        labels = torch.as_tensor(entry[label_key], dtype=torch.long)
    except Exception as err:
        raise DataError(
            f"cannot read {path} as a CIFAR pickle with {label_key!r} ({type(err).__name__}: {err})"
        ) from err
    if images.dtype != torch.uint8 or images.ndim != 2 or images.shape[1] != 3 * _SIDE * _SIDE:
        raise DataError(f"{path}: expected uint8 data of shape (N, 3072), got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{path}: {images.shape[0]} images but {labels.numel()} labels (shape {tuple(labels.shape)})")
    if images.shape[0] == 0:
        raise DataError(f"{path} holds no images")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{path}: labels must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]")
    return images.view(-1, 3, _SIDE, _SIDE), labels


def read_cifar100(data_folder: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 32, 32) and int64 fine labels, checked for shape and range."""
    path = ensure_cifar100(data_folder) / ("train" if train else "test")
    return read_cifar_pickle(path, "fine_labels", NUM_CLASSES)


class InMemoryBatched(ViewDataset):
    """uint8 images (N, 3, H, W) held in memory, with CIFAR's training augmentation (random crop
    with zero padding, horizontal flip) done per batch; test splits are returned as they are.

    The crop and flip of sample i in epoch e depend only on (seed, e, i) (see :meth:`set_epoch`), so
    augmentation is the same whatever the number of workers or processes, and a resumed run
    replays it exactly.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, train: bool = True, view: str = "plain",
        k: int = 16384, mode: str = "exact", percent: float = 1.0, num_classes: int | None = None,
        mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, padding: int = 4,
        uint8: bool = False,
    ) -> None:
        super().__init__(view, k, mode, percent, uint8)
        self.images, self.labels, self.train, self.padding = images, labels, train, padding
        # Subclasses may fix these as class attributes (CIFAR-100).
        if num_classes is not None:
            self.num_classes = num_classes
        if mean is not None and std is not None:
            self.mean, self.std = mean, std
        self._augment_params: torch.Tensor | None = None
        self._finish_init()

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """Fix the augmentation of every sample for this epoch."""
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        self._augment_params = draw_crop_flip(len(self), padding=self.padding, generator=generator)

    def load_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images[index]
        if self.train:
            params = None if self._augment_params is None else self._augment_params[index]
            images = random_crop_flip(images, padding=self.padding, params=params)
        return images, self.labels[index]


class CIFAR100Batched(InMemoryBatched):
    """CIFAR-100 with the reference's train augmentation (crop 32 pad 4, flip) done per batch.

    Args:
        data_folder: folder holding ``cifar-100-python``.
        train: training split (augmented) or test split.
        view: ``'plain'``, ``'instance'`` or ``'sample'`` (see ``dataset/base.py``).
        k, mode, percent: contrastive sampling, for ``view='sample'``.
        limit: keep only the first ``limit`` images (the train order is already shuffled): quick runs.
        uint8: return raw uint8 images (normalise them on the device) instead of the reference's
            normalised float32 ones.

    Augmentation is epoch-indexed (see :class:`InMemoryBatched`).
    """

    mean, std = CIFAR100_MEAN, CIFAR100_STD
    num_classes = NUM_CLASSES

    def __init__(
        self,
        data_folder: str | Path = "./data",
        train: bool = True,
        view: str = "plain",
        k: int = 16384,
        mode: str = "exact",
        percent: float = 1.0,
        limit: int | None = None,
        uint8: bool = False,
    ) -> None:
        images, labels = read_cifar100(data_folder, train)
        if limit is not None:
            images, labels = images[:limit].clone(), labels[:limit].clone()
        super().__init__(images, labels, train, view, k, mode, percent, uint8=uint8)


def _reference_folder(data_folder: str | Path | None, root: str | Path | None, kwargs: dict) -> str | Path:
    """The data folder from this project's ``data_folder`` or the reference's ``root`` keyword; the
    reference's torchvision keywords that change nothing here are accepted, the others refused."""
    kwargs.pop("download", None)  # the data is downloaded whenever it is absent
    if kwargs.get("transform") is not None or kwargs.get("target_transform") is not None:
        raise ValueError(
            "transform=/target_transform= are not supported: the dataset applies the reference's own "
            "transforms (train: random crop 32 with padding 4, flip, ToTensor, Normalize; test: ToTensor, "
            "Normalize) to whole batches. Drop the argument, or wrap the dataset to transform its output."
        )
    kwargs.pop("transform", None)
    kwargs.pop("target_transform", None)
    if data_folder is not None and root is not None:
        raise ValueError("give the data folder once: data_folder= or the reference's root=, not both")
    return data_folder if data_folder is not None else (root if root is not None else "./data")


def CIFAR100Instance(data_folder: str | Path | None = None, train: bool = True, *, root: str | Path | None = None,
                     uint8: bool = False, **kwargs) -> CIFAR100Batched:
    """The reference's ``(img, target, index)`` dataset: normalised float32 images, augmented for
    ``train``; ``uint8=True`` for raw images."""
    folder = _reference_folder(data_folder, root, kwargs)
    return CIFAR100Batched(folder, train, view="instance", uint8=uint8, **kwargs)


def CIFAR100InstanceSample(
    data_folder: str | Path | None = None, train: bool = True, k: int = 4096, mode: str = "exact",
    is_sample: bool = True, percent: float = 1.0, *, root: str | Path | None = None, uint8: bool = False, **kwargs,
) -> CIFAR100Batched:
    """The reference's contrastive dataset: ``(img, target, index, sample_idx)`` when ``is_sample``
    (else ``(img, target, index)``), normalised float32 images; ``uint8=True`` for raw images."""
    folder = _reference_folder(data_folder, root, kwargs)
    view = "sample" if is_sample else "instance"
    return CIFAR100Batched(folder, train, view=view, k=k, mode=mode, percent=percent, uint8=uint8, **kwargs)
