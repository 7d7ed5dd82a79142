"""Faults lose nothing: a run killed mid-epoch resumes to the same weights bit for
bit; a full disk or an unwritable folder stops a run with a one-line error naming the folder,
keeps the previous checkpoint and leaves no partial file; ``--resume`` refuses any flag that
changes what the run's numbers mean.

Runs are tiny (resnet8, fake CIFAR-100, batch 8, CPU, no workers). The kill tests start the real
entry points as processes and SIGKILL them while they are provably inside an epoch: a wrapper makes
the child stall right after printing the progress line of a chosen step (``--print_freq 1``), so the
kill never races the end of the epoch. The real full-disk and read-only checks mount a small tmpfs in
a private mount namespace (``unshare -m``, needs root); where that is not allowed they are skipped and
the simulated ``OSError`` tests still cover the code.
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from checks import assert_nested_equal
from fakedata import write_fake_cifar
from kdzoo.helper import trainer as trainer_mod
from kdzoo.helper.checkpoint import (
    RESUME_FREE_FLAGS,
    CheckpointError,
    atomic_write,
    check_same_run,
    save_checkpoint,
)
from kdzoo.helper.logger import RunLogger, read_metrics
from kdzoo.models import model_dict

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8
N_TRAIN, N_TEST = 32, 8  # 4 steps per epoch
TIMING_KEYS = {"seconds", "images_per_sec"}
STATE_KEYS = ("model", "task", "optimizer", "scheduler", "epoch", "accuracy", "best_acc", "seed")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    # Mostly class 0: the model soon answers 0, test accuracy becomes non-zero, best checkpoints appear.
    labels = [5 if i % 4 == 0 else 0 for i in range(N_TRAIN)]
    return write_fake_cifar(tmp_path_factory.mktemp("fake"), n_train=N_TRAIN, n_test=N_TEST, seed=0,
                            labels_train=labels)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """An untrained, seeded resnet8 in the reference layout (the mechanics need no good teacher)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": model_dict["resnet8"](num_classes=100).state_dict(), "epoch": 240, "accuracy": 0.0}, path)
    return path


@pytest.fixture(scope="module")
def straight_teacher(data_root, tmp_path_factory) -> Path:
    """The run folder of an uninterrupted 3-epoch teacher run, the reference of the fault tests."""
    result = in_process(train_teacher.main, teacher_argv(data_root, tmp_path_factory.mktemp("straight"), 3))
    return Path(result["run_dir"])


def teacher_argv(data: Path, save: Path, epochs: int, *extra: str) -> list[str]:
    return ["--model", "resnet8", "--data_folder", str(data), "--save_folder", str(save), "--device", "cpu",
            "--num_workers", "0", "--batch_size", str(BATCH), "--epochs", str(epochs), "--seed", "3",
            "--learning_rate", "0.1", "--lr_decay_epochs", "2", "--save_freq", "2", "--print_freq", "1000", *extra]


def student_argv(data: Path, save: Path, path_t: Path, epochs: int, *extra: str) -> list[str]:
    return ["--path_t", str(path_t), "--model_s", "resnet8", "--distill", "crd", "--nce_k", "16",
            "--data_folder", str(data), "--save_folder", str(save), "--device", "cpu", "--num_workers", "0",
            "--batch_size", str(BATCH), "--epochs", str(epochs), "--seed", "3", "--learning_rate", "0.05",
            "--lr_decay_epochs", "2", "--print_freq", "1000", *extra]


def in_process(main, argv: list[str]) -> dict:
    """An entry point's main in this process, torch's global generator pinned as a fresh process has it."""
    torch.manual_seed(0)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", out)
        return main(argv)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary or hidden files (atomic writes use ``.<name>.<random>.tmp``)."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("."))


def one_line_error(stderr: str) -> str:
    """The entry point's error: one line (``error: ...`` or argparse's ``prog: error: ...``), no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    return lines[0]


# ------------------------------------------------------------------------------------- SIGKILL mid-epoch

# Runs an entry point; after printing the progress line that starts with TRIGGER it says so and
# stalls, so that the parent kills it inside the epoch.
STALLING_CHILD = """
import builtins, sys, time
sys.path.insert(0, {root!r})
trigger, module = sys.argv[1], sys.argv[2]
real_print = builtins.print
def print(*args, **kwargs):
    real_print(*args, **kwargs)
    if args and str(args[0]).startswith(trigger):
        real_print("STALLED", flush=True)
        time.sleep(600)
