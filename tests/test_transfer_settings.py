"""The mechanisms under ensemble, cross-modal and privileged-information distillation:

* several teachers: the KD target is the mean of the teachers' softened probabilities (checked
  against a hand computation), every method sums one term per teacher (checked against the
  single-teacher terms run separately), the ensemble's evaluation, the run folder and
  ``teachers.json``;
* input views per network: every view with every backbone, teachers and students on different
  views end to end, checkpoints that record their view and refuse another;
* label-free distillation (``-r 0 -a 0``): the classifier is frozen and the run says so.

The views' own formulas are checked against scikit-image in ``tests/test_views.py``.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import train_student
import train_teacher
import transfer_student
from fakedata import write_fake_cifar
from kdzoo.dataset.views import InputView, InputViews
from kdzoo.distiller_zoo.KD import DistillKL
from kdzoo.distiller_zoo.registry import METHODS
from kdzoo.helper.checkpoint import load_checkpoint
from kdzoo.helper.distill import DistillTask, InitTask, TeacherEnsemble, TeacherTerms, build_term
from kdzoo.models import model_dict

import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import collect_results  # noqa: E402

# CIFAR-100's RGB statistics, written out independently of dataset/transforms.py.
REF_MEAN = (0.5071, 0.4867, 0.4408)
REF_STD = (0.2675, 0.2565, 0.2761)
VIEWS = ["rgb", "gray", "L", "ab", "lowres:8"]
N_DATA = 32


# ------------------------------------------------------------------------------- the KD target

def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _standardize(z: np.ndarray) -> np.ndarray:
    return (z - z.mean(axis=1, keepdims=True)) / (1e-7 + z.std(axis=1, ddof=1, keepdims=True))


@pytest.mark.parametrize("logit_stand", [False, True])
def test_kd_target_of_several_teachers_is_their_mean_softened_probability(logit_stand):
    g = torch.Generator().manual_seed(0)
    y_s, y_1, y_2, y_3 = (torch.randn(5, 7, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    T = 4.0
    prep = _standardize if logit_stand else (lambda z: z)
    p_t = np.mean([_softmax(prep(y.numpy()) / T) for y in (y_1, y_2, y_3)], axis=0)
    log_p_s = np.log(_softmax(prep(y_s.numpy()) / T))
    expected = T * T * np.mean(np.sum(p_t * (np.log(p_t) - log_p_s), axis=1))
    got = DistillKL(T, logit_stand=logit_stand)(y_s, [y_1, y_2, y_3])
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_kd_with_one_teacher_in_a_list_equals_the_single_teacher_form():
    g = torch.Generator().manual_seed(1)
    y_s, y_t = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    kd = DistillKL(4.0)
    assert torch.equal(kd(y_s, [y_t]), kd(y_s, y_t))


def test_teacher_ensemble_predicts_the_mean_probability_and_leaves_the_teachers_in_eval_mode():
    torch.manual_seed(0)
    teachers = [nn.Linear(6, 5).eval(), nn.Linear(6, 5).eval()]
    x = torch.randn(8, 6)
    ensemble = TeacherEnsemble(teachers)
    with torch.no_grad():
        got = ensemble((x, x)).exp()
        expected = (teachers[0](x).softmax(1) + teachers[1](x).softmax(1)) / 2
    assert torch.allclose(got, expected, atol=1e-6)
    ensemble.train()
    assert not any(t.training for t in teachers)
    assert list(ensemble.parameters()) == []  # the teachers are never trained through it


# ------------------------------------------------------------------------ several teachers, every method

def method_options(name: str, teacher: str = "resnet8", student: str = "resnet8"):
    """The flags of ``train_student.py --distill name`` resolved as a run resolves them (paper
    weights and options), sized for a test."""
    parser = train_student.build_parser()
    opt = train_student.parse_training_args(parser, [
        "--path_t", f"{teacher}_vanilla/x.pth", "--model_t", teacher, "--model_s", student, "--distill", name,
        "--nce_k", "8", "--feat_dim", "16"])
    return train_student.resolve_options(parser, opt, require_teacher_file=False)


def extras_for(name: str, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """What the contrastive methods' dataset view adds to a batch: indices and sampled negatives."""
    if METHODS[name].data_view(method_options(name)) != "sample":
        return ()
    index = torch.randperm(N_DATA, generator=generator)[:batch]
    negatives = torch.randint(0, N_DATA, (batch, 8), generator=generator)
    return index, torch.cat([index[:, None], negatives], dim=1)


