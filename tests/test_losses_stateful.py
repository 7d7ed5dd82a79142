"""VID, AB (+Connector), FT (+Paraphraser/Translator) and FSP: golden values computed independently
of the implementation (element loops, einsum, hand-set weights), gradient flow, state-dict layouts
against the reference, and the fixes of the reference's defects."""
import itertools
import json
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import FIXTURES
from kdzoo.distiller_zoo.AB import ABLoss, Connector
from kdzoo.distiller_zoo.FSP import FSP
from kdzoo.distiller_zoo.FT import FactorTransfer, Paraphraser, Translator
from kdzoo.distiller_zoo.VID import VIDLoss

LOSS_MODULES = FIXTURES / "reference_loss_modules.json"


def block_mean(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Non-overlapping kh x kw block averages, by explicit loops (independent of adaptive pooling)."""
    b, c, h, w = x.shape
    out = torch.empty(b, c, h // kh, w // kw, dtype=x.dtype)
    for i in range(h // kh):
        for j in range(w // kw):
            out[:, :, i, j] = x[:, :, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean(dim=(2, 3))
    return out


def reference_layout(name: str):
    return [(k, list(shape)) for k, shape in json.loads(LOSS_MODULES.read_text())[name]]


def layout(module: nn.Module):
    return [(k, list(v.shape)) for k, v in module.state_dict().items()]


# ----------------------------------------------------------------------------------------- VID
def _identity_vid(channels: int, log_scale) -> VIDLoss:
    vid = VIDLoss(channels, channels, channels)
    with torch.no_grad():
        for m in vid.regressor:
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        vid.log_scale.copy_(torch.tensor(log_scale))
    return vid


def _vid_by_hand(s: torch.Tensor, t: torch.Tensor, log_scale, eps: float = 1e-5) -> float:
    # identity 1x1 convs with ReLUs between: mu = relu(s)
    total, n = 0.0, 0
    for b, c, i, j in itertools.product(*(range(d) for d in t.shape)):
        var = math.log(1.0 + math.exp(log_scale[c])) + eps
        mu = max(float(s[b, c, i, j]), 0.0)
        total += 0.5 * ((mu - float(t[b, c, i, j])) ** 2 / var + math.log(var))
        n += 1
    return total / n


@pytest.mark.parametrize("init_pred_var", [5.0, 0.1])
def test_vid_initial_variance(init_pred_var):
    vid = VIDLoss(4, 6, 3, init_pred_var=init_pred_var)
    var = F.softplus(vid.log_scale) + vid.eps
    torch.testing.assert_close(var, torch.full((3,), init_pred_var), rtol=1e-6, atol=1e-6)


def test_vid_golden_same_size():
    torch.manual_seed(0)
    log_scale = [0.3, -1.0, 2.0]
    vid = _identity_vid(3, log_scale)
    s, t = torch.randn(2, 3, 3, 2), torch.randn(2, 3, 3, 2)
    assert vid(s, t).item() == pytest.approx(_vid_by_hand(s, t, log_scale), rel=1e-5)


@pytest.mark.parametrize(
    "s_hw, t_hw",
    [((4, 4), (2, 2)),   # student larger: student pooled
     ((2, 2), (4, 4)),   # teacher larger: teacher pooled
     ((4, 6), (2, 3)),   # non-square
     ((4, 2), (2, 4))],  # each larger along one axis: both pooled to 2x2
)
def test_vid_golden_pooled(s_hw, t_hw):
    torch.manual_seed(1)
    log_scale = [0.5, 1.5]
    vid = _identity_vid(2, log_scale)
    s, t = torch.randn(2, 2, *s_hw), torch.randn(2, 2, *t_hw)
    h, w = min(s_hw[0], t_hw[0]), min(s_hw[1], t_hw[1])
    s_p = block_mean(s, s_hw[0] // h, s_hw[1] // w)
    t_p = block_mean(t, t_hw[0] // h, t_hw[1] // w)
    assert vid(s, t).item() == pytest.approx(_vid_by_hand(s_p, t_p, log_scale), rel=1e-5)


def test_vid_layout():
    assert layout(VIDLoss(64, 128, 128)) == reference_layout("VIDLoss(64, 128, 128)")


def test_vid_per_layer_gradients():
    """One VIDLoss per stage, built from feature shapes as the trainer does."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    student = nn.ModuleList(nn.Conv2d(3, c, 3, padding=1) for c in (4, 6))
    teacher = nn.ModuleList(nn.Conv2d(3, c, 3, padding=1, stride=st) for c, st in ((5, 1), (7, 2)))
    g_s = [m(x) for m in student]
    with torch.no_grad():
        g_t = [m(x) for m in teacher]
    criterion = nn.ModuleList(VIDLoss(fs.shape[1], ft.shape[1], ft.shape[1]) for fs, ft in zip(g_s, g_t))
    loss = sum(c(fs, ft) for c, fs, ft in zip(criterion, g_s, g_t))
    assert loss.dim() == 0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in criterion.parameters())
    assert all(p.grad is None for p in teacher.parameters())


