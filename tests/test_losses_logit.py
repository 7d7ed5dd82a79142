"""The logit-based methods: DKD, DIST and logit standardisation (``--logit_stand``).

Expected values come from small cases worked out by hand with ``math`` and from loop-based NumPy
re-formulations written from the papers' definitions (float64), never from the modules themselves.
Then: the registry rows, their paper settings per teacher/student pair, DKD's warm-up as the
training loop drives it, and ``--logit_stand`` reaching every KD term and the run folder name.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import train_student
from kdzoo.distiller_zoo import DIST, DKD, DistillKL, standardize
from kdzoo.distiller_zoo.registry import METHODS, warmup_factor
from kdzoo.helper.distill import DistillTask, build_term
from kdzoo.helper.logger import read_metrics
from kdzoo.models import model_dict
from test_losses_basic import np_kd, numeric_grad
from test_train_student import assert_loss_is_weighted_sum, run_student, student_argv
from test_train_student import fake_root, teachers  # noqa: F401  (module-scoped fixtures)

DT = torch.float64


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=DT)


# ------------------------------------------------------------------------- independent references

def np_softmax(z: np.ndarray) -> np.ndarray:
    e = [math.exp(v - max(z)) for v in z]
    return np.array([v / sum(e) for v in e])


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two discrete distributions."""
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def np_standardize(z: np.ndarray) -> np.ndarray:
    """Per row: (z - mean) / (1e-7 + sample std), the std with divisor C - 1 as the authors' code."""
    out = np.zeros_like(z, dtype=np.float64)
    for i, row in enumerate(z):
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
        out[i] = [(v - mean) / (1e-7 + std) for v in row]
    return out


def np_dkd(zs: np.ndarray, zt: np.ndarray, target: np.ndarray, T: float,
           logit_stand: bool = False) -> tuple[float, float]:
    """(TCKD, NCKD) from the paper's definitions: the binary (target, rest) distributions, and the
    distribution over the non-target classes renormalised; per-sample KLs averaged, times T^2."""
    if logit_stand:
        zs, zt = np_standardize(zs), np_standardize(zt)
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(zs, zt, target):
        ps, pt = np_softmax(s_row / T), np_softmax(t_row / T)
        tckd += np_kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        others = [c for c in range(len(s_row)) if c != y]
        qs = np.array([ps[c] for c in others]) / (1 - ps[y])
        qt = np.array([pt[c] for c in others]) / (1 - pt[y])
        nckd += np_kl(qt, qs)
    n = len(zs)
    return tckd * T * T / n, nckd * T * T / n


def np_pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def np_dist(zs: np.ndarray, zt: np.ndarray, beta: float, gamma: float, tau: float,
            logit_stand: bool = False) -> float:
    """DIST from the paper: 1 - mean Pearson over samples (inter) and over classes (intra), times tau^2."""
    if logit_stand:
        zs, zt = np_standardize(zs), np_standardize(zt)
    ys = np.array([np_softmax(row / tau) for row in zs])
    yt = np.array([np_softmax(row / tau) for row in zt])
    inter = 1 - np.mean([np_pearson(ys[i], yt[i]) for i in range(len(ys))])
    intra = 1 - np.mean([np_pearson(ys[:, c], yt[:, c]) for c in range(ys.shape[1])])
    return tau * tau * (beta * inter + gamma * intra)


# ------------------------------------------------------------------------------- standardisation

def test_standardize_by_hand():
    # [1, 2, 3]: mean 2, sample std 1. [0, 0, 6]: mean 2, sample std sqrt((4 + 4 + 16) / 2) = sqrt(12).
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]], dtype=DT)
    r12 = math.sqrt(12)
    expected = [[-1 / (1 + 1e-7), 0.0, 1 / (1 + 1e-7)], [-2 / (r12 + 1e-7), -2 / (r12 + 1e-7), 4 / (r12 + 1e-7)]]
    np.testing.assert_allclose(standardize(z).numpy(), expected, rtol=1e-12)


def test_standardize_uses_the_sample_std_and_survives_constant_logits():
    z = rand(4, 10, seed=0, scale=3.0) + 5.0
    out = standardize(z)
    np.testing.assert_allclose(out.mean(dim=1).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.std(dim=1, unbiased=True).numpy(), 1.0, rtol=1e-6)  # not the population std
    assert torch.equal(standardize(torch.full((2, 5), 3.0)), torch.zeros(2, 5))


