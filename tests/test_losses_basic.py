"""Stateless distillation losses and their helper modules.

Golden values come from plain NumPy/Python loops written independently of the implementations
(float64), plus a few tiny cases worked out by hand. Student gradients are checked against
central finite differences of the same NumPy references.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from kdzoo.distiller_zoo.AT import Attention
from kdzoo.distiller_zoo.CC import Correlation, LinearEmbed
from kdzoo.distiller_zoo.FitNet import ConvReg, HintLoss
from kdzoo.distiller_zoo.KD import DistillKL
from kdzoo.distiller_zoo.NST import NSTLoss
from kdzoo.distiller_zoo.PKT import PKT
from kdzoo.distiller_zoo.RKD import RKDLoss
from kdzoo.distiller_zoo.SP import Similarity

DT = torch.float64


def rand(*shape: int, seed: int, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT).requires_grad_(requires_grad)


def numeric_grad(fn, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar NumPy function."""
    x = x.astype(np.float64).copy()
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + h
        up = fn(x)
        x[idx] = old - h
        down = fn(x)
        x[idx] = old
        grad[idx] = (up - down) / (2 * h)
    return grad


def check_student_grad(loss_fn, golden_fn, s: torch.Tensor, t: torch.Tensor, atol: float = 1e-6) -> None:
    s = s.detach().clone().requires_grad_(True)
    loss_fn(s, t).backward()
    expected = numeric_grad(lambda a: golden_fn(a, t.detach().numpy()), s.detach().numpy())
    np.testing.assert_allclose(s.grad.numpy(), expected, atol=atol, rtol=1e-5)


# ----------------------------------------------------------------------------- golden references

def np_kd(y_s: np.ndarray, y_t: np.ndarray, T: float) -> float:
    total = 0.0
    for zs, zt in zip(y_s, y_t):
        es = [math.exp(v / T) for v in zs]
        et = [math.exp(v / T) for v in zt]
        ps = [v / sum(es) for v in es]
        pt = [v / sum(et) for v in et]
        total += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    return total * T * T / len(y_s)


def np_block_pool(f: np.ndarray, h: int, w: int) -> np.ndarray:
    """Average pooling over equal blocks (sizes divisible), written as explicit loops."""
    b, c, H, W = f.shape
    kh, kw = H // h, W // w
    out = np.zeros((b, c, h, w))
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = f[:, :, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean(axis=(2, 3))
    return out


def np_at_layer(fs: np.ndarray, ft: np.ndarray, p: float = 2) -> float:
    h, w = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
    fs, ft = np_block_pool(fs, h, w), np_block_pool(ft, h, w)
    total, count = 0.0, 0
    for n in range(fs.shape[0]):
        qs = (fs[n] ** p).sum(axis=0) / fs.shape[1]
        qt = (ft[n] ** p).sum(axis=0) / ft.shape[1]
        qs = qs / math.sqrt((qs ** 2).sum())
        qt = qt / math.sqrt((qt ** 2).sum())
        for i in range(h):
            for j in range(w):
                total += (qs[i, j] - qt[i, j]) ** 2
                count += 1
    return total / count


def np_sp(fs: np.ndarray, ft: np.ndarray) -> float:
    b = fs.shape[0]
    a_s, a_t = fs.reshape(b, -1), ft.reshape(b, -1)

    def gram(a):
        g = [[float(np.dot(a[i], a[j])) for j in range(b)] for i in range(b)]
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in g]

    gs, gt = gram(a_s), gram(a_t)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / (b * b)


def np_cc(es: np.ndarray, et: np.ndarray) -> float:
    b = es.shape[0]
    total = 0.0
    for i in range(b - 1):
        for k in range(es.shape[1]):
            total += abs(es[i, k] - et[i, k]) * abs(es[i + 1, k] - et[i + 1, k])
    return total / (b - 1)


def np_pkt(fs: np.ndarray, ft: np.ndarray, eps: float = 1e-7) -> float:
    b = fs.shape[0]

    def cond(f):
        f = f.reshape(b, -1)
        f = f / (np.sqrt((f ** 2).sum(axis=1, keepdims=True)) + eps)
        k = [[(float(np.dot(f[i], f[j])) + 1) / 2 for j in range(b)] for i in range(b)]
        return [[v / sum(row) for v in row] for row in k]

    ps, pt = cond(fs), cond(ft)
    total = 0.0
    for i in range(b):
        for j in range(b):
            total += pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
    return total / (b * b)


