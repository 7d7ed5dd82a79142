"""Input views (kdzoo/dataset/views.py): parsing, the colour conversions against scikit-image (the
independent oracle, float64), the low-resolution view against block means and a hand-written bilinear
upsampling, and bit-identity of ``rgb`` with Normalize. The real-data re-measurement of the fixed
statistics is marked ``slow`` and skips when the real CIFAR-100 (conftest.py) is absent.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from skimage.color import rgb2gray, rgb2lab

from kdzoo.dataset.transforms import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, Normalize
from kdzoo.dataset.views import (
    VIEW_HELP,
    VIEW_STATISTICS,
    InputView,
    measure_view_statistics,
    parse_view,
    rgb_to_gray,
    rgb_to_lab,
    view_arg,
    view_channels,
)


def random_images(n: int = 4, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def pure_colours() -> torch.Tensor:
    """One image (1, 3, 8, 256): rows are ramps over all 256 levels of grey, red, green, blue,
    yellow, cyan, magenta, and fixed colours (black, white, red, green, blue) in the last row."""
    levels = torch.arange(256, dtype=torch.uint8)
    zero = torch.zeros_like(levels)
    rows = [
        (levels, levels, levels), (levels, zero, zero), (zero, levels, zero), (zero, zero, levels),
        (levels, levels, zero), (zero, levels, levels), (levels, zero, levels),
    ]
    image = torch.stack([torch.stack(r) for r in rows], dim=1)  # (3, 7, 256)
    fixed = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8)
    last = fixed.repeat(52, 1)[:256].T.unsqueeze(1)  # (3, 1, 256)
    return torch.cat([image, last], dim=1).unsqueeze(0)


def oracle_lab(images: torch.Tensor) -> np.ndarray:
    """scikit-image's Lab (float64) of uint8 (N, 3, H, W), as (N, 3, H, W)."""
    return rgb2lab(images.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0).transpose(0, 3, 1, 2)


def oracle_gray(images: torch.Tensor) -> np.ndarray:
    return rgb2gray(images.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0)[:, None]


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, canonical", [
    ("rgb", "rgb"), ("RGB", "rgb"), ("gray", "gray"), ("Gray", "gray"), ("GRAY", "gray"), ("L", "L"),
    ("l", "L"), ("ab", "ab"), ("AB", "ab"), ("Ab", "ab"), ("lowres:8", "lowres:8"), ("LowRes:16", "lowres:16"),
    ("lowres:08", "lowres:8"), (" gray ", "gray"),
])
def test_parse_view_canonicalises(text, canonical):
    assert parse_view(text) == canonical
    assert view_arg(text) == canonical


@pytest.mark.parametrize("bad", ["lab", "grey", "", "rgb8", "hsv", "low:8", "lowres8"])
def test_parse_view_names_the_bad_value_and_the_choices(bad):
    with pytest.raises(ValueError) as err:
        parse_view(bad)
    message = str(err.value)
    assert repr(bad) in message
    for choice in ("rgb", "gray", "L", "ab", "lowres:N"):
        assert choice in message


@pytest.mark.parametrize("bad", ["lowres:0", "lowres:x", "lowres:", "lowres", "lowres:-4", "lowres:2.5", "lowres:+8"])
def test_parse_view_rejects_a_bad_size(bad):
    with pytest.raises(ValueError, match="positive integer") as err:
        parse_view(bad)
    assert repr(bad) in str(err.value)


def test_view_arg_gives_argparse_the_message():
    parser = argparse.ArgumentParser()
    parser.add_argument("--view", type=view_arg, default="rgb", help=VIEW_HELP)
    assert parser.parse_args(["--view", "l"]).view == "L"
    assert parser.parse_args([]).view == "rgb"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown input view 'lab'"):
        view_arg("lab")
    for choice in ("rgb", "gray", "L", "ab", "lowres:N"):
        assert choice in VIEW_HELP
    assert "\n" not in VIEW_HELP


def test_view_channels():
    assert [view_channels(v) for v in ("rgb", "gray", "L", "ab", "lowres:8")] == [3, 1, 1, 2, 3]
    assert view_channels("AB") == 2
    with pytest.raises(ValueError):
        view_channels("lab")


# --- colour conversions against scikit-image -----------------------------------------------------


@pytest.mark.parametrize("images", [random_images(), pure_colours()], ids=["random", "pure"])
def test_rgb_to_lab_matches_scikit_image(images):
    lab = rgb_to_lab(images.float() / 255.0)
    assert lab.dtype == torch.float32 and lab.shape == images.shape
    np.testing.assert_allclose(lab.numpy(), oracle_lab(images), rtol=0, atol=1e-3)


@pytest.mark.parametrize("images", [random_images(), pure_colours()], ids=["random", "pure"])
def test_rgb_to_gray_matches_scikit_image(images):
    gray = rgb_to_gray(images.float() / 255.0)
    assert gray.shape == (images.shape[0], 1, *images.shape[2:])
    np.testing.assert_allclose(gray.numpy(), oracle_gray(images), rtol=0, atol=1e-6)


