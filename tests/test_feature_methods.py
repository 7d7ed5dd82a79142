"""ReviewKD, OFD and KD-SVD: hand-worked cases, loop-based NumPy re-formulations written
independently of the implementations, the registry rows and the warm-up of the term."""
from __future__ import annotations

import argparse
import importlib
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
import torch.nn as nn

from kdzoo.distiller_zoo import ABF, KDSVD, OFDLoss, ReviewKD, hcl_loss, ofd_margin
from kdzoo.distiller_zoo.KDSVD import (
    _TopRightSingularVectors,
    align_singular_vectors,
    singular_values_and_right_vectors,
)
from kdzoo.distiller_zoo.OFD import partial_l2
from kdzoo.distiller_zoo.registry import METHODS
from kdzoo.helper.distill import DistillTask, build_term, fold_teacher_batchnorm
from kdzoo.models import model_dict

DT = torch.float64


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ------------------------------------------------------------------------------------------- ReviewKD

def test_hcl_hand_worked_2x2():
    # 2x2 maps: only the 1x1 level is smaller than the map. mse = (1+4+9+16)/4 = 7.5, the pooled
    # means differ by 2.5 -> 6.25; (7.5 + 0.5 * 6.25) / 1.5 = 7.08333...
    f_s = torch.zeros(1, 1, 2, 2)
    f_t = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert hcl_loss([f_s], [f_t]).item() == pytest.approx(10.625 / 1.5)
    # 1x1 maps have no smaller level: plain mse.
    assert hcl_loss([torch.zeros(2, 3, 1, 1)], [torch.full((2, 3, 1, 1), 2.0)]).item() == pytest.approx(4.0)


def _block_mean(x: np.ndarray, size: int) -> np.ndarray:
    n, c, h, w = x.shape
    out = np.zeros((n, c, size, size))
    bh, bw = h // size, w // size
    for i in range(size):
        for j in range(size):
            out[:, :, i, j] = x[:, :, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw].mean(axis=(2, 3))
    return out


def test_hcl_matches_a_loop_reformulation():
    maps_s = [rand(2, 3, 8, 8, seed=1), rand(2, 5, 4, 4, seed=2), rand(2, 4, 1, 1, seed=3)]
    maps_t = [rand(2, 3, 8, 8, seed=4), rand(2, 5, 4, 4, seed=5), rand(2, 4, 1, 1, seed=6)]
    expected = 0.0
    for s, t in zip(maps_s, maps_t):
        s, t = s.numpy(), t.numpy()
        terms, weights = [((s - t) ** 2).mean()], [1.0]
        for size in (4, 2, 1):
            if size < s.shape[2]:
                weights.append(weights[-1] / 2)
                terms.append(((_block_mean(s, size) - _block_mean(t, size)) ** 2).mean())
        expected += sum(w * x for w, x in zip(weights, terms)) / sum(weights)
    assert hcl_loss(maps_s, maps_t).item() == pytest.approx(expected, rel=1e-10)


def test_hcl_refuses_unequal_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        hcl_loss([torch.zeros(1, 2, 4, 4)], [torch.zeros(1, 3, 4, 4)])


