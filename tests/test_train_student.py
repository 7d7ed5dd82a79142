"""train_student.py end to end, and the distillation task it is built from (helper/distill.py).

* every ``--distill`` method of ``distiller_zoo.registry.METHODS`` for one epoch on a subset of the
  real CIFAR-100 (``slow``: it is skipped when the data is absent and left out of the default run);
* paper weights versus explicit ``-r/-a/-b``; the contrastive methods not built yet;
* gradients reach the student and its heads only, never the frozen teacher;
* the init stage of abound / fsp / factor;
* errors reported before any training (argparse-style exit code 2);
* the teacher's evaluation printed before training, checked against an independent evaluation;
* resume equals an uninterrupted run bit for bit.

Default-run checks use fake CIFAR-100 (``tests/fakedata.py``), resnet8-sized networks, 16-32
images, batch 16, CPU and no workers. Teachers are checkpoints in the reference format
(``{'model': state_dict, 'epoch': 240, 'accuracy': 0.0}`` in ``<arch>_vanilla/``) of seeded,
untrained networks: the mechanics do not need a good teacher.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

import train_student
from kdzoo.dataset import build_datasets, build_loaders
from kdzoo.dataset.transforms import Normalize
from kdzoo.distiller_zoo.registry import METHODS
from checks import assert_nested_equal
from fakedata import read_fake_split, write_cifar_split, write_fake_cifar
from kdzoo.helper.checkpoint import load_checkpoint
from kdzoo.helper.distill import DistillTask, build_term, run_init_stage
from kdzoo.helper.distributed import DistEnv
from kdzoo.helper.logger import read_metrics
from kdzoo.models import model_dict

# The reference's CIFAR-100 normalisation, written out independently of dataset/transforms.py.
REF_MEAN = (0.5071, 0.4867, 0.4408)
REF_STD = (0.2675, 0.2565, 0.2761)

BATCH = 16
TIMING_KEYS = {"seconds", "images_per_sec"}
CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

# (teacher, student) per method for the end-to-end run. resnet8 -> resnet8 suits every method
# (FSP needs identical channel lists); abound gets a wider teacher so that its Connector holds
# regressors (between equal shapes it is parameter-free and there would be no head to check).
DEFAULT_PAIR = ("resnet8", "resnet8")
PAIRS = {"abound": ("wrn_16_2", "resnet8")}

# Prefixes of the trainable heads each method adds to the task's state (for the pairs above).
HEADS: dict[str, tuple[str, ...]] = {
    "kd": (),
    "hint": ("term.adapt_s.",),
    "attention": (),
    "similarity": (),
    "correlation": ("term.adapt_s.", "term.adapt_t."),
    "vid": ("term.criterion.0.", "term.criterion.1.", "term.criterion.2."),
    "rkd": (),
    "pkt": (),
    "abound": ("term.adapt_s.connectors.0.", "term.adapt_s.connectors.1.", "term.adapt_s.connectors.2."),
    "factor": ("term.adapt_s.", "term.adapt_t.paraphraser."),
    "fsp": (),
    "nst": (),
    "crd": ("term.loss.embed_s.", "term.loss.embed_t.", "term.loss.contrast."),
    "rrd": ("term.loss.embed_s.", "term.loss.embed_t.", "term.loss.queue"),
    "wcord": ("term.loss.embed_s.", "term.loss.embed_t.", "term.loss.contrast."),
    "reviewkd": ("term.fusion.abfs.0.", "term.fusion.abfs.1.", "term.fusion.abfs.2.", "term.fusion.abfs.3."),
    "ofd": ("term.criterion.connectors.0.", "term.criterion.connectors.1.", "term.criterion.connectors.2.",
            "term.criterion.margin"),
    "kdsvd": (),
    "dkd": (),
    "dist": (),
}


def has_main_term(name: str) -> bool:
    """Whether the main stage logs a ``kd`` term: the method has a module and uses it after init."""
    return name != "kd" and METHODS[name].main_stage_term


# --------------------------------------------------------------------------------------------- helpers

def save_teacher(folder: Path, arch: str, weights_of: str | None = None, seed: int = 0,
                 name: str = "ckpt_epoch_240.pth") -> Path:
    """A teacher checkpoint in the reference format; ``weights_of`` lets the weights be of
    another architecture than the folder says."""
    torch.manual_seed(seed)
    model = model_dict[weights_of or arch](num_classes=100)
    path = Path(folder) / f"{arch}_vanilla" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": 0.0}, path)
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    return {arch: save_teacher(root, arch, seed=i) for i, arch in enumerate(["resnet8", "wrn_16_2"])}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("fake"), n_train=64, n_test=32, seed=0)


def student_argv(data: Path, save: Path, path_t: Path, *extra: str, n_train: int = 16, n_test: int = 16) -> list[str]:
    return [
        "--path_t", str(path_t), "--data_folder", str(data), "--save_folder", str(save),
        "--device", "cpu", "--num_workers", "0", "--batch_size", str(BATCH), "--print_freq", "1000",
        "--train_subset", str(n_train), "--test_subset", str(n_test),
        "--epochs", "1", "--init_epochs", "1", "--seed", "5", *extra,
    ]


def run_student(argv: list[str], global_seed: int = 0) -> dict:
    """train_student.main in-process, with torch's global generator pinned first (as a fresh
    process has it), so earlier in-process runs do not leak into this one."""
    torch.manual_seed(global_seed)
    return train_student.main(argv)


def last_checkpoint(result: dict, model_s: str = "resnet8") -> dict:
    return load_checkpoint(Path(result["run_dir"]) / f"{model_s}_last.pth")


def usage_error(capsys, argv: list[str]) -> str:
    """Run main expecting an argparse-style error (exit code 2) before training; return the
    message after ``error:`` (the usage text above it lists every choice, so it is left out)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_student.main(argv)
    assert exc.value.code == 2, f"expected exit code 2, got {exc.value.code!r}"
    captured = capsys.readouterr()
    assert not re.search(r"^epoch \d+/", captured.out, re.M), "training started before the error"
    match = re.search(r"^\S+: error: (.*)", captured.err, re.M | re.S)
    assert match, captured.err
    return match.group(1)