def np_smooth_l1(x: float, y: float) -> float:
    d = abs(x - y)
    return 0.5 * d * d if d < 1 else d - 0.5


def np_rkd(fs: np.ndarray, ft: np.ndarray, w_d: float = 25, w_a: float = 50) -> float:
    b = fs.shape[0]
    s, t = fs.reshape(b, -1), ft.reshape(b, -1)

    def dist(e):
        d = [[0.0 if i == j else math.sqrt(((e[i] - e[j]) ** 2).sum()) for j in range(b)] for i in range(b)]
        mu = sum(sum(row) for row in d) / (b * (b - 1))
        return [[v / mu for v in row] for row in d]

    def unit(v):
        n = math.sqrt((v ** 2).sum())
        return v / max(n, 1e-12)

    def angle(e, i, j, k):
        return float(np.dot(unit(e[j] - e[i]), unit(e[k] - e[i])))

    ds, dt = dist(s), dist(t)
    loss_d = sum(np_smooth_l1(ds[i][j], dt[i][j]) for i in range(b) for j in range(b)) / b ** 2
    loss_a = sum(np_smooth_l1(angle(s, i, j, k), angle(t, i, j, k))
                 for i in range(b) for j in range(b) for k in range(b)) / b ** 3
    return w_d * loss_d + w_a * loss_a


def np_nst_layer(fs: np.ndarray, ft: np.ndarray, include_tt: bool = True, include_ss: bool = True) -> float:
    h, w = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
    fs, ft = np_block_pool(fs, h, w), np_block_pool(ft, h, w)
    b = fs.shape[0]

    def unit_channels(f):
        f = f.reshape(b, f.shape[1], -1)
        return [[row / math.sqrt((row ** 2).sum()) for row in f[n]] for n in range(b)]

    s, t = unit_channels(fs), unit_channels(ft)

    def mean_kernel(x, y):
        vals = [float(np.dot(x[n][i], y[n][j])) ** 2
                for n in range(b) for i in range(len(x[n])) for j in range(len(y[n]))]
        return sum(vals) / len(vals)

    out = -2 * mean_kernel(s, t)
    if include_tt:
        out += mean_kernel(t, t)
    if include_ss:
        out += mean_kernel(s, s)
    return out


# ----------------------------------------------------------------------------- KD

def test_kd_hand_computed():
    # T = 1, logits z_s = (0, 0), z_t = (ln 3, 0): p_s = (1/2, 1/2), p_t = (3/4, 1/4);
    # KL(p_t || p_s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.3040988 - 0.1732868 = 0.1308120.
    y_s = torch.tensor([[0.0, 0.0]], dtype=DT)
    y_t = torch.tensor([[math.log(3.0), 0.0]], dtype=DT)
    assert DistillKL(1)(y_s, y_t).item() == pytest.approx(0.1308120, abs=1e-7)
    # T = 2 with twice the teacher logits gives the same distributions, scaled by T^2 = 4.
    assert DistillKL(2)(y_s, 2 * y_t).item() == pytest.approx(4 * 0.1308120, abs=1e-6)


def test_kd_matches_loops_and_gradient():
    y_s, y_t = rand(5, 7, seed=0), rand(5, 7, seed=1)
    crit = DistillKL(4)
    assert crit(y_s, y_t).item() == pytest.approx(np_kd(y_s.numpy(), y_t.numpy(), 4), rel=1e-10)
    check_student_grad(crit, lambda a, b: np_kd(a, b, 4), y_s, y_t)


def test_kd_zero_for_identical_logits():
    y = rand(3, 10, seed=2)
    assert DistillKL(4)(y, y).item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- FitNet / ConvReg

def test_hint_loss_is_mse():
    f_s, f_t = rand(2, 3, 4, 4, seed=3, requires_grad=True), rand(2, 3, 4, 4, seed=4)
    loss = HintLoss()(f_s, f_t)
    expected = sum(float(v) ** 2 for v in (f_s.detach() - f_t).flatten()) / f_s.numel()
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    torch.testing.assert_close(f_s.grad, 2 * (f_s.detach() - f_t) / f_s.numel())
    # Hand-computed: errors (1, -1, 2, 0) -> (1 + 1 + 4 + 0) / 4 = 1.5
    a = torch.tensor([1.0, 0.0, 3.0, 5.0])
    b = torch.tensor([0.0, 1.0, 1.0, 5.0])
    assert HintLoss()(a, b).item() == pytest.approx(1.5)