def test_standardized_kd_matches_the_reference_on_standardized_logits():
    s, t = rand(5, 7, seed=1, scale=2.0), rand(5, 7, seed=2, scale=5.0)
    for T in (1.0, 2.0, 4.0):
        got = DistillKL(T, logit_stand=True)(s, t).item()
        assert got == pytest.approx(np_kd(np_standardize(s.numpy()), np_standardize(t.numpy()), T), rel=1e-10)
        assert DistillKL(T)(s, t).item() == pytest.approx(np_kd(s.numpy(), t.numpy(), T), rel=1e-10)


def test_standardized_kd_ignores_the_logits_scale_and_shift():
    s, t = rand(3, 6, seed=3), rand(3, 6, seed=4)
    kd = DistillKL(2.0, logit_stand=True)
    assert kd(s, t).item() == pytest.approx(kd(4 * s - 1, 0.5 * t + 3).item(), rel=1e-6)
    assert DistillKL(2.0)(s, t).item() != pytest.approx(DistillKL(2.0)(4 * s - 1, t).item(), rel=1e-3)


# ------------------------------------------------------------------------------------------- DKD

def test_dkd_by_hand_two_samples_three_classes():
    zs = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]
    zt = [[2.0, 0.0, 0.0], [1.0, 1.0, -1.0]]
    target = [0, 1]
    T = 1.0
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(zs, zt, target):
        es, et = [math.exp(v) for v in s_row], [math.exp(v) for v in t_row]
        ps, pt = [v / sum(es) for v in es], [v / sum(et) for v in et]
        tckd += pt[y] * math.log(pt[y] / ps[y]) + (1 - pt[y]) * math.log((1 - pt[y]) / (1 - ps[y]))
        # the two non-target classes: their softmax is that of their own logits
        o = [c for c in range(3) if c != y]
        qs = [math.exp(s_row[c]) / (math.exp(s_row[o[0]]) + math.exp(s_row[o[1]])) for c in o]
        qt = [math.exp(t_row[c]) / (math.exp(t_row[o[0]]) + math.exp(t_row[o[1]])) for c in o]
        nckd += sum(a * math.log(a / b) for a, b in zip(qt, qs))
    tckd, nckd = tckd / 2, nckd / 2
    dkd = DKD(alpha=1.0, beta=8.0, temperature=T)
    args = torch.tensor(zs, dtype=DT), torch.tensor(zt, dtype=DT), torch.tensor(target)
    got_t, got_n = dkd.decoupled(*args)
    assert (got_t.item(), got_n.item()) == (pytest.approx(tckd, rel=1e-12), pytest.approx(nckd, rel=1e-12))
    assert dkd(*args).item() == pytest.approx(tckd + 8 * nckd, rel=1e-12)
    # sample 2, class 0 vs 2 for the student: equal logits, so its NCKD compares (0.5, 0.5) to the teacher's
    assert nckd > 0 and tckd > 0


@pytest.mark.parametrize("T, logit_stand", [(1.0, False), (4.0, False), (2.0, True)])
def test_dkd_matches_the_loop_reference(T, logit_stand):
    s, t = rand(6, 9, seed=5, scale=2.0), rand(6, 9, seed=6, scale=4.0)
    target = torch.tensor([0, 8, 3, 3, 5, 1])
    tckd, nckd = np_dkd(s.numpy(), t.numpy(), target.numpy(), T, logit_stand)
    dkd = DKD(alpha=0.7, beta=3.0, temperature=T, logit_stand=logit_stand)
    got_t, got_n = dkd.decoupled(s, t, target)
    assert got_t.item() == pytest.approx(tckd, rel=1e-9)
    assert got_n.item() == pytest.approx(nckd, rel=1e-9)
    assert dkd(s, t, target).item() == pytest.approx(0.7 * tckd + 3.0 * nckd, rel=1e-9)