builtins.print = print
__import__(module).main(sys.argv[3:])
"""


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def kill_mid_epoch(module: str, argv: list[str], epoch: int, step: int, steps: int) -> None:
    """Start ``module.main(argv)`` as a process, SIGKILL it after step ``step`` of ``epoch`` (1-based,
    ``steps`` per epoch, before its last one)."""
    assert 1 <= step < steps
    trigger = f"Epoch [{epoch}][{step}/{steps}]"
    code = STALLING_CHILD.format(root=str(ROOT))
    log = Path(argv[argv.index("--save_folder") + 1]).parent / f"{module}.stderr"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, trigger, module, *argv, "--print_freq", "1"],
                                cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=err, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("STALLED"):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen) + log.read_text()
    assert any(line.startswith(trigger) for line in seen)


def run_process(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import {module}; {module}.main()", *argv], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=300)


def assert_killed_mid_epoch_then_resumed_exactly(module: str, argv_for, model: str, straight_run: Path,
                                                 tmp_path: Path, epochs: int = 3) -> None:
    steps = N_TRAIN // BATCH
    killed_save = tmp_path / "killed"
    kill_mid_epoch(module, argv_for(killed_save, epochs), epoch=2, step=2, steps=steps)
    run_dir = next(p.parent for p in killed_save.rglob(f"{model}_last.pth"))
    last = run_dir / f"{model}_last.pth"
    # Provably mid-epoch: epoch 1 complete on disk, nothing of epoch 2.
    assert load(last)["epoch"] == 1
    assert [row["epoch"] for row in read_metrics(run_dir)] == [1]
    # A partial file, as a kill in the middle of a checkpoint write would leave.
    stale = run_dir / f".{model}_last.pth.x1y2z3.tmp"
    stale.write_bytes(b"partial")

    resumed = run_process(module, [*argv_for(killed_save, epochs), "--resume", str(last)])
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["run_dir"] == str(run_dir.resolve())
    assert not stale.exists() and leftovers(run_dir) == []

    a, b = load(straight_run / f"{model}_last.pth"), load(last)
    assert a["epoch"] == epochs
    for key in STATE_KEYS:
        assert_nested_equal(a[key], b[key], key)
    assert without_timing(read_metrics(straight_run)) == without_timing(read_metrics(run_dir))


@pytest.mark.slow
def test_teacher_killed_mid_epoch_resumes_bit_exactly(data_root, straight_teacher, tmp_path):
    assert_killed_mid_epoch_then_resumed_exactly(
        "train_teacher", lambda save, epochs: teacher_argv(data_root, save, epochs), "resnet8", straight_teacher,
        tmp_path)


@pytest.mark.slow
def test_crd_student_killed_mid_epoch_resumes_bit_exactly(data_root, teacher, tmp_path):
    # CRD is the demanding case: its memory bank and the drawn negatives are state too.
    straight = in_process(train_student.main, student_argv(data_root, tmp_path / "straight", teacher, 3))
    assert_killed_mid_epoch_then_resumed_exactly(
        "train_student", lambda save, epochs: student_argv(data_root, save, teacher, epochs), "resnet8",
        Path(straight["run_dir"]), tmp_path)


# ------------------------------------------------------------------------------- disk faults, simulated

def half_then_fail(real_save, exc: OSError):
    """A torch.save that writes half the file, then fails, as on a full disk."""
    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise exc
    return save


@pytest.mark.parametrize("which, exc", [
    ("first", OSError(errno.ENOSPC, "No space left on device")),
    ("last", OSError(errno.ENOSPC, "No space left on device")),
    # A folder made read-only mid-run: the same path as a full disk, so left to the slow run.
    pytest.param("first", PermissionError(errno.EACCES, "Permission denied"), marks=pytest.mark.slow),
])
def test_write_failure_stops_cleanly_and_the_run_resumes_exactly(which, exc, data_root, straight_teacher, tmp_path,
                                                                 monkeypatch, capsys):
    """A write fails in epoch 2: at its first checkpoint (nothing of epoch 2 on disk yet) or at
    ``_last.pth`` (best, ckpt_epoch_2 and the metrics row of epoch 2 already written). The run stops
    with one line naming the folder and the last good checkpoint, every checkpoint as it was and no
    partial file; a resume then ends exactly as an uninterrupted run, metrics holding each epoch once."""
    save = tmp_path / "save"
    run_dir = save / "resnet8_vanilla"
    argv = teacher_argv(data_root, save, 3)
    real_save_checkpoint = trainer_mod.save_checkpoint
    seen: dict = {}

    def save_checkpoint(state: dict, path: Path) -> None:
        fails = state["epoch"] == 2 and not seen and (which == "first" or path.name == "resnet8_last.pth")
        if not fails:
            return real_save_checkpoint(state, path)
        seen["before"] = snapshot(run_dir)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch, "save", half_then_fail(torch.save, exc))
            real_save_checkpoint(state, path)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_checkpoint)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        torch.manual_seed(0)
        train_teacher.main(argv)
    monkeypatch.undo()
    assert stopped.value.code == 1
    err = one_line_error(capsys.readouterr().err)
    assert err.startswith("error: cannot write to the run folder")
    assert str(run_dir) in err and exc.strerror in err
    assert f"{run_dir / 'resnet8_last.pth'} (epoch 1)" in err and "--resume" in err
    assert load(run_dir / "resnet8_last.pth")["epoch"] == 1
    before_pth = {k: v for k, v in seen["before"].items() if k.endswith(".pth")}
    assert {k: v for k, v in snapshot(run_dir).items() if k.endswith(".pth")} == before_pth
    assert leftovers(run_dir) == []
    assert [r["epoch"] for r in read_metrics(run_dir)] == ([1] if which == "first" else [1, 2])

    resumed = in_process(train_teacher.main, [*argv, "--resume", str(run_dir / "resnet8_last.pth")])
    a, b = load(straight_teacher / "resnet8_last.pth"), load(run_dir / "resnet8_last.pth")
    for key in STATE_KEYS:
        assert_nested_equal(a[key], b[key], key)
    assert without_timing(read_metrics(straight_teacher)) == without_timing(read_metrics(run_dir))
    assert resumed["best_acc"] == a["best_acc"]


def test_torch_zip_writer_errors_surface_as_the_os_error_behind_them(tmp_path):
    """On a real full disk torch.save raises a RuntimeError of its zip writer while handling the
    OSError (seen on a tmpfs, see test_full_disk_mid_run); save_checkpoint reports the OSError."""
    path = tmp_path / "resnet8_last.pth"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    before = path.read_bytes()

    def zip_writer_fails(f) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    with pytest.raises(OSError) as err:
        atomic_write(path, zip_writer_fails)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):  # an error with no OSError behind it is left alone
        atomic_write(path, lambda f: (_ for _ in ()).throw(RuntimeError("bug")))


def test_unwritable_save_folder_is_refused_before_training(data_root, tmp_path, monkeypatch, capsys):
    # Tests may run as root, for whom chmod does not stop writes: the refusal of the folder is
    # simulated here (the real read-only mount is checked below where the system allows it).
    from kdzoo.helper import trainer

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(trainer.tempfile, "TemporaryFile", refuse)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        train_teacher.main(teacher_argv(data_root, tmp_path / "save", 1))
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    err = one_line_error(captured.err)
    assert f"cannot write to the run folder {tmp_path / 'save' / 'resnet8_vanilla'}" in err
    assert "Permission denied" in err and "--save_folder" in err
    assert "epoch 1/" not in captured.out


class HalfWriter:
    """A file whose writes stop halfway with ENOSPC, as on a full disk."""

    def __init__(self, real) -> None:
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()

    def write(self, data: bytes) -> int:
        self.real.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_metrics_row_that_fails_to_write_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    log = RunLogger(tmp_path)
    log.log_epoch({"epoch": 1, "lr": 0.1, "test_acc": 5.0})
    before = (tmp_path / "metrics.jsonl").read_bytes()
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: HalfWriter(real_open(self, *a, **k)))
    with pytest.raises(OSError):
        log.log_epoch({"epoch": 2, "lr": 0.1, "test_acc": 6.0})
    monkeypatch.undo()
    log.close()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_resumed_logger_drops_a_torn_last_row_and_later_epochs(tmp_path):
    rows = [{"epoch": e, "test_acc": float(e)} for e in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 4, "test_a'
    (tmp_path / "metrics.jsonl").write_text(text)
    RunLogger(tmp_path, resume_epoch=2).close()
    assert read_metrics(tmp_path) == rows[:2]
    assert leftovers(tmp_path) == []


def test_failing_tensorboard_close_warns_instead_of_hiding_the_error(tmp_path, monkeypatch, capsys):
    log = RunLogger(tmp_path)

    def broken_close():
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log.writer, "close", broken_close)
    log.close()
    assert "warning" in capsys.readouterr().err


# ------------------------------------------------------------------- disk faults, real (tmpfs mounts)

def _can_mount() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare -m)")


def in_private_mount(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the shell ``script`` in a private mount namespace (its mounts vanish with it)."""
    return subprocess.run(["unshare", "-m", "sh", "-euc", script], cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def one_epoch_run(data_root, tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("one_epoch")
    in_process(train_teacher.main, teacher_argv(data_root, save, 1))
    return save / "resnet8_vanilla"


@pytest.mark.slow
@needs_mount
def test_full_disk_mid_run(one_epoch_run, data_root, tmp_path):
    """A run resumed on a tmpfs with 256 KiB left (a checkpoint is about a megabyte): metrics and
    TensorBoard files fit, the epoch's checkpoints do not."""
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    size_kib = sum(p.stat().st_size for p in one_epoch_run.rglob("*") if p.is_file()) // 1024 + 2048
    argv = " ".join(teacher_argv(data_root, mnt / "unused", 2, "--resume", str(mnt / "run" / "resnet8_last.pth")))
    script = f"""
mount -t tmpfs -o size={size_kib}k tmpfs {mnt}
cp -a {one_epoch_run} {mnt}/run
free=$(df -k --output=avail {mnt} | tail -1)
dd if=/dev/zero of={mnt}/filler bs=1k count=$((free - 256)) status=none
set +e
{sys.executable} -c 'import train_teacher; train_teacher.main()' {argv} > {tmp_path}/stdout 2> {tmp_path}/stderr
echo $? > {tmp_path}/rc
cp -a {mnt}/run {out}
"""
    done = in_private_mount(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rc").read_text().strip() == "1", (tmp_path / "stderr").read_text()
    err = one_line_error((tmp_path / "stderr").read_text())
    assert f"cannot write to the run folder {mnt / 'run'}" in err and "No space left on device" in err
    for p in one_epoch_run.glob("*.pth"):
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    assert leftovers(out) == []
    assert [row["epoch"] for row in read_metrics(out)] == [1]


@pytest.mark.slow
@needs_mount
def test_read_only_folders_are_refused_naming_them(one_epoch_run, data_root, tmp_path):
    """A new run under a read-only --save_folder, and a resume of a run on a read-only mount."""
    ro_save, ro_run = tmp_path / "ro_save", tmp_path / "ro_run"
    ro_save.mkdir()
    shutil.copytree(one_epoch_run, ro_run)
    new = " ".join(teacher_argv(data_root, ro_save, 1))
    resume = " ".join(teacher_argv(data_root, tmp_path / "unused", 2, "--resume", str(ro_run / "resnet8_last.pth")))
    script = f"""
mount --bind {ro_save} {ro_save} && mount -o remount,bind,ro {ro_save}
mount --bind {ro_run} {ro_run} && mount -o remount,bind,ro {ro_run}
set +e
{sys.executable} -c 'import train_teacher; train_teacher.main()' {new} > {tmp_path}/new.out 2> {tmp_path}/new.err
echo $? > {tmp_path}/new.rc
{sys.executable} -c 'import train_teacher; train_teacher.main()' {resume} > {tmp_path}/res.out 2> {tmp_path}/res.err
echo $? > {tmp_path}/res.rc
"""
    done = in_private_mount(script, tmp_path)
    assert done.returncode == 0, done.stderr
    for name, folder in (("new", ro_save / "resnet8_vanilla"), ("res", ro_run)):
        assert (tmp_path / f"{name}.rc").read_text().strip() == "2", (tmp_path / f"{name}.err").read_text()
        err = one_line_error((tmp_path / f"{name}.err").read_text())
        assert f"cannot write to the run folder {folder}" in err and "Read-only file system" in err
    for p in one_epoch_run.rglob("*"):
        if p.is_file():
            assert (ro_run / p.relative_to(one_epoch_run)).read_bytes() == p.read_bytes()


# --------------------------------------------------------------------------- resume with other flags

def resume_error(capsys, main, argv: list[str]) -> str:
    """Run main expecting a usage error before training; return the message after ``error:``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert not re.search(r"^epoch \d+/", captured.out, re.M), "training started before the error"
    return one_line_error(captured.err).split("error: ", 1)[1]


@pytest.fixture
def finished_run(one_epoch_run, tmp_path) -> Path:
    """A copy of a finished 1-epoch teacher run (all 32 training / 8 test images)."""
    return Path(shutil.copytree(one_epoch_run, tmp_path / "resnet8_vanilla"))


def test_other_subsets_are_refused_naming_each(data_root, tmp_path, capsys):
    # A user's case, scaled down: a run of 16 training / 4 test images resumed with
    # --train_subset 32 and no --test_subset.
    save = tmp_path / "save"
    in_process(train_teacher.main, teacher_argv(data_root, save, 1, "--train_subset", "16", "--test_subset", "4"))
    run_dir = save / "resnet8_vanilla"
    before = snapshot(run_dir)
    err = resume_error(capsys, train_teacher.main, teacher_argv(
        data_root, save, 3, "--train_subset", "32", "--resume", str(run_dir / "resnet8_last.pth")))
    assert "--train_subset 16, not 32" in err
    assert "--test_subset 4, not all images" in err
    assert str(run_dir / "resnet8_last.pth") in err
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("flags, expected", [
    (["--learning_rate", "0.05"], ["--learning_rate 0.1, not 0.05"]),
    (["--lr_decay_epochs", "3"], ["--lr_decay_epochs 2, not 3"]),
    (["--lr_decay_rate", "0.2", "--weight_decay", "1e-4"], ["--lr_decay_rate 0.1, not 0.2",
                                                            "--weight_decay 0.0005, not 0.0001"]),
    (["--batch_size", "16", "--momentum", "0.8"], ["--batch_size 8, not 16", "--momentum 0.9, not 0.8"]),
    (["--amp"], ["--amp off, not on"]),
    (["--dataset", "imagenet"], ["--dataset cifar100, not imagenet"]),
    (["--seed", "4"], ["--seed 3, not 4"]),
])
def test_flags_that_change_the_numbers_are_refused(flags, expected, finished_run, data_root, tmp_path, capsys):
    before = snapshot(finished_run)
    argv = [*teacher_argv(data_root, tmp_path, 2), *flags, "--resume", str(finished_run / "resnet8_last.pth")]
    err = resume_error(capsys, train_teacher.main, argv)
    for part in expected:
        assert part in err, err
    assert snapshot(finished_run) == before


def test_other_data_folder_is_refused_and_the_same_one_spelled_otherwise_is_not(finished_run, data_root, tmp_path,
                                                                                 capsys, monkeypatch):
    other = shutil.copytree(data_root, tmp_path / "other_data")
    resume = ["--resume", str(finished_run / "resnet8_last.pth")]
    err = resume_error(capsys, train_teacher.main, [*teacher_argv(other, tmp_path, 2), *resume])
    assert f"--data_folder {data_root.resolve()}, not {other}" in err
    # The same folder, relative to another working directory and through '..': accepted.
    monkeypatch.chdir(data_root.parent)
    relative = Path(data_root.name) / ".." / data_root.name
    result = in_process(train_teacher.main, [*teacher_argv(relative, tmp_path, 2), *resume])
    assert result["epochs"] == 2 and [r["epoch"] for r in read_metrics(finished_run)] == [1, 2]


def test_epochs_may_grow_but_not_shrink(finished_run, data_root, tmp_path, capsys):
    # 1 -> 2 epochs is allowed; the checkpoint then records 2, and 1 is refused.
    two = in_process(train_teacher.main, [*teacher_argv(data_root, tmp_path, 2), "--resume",
                                          str(finished_run / "resnet8_last.pth")])
    assert two["epochs"] == 2
    err = resume_error(capsys, train_teacher.main, [*teacher_argv(data_root, tmp_path, 1), "--resume",
                                                     str(finished_run / "resnet8_last.pth")])
    assert "--epochs 2, not 1 (--epochs may only grow)" in err


def test_execution_flags_may_change(finished_run, data_root, tmp_path):
    # Flags of RESUME_FREE_FLAGS: how the run is executed or reported, not what it computes.
    argv = [*teacher_argv(data_root, tmp_path / "elsewhere", 2), "--print_freq", "3", "--save_freq", "5",
            "--tb_freq", "7", "--trial", "9", "--channels_last", "--seed", "3",
            "--resume", str(finished_run / "resnet8_last.pth")]
    result = in_process(train_teacher.main, argv)
    assert Path(result["run_dir"]) == finished_run.resolve()
    assert [r["epoch"] for r in read_metrics(finished_run)] == [1, 2]


def test_old_checkpoints_are_compared_on_what_they_record(finished_run, data_root, tmp_path, capsys):
    path = finished_run / "resnet8_last.pth"
    state = load(path)
    del state["opt"]["train_subset"], state["opt"]["test_subset"]  # flags an older version did not have
    torch.save(state, path)
    result = in_process(train_teacher.main, [*teacher_argv(data_root, tmp_path, 2), "--train_subset", "16",
                                             "--resume", str(path)])
    assert result["epochs"] == 2
    err = resume_error(capsys, train_teacher.main, [*teacher_argv(data_root, tmp_path, 3), "--learning_rate", "0.2",
                                                     "--train_subset", "16", "--resume", str(path)])
    assert "--learning_rate 0.1, not 0.2" in err and "subset" not in err


def test_a_flag_added_later_must_match_unless_allowed():
    """The allow-list decides: an unknown recorded flag is compared, a listed one is not."""
    state = {"opt": {"new_flag": 1, "print_freq": 10, "epochs": 5}}
    opt = type("Opt", (), {})()
    opt.__dict__.update(new_flag=2, print_freq=20, epochs=5, seed=None)
    with pytest.raises(CheckpointError, match="--new_flag 1, not 2"):
        check_same_run(state, opt, "x.pth")
    opt.new_flag = 1
    check_same_run(state, opt, "x.pth")
    assert {"epochs", "print_freq", "num_workers", "device", "resume"} <= RESUME_FREE_FLAGS
    assert not {"data_folder", "train_subset", "test_subset", "dataset", "learning_rate", "amp"} & RESUME_FREE_FLAGS


@pytest.fixture(scope="module")
def kd_run(data_root, teacher, tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("kd")
    argv = student_argv(data_root, save, teacher, 1, "--distill", "kd", "--train_subset", "16", "--test_subset", "4")
    return Path(in_process(train_student.main, argv)["run_dir"])


@pytest.mark.parametrize("flags, expected", [
    (["-r", "0.5", "-a", "0.5"], ["--gamma 0.1, not 0.5", "--alpha 0.9, not 0.5"]),
    (["--kd_T", "2"], ["--kd_T 4.0, not 2.0"]),
    (["--nce_k", "32"], ["--nce_k 16, not 32"]),
    (["--no-fold_teacher_bn"], ["--fold_teacher_bn on, not off"]),
])
def test_student_method_settings_and_loss_weights_must_match(flags, expected, kd_run, data_root, teacher, tmp_path,
                                                             capsys):
    run_dir = shutil.copytree(kd_run, tmp_path / kd_run.name)
    before = snapshot(run_dir)
    argv = [*student_argv(data_root, tmp_path, teacher, 2, "--distill", "kd", "--train_subset", "16",
                          "--test_subset", "4"), *flags, "--resume", str(run_dir / "resnet8_last.pth")]
    err = resume_error(capsys, train_student.main, argv)
    for part in expected:
        assert part in err, err
    assert snapshot(run_dir) == before


def test_student_resumed_with_another_teacher_file_is_refused(kd_run, data_root, teacher, tmp_path, capsys):
    other = tmp_path / "t" / "resnet8_vanilla" / "ckpt.pth"
    other.parent.mkdir(parents=True)
    shutil.copy(teacher, other)
    run_dir = shutil.copytree(kd_run, tmp_path / kd_run.name)
    argv = [*student_argv(data_root, tmp_path, other, 2, "--distill", "kd", "--train_subset", "16",
                          "--test_subset", "4"), "--resume", str(run_dir / "resnet8_last.pth")]
    err = resume_error(capsys, train_student.main, argv)
    assert f"--path_t {teacher.resolve()}, not {other}" in err