def test_abf_fusion_matches_a_per_position_loop():
    torch.manual_seed(0)
    abf = ABF(3, 4, 5, fuse=True).double().eval()
    x, deeper = rand(2, 3, 4, 4, seed=7), rand(2, 4, 2, 2, seed=8)
    out, mix = abf(x, deeper, (8, 8))
    with torch.no_grad():
        a = abf.conv1(x)
        expected_mix = torch.zeros_like(a)
        for i in range(4):
            for j in range(4):
                d = deeper[:, :, i // 2, j // 2]  # nearest upsampling 2x2 -> 4x4
                z = torch.sigmoid(abf.att_conv[0].weight[:, :, 0, 0] @ torch.cat([a[:, :, i, j], d], 1).T
                                  + abf.att_conv[0].bias[:, None])  # (2 weights, batch)
                expected_mix[:, :, i, j] = a[:, :, i, j] * z[0][:, None] + d * z[1][:, None]
        expected_mix = expected_mix.repeat_interleave(2, 2).repeat_interleave(2, 3)  # to the teacher's 8x8
    assert torch.allclose(mix, expected_mix, atol=1e-12)
    assert torch.allclose(out, abf.conv2(expected_mix), atol=1e-12)
    assert out.shape == (2, 5, 8, 8)


@pytest.mark.parametrize("teacher, student", [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2"),
                                              ("wrn_40_2", "ShuffleV1"), ("vgg13", "vgg8")])
def test_reviewkd_outputs_match_the_teacher_levels(teacher, student):
    torch.manual_seed(0)
    task = _task("reviewkd", teacher, student)
    x = torch.randn(2, 3, 32, 32)
    feats_s, _ = task.student(x, is_feat=True)
    feats_t, _ = task.teacher_outputs(x)
    outputs = task.term.fusion([*feats_s[1:-1], feats_s[-1][:, :, None, None]])
    assert [o.shape for o in outputs] == [*[f.shape for f in feats_t[1:-1]], (*feats_t[-1].shape, 1, 1)]
    # The authors' mid width: min(512, channels of the student's pooled vector).
    assert task.term.fusion.abfs[0].conv1[0].out_channels == min(512, feats_s[-1].shape[1])


def test_reviewkd_reads_teacher_preactivations_and_student_activations():
    method = METHODS["reviewkd"]
    assert not method.preact and method.teacher_preact
    task = _task("reviewkd", "resnet8", "resnet8")
    x = torch.randn(2, 3, 32, 32)
    feats_t, _ = task.teacher_outputs(x)
    with torch.no_grad():
        preact, _ = task.teacher(x, is_feat=True, preact=True)
    assert all(torch.equal(a, b) for a, b in zip(feats_t, preact))
    assert any((f < 0).any() for f in feats_t[1:-1]), "the teacher's stage maps should be pre-ReLU"


def test_reviewkd_refuses_unequal_stage_counts():
    with pytest.raises(ValueError, match="as many stages"):
        _task("reviewkd", "ResNet50", "resnet8")  # 4 stages against 3


# ------------------------------------------------------------------------------------------------ OFD

def _bn(gamma: list[float], beta: list[float]) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(len(gamma))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
    return bn


def test_ofd_margin_hand_worked():
    margin = ofd_margin(_bn([1.0, -2.0, 1.0, 0.5], [0.0, 1.0, 5.0, -1.0])).flatten().tolist()
    # N(0, 1): E[x | x < 0] = -sqrt(2/pi).
    assert margin[0] == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)
    # |gamma| = 2, beta = 1: 1 - 2 phi(0.5) / Phi(-0.5), written with the standard library.
    normal = NormalDist()
    assert margin[1] == pytest.approx(1 - 2 * normal.pdf(0.5) / normal.cdf(-0.5), rel=1e-6)
    # Phi(-5) < 0.001: the -3 sigma fallback.
    assert margin[2] == pytest.approx(-3.0)
    assert margin[3] == pytest.approx(-1 - 0.5 * normal.pdf(-2) / normal.cdf(2), rel=1e-6)
    assert all(m < 0 for m in margin)


def test_partial_l2_hand_worked():
    s = torch.tensor([0.5, -0.5, 2.0, -1.0])
    t = torch.tensor([-1.0, -0.2, 1.0, -0.5])
    # max(t, -0.8) = [-0.8, -0.2, 1, -0.5]; counted: s above the margin (1.3^2), t positive (1^2).
    assert partial_l2(s, t, torch.tensor(-0.8)).item() == pytest.approx(1.69 + 1.0)


def _partial_l2_cases(s: np.ndarray, t: np.ndarray, m: np.ndarray) -> float:
    """The three cases of the paper, element by element."""
    total = 0.0
    for idx in np.ndindex(*s.shape):
        sv, tv, mv = s[idx], t[idx], m[(0, idx[1], 0, 0)]
        if tv > 0:
            total += (sv - tv) ** 2
        elif tv <= mv:
            total += (sv - mv) ** 2 if sv > mv else 0.0
        elif sv > tv:
            total += (sv - tv) ** 2
    return total


def test_ofd_loss_matches_the_case_by_case_formula():
    torch.manual_seed(0)
    margins = [-torch.rand(1, 3, 1, 1, dtype=DT), -torch.rand(1, 2, 1, 1, dtype=DT)]
    loss = OFDLoss([3, 2], [3, 2], margins).double().eval()
    for connector in loss.connectors:  # identity connectors: the loss is the distance itself
        nn.init.eye_(connector.conv.weight[:, :, 0, 0])
        connector.bn.eps = 0.0  # eval-mode batch norm with unit variance and no epsilon: the identity
    g_s = [rand(4, 3, 4, 4, seed=1), rand(4, 2, 2, 2, seed=2)]
    g_t = [rand(4, 3, 8, 8, seed=3), rand(4, 2, 2, 2, seed=4)]
    expected = 0.0
    for i, (s, t, m) in enumerate(zip(g_s, g_t, margins)):
        t_pooled = _block_mean(t.numpy(), s.shape[2])  # teacher averaged to the student's size
        expected += _partial_l2_cases(s.numpy(), t_pooled, m.numpy()) / 2 ** (1 - i)
    assert loss(g_s, g_t).item() == pytest.approx(expected / 4, rel=1e-6)  # margins are stored in float32