# ------------------------------------------------------------------------------------------ AB
def _ab_by_hand(s: torch.Tensor, t: torch.Tensor, m: float) -> float:
    total = 0.0
    for sv, tv in zip(s.flatten().tolist(), t.flatten().tolist()):
        if tv <= 0 and sv > -m:
            total += (sv + m) ** 2
        elif tv > 0 and sv <= m:
            total += (sv - m) ** 2
    return total


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_golden(margin):
    torch.manual_seed(0)
    shapes = [(3, 2, 4, 4), (3, 3, 2, 2), (3, 4, 1, 3)]
    g_s = [2 * torch.randn(s) for s in shapes]
    g_t = [torch.randn(s) for s in shapes]
    g_t[0][0, 0, 0, 0] = 0.0  # t == 0 counts as "off"
    losses = ABLoss(len(shapes), margin=margin)(g_s, g_t)
    assert isinstance(losses, list) and len(losses) == 3
    weights = [0.25, 0.5, 1.0]  # 2^(l - L + 1)
    for loss, w, s, t in zip(losses, weights, g_s, g_t):
        expected = w * _ab_by_hand(s, t, margin) / 3 * 3 / 1000
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ab_gradients_reach_student_and_connector_only():
    torch.manual_seed(0)
    s_shapes = [(2, 4, 8, 8), (2, 6, 4, 4)]
    t_shapes = [(2, 8, 4, 4), (2, 6, 4, 4)]
    g_s = [torch.randn(s, requires_grad=True) for s in s_shapes]
    g_t = [torch.randn(t, requires_grad=True) for t in t_shapes]
    connector = Connector(s_shapes, t_shapes)
    loss = sum(ABLoss(2)(connector(g_s), g_t))
    loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in g_s)
    assert all(p.grad is not None for p in connector.parameters())
    # the teacher only selects which side of zero each neuron must be on
    assert all(f.grad is None for f in g_t)


def test_ab_layer_count_mismatch_is_an_error():
    g = [torch.randn(2, 3, 4, 4)] * 2
    with pytest.raises(ValueError, match="3 layers"):
        ABLoss(3)(g, g)


def test_connector_layout_resnet8x4_to_resnet32x4():
    from kdzoo.models import model_dict

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feat_s, _ = model_dict["resnet8x4"](num_classes=100).eval()(x, is_feat=True, preact=True)
        feat_t, _ = model_dict["resnet32x4"](num_classes=100).eval()(x, is_feat=True, preact=True)
    s_shapes = [f.shape for f in feat_s[1:-1]]
    t_shapes = [f.shape for f in feat_t[1:-1]]
    assert [tuple(s) for s in s_shapes] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    connector = Connector(s_shapes, t_shapes)
    assert layout(connector) == reference_layout(
        "Connector(resnet8x4 preact feats[1:-1], resnet32x4 preact feats[1:-1])"
    )
    out = connector(feat_s[1:-1])
    assert all(o is f for o, f in zip(out, feat_s[1:-1]))  # identity where shapes agree