def test_dkd_decomposes_kd_per_sample():
    """The paper's identity, per sample: KD = TCKD + (1 - p_t[target]) * NCKD."""
    s, t = rand(4, 6, seed=7, scale=2.0), rand(4, 6, seed=8, scale=3.0)
    target = torch.tensor([2, 0, 5, 2])
    T = 3.0
    dkd = DKD(temperature=T)
    for i in range(4):
        tckd, nckd = dkd.decoupled(s[i:i + 1], t[i:i + 1], target[i:i + 1])
        p_target = np_softmax(t[i].numpy() / T)[target[i]]
        kd = np_kd(s[i:i + 1].numpy(), t[i:i + 1].numpy(), T)
        assert (tckd + (1 - p_target) * nckd).item() == pytest.approx(kd, rel=1e-9)


def test_dkd_gradient_matches_finite_differences():
    s, t = rand(3, 5, seed=9), rand(3, 5, seed=10, scale=2.0)
    target = torch.tensor([4, 0, 2])
    s.requires_grad_(True)
    DKD(alpha=1.0, beta=8.0, temperature=2.0)(s, t, target).backward()

    def reference(a: np.ndarray) -> float:
        tckd, nckd = np_dkd(a, t.numpy(), target.numpy(), 2.0)
        return tckd + 8.0 * nckd

    np.testing.assert_allclose(s.grad.numpy(), numeric_grad(reference, s.detach().numpy()), atol=1e-6, rtol=1e-5)


def test_dkd_refuses_mismatched_inputs():
    s, t = rand(2, 3, seed=0), rand(2, 4, seed=1)
    with pytest.raises(ValueError, match="same shape"):
        DKD()(s, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one class index per sample"):
        DKD()(s, s, torch.tensor([0, 1, 2]))


# ------------------------------------------------------------------------------------------ DIST

def test_dist_by_hand_two_samples_three_classes():
    """tau = 1. Intra-class: over a batch of 2 each class column has two values, so its Pearson
    correlation is the sign of the product of the differences (+1 or -1). The correlations carry
    the module's documented 1e-8 in the denominator: the batch-of-2 differences are small enough
    for it to show in the fifth digit."""
    zs = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]
    zt = [[2.0, 0.0, 0.0], [1.0, 1.0, -1.0]]

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    ys, yt = [softmax(r) for r in zs], [softmax(r) for r in zt]

    def pearson(a, b):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
        return num / (math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) + 1e-8)

    inter = 1 - (pearson(ys[0], yt[0]) + pearson(ys[1], yt[1])) / 2
    # two centred values are +-d/2: the correlation is (ds dt / 2) / (|ds| |dt| / 2 + eps)
    diffs = [(ys[1][c] - ys[0][c], yt[1][c] - yt[0][c]) for c in range(3)]
    intra = 1 - sum(ds * dt / 2 / (abs(ds * dt) / 2 + 1e-8) for ds, dt in diffs) / 3
    assert [math.copysign(1, ds * dt) for ds, dt in diffs] == [1, 1, -1]  # class 2 moves against the teacher
    got = DIST(beta=1.0, gamma=2.0, tau=1.0)(torch.tensor(zs, dtype=DT), torch.tensor(zt, dtype=DT)).item()
    assert got == pytest.approx(inter + 2.0 * intra, rel=1e-12)


@pytest.mark.parametrize("tau, logit_stand", [(1.0, False), (4.0, False), (2.0, True)])
def test_dist_matches_the_loop_reference(tau, logit_stand):
    s, t = rand(8, 10, seed=11, scale=2.0), rand(8, 10, seed=12, scale=4.0)
    expected = np_dist(s.numpy(), t.numpy(), 1.0, 2.0, tau, logit_stand)
    got = DIST(beta=1.0, gamma=2.0, tau=tau, logit_stand=logit_stand)(s, t).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_dist_is_zero_for_identical_logits_and_has_the_right_gradient():
    s, t = rand(5, 6, seed=13), rand(5, 6, seed=14)
    # zero up to the 1e-8 added to the norms, against flat tau = 4 probabilities (|centred| ~ 1e-2)
    assert DIST(tau=4.0)(t, t).item() == pytest.approx(0.0, abs=1e-4)
    assert DIST(tau=4.0)(s, t).item() > 0.01
    s.requires_grad_(True)
    DIST(beta=1.0, gamma=1.0, tau=2.0)(s, t).backward()
    expected = numeric_grad(lambda a: np_dist(a, t.numpy(), 1.0, 1.0, 2.0), s.detach().numpy())
    np.testing.assert_allclose(s.grad.numpy(), expected, atol=1e-6, rtol=1e-4)


