"""Batch-norm folding of the frozen teacher (``models/fusion.py``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdzoo.helper.distill import fold_teacher_batchnorm
from kdzoo.models import model_dict
from kdzoo.models.fusion import find_conv_bn_pairs, fold_batchnorm


def _trained_statistics(model: nn.Module, size: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters, then eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.train()
        for _ in range(2):
            model(torch.randn(8, 3, size, size))
    return model.eval()


@pytest.mark.parametrize("name", list(model_dict))
def test_folding_keeps_every_output(name):
    torch.manual_seed(0)
    size = 64 if name.startswith("imagenet") else 32
    model = _trained_statistics(model_dict[name](num_classes=10), size)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorm(model, torch.randn(2, 3, size, size))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn  # the original is untouched
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # Pre-activation WRN blocks keep the batch norms that read a block's input (no conv before
    # them); every other architecture has a convolution before each batch norm.
    if name.startswith("wrn"):
        assert 0 < left < n_bn
    else:
        assert left == 0
    x = torch.randn(4, 3, size, size)  # another batch than the one fold_batchnorm checked
    with torch.no_grad():
        for preact in (False, True):
            want_feats, want_logits = model(x, is_feat=True, preact=preact)
            got_feats, got_logits = folded(x, is_feat=True, preact=preact)
            for want, got in zip([*want_feats, want_logits], [*got_feats, got_logits]):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_folded_weights_match_the_batch_norm_formula():
    torch.manual_seed(0)
    model = _trained_statistics(model_dict["resnet8"](num_classes=10), 32)
    folded = fold_batchnorm(model, torch.randn(2, 3, 32, 32))
    conv, bn = model.conv1, model.bn1
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(folded.conv1.weight, conv.weight * scale[:, None, None, None])
    torch.testing.assert_close(folded.conv1.bias, bn.bias - bn.running_mean * scale)
    assert isinstance(folded.bn1, nn.Identity)


class _Shared(nn.Module):
    """conv_a's output feeds bn_a and a residual sum; conv_b's output is returned as a feature."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x, is_feat=False, preact=False):
        a = self.conv_a(x)
        h = F.relu(self.bn_a(a)) + a
        b = self.conv_b(h)
        out = self.bn_c(self.conv_c(F.relu(self.bn_b(b))))
        logits = out.mean((2, 3))
        return ([b, out], logits) if is_feat else logits


def test_convolutions_read_elsewhere_are_not_folded():
    model = _Shared().eval()
    for bn in (model.bn_a, model.bn_b, model.bn_c):
        bn.running_mean.uniform_(-1, 1)
    assert find_conv_bn_pairs(model, torch.randn(2, 3, 8, 8)) == [("conv_c", "bn_c")]
    folded = fold_batchnorm(model, torch.randn(2, 3, 8, 8))
    assert isinstance(folded.bn_c, nn.Identity)
    assert isinstance(folded.bn_a, nn.BatchNorm2d) and isinstance(folded.bn_b, nn.BatchNorm2d)


def test_folding_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model_dict["resnet8"](num_classes=10).train(), torch.randn(2, 3, 32, 32))


def test_a_network_that_cannot_be_folded_stays_as_it_is(monkeypatch):
    model = _trained_statistics(model_dict["resnet8"](num_classes=10), 32)
    # Pretend the pair search is wrong: the check against the original outputs must catch it.
    monkeypatch.setattr("kdzoo.models.fusion.find_conv_bn_pairs", lambda m, s: [("conv1", "layer1.0.bn1")])
    notes = []
    teacher = fold_teacher_batchnorm(model, torch.randn(2, 3, 32, 32), notes.append)
    assert teacher is model and isinstance(model.layer1[0].bn1, nn.BatchNorm2d)
    assert len(notes) == 1 and "changed output" in notes[0]
