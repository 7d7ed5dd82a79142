"""train_teacher.py end to end on fake CIFAR-100, and the helpers it is built from (checkpoints,
logging, metrics, schedule, seeding, resume, failure handling).

Every run is tiny (resnet8, 32 training / 16 test images, batch 16, CPU, no workers), so the whole
module stays well under a minute on two cores.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train_teacher
from checks import assert_nested_equal
from fakedata import read_fake_split, write_fake_cifar
from kdzoo.helper import trainer as trainer_mod
from kdzoo.helper.checkpoint import CheckpointError, load_model_weights, model_name_from_path, save_checkpoint
from kdzoo.helper.logger import read_metrics
from kdzoo.helper.loops import StepOutput
from kdzoo.helper.trainer import ClassificationTask
from kdzoo.helper.util import AverageMeter, accuracy, correct_topk
from kdzoo.models import model_dict

# The reference's CIFAR-100 normalisation (its dataset code's constants), written out independently.
REF_MEAN = (0.5071, 0.4867, 0.4408)
REF_STD = (0.2675, 0.2565, 0.2761)

N_TRAIN, N_TEST, BATCH = 32, 16, 16
STEPS_PER_EPOCH = N_TRAIN // BATCH
COMMON = [
    "--model", "resnet8", "--device", "cpu", "--num_workers", "0", "--batch_size", str(BATCH),
    "--train_subset", str(N_TRAIN), "--test_subset", str(N_TEST), "--print_freq", "1000",
]
ROW_KEYS = {"epoch", "lr", "train_loss", "train_acc", "test_acc", "test_acc_top5", "seconds"}
TIMING_KEYS = {"seconds", "images_per_sec"}


# --------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    # Mostly class 0 with some class 5: the model quickly learns to answer 0, so the test accuracy
    # (test labels cycle 0, 1, 2, ...) becomes non-zero and a best checkpoint gets written.
    labels = [5 if i % 4 == 0 else 0 for i in range(48)]
    return write_fake_cifar(tmp_path_factory.mktemp("fake"), n_train=48, n_test=32, seed=0, labels_train=labels)


def run_main(data: Path, save: Path, *extra: str, global_seed: int | None = 1234) -> tuple[dict, str]:
    """train_teacher.main in-process; returns (result, captured stdout).

    ``global_seed`` pins torch's global generator first, as a fresh process would have it, so a test
    of one feature does not depend on what earlier in-process runs left in the generator; the seed
    tests pass different values to check that ``--seed`` alone decides the run."""
    argv = [*COMMON, "--data_folder", str(data), "--save_folder", str(save), *extra]
    if global_seed is not None:
        torch.manual_seed(global_seed)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = train_teacher.main(argv)
    return result, buf.getvalue()


def usage_error(capsys, argv: list[str]) -> str:
    """Run main expecting an argparse-style error (exit code 2); return stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_teacher.main(argv)
    assert exc.value.code == 2, f"expected exit code 2, got {exc.value.code!r}"
    return capsys.readouterr().err


def load(path: Path) -> dict:
    # weights_only: our checkpoints must be loadable without unpickling code.
    return torch.load(path, map_location="cpu", weights_only=True)


def independent_eval(weights: dict, data: Path, n: int, arch: str = "resnet8") -> dict:
    """Accuracy of ``weights`` on the first ``n`` test images, computed without the project's data
    pipeline or metric code."""
    raw, labels = read_fake_split(data, train=False)
    x = torch.from_numpy(raw[:n].copy()).view(-1, 3, 32, 32).float() / 255.0
    x = (x - torch.tensor(REF_MEAN).view(1, 3, 1, 1)) / torch.tensor(REF_STD).view(1, 3, 1, 1)
    y = torch.tensor(labels[:n])
    model = model_dict[arch](num_classes=100)
    model.load_state_dict(weights, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(x).double()
    order = logits.argsort(dim=1, descending=True)
    rank = (order == y.view(-1, 1)).double().argmax(dim=1)  # position of the target in the ranking
    return {
        "acc": 100.0 * (rank < 1).double().mean().item(),
        "acc_top5": 100.0 * (rank < 5).double().mean().item(),
        "loss": F.cross_entropy(logits, y).item(),
    }


def reference_lr(base: float, rate: float, milestones: list[int], epoch: int) -> float:
    """The reference's adjust_learning_rate: base * rate ** (number of milestones passed)."""
    return base * rate ** sum(1 for m in milestones if epoch > m)


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("."))


