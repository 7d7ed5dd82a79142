"""Small utilities with the reference's names (``AverageMeter``, ``accuracy``) and flag parsing."""
from __future__ import annotations

import argparse
import random
from types import ModuleType
from typing import Any

import numpy as np
import torch

# numpy's array and scalar reconstruction lives in numpy._core.multiarray since numpy 2 and lived
# in numpy.core.multiarray before: pickles name it either way, depending on who wrote them.
NUMPY_MULTIARRAY_NAMES = ("numpy._core.multiarray", "numpy.core.multiarray")


def numpy_multiarray() -> ModuleType:
    """The installed numpy's ``multiarray`` module, which both names of
    :data:`NUMPY_MULTIARRAY_NAMES` stand for."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


class AverageMeter:
    """Running average of a scalar (reference API: ``update(val, n)``, ``.avg``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count


def correct_topk(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k predictions, per k, as 0-d tensors on the
    output's device (no host synchronisation)."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hits = pred.eq(target.view(-1, 1))
    return [hits[:, : min(k, maxk)].any(dim=1).sum() for k in topk]


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
    """Top-k accuracy in percent, each a shape-(1,) tensor as the reference returns it (so its
    ``meter.update(acc1[0], n)`` idiom keeps working)."""
    return [c.float().mul(100.0 / target.numel()).view(1) for c in correct_topk(output, target, topk)]


def parse_decay_epochs(text: str) -> list[int]:
    """``'150,180,210'`` -> ``[150, 180, 210]``, for ``--lr_decay_epochs``."""
    try:
        epochs = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--lr_decay_epochs must be comma-separated whole numbers such as 150,180,210, got {text!r}"
        ) from None
    if not epochs or any(e <= 0 for e in epochs) or epochs != sorted(epochs):
        raise argparse.ArgumentTypeError(
            f"--lr_decay_epochs must list increasing positive epochs such as 150,180,210, got {text!r}"
        )
    return epochs


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number greater than 0, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number greater than 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {text!r}")
    return value


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). DataLoader workers derive their seeds from
    torch's generator, so they follow."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def as_list(value: Any) -> list[Any]:
    """A per-teacher option as a list: several teachers give a list (or tuple), one teacher its
    single value."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def per_teacher(value: Any, n: int) -> list[Any]:
    """A per-teacher option as one value per teacher: a single value (how a recorded option holds
    a value shared by every teacher) is repeated ``n`` times, a list is one value per teacher."""
    values = as_list(value)
    return values * n if len(values) == 1 else values
