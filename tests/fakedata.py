"""Small synthetic datasets on disk for tests (importable as ``from fakedata import write_fake_cifar``):
CIFAR-100 pickles and ImageFolder trees."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = 100


def write_cifar_split(path: Path, data: np.ndarray, fine_labels: list, batch_label: str = "fake") -> None:
    """One split file in the layout of the official CIFAR-100 python archive."""
    fine = list(fine_labels)
    entry = {
        "filenames": [f"img_{i:05d}.png" for i in range(len(data))],
        "batch_label": batch_label,
        "fine_labels": fine,
        "coarse_labels": [int(y) // 5 for y in fine],
        "data": data,
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_fake_cifar(
    root: Path, n_train: int = 256, n_test: int = 64, seed: int = 0, labels_train: list[int] | None = None,
) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` with random uint8 images; return ``root``.

    Labels cycle through 0..99 (every class appears once ``n >= 100``) unless ``labels_train`` is given
    (then ``n_train`` is ``len(labels_train)``).
    """
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if labels_train is not None:
        labels_train = [int(y) for y in labels_train]
        n_train = len(labels_train)
    else:
        labels_train = [i % CIFAR_CLASSES for i in range(n_train)]
    labels_test = [i % CIFAR_CLASSES for i in range(n_test)]
    write_cifar_split(folder / "train", rng.integers(0, 256, (n_train, 3072), dtype=np.uint8), labels_train, "train")
    write_cifar_split(folder / "test", rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), labels_test, "test")
    meta = {
        "fine_label_names": [f"class_{i:02d}" for i in range(CIFAR_CLASSES)],
        "coarse_label_names": [f"super_{i:02d}" for i in range(CIFAR_CLASSES // 5)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root


def read_fake_split(root: Path, train: bool) -> tuple[np.ndarray, list[int]]:
    """The raw ``data`` rows and fine labels of a split, straight from the pickle."""
    with open(Path(root) / "cifar-100-python" / ("train" if train else "test"), "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    return entry["data"], list(entry["fine_labels"])


def make_image_tree(root: Path, splits: dict[str, dict[str, int]], seed: int = 0,
                    sizes=((40, 50), (50, 40))) -> Path:
    """Write ``root/<split>/<class>/img<i>.png`` (random RGB PNGs), ``splits[split][class]`` images
    per class, image ``i`` of size ``sizes[i % len(sizes)]`` as (width, height); return ``root``."""
    rng = np.random.default_rng(seed)
    for split, classes in splits.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / split / cls / f"img{i}.png")
    return root