def two_teacher_setup(name: str):
    torch.manual_seed(0)
    teachers = [model_dict["resnet8"](num_classes=100).eval(), model_dict["resnet14"](num_classes=100).eval()]
    student = model_dict["resnet8"](num_classes=100)
    opt = method_options(name)
    sample = torch.zeros(2, 3, 32, 32)
    terms = [build_term(METHODS[name], student, t, sample, opt, N_DATA) for t in teachers]
    return teachers, student, terms


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_sums_one_term_per_teacher(name):
    method = METHODS[name]
    teachers, student, terms = two_teacher_setup(name)
    if terms[0] is not None:
        assert terms[0] is not terms[1]
        params = [{id(p) for p in term.parameters()} for term in terms]
        assert not params[0] & params[1], "the teachers share a head: each needs its own"
    singles = copy.deepcopy(terms)  # same starting state (heads, memories) for the reference computation
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 100, (8,), generator=g)
    extras = extras_for(name, 8, g)
    ensemble = DistillTask(student, teachers, method, terms, 0.0 if method.has_main_term else 1.0, 1.0, 1.0, 4.0)
    if ensemble.term is not None:
        assert isinstance(ensemble.term, TeacherTerms) and len(ensemble.term) == 2
        state = ensemble.state_dict()
        if any(True for _ in terms[0].parameters()):
            assert any(k.startswith("term.0.") for k in state) and any(k.startswith("term.1.") for k in state)

    torch.manual_seed(7)
    out = ensemble(x, y, *extras)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    if method.has_main_term:
        # The same terms one teacher at a time, in the same order and from the same state.
        torch.manual_seed(7)
        expected = {}
        for teacher, term in zip(teachers, singles):
            single = DistillTask(student, teacher, method, term, 0.0, 0.0, 1.0, 4.0)
            for key, value in single(x, y, *extras).terms.items():
                if key not in ("cls", "div"):
                    expected[key] = expected.get(key, 0.0) + float(value.detach())
        for key, value in expected.items():
            assert float(out.terms[key].detach()) == pytest.approx(value, rel=1e-4, abs=1e-6), key
    with torch.no_grad():
        kd_expected = DistillKL(4.0)(student(x), [t(x) for t in teachers])
    assert float(out.terms["div"].detach()) == pytest.approx(float(kd_expected), rel=1e-4)
    if method.init is not None:
        init = InitTask(ensemble, method)
        total = init(x, y).loss
        per_teacher = [method.init.loss(term, student(x, is_feat=True, preact=method.preact)[0],
                                        t(x, is_feat=True, preact=method.teacher_reads_preact)[0])
                       for term, t in zip(ensemble.terms, teachers)]
        assert float(total.detach()) == pytest.approx(float(sum(per_teacher).detach()), rel=1e-4)


# ------------------------------------------------------------------------------------ label-free

@pytest.mark.parametrize("name", ["crd", "attention"])
def test_label_free_distillation_freezes_the_classifier(name):
    torch.manual_seed(0)
    teacher, student = model_dict["resnet8"](num_classes=100), model_dict["resnet8"](num_classes=100)
    term = build_term(METHODS[name], student, teacher, torch.zeros(2, 3, 32, 32), method_options(name), N_DATA)
    task = DistillTask(student, teacher, METHODS[name], term, 0.0, 0.0, 1.0, 4.0)
    assert not task.trains_classifier
    classifier = {id(p) for p in student.get_classifier().parameters()}
    assert all(not p.requires_grad for p in student.get_classifier().parameters())
    trained = [p for p in task.parameters() if p.requires_grad]
    assert trained and not classifier & {id(p) for p in trained}
    g = torch.Generator().manual_seed(1)
    out = task(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 100, (8,), generator=g),
               *extras_for(name, 8, g))
    out.loss.backward()
    assert all(p.grad is None for p in student.get_classifier().parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.get_feat_modules().parameters())


def test_labels_train_the_classifier():
    torch.manual_seed(0)
    teacher, student = model_dict["resnet8"](num_classes=100), model_dict["resnet8"](num_classes=100)
    task = DistillTask(student, teacher, METHODS["kd"], None, 0.1, 0.9, 0.0, 4.0)
    assert task.trains_classifier and all(p.requires_grad for p in student.get_classifier().parameters())


# ------------------------------------------------------------------------- every view, every backbone