def test_ofd_margins_come_from_the_teachers_batch_norms():
    torch.manual_seed(0)
    task = _task("ofd", "wrn_16_2", "resnet8")
    bns = task.teacher.get_bn_before_relu()
    criterion = task.term.criterion
    for i, bn in enumerate(bns):
        assert torch.equal(getattr(criterion, f"margin{i}"), ofd_margin(bn))
    assert [c.conv.out_channels for c in criterion.connectors] == [bn.num_features for bn in bns]
    assert "criterion.margin0" in task.term.state_dict()


def test_ofd_refuses_a_folded_teacher():
    teacher = model_dict["resnet8"](num_classes=10).eval()
    folded = fold_teacher_batchnorm(teacher, torch.randn(2, 3, 32, 32))
    student = model_dict["resnet8"](num_classes=10)
    with pytest.raises(ValueError, match="before folding"):
        build_term(METHODS["ofd"], student, folded, torch.zeros(2, 3, 32, 32), argparse.Namespace(), 8)


# ---------------------------------------------------------------------------------------------- KDSVD

def test_truncated_svd_gradient_is_exact_when_all_vectors_are_coupled():
    # 3 channels, 2 vectors read: the coupling among the leading 3 covers every pair, so the
    # gradient equals autograd through torch.linalg.svd (on a sign-invariant function).
    x = rand(2, 6, 3, seed=0).requires_grad_()
    weights = rand(3, 3, seed=1)

    def invariant(v):
        return ((v @ v.transpose(1, 2)) * weights).sum()

    v, _ = _TopRightSingularVectors.apply(x, 2)
    (ours,) = torch.autograd.grad(invariant(v), x)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    (exact,) = torch.autograd.grad(invariant(vh.transpose(1, 2)[:, :, :2]), x)
    assert torch.allclose(ours, exact, atol=1e-10)


def test_kdsvd_gradient_is_finite_for_repeated_singular_values():
    # ReLU maps with dead channels: many zero singular values, where the exact SVD gradient divides by 0.
    f_s = [torch.relu(rand(4, 16, 4, 4, seed=s)).float() for s in (1, 2)]
    f_s[0][:, 4:] = 0
    f_s[1][:, :, :, 2:] = 0
    f_s = [f.requires_grad_() for f in f_s]
    f_t = [torch.relu(rand(4, 16, 4, 4, seed=s)).float() for s in (3, 4)]
    loss = KDSVD()(f_s, f_t)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0 for f in f_s)


def test_alignment_picks_the_closest_vector_and_its_sign():
    v_t = torch.tensor([[[1.0], [0.0], [0.0]]])  # (B=1, C=3, k=1)
    v_s = torch.tensor([[[0.0, -0.9, 0.1], [1.0, 0.1, 0.0], [0.0, 0.0, 1.0]]])  # columns are vectors
    aligned = align_singular_vectors(v_s, v_t)
    assert torch.equal(aligned, torch.tensor([[[0.9], [-0.1], [0.0]]]))


def _kdsvd_loops(maps_s: list[np.ndarray], maps_t: list[np.ndarray], k: int = 1) -> float:
    """KD-SVD written with NumPy's SVD and explicit loops."""
    batch = maps_s[0].shape[0]
    total = 0.0
    for b in range(batch):
        previous = None
        for f_s, f_t in zip(maps_s, maps_t):
            c = f_s.shape[1]
            _, s_t, vt_t = np.linalg.svd(f_t[b].reshape(c, -1).T, full_matrices=False)
            _, _, vt_s = np.linalg.svd(f_s[b].reshape(c, -1).T, full_matrices=False)
            w = s_t[:k] / np.linalg.norm(s_t[:k])
            teacher = [vt_t[j] * w[j] for j in range(k)]
            student = []
            for j in range(k):
                cos = [float(vt_s[i] @ vt_t[j]) for i in range(min(k + 3, len(vt_s)))]
                best = int(np.argmax(np.abs(cos)))
                student.append(vt_s[best] * (1.0 if cos[best] >= 0 else -1.0) * w[j])
            if previous is not None:
                prev_s, prev_t = previous
                for j in range(k):
                    for p in range(c):
                        for q in range(len(prev_s[j])):
                            rs = math.exp(-(student[j][p] - prev_s[j][q]) ** 2 / 8)
                            rt = math.exp(-(teacher[j][p] - prev_t[j][q]) ** 2 / 8)
                            total += (rs - rt) ** 2
            previous = (student, teacher)
    return total / batch


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_a_loop_reformulation(k):
    maps_s = [rand(2, 3, 4, 4, seed=1), rand(2, 5, 2, 2, seed=2), rand(2, 4, 2, 2, seed=3)]
    maps_t = [rand(2, 3, 4, 4, seed=4), rand(2, 5, 2, 2, seed=5), rand(2, 4, 2, 2, seed=6)]
    ours = KDSVD(k)(maps_s, maps_t).item()
    assert ours == pytest.approx(_kdsvd_loops([m.numpy() for m in maps_s], [m.numpy() for m in maps_t], k),
                                 rel=1e-5)
    assert ours > 0