def test_lab_of_known_colours():
    # White is L = 100 and black L = 0 by construction; sRGB red is the textbook (53.24, 80.09, 67.20).
    colours = torch.tensor([[255, 255, 255], [0, 0, 0], [255, 0, 0]], dtype=torch.float32).T.view(1, 3, 1, 3) / 255
    lab = rgb_to_lab(colours)[0, :, 0].T
    assert lab[0, 0].item() == pytest.approx(100.0, abs=1e-4)
    assert lab[0, 1:].abs().max().item() < 1e-2  # the white of the matrix is D65 to 5 digits
    assert lab[1].abs().max().item() < 1e-6
    assert lab[2].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=1e-2)


@pytest.mark.parametrize("view, channels", [("gray", slice(None)), ("L", slice(0, 1)), ("ab", slice(1, 3))])
def test_standardised_views_match_the_oracle(view, channels):
    images = torch.cat([random_images(2, 8, 256, seed=1), pure_colours()])
    expected = oracle_gray(images) if view == "gray" else oracle_lab(images)[:, channels]
    mean, std = (np.array(s).reshape(1, -1, 1, 1) for s in VIEW_STATISTICS[view])
    out = InputView(view, CIFAR100_MEAN, CIFAR100_STD)(images)
    assert out.dtype == torch.float32 and out.shape == (3, view_channels(view), 8, 256)
    # 1e-3 Lab units, divided by the std.
    np.testing.assert_allclose(out.numpy(), (expected - mean) / std, rtol=0, atol=1e-3 / std.min())


# --- rgb and lowres --------------------------------------------------------------------------


@pytest.mark.parametrize("mean, std", [(CIFAR100_MEAN, CIFAR100_STD), (IMAGENET_MEAN, IMAGENET_STD)])
def test_rgb_is_bit_identical_to_normalize(mean, std):
    images = random_images(3, 17, 23)
    assert torch.equal(InputView("RGB", mean, std)(images), Normalize(mean, std)(images))


def block_means(images: np.ndarray, n: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, n, n): means over (H/n) x (W/n) blocks."""
    b, c, h, w = images.shape
    return images.reshape(b, c, n, h // n, n, w // n).mean(axis=(3, 5))


def bilinear_upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of (N, C, n, m) to (h, w) with half-pixel centres (align_corners=False):
    output pixel i samples the input at (i + 0.5) * n / h - 0.5, clamped to the input's edge."""

    def weights(out: int, size: int) -> np.ndarray:
        matrix = np.zeros((out, size))
        for i in range(out):
            src = max((i + 0.5) * size / out - 0.5, 0.0)
            low = min(int(np.floor(src)), size - 1)
            high = min(low + 1, size - 1)
            frac = src - low
            matrix[i, low] += 1 - frac
            matrix[i, high] += frac
        return matrix

    rows, cols = weights(h, grid.shape[2]), weights(w, grid.shape[3])
    return np.einsum("ia,ncab,jb->ncij", rows, grid, cols)


@pytest.mark.parametrize("n", [8, 16, 4])
def test_lowres_is_block_means_scaled_back(n):
    images = random_images(2, 32, 32, seed=2)
    out = InputView(f"lowres:{n}", CIFAR100_MEAN, CIFAR100_STD)(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    grid = block_means(images.numpy().astype(np.float64) / 255.0, n)
    mean, std = (np.array(s).reshape(1, 3, 1, 1) for s in (CIFAR100_MEAN, CIFAR100_STD))
    expected = (bilinear_upsample(grid, 32, 32) - mean) / std
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)


def test_lowres_keeps_a_constant_image_constant():
    images = torch.empty(2, 3, 32, 32, dtype=torch.uint8)
    images[:, 0], images[:, 1], images[:, 2] = 10, 128, 250
    out = InputView("lowres:5", CIFAR100_MEAN, CIFAR100_STD)(images)
    expected = (torch.tensor([10, 128, 250]) / 255 - torch.tensor(CIFAR100_MEAN)) / torch.tensor(CIFAR100_STD)
    torch.testing.assert_close(out, expected.view(1, 3, 1, 1).expand_as(out), rtol=0, atol=1e-5)


@pytest.mark.parametrize("view", ["lowres:32", "lowres:64"])
def test_lowres_at_or_above_the_image_size_is_rgb(view):
    images = random_images(2, 32, 32, seed=3)
    assert torch.equal(InputView(view, CIFAR100_MEAN, CIFAR100_STD)(images), Normalize(CIFAR100_MEAN, CIFAR100_STD)(images))


