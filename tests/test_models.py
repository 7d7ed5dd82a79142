"""Every backbone against the reference spec in tests/fixtures/reference_models.json."""
import io
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import FIXTURES
from kdzoo.models import model_dict

SPEC = json.loads((FIXTURES / "reference_models.json").read_text())
CIFAR_NAMES = sorted(SPEC)


def test_model_dict_has_exactly_the_reference_cifar_names():
    cifar = {n for n in model_dict if not n.startswith("imagenet_")}
    assert cifar == set(SPEC)


def test_unknown_architecture_error_names_it_and_the_alternatives():
    with pytest.raises(KeyError) as err:
        model_dict["resnet9000"]
    assert "resnet9000" in str(err.value) and "resnet8x4" in str(err.value)


@pytest.fixture(scope="module", params=CIFAR_NAMES)
def built(request):
    torch.manual_seed(0)
    name = request.param
    return name, model_dict[name](num_classes=100)


def test_parameter_count(built):
    name, model = built
    assert sum(p.numel() for p in model.parameters()) == SPEC[name]["params"]


def test_state_dict_layout(built):
    name, model = built
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, s) for k, s in SPEC[name]["state_dict"]]


@pytest.mark.parametrize("preact", [False, True])
def test_feature_shapes_at_32x32(built, preact):
    name, model = built
    model.eval()
    with torch.no_grad():
        feats, logits = model(torch.randn(2, 3, 32, 32), is_feat=True, preact=preact)
    key = "preact_feat_shapes_32x32_batch2" if preact else "feat_shapes_32x32_batch2"
    assert [list(f.shape) for f in feats] == SPEC[name][key]
    assert list(logits.shape) == SPEC[name]["logit_shape"]


def test_contract_pooled_feeds_classifier_and_preact_precedes_relu(built):
    name, model = built
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        pre, logits_pre = model(x, is_feat=True, preact=True)
        plain = model(x)
    torch.testing.assert_close(model.get_classifier()(feats[-1]), logits)
    torch.testing.assert_close(plain, logits)
    torch.testing.assert_close(logits_pre, logits)
    bns = model.get_bn_before_relu()
    for i, (post_f, pre_f) in enumerate(zip(feats[1:-1], pre[1:-1])):
        if torch.equal(pre_f, post_f):  # the stage has no final ReLU
            continue
        assert (pre_f < 0).any(), "a pre-activation that differs from the output must have negatives"
        if name.startswith("wrn"):
            # Pre-activation blocks: the stage output meets a BN and then a ReLU in what follows.
            with torch.no_grad():
                torch.testing.assert_close(bns[i](post_f), pre_f)
        else:
            torch.testing.assert_close(F.relu(pre_f), post_f)


def test_forward_backward_reaches_every_parameter(built):
    name, model = built
    model.train()
    feats, logits = model(torch.randn(2, 3, 32, 32), is_feat=True, preact=True)
    (logits.sum() + sum(f.float().mean() for f in feats)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("size", [(40, 40), (64, 48)])
def test_other_input_sizes(built, size):
    name, model = built
    model.eval()
    with torch.no_grad():
        feats, logits = model(torch.randn(2, 3, *size), is_feat=True)
    assert logits.shape == (2, 100)
    assert feats[-1].shape == (2, SPEC[name]["feat_shapes_32x32_batch2"][-1][1])


def test_reference_checkpoint_round_trip(built):
    name, model = built
    model.eval()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": 0.0}, buffer)
    buffer.seek(0)
    fresh = model_dict[name](num_classes=100).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True)["model"], strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_feature_modules_and_bn_before_relu(built):
    name, model = built
    feat_modules = model.get_feat_modules()
    assert isinstance(feat_modules, nn.ModuleList)
    classifier_params = {id(p) for p in model.get_classifier().parameters()}
    feat_params = {id(p) for p in feat_modules.parameters()}
    assert not classifier_params & feat_params
    assert feat_params | classifier_params == {id(p) for p in model.parameters()}
    bns = model.get_bn_before_relu()
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    expected = SPEC[name]["n_bn_before_relu"]
    if isinstance(expected, int):
        assert len(bns) == expected
    else:  # the reference raises for ShuffleNets; we give one per stage
        assert len(bns) == len(SPEC[name]["feat_shapes_32x32_batch2"]) - 2
    # Each of them feeds a stage output (ShuffleV2 concatenates its branch with an identity half).
    stage_channels = [s[1] for s in SPEC[name]["feat_shapes_32x32_batch2"][1:-1]]
    assert all(any(c % bn.num_features == 0 for c in stage_channels) for bn in bns)