@pytest.mark.parametrize(
    "s_shape, t_shape, conv_type, kernel",
    [((2, 4, 8, 8), (2, 6, 8, 8), nn.Conv2d, (1, 1)),
     ((2, 4, 8, 8), (2, 6, 4, 4), nn.Conv2d, (3, 3)),            # stride-2 conv
     ((2, 4, 4, 4), (2, 6, 8, 8), nn.ConvTranspose2d, (4, 4)),   # stride-2 transposed conv
     ((2, 4, 8, 8), (2, 6, 6, 6), nn.Conv2d, (3, 3)),            # valid conv 8 -> 6
     ((2, 4, 8, 6), (2, 6, 4, 3), nn.Conv2d, (3, 3)),            # non-square halving
     ((2, 4, 8, 6), (2, 4, 5, 6), nn.Conv2d, (4, 1))],           # non-square valid conv
)
def test_connector_regressor_shapes(s_shape, t_shape, conv_type, kernel):
    connector = Connector([s_shape], [t_shape])
    reg = connector.connectors[0]
    assert type(reg.conv) is conv_type and tuple(reg.conv.kernel_size) == kernel
    assert [k for k, _ in layout(connector)][:2] == ["connectors.0.conv.weight", "connectors.0.conv.bias"]
    assert "connectors.0.bn.running_mean" in connector.state_dict()
    out = connector([torch.randn(s_shape)])[0]
    assert out.shape == t_shape
    assert (out < 0).any()  # no ReLU: pre-activations keep their sign


def test_connector_unsupported_sizes_raise():
    with pytest.raises(ValueError, match=re.escape("(2, 4, 3, 3)")):
        Connector([(2, 4, 3, 3)], [(2, 4, 8, 8)])


# ------------------------------------------------------------------------------------------ FT
def _factor_by_hand(f: torch.Tensor, p1: int = 2):
    b, c, h, w = f.shape
    out = []
    for n in range(b):
        v = [sum(float(f[n, k, i, j]) ** p1 for k in range(c)) / c for i in range(h) for j in range(w)]
        norm = math.sqrt(sum(x * x for x in v))
        out.append([x / norm for x in v])
    return out


