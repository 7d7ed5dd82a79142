"""scripts/fetch_pretrained_teachers.sh, run on tars built here from randomly initialised teachers
in the release's layout (the test machines have no internet)."""
from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from kdzoo.models import model_dict

SCRIPT = ROOT / "scripts" / "fetch_pretrained_teachers.sh"
ALL = ["resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13"]
SMALL = ["resnet56", "wrn_40_2"]  # quick to build and load; the default run installs one of them at a time
LINE = re.compile(r"^(?P<arch>\S+)\s+params\s+(?P<params>[\d,]+)\s+sha256 (?P<sha>[0-9a-f]{64})\s+(?P<path>\S+)$")


def checkpoint_bytes(arch: str, seed: int, weights_of: str | None = None, **extra: object) -> bytes:
    torch.manual_seed(seed)
    model = model_dict[weights_of or arch](num_classes=100)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": 0.0, **extra}, buffer)
    return buffer.getvalue()


class _WritesMarker:
    """Unpickling this writes a marker file: the stand-in for a checkpoint that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def add_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def make_tar(path: Path, archs: list[str], extra: list[tarfile.TarInfo] | None = None,
             weights_of: dict[str, str] | None = None, files: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The release's layout: cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth, with folder entries
    (``files`` replaces the checkpoint of an architecture by given bytes)."""
    payload = {arch: (files or {}).get(arch) or checkpoint_bytes(arch, i, (weights_of or {}).get(arch))
               for i, arch in enumerate(archs)}
    with tarfile.open(path, "w") as archive:
        folder = tarfile.TarInfo("cifar_teachers")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for arch, data in payload.items():
            add_file(archive, f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth", data)
        for info in extra or []:
            archive.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return payload


def run_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, "TEACHER_DIR": str(tmp_path / "models"), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=600)


def check_installed(result: subprocess.CompletedProcess, tmp_path: Path, payload: dict[str, bytes]) -> None:
    assert result.returncode == 0, result.stderr
    lines = [LINE.match(line) for line in result.stdout.splitlines() if line.strip()]
    assert all(lines), result.stdout
    assert [m["arch"] for m in lines] == list(payload)
    for m in lines:
        arch = m["arch"]
        installed = tmp_path / "models" / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
        assert Path(m["path"]).resolve() == installed.resolve()
        data = installed.read_bytes()
        assert data == payload[arch]
        assert m["sha"] == hashlib.sha256(data).hexdigest()
        model = model_dict[arch](num_classes=100)
        model.load_state_dict(torch.load(installed, weights_only=True)["model"], strict=True)
        assert int(m["params"].replace(",", "")) == sum(p.numel() for p in model.parameters())


def test_installs_from_a_tar_file(tmp_path):
    payload = make_tar(tmp_path / "cifar_teachers.tar", SMALL)
    result = run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "cifar_teachers.tar"), TEACHERS=" ".join(SMALL))
    check_installed(result, tmp_path, payload)


def test_installs_from_a_folder_holding_the_tar(tmp_path):
    (tmp_path / "downloads").mkdir()
    payload = make_tar(tmp_path / "downloads" / "cifar_teachers.tar", ["resnet56"])
    result = run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "downloads"), TEACHERS="resnet56")
    check_installed(result, tmp_path, payload)


def test_installs_a_reference_checkpoint_with_its_pickled_options(tmp_path):
    """The reference's train_teacher.py pickles its argparse options and numpy scalars with the
    weights: the safe reader allows exactly those."""
    import argparse

    import numpy as np

    reference = checkpoint_bytes("resnet56", 0, opt=argparse.Namespace(model="resnet56", learning_rate=0.05),
                                 best_acc=np.float64(72.34))
    payload = make_tar(tmp_path / "cifar_teachers.tar", ["resnet56"], files={"resnet56": reference})
    result = run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "cifar_teachers.tar"), TEACHERS="resnet56")
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "models" / "resnet56_vanilla" / "ckpt_epoch_240.pth"
    assert installed.read_bytes() == payload["resnet56"]
    assert hashlib.sha256(payload["resnet56"]).hexdigest() in result.stdout