def assert_loss_is_weighted_sum(row: dict, gamma: float, alpha: float, beta: float) -> None:
    """``train_loss`` is the sample average of ``gamma*cls + alpha*div + beta*kd``: the averages are
    linear, so the logged columns must satisfy the same identity."""
    # Extra named parts (WCoRD's ``local``) come already weighted by their own flag.
    extra = sum(v for k, v in row.items() if k.startswith("train_") and k not in
                ("train_loss", "train_acc", "train_cls", "train_div", "train_kd"))
    expected = gamma * row["train_cls"] + alpha * row["train_div"] + beta * row.get("train_kd", 0.0) + extra
    assert row["train_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5), row


def init_opt(**kw) -> argparse.Namespace:
    values = dict(learning_rate=0.05, momentum=0.9, weight_decay=5e-4, init_epochs=1, print_freq=1000,
                  hint_layer=2, feat_dim=16)
    values.update(kw)
    return argparse.Namespace(**values)


def build_task(name: str, t_arch: str, s_arch: str, seed: int = 0) -> DistillTask:
    torch.manual_seed(seed)
    method = METHODS[name]
    teacher = model_dict[t_arch](num_classes=100)
    student = model_dict[s_arch](num_classes=100)
    term = build_term(method, student, teacher, torch.zeros(2, 3, 32, 32), init_opt(), n_data=64)
    gamma, alpha, beta = method.weights
    return DistillTask(student, teacher, method, term, gamma, alpha, beta, kd_T=4)


def init_loader(root: Path, n_train: int = 32):
    train_set, test_set = build_datasets("cifar100", root, train_limit=n_train, test_limit=16, uint8=True)
    train_loader, _, spec = build_loaders(train_set, test_set, BATCH, 0, seed=0)
    return train_loader, Normalize(spec.mean, spec.std)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    after = module.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def quiet(*_args) -> None:
    pass


# ------------------------------------------------------------------------ every method, end to end (real)

def test_every_method_has_an_expectation():
    assert set(HEADS) == set(METHODS), "a method was added or removed: give it its expected heads here"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_one_epoch_on_real_data(name, shared_data, teachers, tmp_path, capsys):
    t_arch, s_arch = PAIRS.get(name, DEFAULT_PAIR)
    argv = student_argv(shared_data, tmp_path, teachers[t_arch], "--distill", name, "--model_s", s_arch,
                        n_train=256, n_test=64)
    result = run_student(argv)
    out = capsys.readouterr().out

    # The final JSON line comes last, after the teacher line and the epoch line.
    lines = [line for line in out.splitlines() if line.strip()]
    assert json.loads(lines[-1]) == result
    assert math.isfinite(result["last_acc"]) and result["epochs"] == 1
    teacher_at = next(i for i, line in enumerate(lines) if line.startswith(f"teacher {t_arch}"))
    epoch_at = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1"))
    assert teacher_at < epoch_at
    if METHODS[name].init is not None:
        init_at = next(i for i, line in enumerate(lines) if line.startswith("init epoch 1/1"))
        assert teacher_at < init_at < epoch_at

    rows = read_metrics(result["run_dir"])
    assert len(rows) == 1
    row = rows[0]
    for key in ("train_loss", "train_cls", "train_div"):
        assert math.isfinite(row[key]), (key, row)
    assert ("train_kd" in row) == has_main_term(name), sorted(row)
    if "train_kd" in row:
        assert math.isfinite(row["train_kd"])
    assert_loss_is_weighted_sum(row, *METHODS[name].weights)

    ckpt = last_checkpoint(result, s_arch)
    assert ckpt["model_name"] == s_arch and ckpt["epoch"] == 1
    student = model_dict[s_arch](num_classes=100)
    student.load_state_dict(ckpt["model"], strict=True)
    assert (ckpt["opt"]["gamma"], ckpt["opt"]["alpha"], ckpt["opt"]["beta"]) == METHODS[name].weights

    task_state = ckpt["task"]
    assert all(k.startswith(("student.", "term.")) for k in task_state), sorted(task_state)
    assert {k[len("student."):] for k in task_state if k.startswith("student.")} == set(ckpt["model"])
    for key, value in ckpt["model"].items():
        assert torch.equal(task_state["student." + key], value), key
    term_keys = {k for k in task_state if k.startswith("term.")}
    for prefix in HEADS[name]:
        assert any(k.startswith(prefix) for k in term_keys), (prefix, sorted(term_keys))
    assert all(k.startswith(HEADS[name]) for k in term_keys) if HEADS[name] else not term_keys, sorted(term_keys)


# ----------------------------------------------------------------------------------- weights and flags

@pytest.mark.parametrize("name, flags, expected", [
    ("kd", [], METHODS["kd"].weights),
    ("hint", [], METHODS["hint"].weights),
    ("attention", ["-r", "0.5", "-a", "0.25", "-b", "7"], (0.5, 0.25, 7.0)),
    ("vid", ["-b", "3"], (METHODS["vid"].weights[0], METHODS["vid"].weights[1], 3.0)),
    ("kd", ["--gamma", "0", "--alpha", "1"], (0.0, 1.0, METHODS["kd"].weights[2])),
])
def test_paper_weights_unless_flags_given(name, flags, expected, fake_root, teachers, tmp_path):
    result = run_student(student_argv(fake_root, tmp_path, teachers["resnet8"], "--distill", name, *flags))
    ckpt = last_checkpoint(result)
    assert (ckpt["opt"]["gamma"], ckpt["opt"]["alpha"], ckpt["opt"]["beta"]) == expected
    gamma, alpha, beta = expected
    # The reference's run-folder name records the weights actually used.
    assert Path(result["run_dir"]).name == f"S:resnet8_T:resnet8_cifar100_{name}_r:{gamma}_a:{alpha}_b:{beta}_1"
    # ... and the loss used them.
    assert_loss_is_weighted_sum(read_metrics(result["run_dir"])[0], gamma, alpha, beta)


# ---------------------------------------------------------------------------- gradients and the teacher

@pytest.mark.parametrize("name", ["hint", "correlation", "vid", "factor", "attention", "reviewkd", "ofd", "kdsvd"])
def test_gradients_reach_only_the_student_and_its_heads(name):
    task = build_task(name, "resnet8", "resnet8")
    method, teacher, student, term = METHODS[name], task.teacher, task.student, task.term
    if method.init is not None and method.init.finish is not None:
        method.init.finish(term)  # as after the init stage
    task.train()
    assert not any(m.training for m in teacher.modules()), "task.train() put the teacher in train mode"
    assert student.training

    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in task.parameters()}, "the teacher is among the task's parameters"
    state = task.state_dict()
    assert not any("teacher" in k for k in state)
    assert set(state) == {f"student.{k}" for k in student.state_dict()} | {f"term.{k}" for k in term.state_dict()}

    teacher_before = snapshot(teacher)
    # No graph behind the teacher's outputs, yet ordinary tensors the losses may save for backward.
    feats_t, logits_t = task.teacher_outputs(torch.randn(2, 3, 32, 32))
    assert all(not t.is_inference() and t.grad_fn is None for t in [*feats_t, logits_t])
    torch.manual_seed(1)
    out = task(torch.randn(8, 3, 32, 32), torch.randint(0, 100, (8,)))
    assert set(out.terms) == {"cls", "div", "kd"}
    out.loss.backward()

    for pname, p in teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, pname
    assert not changed(teacher_before, teacher), "the teacher's batch-norm statistics moved"
    for pname, p in student.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"student.{pname} got no gradient"
    heads = [(n, p) for n, p in term.named_parameters() if p.requires_grad]
    assert bool(heads) == bool(HEADS[name])
    for pname, p in heads:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"term.{pname} got no gradient"
    if name == "factor":
        paraphraser = term.adapt_t.paraphraser
        assert not paraphraser.training
        for pname, p in paraphraser.named_parameters():
            assert not p.requires_grad and p.grad is None, pname


