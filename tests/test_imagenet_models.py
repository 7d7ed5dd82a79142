"""ImageNet ResNets: torchvision-identical state dicts and the distillation feature contract."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import ResNet

from kdzoo.models import model_dict
from kdzoo.models.imagenet_resnet import load_torchvision_weights

# name -> (torchvision constructor, block expansion)
ARCHS = {
    "imagenet_resnet18": (torchvision.models.resnet18, 1),
    "imagenet_resnet34": (torchvision.models.resnet34, 1),
    "imagenet_resnet50": (torchvision.models.resnet50, 4),
}
SIZE = 64  # small input: stem 32x32, stages 16, 8, 4, 2


def _perturb_batch_norms(model: nn.Module) -> None:
    """Non-trivial affine parameters and running statistics, so a skipped load would show."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def pair(request, tmp_path_factory):
    """(name, torchvision model, our model loaded from the torchvision model's saved weights, file)."""
    name = request.param
    torch.manual_seed(0)
    reference = ARCHS[name][0](weights=None)
    _perturb_batch_norms(reference)
    path = tmp_path_factory.mktemp("weights") / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    ours = load_torchvision_weights(model_dict[name](), path)
    return name, reference.eval(), ours.eval(), path


def test_registered_with_imagenet_defaults(pair):
    name, _, ours, _ = pair  # built by model_dict[name]() without arguments
    assert isinstance(ours, ResNet)
    assert ours.fc.out_features == 1000
    if name == "imagenet_resnet18":
        assert model_dict[name](num_classes=10).fc.out_features == 10


def test_state_dict_identical_to_torchvision(pair):
    _, reference, ours, _ = pair
    theirs = [(k, v.shape) for k, v in reference.state_dict().items()]
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == theirs
    for (key, mine), theirs_value in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(mine, theirs_value), key


def test_logits_match_torchvision(pair):
    _, reference, ours, _ = pair
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=0)
        feats, logits = ours(x, is_feat=True)
        _, logits_pre = ours(x, is_feat=True, preact=True)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(logits_pre, expected, rtol=0, atol=0)
    torch.testing.assert_close(ours.get_classifier()(feats[-1]), logits)


@pytest.mark.parametrize("preact", [False, True])
def test_feature_shapes(pair, preact):
    name, _, ours, _ = pair
    e = ARCHS[name][1]
    with torch.no_grad():
        feats, logits = ours(torch.randn(2, 3, SIZE, SIZE), is_feat=True, preact=preact)
    assert [tuple(f.shape) for f in feats] == [
        (2, 64, 32, 32),
        (2, 64 * e, 16, 16),
        (2, 128 * e, 8, 8),
        (2, 256 * e, 4, 4),
        (2, 512 * e, 2, 2),
        (2, 512 * e),
    ]
    assert tuple(logits.shape) == (2, 1000)


def test_preact_is_the_input_of_each_stage_final_relu(pair):
    _, _, ours, _ = pair
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        post, _ = ours(x, is_feat=True)
        pre, _ = ours(x, is_feat=True, preact=True)
    for before, after in zip(pre[1:-1], post[1:-1]):
        assert (before < 0).any()
        torch.testing.assert_close(F.relu(before), after, rtol=0, atol=0)
    # The stem and the pooled vector are reported the same way in both modes.
    torch.testing.assert_close(pre[0], post[0], rtol=0, atol=0)
    torch.testing.assert_close(pre[-1], post[-1], rtol=0, atol=0)


def test_every_batch_norm_runs_once_per_forward(pair):
    _, _, ours, _ = pair
    calls: dict[str, int] = {}
    def count(name: str):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1

        return hook

    handles = [
        module.register_forward_hook(count(name))
        for name, module in ours.named_modules()
        if isinstance(module, nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            ours(torch.randn(1, 3, SIZE, SIZE), is_feat=True, preact=True)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == len(handles) and set(calls.values()) == {1}


def test_forward_backward_reaches_every_parameter():
    # ResNet-18 only: the other two share the code path and would only add run time.
    model = model_dict["imagenet_resnet18"]().train()
    feats, logits = model(torch.randn(2, 3, SIZE, SIZE), is_feat=True, preact=True)
    (logits.sum() + sum(f.mean() for f in feats)).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_feature_modules_and_bn_before_relu(pair):
    name, _, ours, _ = pair
    feat_params = {id(p) for p in ours.get_feat_modules().parameters()}
    classifier_params = {id(p) for p in ours.fc.parameters()}
    assert not feat_params & classifier_params
    assert feat_params | classifier_params == {id(p) for p in ours.parameters()}
    last = "bn3" if ARCHS[name][1] == 4 else "bn2"
    expected = [getattr(stage[-1], last) for stage in (ours.layer1, ours.layer2, ours.layer3, ours.layer4)]
    assert ours.get_bn_before_relu() == expected


def test_load_error_names_the_file_and_missing_keys(pair):
    name, _, _, path = pair
    wrong = "imagenet_resnet34" if name == "imagenet_resnet18" else "imagenet_resnet18"
    with pytest.raises(RuntimeError) as err:
        load_torchvision_weights(model_dict[wrong](), path)
    message = str(err.value)
    assert str(path) in message
    assert "missing" in message or "unexpected" in message


def test_load_error_reports_shape_mismatch(tmp_path):
    path = tmp_path / "resnet18_10_classes.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(RuntimeError) as err:
        load_torchvision_weights(model_dict["imagenet_resnet18"](), path)
    message = str(err.value)
    assert str(path) in message and "fc.weight" in message and "(10, 512)" in message


def test_load_rejects_a_file_without_a_state_dict(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(RuntimeError, match="tensor.pth"):
        load_torchvision_weights(model_dict["imagenet_resnet18"](), path)
