"""Input views: what the network sees of an augmented uint8 batch (RGB, grayscale, CIELAB L or ab,
or a low-resolution copy), computed on the training device.

Teacher and student can be given different views of the *same* augmented batch (cross-modal and
privileged-information distillation): every view is a function of the uint8 images (N, 3, H, W)
that the loader already produced, so both networks see the same crops and flips.

Normalisation: ``rgb`` and ``lowres:N`` use the dataset's own RGB mean/std (as the reference does;
``rgb`` is bit-identical to :class:`~kdzoo.dataset.transforms.Normalize`). ``gray``, ``L`` and ``ab``
are standardised with fixed natural-image statistics measured once on the un-augmented CIFAR-100
training set (:data:`VIEW_STATISTICS`), and the same constants are used for every dataset: they
only need to bring each channel near zero mean and unit variance, which they do for ImageNet too.
"""
from __future__ import annotations

import argparse
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .transforms import Normalize

VIEW_HELP = ("input view of the images: rgb (default), gray (luminance), L (CIELAB lightness), "
             "ab (CIELAB chroma), lowres:N (downsampled to NxN and scaled back, e.g. lowres:8)")

_FIXED = {"rgb": "rgb", "gray": "gray", "l": "L", "ab": "ab"}
_CHANNELS = {"rgb": 3, "gray": 1, "L": 1, "ab": 2}
_LOWRES = "lowres"

# Per-channel (mean, std) of each standardised view, measured by measure_view_statistics on the 50,000
# un-augmented CIFAR-100 training images (population std over every pixel of every image; float32
# conversion, float64 sums). tests/test_views.py re-measures them on the real data (a slow test).
VIEW_STATISTICS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "gray": ((0.487621,), (0.251752,)),
    "L": ((51.6545,), (25.2404,)),
    "ab": ((1.48301, 7.63640), (13.0718, 18.6151)),
}

# sRGB (D65) linear RGB -> XYZ, the coefficients scikit-image and OpenCV use.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)
# ITU-R BT.709 luma weights, applied to gamma-encoded values as scikit-image's rgb2gray does.
_GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)
_DELTA = 6.0 / 29.0


def _choices_message(text: str) -> str:
    return f"unknown input view {text!r}: choose rgb, gray, L, ab or lowres:N (e.g. lowres:8)"


def parse_view(text: str) -> str:
    """The canonical spelling of an input view (``rgb``, ``gray``, ``L``, ``ab`` or ``lowres:N``),
    accepting any letter case and surrounding spaces; anything else is a ValueError naming the
    bad value and the valid choices, so a typo fails at argument parsing rather than mid-run."""
    cleaned = text.strip().lower()
    if cleaned in _FIXED:
        return _FIXED[cleaned]
    name, colon, size = cleaned.partition(":")
    if name == _LOWRES:
        if not colon or not re.fullmatch(r"[0-9]+", size) or int(size) <= 0:
            raise ValueError(f"input view {text!r}: N of lowres:N must be a positive integer (e.g. lowres:8)")
        return f"{_LOWRES}:{int(size)}"
    raise ValueError(_choices_message(text))


def view_arg(text: str) -> str:
    """:func:`parse_view` for argparse ``type=``: argparse shows an ArgumentTypeError's message
    as it is, where a ValueError would become a bare 'invalid value'."""
    try:
        return parse_view(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def view_channels(view: str) -> int:
    """Number of channels a view has (3, 1, 1, 2, 3 for rgb, gray, L, ab, lowres:N): the input
    width of the network that is fed it."""
    canonical = parse_view(view)
    return _CHANNELS.get(canonical, 3)


def _lowres_size(view: str) -> int | None:
    return int(view.split(":", 1)[1]) if view.startswith(_LOWRES + ":") else None


def _mix(x: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    """w0 * x[:, 0] + w1 * x[:, 1] + w2 * x[:, 2], keeping the channel axis.

    Written as elementwise ops rather than a matmul/einsum so that TF32 matmul settings on a GPU
    cannot round the colour conversion to 10 mantissa bits."""
    return (weights[0] * x[:, 0:1]).add_(x[:, 1:2], alpha=weights[1]).add_(x[:, 2:3], alpha=weights[2])


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """Luminance Y = 0.2125 R + 0.7154 G + 0.0721 B of float RGB (N, 3, H, W) in [0, 1], computed on
    the gamma-encoded values (as scikit-image's ``rgb2gray``): (N, 1, H, W) in [0, 1]."""
    return _mix(x, _GRAY_WEIGHTS)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    # The cube root is kept away from 0 where the linear segment takes over (its slope is unbounded there).
    cube_root = t.clamp_min(_DELTA ** 3).pow(1.0 / 3.0)
    linear = t / (3.0 * _DELTA ** 2) + 4.0 / 29.0
    return torch.where(t > _DELTA ** 3, cube_root, linear)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """CIELAB (D65 white, 2-degree observer) of float sRGB (N, 3, H, W) in [0, 1]: (N, 3, H, W) with
    L in [0, 100] and a, b roughly in [-128, 128].

    sRGB is linearised (c / 12.92 up to 0.04045, ((c + 0.055) / 1.055) ** 2.4 above), mapped to XYZ
    and divided by the D65 white; then L = 116 f(Y) - 16, a = 500 (f(X) - f(Y)), b = 200 (f(Y) - f(Z))
    with f(t) = t ** (1/3) above (6/29) ** 3 and t / (3 (6/29) ** 2) + 4/29 below.
    """
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055).pow(2.4), x / 12.92)
    fx, fy, fz = (_lab_f(_mix(linear, row) / white) for row, white in zip(_RGB_TO_XYZ, _D65_WHITE))
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def _unstandardised(view: str, images: torch.Tensor) -> torch.Tensor:
    """gray, L or ab of uint8 images, before standardisation (float32)."""
    x = images.float().div_(255.0)
    if view == "gray":
        return rgb_to_gray(x)
    lab = rgb_to_lab(x)
    return lab[:, :1] if view == "L" else lab[:, 1:]