def test_refuses_a_teacher_that_would_run_code(tmp_path):
    marker = tmp_path / "ran.txt"
    hostile = checkpoint_bytes("resnet56", 0, opt=_WritesMarker(marker))
    make_tar(tmp_path / "cifar_teachers.tar", ["resnet56"], files={"resnet56": hostile})
    result = run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "cifar_teachers.tar"), TEACHERS="resnet56")
    assert result.returncode != 0 and "refused checkpoint" in result.stderr, result.stderr
    assert not marker.exists(), "unpacking the teacher ran code from the file"
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_a_second_run_accepts_the_installed_files(tmp_path):
    payload = make_tar(tmp_path / "cifar_teachers.tar", ["resnet56"])
    for _ in range(2):
        result = run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "cifar_teachers.tar"), TEACHERS="resnet56")
        check_installed(result, tmp_path, payload)


@pytest.mark.slow
def test_installs_all_six_teachers_by_default(tmp_path):
    payload = make_tar(tmp_path / "cifar_teachers.tar", ALL)
    check_installed(run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "cifar_teachers.tar")), tmp_path, payload)


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 4, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, (size if kind == tarfile.REGTYPE else 0), link
    return info


@pytest.mark.parametrize("member, message", [
    (_member("../evil.pth"), "absolute paths and '..'"),
    (_member("/tmp/evil.pth"), "absolute paths and '..'"),
    (_member("cifar_teachers/../../evil.pth"), "absolute paths and '..'"),
    (_member("cifar_teachers/notes.txt"), "not one of the expected teacher checkpoints"),
    (_member("cifar_teachers/resnet110_vanilla/ckpt_epoch_240.pth", tarfile.SYMTYPE, link="/etc/passwd"),
     "not a regular file"),
], ids=["dotdot", "absolute", "nested-dotdot", "unexpected", "symlink"])
def test_refuses_unsafe_or_unexpected_members(tmp_path, member, message):
    make_tar(tmp_path / "cifar_teachers.tar", ["resnet56"], extra=[member])
    result = run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "cifar_teachers.tar"), TEACHERS="resnet56")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "models").exists(), "something was installed from a refused tar"
    assert not (tmp_path.parent / "evil.pth").exists()


@pytest.mark.slow
def test_refuses_weights_of_another_architecture(tmp_path):
    make_tar(tmp_path / "cifar_teachers.tar", SMALL, weights_of={"wrn_40_2": "resnet56"})
    result = run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "cifar_teachers.tar"), TEACHERS=" ".join(SMALL))
    assert result.returncode != 0 and "does not hold weights of the wrn_40_2" in result.stderr, result.stderr
    assert not (tmp_path / "models").exists(), "the good teacher was installed although the tar is bad"


@pytest.mark.slow
def test_refuses_to_overwrite_a_different_teacher(tmp_path):
    make_tar(tmp_path / "cifar_teachers.tar", ["resnet56"])
    mine = tmp_path / "models" / "resnet56_vanilla" / "ckpt_epoch_240.pth"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(checkpoint_bytes("resnet56", seed=99))
    result = run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "cifar_teachers.tar"), TEACHERS="resnet56")
    assert result.returncode != 0 and "FORCE=1" in result.stderr
    assert mine.read_bytes() == checkpoint_bytes("resnet56", seed=99)
    forced = run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "cifar_teachers.tar"), TEACHERS="resnet56", FORCE="1")
    assert forced.returncode == 0, forced.stderr
    assert mine.read_bytes() == checkpoint_bytes("resnet56", seed=0)


def test_missing_tar_and_failed_download_are_explained(tmp_path):
    result = run_script(tmp_path, TEACHERS_FROM=str(tmp_path / "nowhere.tar"))
    assert result.returncode == 2 and "not found" in result.stderr
    # A closed local port stands in for a machine without internet access.
    result = run_script(tmp_path, TEACHERS_URL="http://127.0.0.1:9/cifar_teachers.tar")
    assert result.returncode == 1 and "could not download" in result.stderr and "TEACHERS_FROM" in result.stderr