@pytest.mark.parametrize("arch", sorted(model_dict))
def test_every_view_runs_through_every_backbone(arch):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for view in VIEWS:
        torch.manual_seed(0)
        to_input = InputView(view, REF_MEAN, REF_STD)
        model = model_dict[arch](num_classes=10, in_channels=to_input.channels).eval()
        with torch.no_grad():
            feats, logits = model(to_input(images), is_feat=True)
        assert logits.shape == (2, 10) and torch.isfinite(logits).all(), (arch, view)


def test_input_views_compute_each_distinct_view_once_and_in_order():
    views = [InputView(v, REF_MEAN, REF_STD) for v in ("ab", "L", "ab", "rgb")]
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = InputViews(views)(images)
    assert [x.shape[1] for x in out] == [2, 1, 2, 3]
    assert out[0] is out[2]
    for x, v in zip(out, views):
        assert torch.equal(x, v(images))


# ------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("fake"), n_train=48, n_test=32, seed=0)


def common(data: Path, save: Path) -> list[str]:
    return ["--data_folder", str(data), "--save_folder", str(save), "--device", "cpu", "--num_workers", "0",
            "--batch_size", "16", "--print_freq", "1000", "--train_subset", "32", "--test_subset", "32",
            "--epochs", "1", "--seed", "5"]


@pytest.fixture(scope="module")
def trained(fake_root, tmp_path_factory) -> dict[str, Path]:
    """Teachers trained one epoch by train_teacher.py: two rgb ones and one on CIELAB L."""
    save = tmp_path_factory.mktemp("models")
    out = {}
    for key, argv in {"r8": ["--model", "resnet8", "--trial", "1"], "r14": ["--model", "resnet14", "--trial", "2"],
                      "L": ["--model", "resnet8", "--input", "L"]}.items():
        torch.manual_seed(0)
        result = train_teacher.main([*argv, *common(fake_root, save)])
        model = argv[1]
        out[key] = Path(result["run_dir"]) / f"{model}_last.pth"
    return out


