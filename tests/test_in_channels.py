"""``in_channels``: every registered backbone takes 1 (grayscale, CIELAB L), 2 (CIELAB ab) or 3
(RGB, the reference) input channels; the default changes nothing."""
import json
import math

import pytest
import torch
import torch.nn as nn
import torchvision

from conftest import FIXTURES
from kdzoo.models import model_dict
from kdzoo.models.imagenet_resnet import load_torchvision_weights

SPEC = json.loads((FIXTURES / "reference_models.json").read_text())
NAMES = sorted(model_dict)
CHANNELS = (1, 2, 3)
SIZE = 32  # also fine for the ImageNet ResNets: stem 16x16, stages 8, 4, 2, 1
# Stage-by-stage shapes of torchvision's ResNets at 32x32, batch 2 (stem before max pooling,
# stride 2 each; layer widths 64..512 times the block expansion), worked out by hand.
IMAGENET_EXPANSION = {"imagenet_resnet18": 1, "imagenet_resnet34": 1, "imagenet_resnet50": 4}


def _expected_feat_shapes(name: str) -> list[list[int]]:
    if name in SPEC:
        return SPEC[name]["feat_shapes_32x32_batch2"]
    e = IMAGENET_EXPANSION[name]
    return [[2, 64, 16, 16], [2, 64 * e, 8, 8], [2, 128 * e, 4, 4], [2, 256 * e, 2, 2],
            [2, 512 * e, 1, 1], [2, 512 * e]]


_BUILT: dict[tuple[str, int], nn.Module] = {}


def _build(name: str, channels: int) -> nn.Module:
    """One seeded model per (name, channels), shared by the tests of this file."""
    if (name, channels) not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name, channels] = model_dict[name](num_classes=100, in_channels=channels).eval()
    return _BUILT[name, channels]


def test_every_architecture_is_covered():
    assert set(IMAGENET_EXPANSION) | set(SPEC) == set(model_dict)


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_feature_contract(name, channels):
    model = _build(name, channels)
    assert model.in_channels == channels and type(model.in_channels) is int

    # The first convolution the forward pass runs is the one that must read the input channels.
    first_convs: list[nn.Conv2d] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: first_convs.append(m))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    x = torch.randn(2, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(channels))
    try:
        with torch.no_grad():
            feats, logits = model(x, is_feat=True)
    finally:
        for hook in hooks:
            hook.remove()
    stem = first_convs[0]
    assert stem.in_channels == channels and stem.weight.shape[1] == channels and stem.groups == 1

    assert list(logits.shape) == [2, 100]
    assert [list(f.shape) for f in feats] == _expected_feat_shapes(name)
    with torch.no_grad():
        assert torch.allclose(model.get_classifier()(feats[-1]), logits)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("channels", (1, 2))
@pytest.mark.parametrize("name", NAMES)
def test_only_the_first_convolution_changes(name, channels):
    rgb = {k: tuple(v.shape) for k, v in _build(name, 3).state_dict().items()}
    other = {k: tuple(v.shape) for k, v in _build(name, channels).state_dict().items()}
    assert list(other) == list(rgb)
    changed = {k for k in rgb if rgb[k] != other[k]}
    assert len(changed) == 1
    (key,) = changed
    assert other[key] == rgb[key][:1] + (channels,) + rgb[key][2:] and rgb[key][1] == 3


@pytest.mark.parametrize("name", NAMES)
def test_default_three_channels_is_the_unchanged_model(name):
    torch.manual_seed(0)
    plain = model_dict[name](num_classes=100)
    rng_after_plain = torch.get_rng_state()
    torch.manual_seed(0)
    explicit = model_dict[name](num_classes=100, in_channels=3)
    # Same random draws, in the same order and number.
    assert torch.equal(torch.get_rng_state(), rng_after_plain)
    assert plain.in_channels == explicit.in_channels == 3
    a, b = plain.state_dict(), explicit.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if name in SPEC:  # the layout the reference code produces
        assert [[k, list(v.shape)] for k, v in a.items()] == SPEC[name]["state_dict"]


BAD_VALUES = [0, -1, 1.0, 2.5, "3", None, True]


@pytest.mark.parametrize("name", NAMES)
def test_bad_values_are_rejected_with_the_argument_and_value_named(name):
    for bad in BAD_VALUES:
        with pytest.raises(ValueError) as err:
            model_dict[name](num_classes=10, in_channels=bad)
        assert "in_channels" in str(err.value) and repr(bad) in str(err.value), bad


def test_imagenet_stem_keeps_torchvisions_initialisation():
    # He normal over fan-out: std = sqrt(2 / (7 * 7 * 64)) for the 7x7, 64-filter stem.
    weight = _build("imagenet_resnet18", 1).conv1.weight
    assert weight.shape == (64, 1, 7, 7)
    assert abs(weight.mean().item()) < 0.003
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (7 * 7 * 64)), rel=0.08)


def test_torchvision_weights_load_with_three_channels_only(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None, num_classes=100)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)

    ours = load_torchvision_weights(model_dict["imagenet_resnet18"](num_classes=100, in_channels=3), path)
    assert torch.equal(ours.conv1.weight, reference.conv1.weight)

    for channels in (1, 2):
        model = model_dict["imagenet_resnet18"](num_classes=100, in_channels=channels)
        with pytest.raises(ValueError) as err:
            load_torchvision_weights(model, path)
        message = str(err.value)
        assert "3 input channels" in message and f"in_channels={channels}" in message
        assert "resnet18.pth" in message