def measure_view_statistics(
    images: torch.Tensor, view: str, batch_size: int = 2048,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of the ``gray``, ``L`` or ``ab`` view of
    uint8 images (N, 3, H, W), over every pixel of every image: how :data:`VIEW_STATISTICS` was
    made. Works through the images in batches (one float copy of the whole training set would be
    gigabytes for ImageNet-sized images) and sums in float64."""
    view = parse_view(view)
    if view not in VIEW_STATISTICS:
        raise ValueError(f"view {view!r} has no fixed statistics (only {', '.join(VIEW_STATISTICS)} do)")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    total = torch.zeros(_CHANNELS[view], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], batch_size):
        values = _unstandardised(view, images[start:start + batch_size]).double()
        total += values.sum(dim=(0, 2, 3)).cpu()
        squares += values.square().sum(dim=(0, 2, 3)).cpu()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


class InputView(nn.Module):
    """uint8 images (N, 3, H, W) -> the float32 view (N, C, H, W) the network is fed, on the
    images' device (move the module there with ``.to(device)``, as :class:`Normalize`).

    ``mean``/``std`` are the dataset's RGB statistics, used by ``rgb`` (exactly
    ``Normalize(mean, std)``) and ``lowres:N``; ``gray``, ``L`` and ``ab`` use the fixed
    :data:`VIEW_STATISTICS`.

    ``lowres:N`` downsamples to N x N by area averaging and scales back to H x W bilinearly
    (``align_corners=False``), on [0, 255] values, then normalises as ``rgb``: the information of a
    low-resolution image at the full input size, so architectures stay the same. A side that is
    already at most N pixels is left at its size, so N >= H and N >= W makes the view exactly
    ``rgb`` (the image size is only known at forward time, so this is not an error).
    """

    def __init__(self, view: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.view = parse_view(view)
        self.channels = view_channels(self.view)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std must be the 3 RGB channel statistics, got {mean} and {std}")
        self.normalize = Normalize(mean, std)
        self.size = _lowres_size(self.view)
        if self.view in VIEW_STATISTICS:
            view_mean, view_std = VIEW_STATISTICS[self.view]
            self.register_buffer("view_mean", torch.tensor(view_mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("view_std", torch.tensor(view_std).view(1, -1, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"view={self.view!r}, channels={self.channels}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            # Same reason as Normalize: a float batch is already normalised, and converting it again
            # would train on garbage without any error.
            raise TypeError(
                f"InputView expects uint8 images, got {images.dtype}: build the datasets with uint8=True "
                "(the fast path), or feed float batches to the model without an input view"
            )
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InputView expects uint8 RGB images (N, 3, H, W), got shape {tuple(images.shape)}")
        if self.view == "rgb":
            return self.normalize(images)
        if self.size is not None:
            return self._lowres(images)
        return _unstandardised(self.view, images).sub_(self.view_mean).div_(self.view_std)

    def _lowres(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        small = (min(self.size, h), min(self.size, w))
        if small == (h, w):
            return self.normalize(images)
        x = F.interpolate(images.float(), size=small, mode="area")
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        # Normalize's own constants, so lowres and rgb share one normalisation exactly.
        return x.mul_(self.normalize.scale).sub_(self.normalize.shift)


class InputViews(nn.Module):
    """The inputs of several networks from one uint8 batch: ``forward`` returns one view per entry
    of ``views`` (for distillation: the student's, then each teacher's), computing each distinct
    view once and returning the same tensor to every network that reads it."""

    def __init__(self, views: Sequence[InputView]) -> None:
        super().__init__()
        distinct: dict[str, InputView] = {}
        for v in views:
            distinct.setdefault(v.view, v)
        self.distinct = nn.ModuleList(distinct.values())
        self.order = [list(distinct).index(v.view) for v in views]
        self.views = [v.view for v in views]

    def extra_repr(self) -> str:
        return f"views={self.views}"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        computed = [view(images) for view in self.distinct]
        return tuple(computed[i] for i in self.order)