def test_dist_refuses_mismatched_logits():
    with pytest.raises(ValueError, match="DIST compares"):
        DIST()(rand(2, 3, seed=0), rand(3, 3, seed=1))


# ------------------------------------------------------------------------------ warm-up and terms

@pytest.mark.parametrize("epoch, factor", [(1, 0.05), (10, 0.5), (20, 1.0), (21, 1.0)])
def test_dkd_warmup_factor(epoch, factor):
    """DistillTask scales DKD's term by epoch / 20 (epochs from 1); the logged term is the scaled one."""
    assert warmup_factor(epoch, 20) == pytest.approx(factor, rel=1e-12)
    task = build_task("dkd")
    assert task.warmup_epochs == 20
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        logit_t = task.teacher(images)
        logit_s = task.student(images)
    full = DKD(1.0, 8.0, 4.0)(logit_s, logit_t, targets).item()
    task.set_epoch(epoch)
    with torch.no_grad():
        out = task(images, targets)
    assert out.terms["kd"].item() == pytest.approx(factor * full, rel=1e-5)


def test_no_warmup_and_a_negative_one_is_refused(capsys):
    assert warmup_factor(1, 0) == 1.0
    assert options("--distill", "dkd", "--warmup_epochs", "0").warmup_epochs == 0
    with pytest.raises(SystemExit):
        options("--distill", "dkd", "--warmup_epochs", "-1")
    assert "--warmup_epochs is a number of epochs >= 0" in capsys.readouterr().err


def options(*flags: str, teacher: str = "resnet8", student: str = "resnet8"):
    parser = train_student.build_parser()
    argv = ["--path_t", "unused.pth", "--model_t", teacher, "--model_s", student, *flags]
    return train_student.resolve_options(parser, parser.parse_args(argv), require_teacher_file=False)


@pytest.mark.parametrize("teacher, student, dkd_beta", [
    ("resnet32x4", "resnet8x4", 8.0), ("vgg13", "vgg8", 6.0), ("wrn_40_2", "wrn_16_2", 6.0),
    ("wrn_40_2", "wrn_40_1", 6.0), ("resnet56", "resnet20", 2.0), ("resnet110", "resnet32", 2.0),
    ("vgg13", "MobileNetV2", 6.0), ("ResNet50", "MobileNetV2", 8.0), ("resnet32x4", "ShuffleV1", 8.0),
])
def test_dkd_paper_beta_per_pair(teacher, student, dkd_beta):
    o = options("--distill", "dkd", teacher=teacher, student=student)
    assert (o.gamma, o.alpha, o.beta, o.kd_T) == (1.0, 0.0, 1.0, 4.0)
    assert (o.dkd_alpha, o.dkd_beta, o.warmup_epochs) == (1.0, dkd_beta, 20)
    explicit = options("--distill", "dkd", "--dkd_beta", "3", "--kd_T", "2", teacher=teacher, student=student)
    assert (explicit.dkd_beta, explicit.kd_T) == (3.0, 2.0)


def test_imagenet_settings_of_the_logit_methods():
    pair = dict(teacher="imagenet_resnet34", student="imagenet_resnet18")
    dkd = options("--distill", "dkd", "--dataset", "imagenet", **pair)
    assert (dkd.dkd_beta, dkd.kd_T, dkd.warmup_epochs) == (0.5, 1.0, 1)
    dist = options("--distill", "dist", "--dataset", "imagenet", **pair)
    assert (dist.gamma, dist.alpha, dist.beta, dist.kd_T, dist.dist_beta, dist.dist_gamma) == (1, 0, 2, 1, 1, 1)
    assert options("--distill", "kd", **pair).kd_T == 4.0


def build_task(name: str, *flags: str) -> DistillTask:
    torch.manual_seed(0)
    o = options("--distill", name, *flags)
    student, teacher = model_dict["resnet8"](num_classes=10), model_dict["resnet8"](num_classes=10)
    term = build_term(METHODS[name], student, teacher, torch.zeros(2, 3, 32, 32), o, n_data=100)
    return DistillTask(student, teacher, METHODS[name], term, o.gamma, o.alpha, o.beta, o.kd_T,
                       logit_stand=o.logit_stand, warmup_epochs=o.warmup_epochs)