@pytest.mark.parametrize(
    "s_shape, t_shape, conv_type, kernel",
    [
        ((2, 8, 8, 6), (2, 16, 4, 3), torch.nn.Conv2d, (3, 3)),           # H_s = 2 H_t: strided conv
        ((2, 8, 7, 7), (2, 16, 4, 4), torch.nn.Conv2d, (4, 4)),           # odd size: generic kernel
        ((2, 8, 4, 3), (2, 16, 8, 6), torch.nn.ConvTranspose2d, (4, 4)),  # 2 H_s = H_t: transposed conv
        ((2, 8, 6, 5), (2, 4, 4, 4), torch.nn.Conv2d, (3, 2)),            # else: kernel 1 + s - t
        ((2, 8, 4, 4), (2, 16, 4, 4), torch.nn.Conv2d, (1, 1)),           # same size: 1x1 conv
        ((8, 6, 5), (4, 4, 4), torch.nn.Conv2d, (3, 2)),                  # shapes without batch dim
    ],
)
def test_convreg_output_shape(s_shape, t_shape, conv_type, kernel):
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is conv_type
    assert tuple(reg.conv.kernel_size) == kernel
    x = torch.randn(2, *s_shape[-3:])
    out = reg(x)
    assert tuple(out.shape) == (2, *t_shape[-3:])
    assert (out >= 0).all()
    out_no_relu = ConvReg(s_shape, t_shape, use_relu=False).train()(x)
    assert (out_no_relu < 0).any()


def test_convreg_stride_rules():
    down = ConvReg((2, 4, 8, 8), (2, 4, 4, 4))
    assert down.conv.stride == (2, 2) and down.conv.padding == (1, 1)
    up = ConvReg((2, 4, 4, 4), (2, 4, 8, 8))
    assert up.conv.stride == (2, 2) and up.conv.padding == (1, 1)


@pytest.mark.parametrize(
    "s_shape, t_shape",
    [
        ((2, 8, 3, 3), (2, 8, 5, 5)),  # smaller, not half
        ((2, 8, 6, 3), (2, 8, 4, 4)),  # height fine, width too small
        ((2, 8, 4, 4), (2, 8, 8, 6)),  # transposed conv would give width 8
        ((2, 8, 8, 8), (2, 8, 4, 3)),  # strided conv would give width 4
        ((8, 8), (2, 8, 4, 4)),        # not a feature-map shape
    ],
)
def test_convreg_rejects_impossible_shapes(s_shape, t_shape):
    with pytest.raises(ValueError, match="ConvReg") as info:
        ConvReg(s_shape, t_shape)
    assert str(tuple(s_shape)) in str(info.value)


def _load_layouts() -> dict:
    return json.loads((FIXTURES / "reference_loss_modules.json").read_text())


def _layout(module: torch.nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in module.state_dict().items()]


def test_helper_state_dict_layouts():
    layouts = _load_layouts()
    key = "ConvReg(resnet8x4 feats[2], resnet32x4 feats[2])"
    assert _layout(ConvReg((2, 128, 16, 16), (2, 128, 16, 16))) == layouts[key]
    key = "ConvReg(wrn_16_2 feats[2] (2,64,16,16), vgg8 feats[2] (2,256,8,8))"
    assert _layout(ConvReg((2, 64, 16, 16), (2, 256, 8, 8))) == layouts[key]
    assert _layout(LinearEmbed(256, 128)) == layouts["LinearEmbed(256, 128)"]


def test_linear_embed_flattens():
    emb = LinearEmbed(dim_in=16, dim_out=5)
    x = torch.randn(3, 4, 2, 2)
    out = emb(x)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, x.reshape(3, 16) @ emb.linear.weight.t() + emb.linear.bias)
    assert LinearEmbed().linear.weight.shape == (128, 1024)


# ----------------------------------------------------------------------------- AT

def test_at_hand_computed():
    # Student map (1, 0) -> attention (1, 0); teacher map (0, 2) -> (0, 4) -> (0, 1).
    # Mean squared difference: ((1 - 0)^2 + (0 - 1)^2) / 2 = 1.
    f_s = torch.tensor([[[[1.0, 0.0]]]])
    f_t = torch.tensor([[[[0.0, 2.0]]]])
    (loss,) = Attention()([f_s], [f_t])
    assert loss.item() == pytest.approx(1.0)


