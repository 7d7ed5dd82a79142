"""Hostile and broken inputs, each given to a real entry point: the list the project is tested against.

Every row of :data:`CASES` writes one bad file (a checkpoint or a CIFAR pickle that would run code
when unpickled, a truncated or foreign file, a teacher of the wrong size, out-of-range labels...),
runs an entry point's ``main`` on it and expects the clean failure every user should get: exit
code 2 before any training, one ``error:`` line that names the bad file and what is wrong with it,
no Python traceback, and, for the payloads, no trace of their code having run. To test a new bad
input, add a row.

The payloads are real: :class:`Payload` creates a marker file when unpickled (checked below with
plain ``pickle``), so a loader that ran it would leave the marker behind. Two cases also run as
separate processes, to check the command line itself exits cleanly. The last section checks what
must keep loading: a reference checkpoint with its pickled ``argparse.Namespace`` and numpy scalars,
a checkpoint stored in a folder that names another architecture, and ``--trust_checkpoint``.
"""
from __future__ import annotations

import argparse
import io
import pickle
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import train_student
import train_teacher
import transfer_student
from conftest import ROOT, load_script
from fakedata import read_fake_split, write_cifar_split, write_fake_cifar
from kdzoo.dataset import DataError
from kdzoo.dataset.cifar100 import read_data_pickle
from kdzoo.helper.checkpoint import load_checkpoint
from kdzoo.models import model_dict


ENTRY_POINTS = {
    "train_student": train_student.main,
    "train_teacher": train_teacher.main,
    "transfer_student": transfer_student.main,
    "plot_corr": load_script("plot_corr").main,
}


class Payload:
    """Unpickling this calls ``open(marker, 'w')``: the marker file exists iff the payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_payload_runs_when_unpickled_plainly(tmp_path):
    """The marker is a faithful witness: plain unpickling does create it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"opt": Payload(marker)}))
    assert marker.exists()


# ---------------------------------------------------------------------------------------------- files

def weights(arch: str = "resnet8", num_classes: int = 100) -> dict[str, torch.Tensor]:
    """A seeded, untrained state dict: loading needs no trained teacher."""
    torch.manual_seed(0)
    return model_dict[arch](num_classes=num_classes).state_dict()