@pytest.mark.parametrize("name, flags", [("dkd", []), ("dist", ["--logit_stand"])])
def test_registry_rows_build_and_take_a_step(name, flags):
    task = build_task(name, *flags)
    task.set_epoch(5)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    out = task(images, targets)
    assert torch.isfinite(out.loss) and set(out.terms) == {"cls", "div", "kd"}
    with torch.no_grad():
        logit_s, logit_t = task.student(images), task.teacher(images)
    expected = {"dkd": lambda: 0.25 * DKD(1.0, 8.0, 4.0, "--logit_stand" in flags)(logit_s, logit_t, targets),
                "dist": lambda: DIST(1.0, 1.0, 4.0, "--logit_stand" in flags)(logit_s, logit_t)}[name]()
    assert out.terms["kd"].item() == pytest.approx(expected.item(), rel=1e-5)  # warm-up 5/20 for DKD
    out.loss.backward()
    assert all(p.grad is not None for p in task.student.parameters())
    assert all(p.grad is None for p in task.teacher.parameters())


@pytest.mark.parametrize("name", ["attention", "dkd"])
def test_logit_stand_reaches_the_kd_term_of_every_method(name):
    task = build_task(name, "--logit_stand", "-a", "1")
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    out = task(images, targets)
    with torch.no_grad():
        logit_s, logit_t = task.student(images).double().numpy(), task.teacher(images).double().numpy()
    expected = np_kd(np_standardize(logit_s), np_standardize(logit_t), 4.0)
    assert out.terms["div"].item() == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------------------ through train_student

def test_run_folder_name_marks_logit_standardisation(fake_root, teachers, tmp_path):
    """``_ls`` right after the weights (without it the name is as before: test_train_student checks that)."""
    ls = run_student(student_argv(fake_root, tmp_path, teachers["resnet8"], "--distill", "kd", "--logit_stand",
                                  "-a", "9", "--kd_T", "2"))
    assert Path(ls["run_dir"]).name == "S:resnet8_T:resnet8_cifar100_kd_r:0.1_a:9.0_b:0.0_ls_1"
    assert_loss_is_weighted_sum(read_metrics(ls["run_dir"])[0], 0.1, 9.0, 0.0)


def test_the_loop_announces_each_epoch_to_the_term(fake_root, teachers, tmp_path, monkeypatch, capsys):
    """DKD's warm-up follows the epochs fit() runs, counted from 1, and a resumed run continues the
    count; resuming under another --logit_stand is refused (it would be another run)."""
    seen: list[int] = []
    original = DistillTask.set_epoch

    def record(self, epoch):
        seen.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(DistillTask, "set_epoch", record)
    argv = student_argv(fake_root, tmp_path, teachers["resnet8"], "--distill", "dkd", "--warmup_epochs", "4")
    first = run_student([*argv, "--epochs", "2"])
    assert seen == [1, 2]
    row = read_metrics(first["run_dir"])[1]
    assert_loss_is_weighted_sum(row, 1.0, 0.0, 1.0)
    seen.clear()
    resumed = [*argv, "--epochs", "3", "--resume", str(Path(first["run_dir"]) / "resnet8_last.pth")]
    run_student(resumed)
    assert seen == [3]

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_student.main([*resumed, "--logit_stand"])
    assert exc.value.code == 2
    assert "it was run with --logit_stand off, not on" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--distill", "kd", "-a", "9", "--kd_T", "2"],
                                   ["--distill", "dkd", "-b", "9", "--kd_T", "2", "--warmup_epochs", "1"]])
def test_logit_standardisation_trains_on_real_data(flags, shared_data, teachers, tmp_path, capsys):
    """One epoch of the logit-standardisation recipes (KD+LS, DKD+LS) on 256 real images (DKD and
    DIST alone: test_train_student's every-method run)."""
    result = run_student(student_argv(shared_data, tmp_path, teachers["resnet8"], *flags, "--logit_stand",
                                      n_train=256, n_test=64))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert Path(result["run_dir"]).name.endswith("_ls_1")
    row = read_metrics(result["run_dir"])[0]
    o = options(*flags)
    assert all(math.isfinite(row[k]) for k in ("train_loss", "train_cls", "train_div"))
    assert_loss_is_weighted_sum(row, o.gamma, o.alpha, o.beta)