# ------------------------------------------------------------------------------ one 3-epoch run, shared

def base_args(epochs: int) -> tuple[str, ...]:
    return ("--epochs", str(epochs), "--seed", "11", "--learning_rate", "0.1", "--lr_decay_epochs", "1,2",
            "--lr_decay_rate", "0.1", "--save_freq", "2")


BASE_ARGS = base_args(3)


@pytest.fixture(scope="module")
def base_run(data_root, tmp_path_factory):
    save = tmp_path_factory.mktemp("base_save")
    result, out = run_main(data_root, save, *BASE_ARGS)
    run_dir = save / "resnet8_vanilla"
    return {"save": save, "run_dir": run_dir, "result": result, "stdout": out, "rows": read_metrics(run_dir)}


def test_run_folder_and_files(base_run):
    run_dir = base_run["run_dir"]
    assert run_dir.is_dir()
    names = {p.name for p in run_dir.iterdir()}
    # save_freq 2 over 3 epochs: epoch 2, and always the final epoch; never epoch 1.
    assert {"resnet8_last.pth", "resnet8_best.pth", "ckpt_epoch_2.pth", "ckpt_epoch_3.pth", "metrics.jsonl"} <= names
    assert "ckpt_epoch_1.pth" not in names
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert temp_files(run_dir) == []


def test_metrics_one_row_per_epoch(base_run):
    rows = base_run["rows"]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert ROW_KEYS <= row.keys()
        assert all(isinstance(row[k], (int, float)) and math.isfinite(row[k]) for k in ROW_KEYS)
        assert 0 <= row["test_acc"] <= row["test_acc_top5"] <= 100
        assert row["seconds"] > 0


def test_final_json_line_matches_metrics(base_run):
    lines = base_run["stdout"].strip().splitlines()
    final = json.loads(lines[-1])
    rows = base_run["rows"]
    assert final == base_run["result"]
    assert final["epochs"] == 3
    assert Path(final["run_dir"]).resolve() == base_run["run_dir"].resolve()
    assert final["last_acc"] == rows[-1]["test_acc"]
    assert final["best_acc"] == max(r["test_acc"] for r in rows)
    # Only one JSON result line.
    assert sum(1 for line in lines if line.startswith("{")) == 1


def test_checkpoints_have_reference_format(base_run):
    run_dir, rows = base_run["run_dir"], base_run["rows"]
    for name, epoch in (("resnet8_last.pth", 3), ("ckpt_epoch_3.pth", 3), ("ckpt_epoch_2.pth", 2)):
        state = load(run_dir / name)
        assert state["epoch"] == epoch
        assert state["accuracy"] == rows[epoch - 1]["test_acc"]
        model = model_dict["resnet8"](num_classes=100)
        model.load_state_dict(state["model"], strict=True)
    accs = [r["test_acc"] for r in rows]
    assert max(accs) > 0, "fixture data should make the model score above 0 (else no best checkpoint)"
    best = load(run_dir / "resnet8_best.pth")
    # The reference keeps the first epoch reaching the best accuracy (strict improvement).
    assert best["epoch"] == accs.index(max(accs)) + 1
    assert best["accuracy"] == max(accs)


def test_logged_test_metrics_match_an_independent_evaluation(base_run, data_root):
    run_dir, rows = base_run["run_dir"], base_run["rows"]
    for name, epoch in (("ckpt_epoch_2.pth", 2), ("resnet8_last.pth", 3)):
        ours = independent_eval(load(run_dir / name)["model"], data_root, N_TEST)
        row = rows[epoch - 1]
        assert row["test_acc"] == pytest.approx(ours["acc"], abs=1e-6)
        assert row["test_acc_top5"] == pytest.approx(ours["acc_top5"], abs=1e-6)
        assert row["test_loss"] == pytest.approx(ours["loss"], rel=1e-4)