@pytest.mark.parametrize("rows, channels", [(1024, 16), (1024, 64), (256, 32), (256, 128), (64, 64), (64, 256),
                                            (16, 3)])
def test_svd_through_qr_equals_the_direct_svd_bit_for_bit(rows, channels):
    """The route without U gives torch.linalg.svd's own values and vectors, signs included, for the
    stage shapes of the CIFAR networks (tall ones go through QR, the others straight to the SVD)."""
    x = torch.relu(torch.randn(8, rows, channels, generator=torch.Generator().manual_seed(rows + channels)))
    x[:, :, : channels // 4] = 0  # dead channels: repeated zero singular values
    s, vh = singular_values_and_right_vectors(x)
    _, s_direct, vh_direct = torch.linalg.svd(x, full_matrices=False)
    assert torch.equal(s, s_direct) and torch.equal(vh, vh_direct)


def test_kdsvd_loss_and_gradients_are_unchanged_by_the_qr_route(monkeypatch):
    maps_t = [torch.relu(rand(4, c, h, h, seed=c)).float() for c, h in ((16, 32), (32, 16), (64, 8))]

    def loss_and_grads():
        maps_s = [torch.relu(rand(4, c, h, h, seed=c + 1)).float().requires_grad_()
                  for c, h in ((16, 32), (32, 16), (64, 8))]
        loss = KDSVD(2)(maps_s, maps_t)
        return (loss.detach(), *torch.autograd.grad(loss, maps_s))

    through_qr = loss_and_grads()
    # the package exports the class under the module's name: fetch the module itself
    monkeypatch.setattr(importlib.import_module("kdzoo.distiller_zoo.KDSVD"), "_TALL", float("inf"))  # every matrix straight to torch.linalg.svd
    direct = loss_and_grads()
    assert through_qr[0] > 0
    for ours, theirs in zip(through_qr, direct):
        assert torch.equal(ours, theirs)


def test_kdsvd_is_zero_when_the_student_equals_the_teacher():
    maps = [rand(2, 3, 4, 4, seed=1), rand(2, 5, 2, 2, seed=2)]
    assert KDSVD()(maps, maps).item() == pytest.approx(0.0, abs=1e-12)


def test_kdsvd_refuses_unequal_channels():
    with pytest.raises(ValueError, match="identical stage channels"):
        _task("kdsvd", "wrn_16_2", "resnet8")


# ----------------------------------------------------------------------------------- warm-up and rows

def _task(name: str, teacher: str, student: str, warmup: int = 0) -> DistillTask:
    torch.manual_seed(0)
    method = METHODS[name]
    t, s = model_dict[teacher](num_classes=10), model_dict[student](num_classes=10)
    term = build_term(method, s, t, torch.zeros(2, 3, 32, 32), argparse.Namespace(), 8)
    return DistillTask(s, t, method, term, *method.weights, kd_T=4, warmup_epochs=warmup)


def test_warmup_ramps_the_term_linearly():
    task = _task("reviewkd", "resnet8", "resnet8", warmup=20).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    with torch.no_grad():
        task.set_epoch(20)
        full = task(x, y).terms["kd"]
        for epoch, factor in [(1, 0.05), (10, 0.5), (30, 1.0)]:
            task.set_epoch(epoch)
            out = task(x, y)
            assert out.terms["kd"].item() == pytest.approx(factor * full.item(), rel=1e-5)
            gamma, alpha, beta = METHODS["reviewkd"].weights
            expected = gamma * out.terms["cls"] + alpha * out.terms["div"] + beta * out.terms["kd"]
            assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert METHODS["reviewkd"].warmup_epochs("cifar100") == 20
    assert METHODS["reviewkd"].warmup_epochs("imagenet") == 1
    assert METHODS["ofd"].warmup_epochs("cifar100") == 0


def test_paper_weights_of_the_rows():
    assert METHODS["reviewkd"].weights == (1.0, 0.0, 5.0)
    assert METHODS["ofd"].weights == (1.0, 0.0, 0.001)
    assert METHODS["kdsvd"].weights == (1.0, 0.0, 1.0)
    assert METHODS["ofd"].preact and not METHODS["kdsvd"].preact