def test_lowres_on_a_non_square_image_resamples_only_the_long_side():
    module = InputView("lowres:32", CIFAR100_MEAN, CIFAR100_STD)
    normalize = Normalize(CIFAR100_MEAN, CIFAR100_STD)
    # 24 x 40 with N = 32: the height (24 <= 32) is kept, only the width goes to 32 and back.
    varies_down = torch.randint(0, 256, (1, 3, 24, 1), dtype=torch.uint8).expand(1, 3, 24, 40).contiguous()
    varies_across = torch.randint(0, 256, (1, 3, 1, 40), dtype=torch.uint8).expand(1, 3, 24, 40).contiguous()
    torch.testing.assert_close(module(varies_down), normalize(varies_down), rtol=0, atol=1e-5)
    out = module(varies_across)
    assert out.shape == varies_across.shape
    assert (out - normalize(varies_across)).abs().max() > 0.1


def test_lowres_on_a_non_square_image_against_block_means():
    images = random_images(1, 24, 40, seed=4)
    out = InputView("lowres:8", CIFAR100_MEAN, CIFAR100_STD)(images)
    b, c, h, w = images.shape
    grid = (images.numpy().astype(np.float64) / 255.0).reshape(b, c, 8, 3, 8, 5).mean(axis=(3, 5))
    mean, std = (np.array(s).reshape(1, 3, 1, 1) for s in (CIFAR100_MEAN, CIFAR100_STD))
    np.testing.assert_allclose(out.numpy(), (bilinear_upsample(grid, h, w) - mean) / std, rtol=0, atol=1e-5)


# --- module behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["rgb", "gray", "L", "ab", "lowres:8"])
def test_channels_dtype_repr_and_no_state(view):
    module = InputView(view, CIFAR100_MEAN, CIFAR100_STD)
    out = module(random_images(2))
    assert out.shape == (2, view_channels(view), 32, 32) and out.dtype == torch.float32
    assert module.view == view and module.channels == view_channels(view)
    assert repr(view) in repr(module)
    assert module.state_dict() == {}  # a view never changes what a checkpoint holds


@pytest.mark.parametrize("view", ["rgb", "gray", "L", "ab", "lowres:8"])
def test_output_follows_the_device(view):
    devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        module = InputView(view, IMAGENET_MEAN, IMAGENET_STD).to(device)
        out = module(random_images(2).to(device))
        assert out.device.type == device and out.dtype == torch.float32
        assert out.shape == (2, view_channels(view), 32, 32)


@pytest.mark.parametrize("view", ["rgb", "gray", "L", "ab", "lowres:8"])
def test_refuses_float_and_non_rgb_input(view):
    module = InputView(view, CIFAR100_MEAN, CIFAR100_STD)
    with pytest.raises(TypeError, match="uint8"):
        module(random_images(1).float())
    with pytest.raises(ValueError, match="3, H, W"):
        module(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


def test_constructor_checks():
    with pytest.raises(ValueError, match="unknown input view"):
        InputView("lab", CIFAR100_MEAN, CIFAR100_STD)
    with pytest.raises(ValueError, match="3 RGB"):
        InputView("rgb", (0.5,), (0.5,))


def test_measure_view_statistics_against_numpy():
    images = torch.cat([random_images(3, 8, 16, seed=5), pure_colours()[:, :, :, :16]])
    lab = oracle_lab(images)
    mean, std = measure_view_statistics(images, "ab", batch_size=2)
    np.testing.assert_allclose(mean, lab[:, 1:].mean(axis=(0, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(std, lab[:, 1:].std(axis=(0, 2, 3)), atol=1e-4)
    with pytest.raises(ValueError, match="no fixed statistics"):
        measure_view_statistics(images, "rgb")


@pytest.mark.slow
def test_fixed_statistics_are_those_of_the_cifar100_training_set(shared_data):
    from kdzoo.dataset.cifar100 import read_cifar100

    images, _ = read_cifar100(shared_data, train=True)
    assert images.shape[0] == 50_000
    # scikit-image in float64, in chunks, as the independent measurement.
    sums = {"gray": np.zeros(1), "L": np.zeros(1), "ab": np.zeros(2)}
    squares = {name: np.zeros_like(s) for name, s in sums.items()}
    for start in range(0, images.shape[0], 5000):
        chunk = images[start:start + 5000]
        lab = oracle_lab(chunk)
        for name, values in (("gray", oracle_gray(chunk)), ("L", lab[:, :1]), ("ab", lab[:, 1:])):
            sums[name] += values.sum(axis=(0, 2, 3))
            squares[name] += np.square(values).sum(axis=(0, 2, 3))
    count = images.shape[0] * 32 * 32
    for name, (mean, std) in VIEW_STATISTICS.items():
        measured_mean = sums[name] / count
        measured_std = np.sqrt(squares[name] / count - measured_mean ** 2)
        np.testing.assert_allclose(mean, measured_mean, rtol=1e-3, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(std, measured_std, rtol=1e-3, atol=1e-3, err_msg=name)
    # And the library's own measurement gives the table.
    mean, std = measure_view_statistics(images, "ab")
    np.testing.assert_allclose(VIEW_STATISTICS["ab"], (mean, std), rtol=1e-4)