def test_at_matches_loops_non_square_and_list():
    g_s = [rand(2, 3, 8, 6, seed=10), rand(2, 4, 4, 3, seed=11), rand(2, 5, 2, 2, seed=12)]
    g_t = [rand(2, 6, 4, 3, seed=13), rand(2, 2, 8, 6, seed=14), rand(2, 3, 2, 2, seed=15)]
    losses = Attention()(g_s, g_t)
    assert isinstance(losses, list) and len(losses) == 3
    for loss, fs, ft in zip(losses, g_s, g_t):
        assert loss.dim() == 0
        assert loss.item() == pytest.approx(np_at_layer(fs.numpy(), ft.numpy()), rel=1e-10)
    # zip semantics of the reference: extra layers on one side are ignored
    assert len(Attention()(g_s, g_t[:2])) == 2


def test_at_gradient():
    f_s, f_t = rand(2, 3, 8, 6, seed=16), rand(2, 4, 4, 3, seed=17)
    check_student_grad(lambda s, t: Attention()([s], [t])[0], np_at_layer, f_s, f_t)


# ----------------------------------------------------------------------------- SP

def test_sp_hand_computed():
    # G_s = I (rows already unit); G_t = all 2s -> rows (1/sqrt2, 1/sqrt2).
    # ||G_t - G_s||^2 = 2 (1/sqrt2 - 1)^2 + 2 (1/2) = 4 - 2 sqrt2; / B^2 = 1 - sqrt2 / 2.
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    f_t = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=DT)
    (loss,) = Similarity()([f_s], [f_t])
    assert loss.item() == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-12)


def test_sp_matches_loops_and_gradient():
    g_s = [rand(4, 3, 2, 2, seed=20), rand(4, 6, seed=21)]
    g_t = [rand(4, 5, 3, 3, seed=22), rand(4, 2, 2, 2, seed=23)]
    losses = Similarity()(g_s, g_t)
    assert isinstance(losses, list) and len(losses) == 2
    for loss, fs, ft in zip(losses, g_s, g_t):
        assert loss.numel() == 1
        assert loss.item() == pytest.approx(np_sp(fs.numpy(), ft.numpy()), rel=1e-10)
    check_student_grad(lambda s, t: Similarity()([s], [t])[0], np_sp, g_s[0], g_t[0])
    # scale invariance: a scaled copy of the teacher has the same normalised Gram matrix
    (zero,) = Similarity()([3 * g_t[0]], [g_t[0]])
    assert zero.item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- CC

def test_cc_hand_computed():
    # d = ((1,0), (0,1), (1,1)): <d0,d1> = 0, <d1,d2> = 1 -> (0 + 1) / 2 = 0.5
    e_s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert Correlation()(e_s, torch.zeros_like(e_s)).item() == pytest.approx(0.5)


def test_cc_matches_loops_and_gradient():
    e_s, e_t = rand(5, 4, seed=30), rand(5, 4, seed=31)
    assert Correlation()(e_s, e_t).item() == pytest.approx(np_cc(e_s.numpy(), e_t.numpy()), rel=1e-12)
    check_student_grad(Correlation(), np_cc, e_s, e_t)


def test_cc_with_linear_embed_trains_both_heads():
    torch.manual_seed(0)
    emb_s, emb_t = LinearEmbed(6, 3), LinearEmbed(8, 3)
    x_s, x_t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 2, 2, 2)
    Correlation()(emb_s(x_s), emb_t(x_t)).backward()
    assert x_s.grad is not None and emb_s.linear.weight.grad is not None
    assert emb_t.linear.weight.grad is not None  # the teacher-side head is trainable too


# ----------------------------------------------------------------------------- PKT

def test_pkt_hand_computed():
    # Student orthogonal: (S + 1)/2 = [[1, .5], [.5, 1]] -> rows (2/3, 1/3), (1/3, 2/3).
    # Teacher identical vectors: all ones -> rows (1/2, 1/2).
    # Per row: 1/2 ln(3/4) + 1/2 ln(3/2) = 1/2 ln(9/8); two rows, mean over 4 entries:
    # ln(9/8) / 4 = 0.02944575
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=DT)
    assert PKT()(f_s, f_t).item() == pytest.approx(math.log(9 / 8) / 4, abs=1e-6)