def test_lr_schedule_follows_the_reference_rule(base_run):
    milestones, base, rate = [1, 2], 0.1, 0.1
    lrs = [r["lr"] for r in base_run["rows"]]
    expected = [reference_lr(base, rate, milestones, e) for e in (1, 2, 3)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx([0.1, 0.01, 0.001])
    # The optimizer saved after epoch 3 is set up for epoch 4.
    state = load(base_run["run_dir"] / "resnet8_last.pth")
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(reference_lr(base, rate, milestones, 4))


def test_tensorboard_scalars_match_metrics(base_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(base_run["run_dir"] / "tensorboard"))
    acc.Reload()
    rows = base_run["rows"]
    tags = acc.Tags()["scalars"]
    test_acc_tag = next(t for t in tags if t.replace("/", "_") == "test_acc")
    events = acc.Scalars(test_acc_tag)
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([r["test_acc"] for r in rows], rel=1e-6)
    lr_events = acc.Scalars("lr")
    assert [e.value for e in lr_events] == pytest.approx([r["lr"] for r in rows], rel=1e-6)


# ------------------------------------------------------------------------------------------------ resume

def test_resume_replays_an_uninterrupted_run_exactly(base_run, data_root, tmp_path):
    run_main(data_root, tmp_path, *base_args(2))
    run_b = tmp_path / "resnet8_vanilla"
    assert load(run_b / "resnet8_last.pth")["epoch"] == 2
    result, out = run_main(data_root, tmp_path / "ignored", *base_args(3), "--resume", str(run_b / "resnet8_last.pth"))
    assert Path(result["run_dir"]).resolve() == run_b.resolve()
    assert not (tmp_path / "ignored" / "resnet8_vanilla").exists()

    a = load(base_run["run_dir"] / "resnet8_last.pth")
    b = load(run_b / "resnet8_last.pth")
    assert b["epoch"] == 3
    for key in ("model", "task", "optimizer", "scheduler", "accuracy", "best_acc", "seed"):
        assert_nested_equal(a[key], b[key], key)
    assert without_timing(read_metrics(run_b)) == without_timing(base_run["rows"])
    assert result["best_acc"] == base_run["result"]["best_acc"]
    assert result["last_acc"] == base_run["result"]["last_acc"]
    assert json.loads(out.strip().splitlines()[-1]) == result


def test_resume_of_a_finished_run_trains_nothing(base_run, data_root, tmp_path, monkeypatch, capsys):
    run = tmp_path / "resnet8_vanilla"
    shutil.copytree(base_run["run_dir"], run)
    before = {p.name: p.read_bytes() for p in run.glob("*.pth")}
    metrics_before = (run / "metrics.jsonl").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(trainer_mod, "train_epoch", no_training)
    capsys.readouterr()
    result = train_teacher.main([*COMMON, "--data_folder", str(data_root), *BASE_ARGS,
                                 "--resume", str(run / "resnet8_last.pth")])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == result
    assert result["best_acc"] == base_run["result"]["best_acc"]
    assert result["last_acc"] == base_run["result"]["last_acc"]
    assert {p.name: p.read_bytes() for p in run.glob("*.pth")} == before
    assert (run / "metrics.jsonl").read_text() == metrics_before


# ------------------------------------------------------------------------------------------------- seeds

def one_epoch(data: Path, save: Path, *extra: str, global_seed: int) -> dict:
    run_main(data, save, "--epochs", "1", *extra, global_seed=global_seed)
    trial = next((extra[i + 1] for i, a in enumerate(extra) if a in ("-t", "--trial")), "0")
    return load(save / train_teacher.run_name("resnet8", trial) / "resnet8_last.pth")


def test_trial_folder_and_final_json_line(data_root, tmp_path, capsys):
    capsys.readouterr()
    result = train_teacher.main([*COMMON, "--data_folder", str(data_root), "--save_folder", str(tmp_path),
                                 "--epochs", "1", "--seed", "3", "-t", "3"])
    out = capsys.readouterr().out
    run_dir = tmp_path / "resnet8_vanilla_trial_3"
    assert (run_dir / "resnet8_last.pth").is_file()
    assert not (tmp_path / "resnet8_vanilla").exists()
    final = json.loads(out.strip().splitlines()[-1])
    assert set(final) >= {"best_acc", "last_acc", "epochs", "run_dir"}
    assert final == result
    assert Path(final["run_dir"]).resolve() == run_dir.resolve()
    rows = read_metrics(run_dir)
    assert final["epochs"] == 1 and len(rows) == 1
    assert final["last_acc"] == rows[0]["test_acc"]
    # The default learning rate for resnet8 is the reference's 0.05.
    assert rows[0]["lr"] == pytest.approx(0.05)
    assert load(run_dir / "resnet8_last.pth")["opt"]["learning_rate"] == pytest.approx(0.05)


def test_same_seed_same_weights_other_seed_other_weights(data_root, tmp_path):
    # The global generator is left in different states before the runs (as by earlier work in the
    # same process, or by a caller): --seed must decide everything, the initial weights included.
    a = one_epoch(data_root, tmp_path, "--seed", "7", "-t", "a", global_seed=100)
    b = one_epoch(data_root, tmp_path, "--seed", "7", "-t", "b", global_seed=200)
    c = one_epoch(data_root, tmp_path, "--seed", "8", "-t", "c", global_seed=100)
    assert a["seed"] == b["seed"] == 7 and c["seed"] == 8
    assert_nested_equal(a["model"], b["model"], "model")
    differs = [k for k in a["model"] if a["model"][k].is_floating_point() and not torch.equal(a["model"][k], c["model"][k])]
    assert differs, "different seeds gave identical weights"


def test_without_seed_a_seed_is_recorded_and_replays(data_root, tmp_path):
    a = one_epoch(data_root, tmp_path, "-t", "noseed", global_seed=300)
    assert isinstance(a["seed"], int)
    assert a["opt"]["seed"] is None
    b = one_epoch(data_root, tmp_path, "--seed", str(a["seed"]), "-t", "replay", global_seed=400)
    assert_nested_equal(a["model"], b["model"], "model")


def test_small_model_trains_with_lr_001(data_root, tmp_path):
    """A real run of ShuffleV2 (the cheapest of the three): the metrics and the checkpoint's options
    show the reference's 0.01."""
    argv = [*COMMON, "--data_folder", str(data_root), "--save_folder", str(tmp_path), "--model", "ShuffleV2",
            "--epochs", "1", "--train_subset", "8", "--test_subset", "8", "--batch_size", "8", "--seed", "0"]
    with contextlib.redirect_stdout(io.StringIO()):
        train_teacher.main(argv)
    run_dir = tmp_path / "ShuffleV2_vanilla"
    assert read_metrics(run_dir)[0]["lr"] == pytest.approx(0.01)
    state = load(run_dir / "ShuffleV2_last.pth")
    assert state["opt"]["learning_rate"] == pytest.approx(0.01)
    assert state["model_name"] == "ShuffleV2"


@pytest.mark.parametrize("arch, lr", [("MobileNetV2", 0.01), ("ShuffleV1", 0.01), ("ShuffleV2", 0.01),
                                      ("resnet8", 0.05), ("wrn_16_2", 0.05), ("vgg8", 0.05), ("resnet32x4", 0.05)])
def test_default_learning_rate_per_model(arch, lr, data_root, tmp_path, monkeypatch):
    """The learning rate handed to the training driver (fit is replaced: no training needed)."""
    seen = {}

    def fake_fit(task, model_name, schedule, env, *args, **kwargs):
        seen.update(name=model_name, lr=schedule.learning_rate, options=args[5])
        return {}

    import kdzoo.helper.trainer

    monkeypatch.setattr(kdzoo.helper.trainer, "fit", fake_fit)
    train_teacher.main([*COMMON, "--data_folder", str(data_root), "--save_folder", str(tmp_path), "--model", arch,
                        "--epochs", "1"])
    assert seen["name"] == arch
    assert seen["lr"] == pytest.approx(lr)
    assert seen["options"]["learning_rate"] == pytest.approx(lr)
    # An explicit --learning_rate wins.
    train_teacher.main([*COMMON, "--data_folder", str(data_root), "--save_folder", str(tmp_path), "--model", arch,
                        "--epochs", "1", "--learning_rate", "0.2"])
    assert seen["lr"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------------- refusing to overwrite

def test_refuses_to_overwrite_an_existing_run(data_root, tmp_path, capsys):
    argv = [*COMMON, "--data_folder", str(data_root), "--save_folder", str(tmp_path), "--epochs", "1", "--seed", "1"]
    with contextlib.redirect_stdout(io.StringIO()):
        train_teacher.main(argv)
    run_dir = tmp_path / "resnet8_vanilla"
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.pth")}
    metrics = (run_dir / "metrics.jsonl").read_text()
    err = usage_error(capsys, argv)
    assert "--resume" in err
    assert str(run_dir) in err
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.pth")} == before
    assert (run_dir / "metrics.jsonl").read_text() == metrics


# ------------------------------------------------------------------------------------ atomic checkpoints

def _broken_save(real_save, exc: BaseException):
    def broken(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])  # a partial file, as from a crash or a full disk
        raise exc
    return broken


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "run" / "resnet8_last.pth"
    old = {"model": {"w": torch.arange(6.0)}, "epoch": 1, "accuracy": 1.5}
    save_checkpoint(old, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _broken_save(torch.save, exc))
    with pytest.raises(type(exc)):
        save_checkpoint({"model": {"w": torch.zeros(6)}, "epoch": 2, "accuracy": 2.5}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert_nested_equal(load(path), old)
    assert sorted(p.name for p in path.parent.iterdir()) == ["resnet8_last.pth"]


def test_failed_first_checkpoint_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "resnet8_best.pth"
    monkeypatch.setattr(torch, "save", _broken_save(torch.save, OSError("boom")))
    with pytest.raises(OSError):
        save_checkpoint({"model": {}, "epoch": 1}, path)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_overwrite_succeeds_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a" / "b" / "ckpt_epoch_1.pth"
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, path)
    new = {"model": {"w": torch.full((3,), 2.0)}, "epoch": 2}
    save_checkpoint(new, path)
    assert_nested_equal(load(path), new)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt_epoch_1.pth"]


def test_checkpoint_file_permissions_follow_the_umask(tmp_path):
    """Checkpoints are shared (teachers are read by other users' student runs): they should get the
    same permissions as any file the process creates (``torch.save(path)`` gives 0o666 & ~umask),
    not tempfile.mkstemp's private 0o600."""
    path = tmp_path / "resnet8_last.pth"
    save_checkpoint({"model": {}, "epoch": 1}, path)
    reference = tmp_path / "plain.pth"
    torch.save({"model": {}, "epoch": 1}, reference)
    assert oct(path.stat().st_mode & 0o777) == oct(reference.stat().st_mode & 0o777)


# --------------------------------------------------------------------------------------- non-finite loss

def nan_task_factory(bad_call: int, last_path: Path, seen: dict):
    """A ClassificationTask whose loss is NaN on training step number ``bad_call`` (counted from 0
    over the whole run). It records the bytes of the last checkpoint at that moment."""

    class NaNTask(ClassificationTask):
        def forward(self, images, targets, *extras):
            out = super().forward(images, targets, *extras)
            call = seen["calls"]
            seen["calls"] += 1
            if call == bad_call:
                seen["last_bytes"] = last_path.read_bytes() if last_path.exists() else None
                out = StepOutput(out.loss * float("nan"), out.logits, out.terms)
            return out

    return NaNTask


@pytest.mark.parametrize(
    "bad_epoch, bad_step, print_freq", [(2, 1, 1000), (2, 0, 1), (1, 1, 1000)],
)
def test_non_finite_loss_stops_with_a_clear_message(bad_epoch, bad_step, print_freq, data_root, tmp_path,
                                                    monkeypatch, capsys):
    run_dir = tmp_path / "resnet8_vanilla"
    last = run_dir / "resnet8_last.pth"
    seen = {"calls": 0}
    bad_call = (bad_epoch - 1) * STEPS_PER_EPOCH + bad_step
    monkeypatch.setattr(train_teacher, "ClassificationTask", nan_task_factory(bad_call, last, seen))
    argv = [*COMMON, "--data_folder", str(data_root), "--save_folder", str(tmp_path), "--epochs", "3",
            "--seed", "2", "--save_freq", "1", "--print_freq", str(print_freq)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_teacher.main(argv)
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert re.search(rf"epoch {bad_epoch}\b.*step {bad_step}\b", captured.err), captured.err
    assert not any(line.startswith("{") for line in captured.out.splitlines()), "no result JSON after a failure"
    metrics = run_dir / "metrics.jsonl"
    assert (len(read_metrics(run_dir)) if metrics.exists() else 0) == bad_epoch - 1
    assert temp_files(run_dir) == []
    if bad_epoch == 1:
        assert not list(run_dir.glob("*.pth"))
        assert "no checkpoint" in captured.err
    else:
        assert str(last) in captured.err
        assert last.read_bytes() == seen["last_bytes"], "the last good checkpoint was modified"
        state = load(last)
        assert state["epoch"] == bad_epoch - 1
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
        assert not (run_dir / f"ckpt_epoch_{bad_epoch}.pth").exists()


def test_fit_raises_training_stopped_naming_epoch_and_step(data_root, tmp_path):
    """helper.trainer.fit directly: the TrainingStopped error chains the NonFiniteLossError."""
    from kdzoo.dataset import build_datasets, build_loaders
    from kdzoo.dataset.transforms import Normalize
    from kdzoo.helper.distributed import DistEnv
    from kdzoo.helper.loops import NonFiniteLossError
    from kdzoo.helper.trainer import Schedule, TrainingStopped, fit

    train_set, test_set = build_datasets("cifar100", data_root, train_limit=N_TRAIN, test_limit=N_TEST, uint8=True)
    train_loader, test_loader, spec = build_loaders(train_set, test_set, 8, 0, seed=0)
    seen = {"calls": 0}
    task_cls = nan_task_factory(5, tmp_path / "resnet8_last.pth", seen)  # epoch 2 (4 steps/epoch), step 1
    torch.manual_seed(0)
    task = task_cls(model_dict["resnet8"](num_classes=100))
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    with pytest.raises(TrainingStopped) as err, contextlib.redirect_stdout(io.StringIO()):
        fit(task, "resnet8", Schedule(3, 0.05, [2]), env, train_loader, test_loader,
            Normalize(spec.mean, spec.std), tmp_path, 0, {}, print_freq=1000)
    cause = err.value.__cause__
    assert isinstance(cause, NonFiniteLossError)
    assert (cause.epoch, cause.step) == (2, 1)
    assert "epoch 2" in str(err.value) and "step 1" in str(err.value)
    assert load(tmp_path / "resnet8_last.pth")["epoch"] == 1


# --------------------------------------------------------------------------------------------- bad input

def test_unknown_model_lists_the_choices(capsys, data_root, tmp_path):
    err = usage_error(capsys, [*COMMON, "--data_folder", str(data_root), "--save_folder", str(tmp_path),
                               "--model", "resnet9000"])
    assert "resnet9000" in err
    for name in ("resnet8x4", "wrn_40_2", "MobileNetV2", "ShuffleV1"):
        assert name in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["a,b", "150,100", "0,10", ""])
def test_bad_lr_decay_epochs(value, capsys, data_root, tmp_path):
    err = usage_error(capsys, [*COMMON, "--data_folder", str(data_root), "--save_folder", str(tmp_path),
                               "--lr_decay_epochs", value])
    assert "--lr_decay_epochs" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("present, missing", [((), ("train", "test")), (("train", "meta"), ("test",)),
                                              (("test", "meta"), ("train",))])
def test_data_folder_without_files_names_them(present, missing, capsys, data_root, tmp_path):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in present:
        shutil.copy(data_root / "cifar-100-python" / name, folder / name)
    err = usage_error(capsys, [*COMMON, "--data_folder", str(tmp_path / "data"), "--save_folder",
                               str(tmp_path / "save"), "--epochs", "1"])
    assert str(folder) in err
    listed = re.search(r"lacks the file\(s\) ([\w, ]+)", err)
    assert listed, err
    assert set(listed.group(1).replace(",", " ").split()) == set(missing)
    assert not (tmp_path / "save" / "resnet8_vanilla").exists()


@pytest.mark.parametrize("flag, value", [
    ("--save_freq", "0"), ("--print_freq", "0"), ("--train_subset", "0"), ("--test_subset", "0"),
    ("--learning_rate", "-0.1"),
])
def test_nonsense_numbers_are_usage_errors_before_training(flag, value, capsys, data_root, tmp_path, monkeypatch):
    """A value that can only crash (division by zero, empty data, SGD's lr check) or produce NaN
    results must be refused up front, naming the flag, not after an epoch of training."""
    def no_training(*args, **kwargs):
        raise AssertionError(f"{flag} {value} should be refused before training starts")

    monkeypatch.setattr(trainer_mod, "train_epoch", no_training)
    err = usage_error(capsys, [*COMMON, "--data_folder", str(data_root), "--save_folder", str(tmp_path),
                               "--epochs", "1", flag, value])
    assert flag in err
    assert not list(tmp_path.rglob("*.pth"))


def test_resume_of_a_missing_file(capsys, data_root, tmp_path):
    missing = tmp_path / "resnet8_vanilla" / "nope.pth"
    err = usage_error(capsys, [*COMMON, "--data_folder", str(data_root), "--resume", str(missing)])
    assert str(missing) in err and "does not exist" in err


@pytest.fixture(scope="module")
def small_run(data_root, tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("small")
    run_main(data_root, save, "--epochs", "1", "--seed", "4")
    return save / "resnet8_vanilla"


@pytest.mark.parametrize("style", ["plain", "namespace"])
def test_resume_of_a_weights_only_reference_checkpoint(style, small_run, capsys, data_root, tmp_path):
    state = {"model": load(small_run / "resnet8_last.pth")["model"], "epoch": 240, "accuracy": 70.0}
    if style == "namespace":  # the reference pickles its argparse options
        state["opt"] = argparse.Namespace(model="resnet8", learning_rate=0.05)
    path = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save(state, path)
    err = usage_error(capsys, [*COMMON, "--data_folder", str(data_root), "--resume", str(path)])
    assert str(path) in err
    assert "cannot resume" in err
    assert "metrics.jsonl" not in {p.name for p in path.parent.iterdir()}


def test_resume_of_a_truncated_checkpoint(small_run, capsys, data_root, tmp_path):
    path = tmp_path / "resnet8_vanilla" / "resnet8_last.pth"
    path.parent.mkdir()
    data = (small_run / "resnet8_last.pth").read_bytes()
    path.write_bytes(data[: len(data) // 3])
    err = usage_error(capsys, [*COMMON, "--data_folder", str(data_root), "--resume", str(path)])
    assert str(path) in err and "truncated" in err


def test_resume_of_another_models_checkpoint(small_run, capsys, data_root, tmp_path):
    run = tmp_path / "resnet8_vanilla"
    shutil.copytree(small_run, run)
    before = (run / "resnet8_last.pth").read_bytes()
    err = usage_error(capsys, [*COMMON, "--data_folder", str(data_root), "--model", "resnet14",
                               "--resume", str(run / "resnet8_last.pth")])
    assert "resnet8" in err and "resnet14" in err
    assert (run / "resnet8_last.pth").read_bytes() == before
    assert len(read_metrics(run)) == 1


def test_device_cuda_without_cuda_is_a_usage_error(capsys, data_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = [*COMMON, "--data_folder", str(data_root), "--save_folder", str(tmp_path)]
    argv[argv.index("--device") + 1] = "cuda"
    err = usage_error(capsys, argv)
    assert "--device" in err and "cpu" in err


# ---------------------------------------------------------------------------------- checkpoint helpers

KNOWN = list(model_dict)


@pytest.mark.parametrize("path, name", [
    ("save/models/resnet32x4_vanilla/ckpt_epoch_240.pth", "resnet32x4"),
    ("save/models/resnet32_vanilla/ckpt_epoch_240.pth", "resnet32"),
    ("wrn_40_2_vanilla/x.pth", "wrn_40_2"),
    ("wrn_40_1_vanilla_trial_2/x.pth", "wrn_40_1"),
    ("resnet8x4_vanilla/resnet8x4_best.pth", "resnet8x4"),
    ("resnet8_vanilla_trial_3/resnet8_last.pth", "resnet8"),
    ("resnet110/ckpt.pth", "resnet110"),
    ("MobileNetV2_vanilla/x.pth", "MobileNetV2"),
    ("imagenet_resnet18_vanilla/x.pth", "imagenet_resnet18"),
])
def test_model_name_from_path(path, name):
    assert model_name_from_path(path, KNOWN) == name


@pytest.mark.parametrize("path", ["save/models/foo_vanilla/x.pth", "resnet/x.pth", "resnet8x/x.pth", "x.pth"])
def test_model_name_from_unknown_folder(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "x.pth" resolves into tmp_path, whose name is no model
    with pytest.raises(CheckpointError) as err:
        model_name_from_path(path, KNOWN)
    assert Path(path).resolve().parent.name in str(err.value)


def test_load_model_weights_strips_module_prefix(tmp_path):
    torch.manual_seed(1)
    source = model_dict["resnet8"](num_classes=100)
    path = tmp_path / "resnet8_vanilla" / "ckpt.pth"
    path.parent.mkdir()
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 5}, path)
    torch.manual_seed(2)
    target = model_dict["resnet8"](num_classes=100)
    state = load_model_weights(target, path)
    assert state["epoch"] == 5
    assert_nested_equal(target.state_dict(), source.state_dict())


def test_load_model_weights_plain_keys(tmp_path):
    torch.manual_seed(1)
    source = model_dict["resnet8"](num_classes=100)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": source.state_dict(), "epoch": 5}, path)
    target = model_dict["resnet8"](num_classes=100)
    load_model_weights(target, path)
    assert_nested_equal(target.state_dict(), source.state_dict())


@pytest.mark.parametrize("other", [("resnet14", 100), ("resnet8", 10)])
def test_load_model_weights_reports_another_architecture(other, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model_dict["resnet8"](num_classes=100).state_dict(), "epoch": 1}, path)
    arch, classes = other
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model_dict[arch](num_classes=classes), path, name="teacher")
    msg = str(err.value)
    assert str(path) in msg and "teacher" in msg
    # another depth: resnet14 has 3 more blocks of 12 keys each, summarised; another class count: the classifier
    expected = ("36 missing key(s): layer1.1.conv1.weight" if arch == "resnet14" else
                "classifier of this teacher has 100 outputs")
    assert expected in msg and len(msg) < 400, msg


def test_load_model_weights_of_a_non_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model_dict["resnet8"](num_classes=100), path)
    assert str(path) in str(err.value) and "'model'" in str(err.value)


# ------------------------------------------------------------------------------------------- util helpers

def test_correct_topk_and_accuracy_by_hand():
    logits = torch.tensor([
        [0.1, 0.5, 0.2, 0.9, 0.0],  # ranking 3, 1, 2, 0, 4
        [2.0, 1.0, 0.0, -1.0, 3.0],  # ranking 4, 0, 1, 2, 3
        [0.0, 0.0, 5.0, 1.0, 2.0],  # ranking 2, 4, 3, ...
        [1.0, 2.0, 3.0, 4.0, 5.0],  # ranking 4, 3, 2, 1, 0
    ])
    targets = torch.tensor([3, 0, 3, 0])
    # target rank: row0 -> 1st, row1 -> 2nd, row2 -> 3rd, row3 -> 5th
    c1, c2, c3, c5 = correct_topk(logits, targets, (1, 2, 3, 5))
    assert (int(c1), int(c2), int(c3), int(c5)) == (1, 2, 3, 4)
    a1, a3 = accuracy(logits, targets, topk=(1, 3))
    assert float(a1) == pytest.approx(25.0) and float(a3) == pytest.approx(75.0)
    # k larger than the number of classes counts every sample.
    (c10,) = correct_topk(logits, targets, (10,))
    assert int(c10) == 4


def test_correct_topk_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 17, generator=gen)
    targets = torch.randint(0, 17, (200,), generator=gen)
    ranks = [sorted(range(17), key=lambda j: -float(logits[i, j])).index(int(targets[i])) for i in range(200)]
    got = correct_topk(logits, targets, (1, 5, 17))
    assert [int(g) for g in got] == [sum(r < k for r in ranks) for k in (1, 5, 17)]


def test_accuracy_supports_the_reference_loop_idiom():
    """The reference loops do ``acc1, acc5 = accuracy(...); top1.update(acc1[0], n)``; its accuracy
    returns 1-element tensors."""
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    targets = torch.tensor([1, 1, 1, 0])
    meter = AverageMeter()
    acc1, acc2 = accuracy(logits, targets, topk=(1, 2))
    meter.update(acc1[0], logits.size(0))
    assert meter.avg == pytest.approx(75.0)
    assert float(acc2[0]) == pytest.approx(100.0)


def test_average_meter():
    meter = AverageMeter()
    meter.update(2.0, n=3)
    meter.update(torch.tensor(4.0), n=1)
    assert meter.val == 4.0 and meter.sum == pytest.approx(10.0) and meter.count == 4
    assert meter.avg == pytest.approx(2.5)
    meter.update(1.0)
    assert meter.avg == pytest.approx(11.0 / 5)
    meter.reset()
    assert (meter.val, meter.avg, meter.sum, meter.count) == (0, 0, 0, 0)