@pytest.mark.parametrize("p2", [1, 2])
def test_ft_golden(p2):
    torch.manual_seed(0)
    f_s, f_t = torch.randn(2, 3, 2, 3), torch.randn(2, 4, 2, 3)
    a, b = _factor_by_hand(f_s), _factor_by_hand(f_t)
    diffs = [x - y for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    expected = sum(abs(d) if p2 == 1 else d ** p2 for d in diffs) / len(diffs)
    assert FactorTransfer(p2=p2)(f_s, f_t).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("s_hw, t_hw", [((4, 6), (2, 3)), ((2, 2), (4, 4)), ((4, 2), (2, 4))])
def test_ft_pooling_non_square(s_hw, t_hw):
    torch.manual_seed(0)
    f_s, f_t = torch.randn(2, 3, *s_hw), torch.randn(2, 3, *t_hw)
    h, w = min(s_hw[0], t_hw[0]), min(s_hw[1], t_hw[1])
    a = _factor_by_hand(block_mean(f_s, s_hw[0] // h, s_hw[1] // w))
    b = _factor_by_hand(block_mean(f_t, t_hw[0] // h, t_hw[1] // w))
    diffs = [x - y for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    expected = sum(abs(d) for d in diffs) / len(diffs)
    assert FactorTransfer()(f_s, f_t).item() == pytest.approx(expected, rel=1e-5)


def test_paraphraser_and_translator_layouts():
    shape = (2, 256, 8, 8)  # resnet8x4 and resnet32x4 feats[-2]
    assert layout(Paraphraser(shape)) == reference_layout("Paraphraser(resnet32x4 feats[-2])")
    assert layout(Translator(shape, shape)) == reference_layout(
        "Translator(resnet8x4 feats[-2], resnet32x4 feats[-2])"
    )


def test_paraphraser_outputs():
    para = Paraphraser((2, 8, 4, 5), k=0.5)
    f_t = torch.randn(3, 8, 4, 5)
    factor, rec = para(f_t)
    assert factor.shape == (3, 4, 4, 5) and rec.shape == f_t.shape
    only = para(f_t, is_factor=True)
    assert isinstance(only, torch.Tensor)
    torch.testing.assert_close(only, factor)
    assert Translator((2, 6, 4, 5), (2, 8, 4, 5))(torch.randn(3, 6, 4, 5)).shape == (3, 4, 4, 5)


def test_ft_two_stages_and_frozen_paraphraser():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    student, teacher = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        f_t = teacher(x)
    para = Paraphraser(f_t.shape)
    trans = Translator((4, 6, 6, 6), f_t.shape)

    # init stage: the paraphraser alone, as an autoencoder of the teacher map
    _, rec = para(f_t)
    F.mse_loss(rec, f_t).backward()
    assert all(p.grad is not None for p in para.parameters())
    para.zero_grad(set_to_none=True)

    # main stage
    para.freeze()
    nn.ModuleList([trans, para]).train()  # a parent's .train() must not unfreeze it
    assert not para.training and trans.training
    f_s = student(x)
    loss = FactorTransfer()(trans(f_s), para(f_t, is_factor=True))
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is not None for p in trans.parameters())
    assert all(p.grad is None for p in para.parameters())
    assert all(p.grad is None for p in teacher.parameters())

    para.unfreeze()
    assert all(p.requires_grad for p in para.parameters())


# ----------------------------------------------------------------------------------------- FSP
def _fsp_golden(g):
    out = []
    for a, b in zip(g[:-1], g[1:]):
        h, w = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
        a = block_mean(a, a.shape[2] // h, a.shape[3] // w)
        b = block_mean(b, b.shape[2] // h, b.shape[3] // w)
        out.append(torch.einsum("nihw,njhw->nji", a, b) / (h * w))
    return out


def test_fsp_golden_with_pooling_and_non_square():
    torch.manual_seed(0)
    s_shapes = [(2, 3, 8, 6), (2, 4, 8, 6), (2, 5, 4, 3), (2, 2, 4, 6)]
    t_shapes = [(2, 3, 4, 6), (2, 4, 4, 6), (2, 5, 2, 3), (2, 2, 4, 3)]
    g_s = [torch.randn(s) for s in s_shapes]
    g_t = [torch.randn(t) for t in t_shapes]
    losses = FSP(s_shapes, t_shapes)(g_s, g_t)
    assert isinstance(losses, list) and len(losses) == 3
    for loss, gs, gt in zip(losses, _fsp_golden(g_s), _fsp_golden(g_t)):
        assert loss.item() == pytest.approx(((gs - gt) ** 2).mean().item(), rel=1e-5)
    # the FSP matrix of (F_a, F_b) is (B, C_b, C_a)
    assert FSP.compute_fsp(g_s)[0].shape == (2, 4, 3)


def test_fsp_gradients():
    torch.manual_seed(0)
    g_s = [torch.randn(2, c, 4, 4, requires_grad=True) for c in (3, 4, 5)]
    g_t = [torch.randn(2, c, 4, 4) for c in (3, 4, 5)]
    sum(FSP([g.shape for g in g_s], [g.shape for g in g_t])(g_s, g_t)).backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in g_s)


def test_fsp_channel_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"identical channel lists.*\[16, 32\].*\[16, 64\]"):
        FSP([(2, 16, 8, 8), (2, 32, 4, 4)], [(2, 16, 8, 8), (2, 64, 4, 4)])