def test_pkt_matches_loops_and_gradient():
    f_s, f_t = rand(5, 4, seed=40), rand(5, 6, seed=41)
    assert PKT()(f_s, f_t).item() == pytest.approx(np_pkt(f_s.numpy(), f_t.numpy()), rel=1e-10)
    check_student_grad(PKT(), np_pkt, f_s, f_t)


def test_pkt_zero_input_row_stays_finite():
    f_s = rand(3, 4, seed=42, requires_grad=True)
    f_t = torch.zeros(3, 4, dtype=DT)
    loss = PKT()(f_s, f_t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f_s.grad).all()


# ----------------------------------------------------------------------------- RKD

def test_rkd_scale_invariant_hand_case():
    # Distances are divided by their mean and angles ignore scale: a scaled copy costs nothing.
    f_t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=DT)
    assert RKDLoss()(2.5 * f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_matches_loops_and_gradient():
    f_s, f_t = rand(4, 3, seed=50), rand(4, 5, seed=51)
    crit = RKDLoss(w_d=25, w_a=50)
    assert crit(f_s, f_t).item() == pytest.approx(np_rkd(f_s.numpy(), f_t.numpy()), rel=1e-10)
    # 4-D input is flattened per sample
    f4 = f_s.reshape(4, 3, 1, 1)
    assert crit(f4, f_t).item() == pytest.approx(crit(f_s, f_t).item(), rel=1e-12)
    check_student_grad(crit, np_rkd, f_s, f_t)
    assert RKDLoss(w_d=1, w_a=0)(f_s, f_t).item() == pytest.approx(
        np_rkd(f_s.numpy(), f_t.numpy(), w_d=1, w_a=0), rel=1e-10)


def test_rkd_teacher_gets_no_gradient():
    f_s, f_t = rand(4, 3, seed=52, requires_grad=True), rand(4, 3, seed=53, requires_grad=True)
    RKDLoss()(f_s, f_t).backward()
    assert f_s.grad is not None and torch.isfinite(f_s.grad).all()
    assert f_t.grad is None


# ----------------------------------------------------------------------------- NST

def test_nst_hand_computed():
    # One channel, maps (1, 0) and (0, 1): k(s,s) = k(t,t) = 1, k(s,t) = 0 -> 1 + 1 - 0 = 2.
    f_s = torch.tensor([[[[1.0, 0.0]]]])
    f_t = torch.tensor([[[[0.0, 1.0]]]])
    (loss,) = NSTLoss()([f_s], [f_t])
    assert loss.item() == pytest.approx(2.0)
    (zero,) = NSTLoss()([f_s], [3 * f_s])
    assert zero.item() == pytest.approx(0.0, abs=1e-6)


def test_nst_matches_loops_non_square_and_list():
    g_s = [rand(2, 3, 8, 6, seed=60), rand(2, 2, 2, 4, seed=61)]
    g_t = [rand(2, 4, 4, 3, seed=62), rand(2, 3, 2, 4, seed=63)]
    losses = NSTLoss()(g_s, g_t)
    assert isinstance(losses, list) and len(losses) == 2
    for loss, fs, ft in zip(losses, g_s, g_t):
        assert loss.item() == pytest.approx(np_nst_layer(fs.numpy(), ft.numpy()), rel=1e-10)


def test_nst_gradients():
    f_s = rand(2, 2, 4, 2, seed=64)
    f_t = rand(2, 3, 2, 2, seed=65)
    check_student_grad(lambda s, t: NSTLoss()([s], [t])[0], np_nst_layer, f_s, f_t)
    # The teacher-teacher term is detached; the teacher sees only the cross term's gradient.
    f_t.requires_grad_(True)
    NSTLoss()([f_s], [f_t])[0].backward()
    expected = numeric_grad(lambda b: np_nst_layer(f_s.numpy(), b, include_tt=False, include_ss=False),
                            f_t.detach().numpy())
    np.testing.assert_allclose(f_t.grad.numpy(), expected, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- common

@pytest.mark.parametrize(
    "crit, s, t",
    [
        (DistillKL(4), (3, 5), (3, 5)),
        (HintLoss(), (2, 3, 4, 4), (2, 3, 4, 4)),
        (Correlation(), (4, 6), (4, 6)),
        (PKT(), (4, 6), (4, 8)),
        (RKDLoss(), (4, 6), (4, 8)),
    ],
)
def test_scalar_losses_float32_scalar_output(crit, s, t):
    out = crit(torch.randn(*s), torch.randn(*t))
    assert out.dim() == 0 and out.dtype == torch.float32 and torch.isfinite(out)