def usage_error(capsys, main, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def independent_accuracy(paths: list[Path], archs: list[str], root: Path) -> float:
    """Top-1 of the mean probability of the teachers on the first 32 test images, from the pickled
    test split and the reference normalisation (no library loader or evaluation involved)."""
    from fakedata import read_fake_split
    images, labels = read_fake_split(root, "test")
    x = torch.as_tensor(images[:32]).float().div(255)
    x = (x - torch.tensor(REF_MEAN).view(1, 3, 1, 1)) / torch.tensor(REF_STD).view(1, 3, 1, 1)
    probs = 0
    for path, arch in zip(paths, archs):
        model = model_dict[arch](num_classes=100)
        model.load_state_dict(load_checkpoint(path)["model"])
        with torch.no_grad():
            probs = probs + model.eval()(x).softmax(1)
    return 100.0 * float((probs.argmax(1) == torch.as_tensor(labels[:32])).float().mean())


def test_ensemble_run_names_all_teachers_and_records_their_accuracy(fake_root, trained, tmp_path, capsys):
    torch.manual_seed(0)
    result = train_student.main(["--path_t", str(trained["r8"]), "--path_t", str(trained["r14"]), "--model_s",
                                 "resnet8", "--distill", "crd", "-a", "1", "--nce_k", "8",
                                 *common(fake_root, tmp_path)])
    run_dir = Path(result["run_dir"])
    assert run_dir.name == "S:resnet8_T:resnet8+resnet14_cifar100_crd_r:1.0_a:1.0_b:0.8_1"
    record = json.loads((run_dir / "teachers.json").read_text())
    assert [t["model"] for t in record["teachers"]] == ["resnet8", "resnet14"]
    assert record["ensemble"]["acc"] == pytest.approx(
        independent_accuracy([trained["r8"], trained["r14"]], ["resnet8", "resnet14"], fake_root))
    log = capsys.readouterr().out
    assert "teacher 1/2 resnet8" in log and "teacher 2/2 resnet14" in log and "ensemble of the 2 teachers" in log
    state = load_checkpoint(run_dir / "resnet8_last.pth")
    assert any(k.startswith("term.1.loss.") for k in state["task"])
    assert state["opt"]["path_t"] == [str(trained["r8"].resolve()), str(trained["r14"].resolve())]
    assert collect_results.parse_run_name(run_dir.name)["teacher"] == "resnet8+resnet14"


def test_one_teacher_keeps_the_single_teacher_layout(fake_root, trained, tmp_path):
    torch.manual_seed(0)
    result = train_student.main(["--path_t", str(trained["r8"]), "--model_s", "resnet8", "--distill", "kd",
                                 *common(fake_root, tmp_path)])
    run_dir = Path(result["run_dir"])
    assert run_dir.name == "S:resnet8_T:resnet8_cifar100_kd_r:0.1_a:0.9_b:0.0_1"
    state = load_checkpoint(run_dir / "resnet8_last.pth")
    assert state["opt"]["path_t"] == str(trained["r8"].resolve()) and state["opt"]["model_t"] == "resnet8"
    assert state["input"] == "rgb"
    assert json.loads((run_dir / "teachers.json").read_text())["ensemble"] is None


def test_cross_modal_label_free_student_then_linear_probe(fake_root, trained, tmp_path, capsys):
    assert trained["L"].parent.name == "resnet8_vanilla_in:L"
    assert load_checkpoint(trained["L"])["input"] == "L"
    torch.manual_seed(0)
    result = train_student.main(["--path_t", str(trained["L"]), "--input_t", "L", "--input_s", "ab", "--model_s",
                                 "resnet8", "--distill", "crd", "-r", "0", "-a", "0", "--nce_k", "8",
                                 *common(fake_root, tmp_path / "students")])
    run_dir = Path(result["run_dir"])
    assert run_dir.name == "S:resnet8_T:resnet8_cifar100_crd_r:0.0_a:0.0_b:0.8_in:L-ab_1"
    assert collect_results.parse_run_name(run_dir.name)["views"] == "L-ab"
    log = capsys.readouterr().out
    assert re.search(r"classifier\s+not trained", log) and "transfer_student.py --dataset cifar100 --input ab" in log
    state = load_checkpoint(run_dir / "resnet8_last.pth")
    assert state["input"] == "ab" and state["model"]["conv1.weight"].shape[1] == 2
    probe = ["--dataset", "cifar100", "--path_s", str(run_dir / "resnet8_last.pth"), "--data_folder", str(fake_root),
             "--save_folder", str(tmp_path / "probe"), "--device", "cpu", "--num_workers", "0", "--batch_size", "16",
             "--epochs", "1", "--train_subset", "32", "--test_subset", "32"]
    err = usage_error(capsys, transfer_student.main, probe)
    assert "'ab'" in err and "'rgb'" in err and "--input ab" in err
    result = transfer_student.main([*probe, "--input", "ab"])
    assert load_checkpoint(Path(result["run_dir"]) / "resnet8_last.pth")["input"] == "ab"


def test_privileged_teacher_on_rgb_student_on_a_degraded_view(fake_root, trained, tmp_path):
    torch.manual_seed(0)
    result = train_student.main(["--path_t", str(trained["r14"]), "--input_s", "lowres:8", "--model_s", "resnet8",
                                 "--distill", "wcord", "-a", "1", "--nce_k", "8", *common(fake_root, tmp_path)])
    run_dir = Path(result["run_dir"])
    assert run_dir.name.endswith("_in:rgb-lowres:8_1")
    assert load_checkpoint(run_dir / "resnet8_last.pth")["input"] == "lowres:8"


def test_views_and_teacher_counts_that_do_not_fit_are_refused(fake_root, trained, tmp_path, capsys):
    base = ["--model_s", "resnet8", *common(fake_root, tmp_path)]
    err = usage_error(capsys, train_student.main, ["--path_t", str(trained["L"]), *base])
    assert "'L'" in err and "'rgb'" in err and "--input_t L" in err
    err = usage_error(capsys, train_student.main, ["--path_t", str(trained["r8"]), "--input_t", "ab", *base])
    assert "'rgb'" in err and "'ab'" in err
    two = ["--path_t", str(trained["r8"]), "--path_t", str(trained["r14"])]
    err = usage_error(capsys, train_student.main, [*two, "--model_t", "resnet8", "--model_t", "resnet14",
                                                   "--model_t", "resnet8", *base])
    assert "--model_t is given 3 times for 2 --path_t" in err
    err = usage_error(capsys, train_student.main, [*two, "--input_t", "rgb", "--input_t", "rgb", "--input_t", "L",
                                                   *base])
    assert "--input_t is given 3 times for 2 --path_t" in err
    err = usage_error(capsys, train_student.main, ["--path_t", str(trained["r8"]), "-r", "0", "-a", "0", *base])
    assert "-r 0 -a 0 leaves nothing to learn" in err
    err = usage_error(capsys, train_student.main, ["--path_t", str(trained["r8"]), "--input_s", "lab", *base])
    assert "lab" in err and "lowres:N" in err