def save(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_fake_cifar10(root: Path, n: int = 16) -> Path:
    """CIFAR-10's python layout (data_batch_1, test_batch with 'labels', batches.meta); returns its folder."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "test_batch"):
        entry = {"labels": [i % 10 for i in range(n)], "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    return folder


def payload_pickle(path: Path, marker: Path, entry: dict) -> Path:
    """Rewrite a CIFAR pickle with a payload among its (otherwise valid) entries."""
    return write_bytes(path, pickle.dumps({**entry, "batch_label": Payload(marker)}, protocol=2))


# --------------------------------------------------------------------------------------- the world

@dataclass
class World:
    """What a case builds on: a fake CIFAR-100 folder of its own (cases may spoil it), a valid
    resnet8 checkpoint in the reference layout, and the marker a payload would create."""

    tmp: Path
    data: Path
    teacher: Path
    marker: Path

    @property
    def cifar_split(self) -> Path:
        return self.data / "cifar-100-python" / "train"

    def flags(self, entry: str, path_t: Path | None = None) -> list[str]:
        """Fast, CPU-only flags of ``entry``: 16 images, one epoch (a student distils ``path_t``,
        default: the good teacher; a repeated ``--path_t`` would add a second teacher)."""
        if entry == "plot_corr":
            return ["--data_folder", str(self.data), "--device", "cpu", "--test_subset", "8",
                    "--output", str(self.tmp / "corr.png")]
        common = ["--data_folder", str(self.data), "--save_folder", str(self.tmp / "runs"), "--device", "cpu",
                  "--num_workers", "0", "--batch_size", "8", "--epochs", "1", "--print_freq", "1000",
                  "--train_subset", "16", "--test_subset", "16", "--seed", "1"]
        if entry == "train_student":
            return [*common, "--model_s", "resnet8", "--path_t", str(path_t or self.teacher)]
        if entry == "train_teacher":
            return [*common, "--model", "resnet8"]
        return [*common, "--dataset", "cifar100", "--path_s", str(self.teacher)]


@pytest.fixture(scope="module")
def valid_teacher(tmp_path_factory) -> Path:
    return save(tmp_path_factory.mktemp("teacher") / "resnet8_vanilla" / "ckpt_epoch_240.pth",
                {"model": weights(), "epoch": 240, "accuracy": 0.0})


@pytest.fixture
def world(tmp_path, valid_teacher) -> World:
    data = write_fake_cifar(tmp_path / "data", n_train=32, n_test=16)
    return World(tmp_path, data, valid_teacher, tmp_path / "PAYLOAD_RAN")


def run_entry(entry: str, argv: list[str], capsys) -> tuple[int, str]:
    """``entry``'s main on ``argv``: its exit code and stderr. Any exception other than the
    argparse exit fails the test, as a traceback would."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        ENTRY_POINTS[entry](argv)
    captured = capsys.readouterr()
    assert not re.search(r"^epoch \d+", captured.out, re.M), "training started before the error"
    return exc.value.code, captured.err


# ------------------------------------------------------------------------------------------ the table

@dataclass(frozen=True)
class Case:
    """One bad input: ``make(world)`` writes it and returns the flags that give it to ``entry``
    (appended to :meth:`World.flags`) and the bad file, which the error must name along with every
    word of ``expect``."""

    entry: str
    make: Callable[[World], tuple[list[str], Path]]
    expect: tuple[str, ...]


def _payload_teacher(w: World) -> Path:
    return save(w.tmp / "hub" / "resnet8_vanilla" / "ckpt.pth",
                {"model": weights(), "epoch": 240, "opt": Payload(w.marker)})


def _payload_as(flag: str):
    """A case that gives a payload checkpoint as ``flag``."""
    def make(w: World) -> tuple[list[str], Path]:
        path = _payload_teacher(w)
        return [flag, str(path)], path
    return make


def _plot_payload(role: str):
    """plot_corr with a payload checkpoint as its teacher or its student."""
    def make(w: World) -> tuple[list[str], Path]:
        path = _payload_teacher(w)
        teacher, student = (path, w.teacher) if role == "teacher" else (w.teacher, path)
        return ["--path_t", str(teacher), "--path_s", str(student)], path
    return make


def _plot_data_payload(w: World) -> tuple[list[str], Path]:
    test_split = w.data / "cifar-100-python" / "test"
    payload_pickle(test_split, w.marker, {"data": np.zeros((16, 3072), np.uint8), "fine_labels": [0] * 16})
    return ["--path_t", str(w.teacher), "--path_s", str(w.teacher)], test_split


def _data_payload(w: World) -> tuple[list[str], Path]:
    data = np.zeros((32, 3072), np.uint8)
    return [], payload_pickle(w.cifar_split, w.marker, {"data": data, "fine_labels": [0] * 32})


def _cifar10(spoil: str, payload: bool = True):
    """A transfer to a CIFAR-10 layout folder whose file ``spoil`` is a payload (or cut short)."""
    def make(w: World) -> tuple[list[str], Path]:
        folder = write_fake_cifar10(w.tmp / "c10")
        path = folder / spoil
        if payload:
            entry = pickle.loads(path.read_bytes())  # our own file, just written
            payload_pickle(path, w.marker, entry)
        else:
            path.write_bytes(path.read_bytes()[:200])
        return ["--dataset", "cifar10", "--data_folder", str(w.tmp / "c10")], path
    return make


def _teacher_file(content: Callable[[World], object] | bytes):
    """A teacher file with ``content``: raw bytes, or an object torch.save writes."""
    def make(w: World) -> tuple[list[str], Path]:
        path = w.tmp / "bad" / "resnet8_vanilla" / "ckpt.pth"
        if isinstance(content, bytes):
            write_bytes(path, content)
        else:
            save(path, content(w))
        return ["--path_t", str(path)], path
    return make


def _truncated_teacher(w: World) -> tuple[list[str], Path]:
    whole = w.teacher.read_bytes()
    path = write_bytes(w.tmp / "bad" / "resnet8_vanilla" / "ckpt.pth", whole[: len(whole) // 2])
    return ["--path_t", str(path)], path


def _split(n_rows: int, labels: list[int], cut: int | None = None):
    """A CIFAR-100 train file with ``n_rows`` images and ``labels``, optionally cut to ``cut`` bytes."""
    def make(w: World) -> tuple[list[str], Path]:
        write_cifar_split(w.cifar_split, np.zeros((n_rows, 3072), np.uint8), labels)
        if cut is not None:
            w.cifar_split.write_bytes(w.cifar_split.read_bytes()[:cut])
        return [], w.cifar_split
    return make


def _misleading_folder(w: World) -> tuple[list[str], Path]:
    """A reference-format resnet32 checkpoint (it records no architecture) under resnet8_runs/."""
    path = save(w.tmp / "resnet8_runs" / "ckpt_epoch_240.pth", {"model": weights("resnet32")})
    return ["--path_t", str(path)], path


REFUSED = ("refused checkpoint", "Nothing in it was run", "--trust_checkpoint")
REFUSED_DATA = ("refused data file", "nothing in it was run")

CASES: dict[str, Case] = {
    # -- payload checkpoints: every place a checkpoint is read
    "payload-teacher": Case("train_student", _payload_as("--path_t"), (*REFUSED, "open")),
    "payload-student-resume": Case("train_student", _payload_as("--resume"), REFUSED),
    "payload-teacher-resume": Case("train_teacher", _payload_as("--resume"), REFUSED),
    "payload-transfer-source": Case("transfer_student", _payload_as("--path_s"), REFUSED),
    "payload-transfer-resume": Case("transfer_student", _payload_as("--resume"), REFUSED),
    "payload-plot-teacher": Case("plot_corr", _plot_payload("teacher"), REFUSED),
    "payload-plot-student": Case("plot_corr", _plot_payload("student"), REFUSED),
    # -- payload data files: every entry point that reads CIFAR pickles
    "payload-data-teacher": Case("train_teacher", _data_payload, REFUSED_DATA),
    "payload-data-student": Case("train_student", _data_payload, REFUSED_DATA),
    "payload-data-transfer-cifar100": Case("transfer_student", _data_payload, REFUSED_DATA),
    "payload-data-plot": Case("plot_corr", _plot_data_payload, REFUSED_DATA),
    "payload-data-cifar10-batch": Case("transfer_student", _cifar10("data_batch_1"), REFUSED_DATA),
    "payload-data-cifar10-meta": Case("transfer_student", _cifar10("batches.meta"), REFUSED_DATA),
    # -- broken checkpoints
    "truncated-checkpoint": Case("train_student", _truncated_teacher, ("truncated",)),
    "random-bytes-checkpoint": Case("train_student", _teacher_file(np.random.default_rng(0).bytes(4096)),
                                    ("corrupted",)),
    "empty-checkpoint": Case("train_student", _teacher_file(b""), ("truncated",)),
    "checkpoint-not-a-dict": Case("train_student", _teacher_file(lambda w: [1, 2, 3]), ("no model weights", "list")),
    "checkpoint-model-not-a-state-dict": Case("train_student", _teacher_file(lambda w: {"model": 3, "epoch": 1}),
                                              ("no model weights",)),
    "teacher-classifier-10-of-100-classes": Case(
        "train_student", _teacher_file(lambda w: {"model": weights(num_classes=10)}),
        ("classifier of this resnet8 has 10 outputs", "100 classes")),
    # resnet32 has 4 more blocks per stage than resnet8, 12 keys each: 144 unexpected, summarised
    "teacher-in-misleading-folder": Case("train_student", _misleading_folder,
                                         ("resnet8", "144 unexpected key(s)", "(141 more)", "--model_t")),
    # -- broken data
    "cut-short-data-file": Case("train_teacher", _split(32, [0] * 32, cut=5000), ("cut short",)),
    "cut-short-cifar10-batch": Case("transfer_student", _cifar10("data_batch_1", payload=False), ("cut short",)),
    "label-out-of-range": Case("train_teacher", _split(32, [0] * 31 + [100]), ("labels must lie in [0, 100)", "100")),
    "negative-label": Case("train_student", _split(32, [-1] + [0] * 31), ("labels must lie in [0, 100)", "-1")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clear_error_before_training(name, world, capsys):
    case = CASES[name]
    extra, bad_file = case.make(world)
    code, err = run_entry(case.entry, [*world.flags(case.entry), *extra], capsys)
    assert code == 2, err
    assert "Traceback" not in err, err
    message = re.search(r"^\S+: error: (.*)$", err, re.M)
    assert message, err
    message = message[1]
    assert str(bad_file) in message, message
    for word in case.expect:
        assert word in message, (word, message)
    assert not world.marker.exists(), "the payload ran"


@pytest.mark.parametrize("module, name", [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("__builtin__", "getattr"), ("numpy", "load"),
    ("numpy.core.multiarray", "fromfile"), ("_codecs", "decode"), ("builtins", "bytes"),
])
def test_data_unpickler_refuses_any_other_global(module, name, tmp_path):
    """Hand-written pickles that call ``module.name('x')``: refused by name, never looked up."""
    path = write_bytes(tmp_path / "train", b"c" + f"{module}\n{name}\n".encode() + b"(S'x'\ntR.")
    with pytest.raises(DataError, match=rf"refused data file .*train: it asks to build {re.escape(module)}\.{name}"):
        read_data_pickle(path)


def test_refused_checkpoint_names_the_type_it_wanted(world, capsys):
    path = save(world.tmp / "x" / "resnet8_vanilla" / "a.pth", {"model": weights(), "opt": Payload(world.marker)})
    _, err = run_entry("train_student", world.flags("train_student", path), capsys)
    # The payload's callable is builtins.open, pickled under its module name.
    assert re.search(rf"asks to build {re.escape(open.__module__)}\.open\b", err), err


def test_misleading_folder_error_is_short(world, capsys):
    """The keys of a wrong architecture are summarised (a ResNet of another depth differs in hundreds)."""
    _, path = _misleading_folder(world)
    _, err = run_entry("train_student", world.flags("train_student", path), capsys)
    message = re.search(r"^\S+: error: (.*)$", err, re.M)[1]
    assert len(message) < 700, message


# --------------------------------------------------------------------------------- on the command line

@pytest.mark.parametrize("script, make", [
    ("train_student.py", lambda w: (["--path_t", str(_payload_teacher(w))], "train_student")),
    ("train_teacher.py", lambda w: (_data_payload(w)[0], "train_teacher")),
], ids=["payload-teacher", "payload-data"])
def test_command_line_exits_cleanly_on_a_payload(script, make, world):
    extra, entry = make(world)
    done = subprocess.run([sys.executable, str(ROOT / script), *world.flags(entry), *extra],
                          capture_output=True, text=True, cwd=world.tmp, timeout=600)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert re.search(r"^\S+: error: (--path_t: )?refused", done.stderr, re.M), done.stderr
    assert not world.marker.exists()


# ------------------------------------------------------------------------------------ what still loads

def _trained_student(world: World, path_t: Path, *extra: str) -> dict:
    torch.manual_seed(0)
    return train_student.main([*world.flags("train_student", path_t), *extra])


def test_reference_checkpoint_with_namespace_and_numpy_scalars_trains(world):
    """The reference's teachers pickle their argparse options; accuracies may be numpy scalars."""
    opt = argparse.Namespace(model="resnet8", dataset="cifar100", lr_decay_epochs=[150, 180, 210], learning_rate=0.05)
    path = save(world.tmp / "ref" / "resnet8_vanilla" / "resnet8_last.pth",
                {"model": weights(), "opt": opt, "epoch": 240, "accuracy": np.float64(71.5),
                 "best_acc": np.float32(72.0), "step": np.int64(3)})
    state = load_checkpoint(path)
    assert state["opt"] == opt and state["accuracy"] == np.float64(71.5) and state["step"] == 3
    result = _trained_student(world, path)
    assert "_T:resnet8_" in Path(result["run_dir"]).name


def test_the_recorded_architecture_wins_over_a_misleading_folder(world):
    """A resnet14 stored under resnet8_runs/ that records 'model_name': 'resnet14' (a user's
    resnet32, made smaller: the point is the name, not the depth)."""
    path = save(world.tmp / "resnet8_runs" / "ckpt_epoch_240.pth",
                {"model": weights("resnet14"), "model_name": "resnet14", "epoch": 240})
    result = _trained_student(world, path)
    assert "_T:resnet14_" in Path(result["run_dir"]).name


def test_the_reference_namespace_names_the_architecture(world):
    path = save(world.tmp / "elsewhere" / "last.pth",
                {"model": weights("resnet14"), "opt": argparse.Namespace(model="resnet14")})
    parser = train_student.build_parser()
    argv = world.flags("train_student", path)
    opt = train_student.resolve_options(parser, train_student.parse_training_args(parser, argv))
    assert opt.model_t == "resnet14"


def test_trust_checkpoint_loads_a_refused_file_with_a_warning(world, capsys):
    """A file refused by the safe loader (here: numpy arrays, harmless) loads only when the user adds
    the types the refusal lists to the allow-list; the load stays weights-only."""
    path = save(world.tmp / "arrays" / "resnet8_vanilla" / "ckpt.pth",
                {"model": weights(), "history": np.array([1.0, 2.0])})
    _, err = run_entry("train_student", world.flags("train_student", path), capsys)
    assert "_reconstruct" in err and "--trust_checkpoint" in err
    capsys.readouterr()
    names = re.search(r"rerun with --trust_checkpoint (\S+)", err)[1]  # every type the file needs, listed
    result = _trained_student(world, path, "--trust_checkpoint", names)
    assert re.search(r"warning: --trust_checkpoint: allowing .*_reconstruct.* while loading .*ckpt\.pth",
                     capsys.readouterr().err)
    assert result["run_dir"]


def test_scoped_allow_list_leaves_torch_defaults_alone(world):
    """Our loads allow the reference's Namespace; the user's own torch.load still refuses it."""
    path = save(world.tmp / "ns.pth", {"model": {}, "opt": argparse.Namespace(model="resnet8")})
    load_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_numpy_1_scalars_in_a_checkpoint_still_load(world):
    """Files written under numpy 1 name its scalar numpy.core.multiarray.scalar (numpy 2:
    numpy._core...). The legacy (non-zip) torch format holds the pickle as it is, so it can be
    respelled here byte for byte."""
    buffer = io.BytesIO()
    torch.save({"model": weights(), "accuracy": np.float64(70.5)}, buffer, _use_new_zipfile_serialization=False)
    raw = buffer.getvalue()
    assert raw.count(b"numpy._core.multiarray") == 1
    path = write_bytes(world.tmp / "np1.pth", raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    state = load_checkpoint(path)
    assert state["accuracy"] == 70.5 and type(state["accuracy"]) is np.float64


def test_numpy_1_data_pickles_still_load(world):
    """The official CIFAR archive was pickled under numpy 1, naming numpy.core.multiarray."""
    path = world.cifar_split
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    data, labels = read_fake_split(world.data, train=True)  # our own file: plain pickle is fine
    entry = read_data_pickle(path)
    assert np.array_equal(entry["data"], data) and entry["fine_labels"] == labels