# ------------------------------------------------------------------------------------------- init stage

@pytest.mark.parametrize("name, t_arch", [("abound", "wrn_16_2"), ("fsp", "resnet8")])
def test_init_stage_trains_the_feature_modules_only(name, t_arch, fake_root):
    task = build_task(name, t_arch, "resnet8")
    method, student, term = METHODS[name], task.student, task.term
    assert not task.use_term
    assert all(not p.requires_grad for p in term.parameters()), "the init-only term is trainable in the main stage"
    classifier = student.get_classifier()
    classifier_before = snapshot(classifier)
    student_before, term_before, teacher_before = snapshot(student), snapshot(term), snapshot(task.teacher)

    loader, normalize = init_loader(fake_root)
    run_init_stage(task, method, loader, normalize, init_opt(), CPU, seed=0, log=quiet)

    assert not changed(classifier_before, classifier), "the init stage changed the student's classifier"
    moved = changed(student_before, student)
    assert any(k.endswith("weight") and not k.startswith(student.classifier_name) for k in moved)
    assert not changed(teacher_before, task.teacher)
    if name == "abound":
        assert {k for k in changed(term_before, term) if k.startswith("adapt_s.")}, "the connectors did not train"
    # Afterwards the term is frozen again and the student is fully trainable.
    assert all(not p.requires_grad for p in term.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert all(not p.requires_grad for p in task.teacher.parameters())


def test_factor_init_stage_trains_then_freezes_the_paraphraser(fake_root):
    task = build_task("factor", "resnet8", "resnet8")
    paraphraser, translator = task.term.adapt_t.paraphraser, task.term.adapt_s
    weight_before = paraphraser.encoder[0].weight.detach().clone()
    translator_before = snapshot(translator)

    loader, normalize = init_loader(fake_root)
    run_init_stage(task, METHODS["factor"], loader, normalize, init_opt(), CPU, seed=0, log=quiet)

    assert not torch.equal(paraphraser.encoder[0].weight, weight_before), "the init stage did not train it"
    assert not changed(translator_before, translator), "the translator belongs to the main stage"
    assert all(not p.requires_grad for p in paraphraser.parameters())
    assert not paraphraser.training
    task.train()
    assert not paraphraser.training, "task.train() put the frozen paraphraser back in train mode"
    assert all(p.requires_grad for p in translator.parameters())


def test_factor_init_stage_leaves_the_student_untouched(fake_root):
    # FT's init stage trains the paraphraser on teacher features alone; the reference runs it with
    # model_s.eval(), so nothing of the student (batch-norm statistics included) may change.
    task = build_task("factor", "resnet8", "resnet8")
    student_before = snapshot(task.student)
    loader, normalize = init_loader(fake_root)
    run_init_stage(task, METHODS["factor"], loader, normalize, init_opt(), CPU, seed=0, log=quiet)
    moved = changed(student_before, task.student)
    assert not moved, f"the factor init stage changed the student: {sorted(moved)[:5]}"


@pytest.mark.parametrize("name, t_arch", [("abound", "wrn_16_2"), ("fsp", "resnet8"), ("factor", "resnet8")])
def test_init_methods_end_to_end(name, t_arch, fake_root, teachers, tmp_path, capsys):
    argv = student_argv(fake_root, tmp_path, teachers[t_arch], "--distill", name)
    result = run_student(argv)
    out = capsys.readouterr().out
    assert re.search(r"^init epoch 1/1 ", out, re.M)
    row = read_metrics(result["run_dir"])[0]
    assert ("train_kd" in row) == has_main_term(name), sorted(row)

    # The main-stage optimizer holds the student and the main-stage heads only.
    task = build_task(name, t_arch, "resnet8")
    if METHODS[name].init.finish is not None:
        METHODS[name].init.finish(task.term)
    expected = len([p for p in task.parameters() if p.requires_grad])
    n_student = len(list(task.student.parameters()))
    if name == "factor":
        assert expected == n_student + len(list(task.term.adapt_s.parameters()))
    else:
        assert expected == n_student
    ckpt = last_checkpoint(result)
    assert len(ckpt["optimizer"]["param_groups"][0]["params"]) == expected


# ------------------------------------------------------------------------------- errors before training

def test_fsp_needs_identical_channel_lists(fake_root, teachers, tmp_path, capsys):
    err = usage_error(capsys, student_argv(fake_root, tmp_path, teachers["resnet8"], "--distill", "fsp",
                                           "--model_s", "wrn_16_2"))
    assert "identical channel lists" in err


def test_hint_layer_outside_the_choices_is_rejected(fake_root, teachers, tmp_path, capsys):
    err = usage_error(capsys, student_argv(fake_root, tmp_path, teachers["resnet8"], "--distill", "hint",
                                           "--hint_layer", "5"))
    assert "--hint_layer" in err and "invalid choice" in err


def test_hint_layer_beyond_the_student_maps_is_rejected(fake_root, teachers, tmp_path, capsys):
    # resnet8 has 5 features; index 4 is the pooled vector, not a map.
    err = usage_error(capsys, student_argv(fake_root, tmp_path, teachers["resnet8"], "--distill", "hint",
                                           "--hint_layer", "4"))
    assert "--hint_layer 4" in err and "out of range" in err


def test_hint_layer_beyond_the_teacher_maps_is_rejected(fake_root, teachers, tmp_path, capsys):
    # vgg8 (student) has 6 features, so index 4 is one of its maps; resnet8 (teacher) has 5, and its
    # index 4 is the pooled vector. The error must say the hint layer is the problem.
    err = usage_error(capsys, student_argv(fake_root, tmp_path, teachers["resnet8"], "--distill", "hint",
                                           "--model_s", "vgg8", "--hint_layer", "4"))
    assert "--hint_layer" in err and "teacher" in err, err


def test_teacher_weights_of_another_architecture(fake_root, tmp_path, capsys):
    path = save_teacher(tmp_path / "models", "resnet8", weights_of="resnet14")
    err = usage_error(capsys, student_argv(fake_root, tmp_path / "runs", path))
    assert re.search(r"resnet8(?!_vanilla)", err), err  # names the architecture, not just the path
    assert "resnet14" not in str(path)


def test_model_t_overrides_the_folder_name(fake_root, tmp_path):
    path = save_teacher(tmp_path / "models", "resnet8", weights_of="resnet14")
    result = run_student(student_argv(fake_root, tmp_path / "runs", path, "--model_t", "resnet14"))
    assert "_T:resnet14_" in Path(result["run_dir"]).name
    assert last_checkpoint(result)["opt"]["model_t"] == "resnet14"


def test_missing_teacher_checkpoint(fake_root, tmp_path, capsys):
    path = tmp_path / "models" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    err = usage_error(capsys, student_argv(fake_root, tmp_path / "runs", path))
    assert "does not exist" in err and str(path) in err


def test_missing_teacher_checkpoint_in_an_unnamed_folder(fake_root, tmp_path, capsys):
    # A mistyped --path_t must be reported as missing, not as a folder name to fix with --model_t.
    path = tmp_path / "modles" / "resnt8_vanilla" / "ckpt_epoch_240.pth"
    err = usage_error(capsys, student_argv(fake_root, tmp_path / "runs", path))
    assert "does not exist" in err, err


def test_folder_without_an_architecture_suggests_model_t(fake_root, tmp_path, capsys):
    path = save_teacher(tmp_path, "resnet8")
    renamed = tmp_path / "my_teachers" / "best.pth"
    renamed.parent.mkdir()
    path.rename(renamed)
    err = usage_error(capsys, student_argv(fake_root, tmp_path / "runs", renamed))
    assert "--model_t" in err and "my_teachers" in err


def test_unknown_model_t(fake_root, teachers, tmp_path, capsys):
    err = usage_error(capsys, student_argv(fake_root, tmp_path, teachers["resnet8"], "--model_t", "resnet9"))
    assert "resnet9" in err


# ---------------------------------------------------------------------------------- teacher evaluation

@pytest.mark.parametrize("fold", [[], ["--no-fold_teacher_bn"]], ids=["folded", "unfolded"])
def test_teacher_is_evaluated_before_training(fold, tmp_path, capsys):
    """The printed teacher accuracy equals an independent evaluation on the same test subset,
    with the teacher's batch norms folded (the default) or not.

    The test labels are built from the teacher's own ranking (top-1, 2nd, 6th, top-1, ...), so the
    accuracies are far from the trivial 0-1% of an untrained network."""
    root = write_fake_cifar(tmp_path / "data", n_train=16, n_test=64, seed=3)
    path_t = save_teacher(tmp_path / "models", "resnet8", seed=4)
    teacher = model_dict["resnet8"](num_classes=100)
    teacher.load_state_dict(torch.load(path_t, weights_only=True)["model"])
    teacher.eval()
    rows, _ = read_fake_split(root, train=False)
    x = torch.as_tensor(rows).view(-1, 3, 32, 32).float() / 255
    x = (x - torch.tensor(REF_MEAN).view(1, 3, 1, 1)) / torch.tensor(REF_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ranking = teacher(x).argsort(dim=1, descending=True)
    rank_of_label = [0, 1, 5, 0]
    labels = [int(ranking[i, rank_of_label[i % 4]]) for i in range(len(rows))]
    write_cifar_split(root / "cifar-100-python" / "test", rows, labels, "test")

    n_test = 48  # the first 48 of 64
    hits1 = sum(rank_of_label[i % 4] < 1 for i in range(n_test))
    hits5 = sum(rank_of_label[i % 4] < 5 for i in range(n_test))
    expected1, expected5 = 100 * hits1 / n_test, 100 * hits5 / n_test
    with torch.no_grad():  # the independent evaluation itself, not just its construction
        top5 = teacher(x[:n_test]).topk(5, dim=1).indices
    truth = torch.tensor(labels[:n_test])
    assert 100 * float((top5[:, 0] == truth).float().mean()) == pytest.approx(expected1)
    assert 100 * float((top5 == truth[:, None]).any(1).float().mean()) == pytest.approx(expected5)

    capsys.readouterr()
    result = run_student(student_argv(root, tmp_path / "runs", path_t, *fold, n_test=n_test))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    teacher_lines = [i for i, line in enumerate(lines) if line.startswith("teacher ")]
    assert len(teacher_lines) == 1
    line = lines[teacher_lines[0]]
    first_epoch = next(i for i, text in enumerate(lines) if re.match(r"(init )?[Ee]poch", text))
    assert teacher_lines[0] < first_epoch
    assert "resnet8" in line and str(path_t) in line
    match = re.search(r"acc@1 ([\d.]+) acc@5 ([\d.]+)", line)
    assert match, line
    assert float(match.group(1)) == pytest.approx(expected1, abs=0.006)
    assert float(match.group(2)) == pytest.approx(expected5, abs=0.006)
    assert json.loads(lines[-1]) == result


# ------------------------------------------------------------------------------------- resume and seeds

@pytest.mark.parametrize("name", ["attention", "factor"])
def test_resume_equals_an_uninterrupted_run(name, fake_root, teachers, tmp_path):
    def argv(trial: str, epochs: int, *extra: str) -> list[str]:
        return student_argv(fake_root, tmp_path, teachers["resnet8"], "--distill", name, "-t", trial,
                            "--epochs", str(epochs), "--seed", "9", "--lr_decay_epochs", "1",
                            "--learning_rate", "0.1", "--save_freq", "1", *extra, n_train=32)

    full = run_student(argv("full", 2))
    part = run_student(argv("part", 1), global_seed=0)
    resumed_from = Path(part["run_dir"]) / "resnet8_last.pth"
    # A different global generator state: the resumed run must not depend on it.
    resumed = run_student(argv("part", 2, "--resume", str(resumed_from)), global_seed=12345)
    assert resumed["run_dir"] == part["run_dir"]

    a, b = last_checkpoint(full), last_checkpoint(resumed)
    for key in ("model", "task", "optimizer", "scheduler", "epoch", "accuracy", "best_acc", "seed"):
        assert_nested_equal(a[key], b[key], key)
    assert a["epoch"] == 2
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731
    assert strip(read_metrics(full["run_dir"])) == strip(read_metrics(resumed["run_dir"]))
    assert {k: v for k, v in full.items() if k != "run_dir"} == {k: v for k, v in resumed.items() if k != "run_dir"}


@pytest.fixture(scope="module")
def kd_run(fake_root, teachers, tmp_path_factory) -> Path:
    """A finished one-epoch kd run (resnet8 -> resnet8); tests copy its folder before resuming it."""
    save = tmp_path_factory.mktemp("kd_run")
    return Path(run_student(student_argv(fake_root, save, teachers["resnet8"], "--distill", "kd"))["run_dir"])


@pytest.mark.parametrize("flags, old", [
    (["--distill", "attention"], "kd"),  # same state-dict keys as kd: it would continue silently
    (["--distill", "hint"], "kd"),  # the task state lacks the regressor
    (["--model_s", "resnet14"], "resnet8"),  # another student architecture
])
def test_resume_with_other_method_or_student_is_rejected(flags, old, kd_run, fake_root, teachers, tmp_path, capsys):
    # As train_teacher.py does for --model: a run is continued with what it was started with, and
    # a mismatch is a usage error before training, not a traceback nor a silently mixed run.
    run_dir = shutil.copytree(kd_run, tmp_path / kd_run.name)
    argv = student_argv(fake_root, tmp_path, teachers["resnet8"], "--epochs", "2",
                        "--resume", str(run_dir / "resnet8_last.pth"), *flags)
    torch.manual_seed(0)
    err = usage_error(capsys, argv)
    assert flags[1] in err and re.search(rf"\b{old}\b", err), err
    assert len(read_metrics(run_dir)) == 1


def test_seed_decides_the_student_and_its_heads(fake_root, teachers, tmp_path):
    # Two runs with the same --seed from different global generator states (another run earlier
    # in the process, or a caller) must give the same student and heads.
    def one(trial: str, global_seed: int) -> dict:
        argv = student_argv(fake_root, tmp_path, teachers["resnet8"], "--distill", "hint", "-t", trial,
                            "--seed", "7")
        return last_checkpoint(run_student(argv, global_seed=global_seed))

    a, b = one("a", 100), one("b", 200)
    assert_nested_equal(a["task"], b["task"], "task")
