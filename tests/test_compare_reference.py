"""scripts/compare_reference.py at a tiny size, against a stand-in reference tree written here (it
has the reference's command line and the spots the patches fix, not its code)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fakedata import write_fake_cifar

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = {
    "train_student.py": '''
import argparse
import importlib
import time

# The reference's logger package, gone from current package indexes: this run fails unless the
# comparison writes its stub into the copy.
tensorboard_logger = importlib.import_module("tensorboard_logger")
from dataset.cifar100 import TrainSet, get_data_folder

parser = argparse.ArgumentParser()
for flag in ("--path_t", "--model_s", "--distill", "-r", "-a", "-b", "--epochs", "--batch_size", "--num_workers"):
    parser.add_argument(flag)
opt = parser.parse_args()
assert opt.path_t.split("/")[-2].endswith("_vanilla"), "the teacher's folder names its architecture"
logger = tensorboard_logger.Logger(logdir="unused", flush_secs=2)
start = time.time()
print("images", TrainSet(get_data_folder()).count())
logger.log_value("train_acc", 0.0, 1)
print("epoch 1, total time {:.2f}".format(time.time() - start + 0.5))
''',
    "dataset/__init__.py": "",
    "dataset/cifar100.py": '''
import os
import pickle


def get_data_folder():
    return "./data/"  # the reference's hard-coded folder: the comparison points it at its own data


class TrainSet:  # torchvision-era attribute names, as in the reference
    def __init__(self, root):
        with open(os.path.join(root, "cifar-100-python", "train"), "rb") as f:
            self.train_data = pickle.load(f, encoding="latin1")["data"]

    def count(self):
        return len(self.train_data)
''',
}


@pytest.mark.slow
def test_compare_reference_runs_both_programs_and_reports_the_ratio(tmp_path):
    stand_in = tmp_path / "reference"
    for name, text in STAND_IN.items():
        (stand_in / name).parent.mkdir(parents=True, exist_ok=True)
        (stand_in / name).write_text(text)
    before = {name: (stand_in / name).read_text() for name in STAND_IN}
    data = write_fake_cifar(tmp_path / "data", n_train=48, n_test=16)
    work, out = tmp_path / "work", tmp_path / "compare.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_reference.py"), "--reference", str(stand_in),
         "--data_folder", str(data), "--teacher", "resnet8", "--student", "resnet8", "--train_subset", "32",
         "--test_subset", "16", "--batch_size", "16", "--num_workers", "0", "--rounds", "2",
         "--work_dir", str(work), "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    patches = " ".join(result["patches"])
    assert "tensorboard_logger" in patches and "data path" in patches and "renamed" in patches
    assert "CUDA" not in patches  # the stand-in has no alias sampler: nothing to patch there
    # The patched copy read the comparison's 32-image subset, not ./data/ nor the 48-image source.
    assert "images 32" in (work / "reference_round0.log").read_text()
    assert {name: (stand_in / name).read_text() for name in STAND_IN} == before  # the checkout is untouched
    for name in ("reference", "ours"):
        assert len(result["times"][name]["wall"]) == 2 and all(t > 0 for t in result["times"][name]["wall"])
        assert all(math.isfinite(t) and t > 0 for t in result["times"][name]["epoch"])
    assert result["times"]["reference"]["epoch"] == pytest.approx([0.5, 0.5], abs=0.2)
    for kind in ("wall", "epoch"):
        expected = [r / o for r, o in zip(result["times"]["reference"][kind], result["times"]["ours"][kind])]
        assert result["ratios"][kind] == pytest.approx(expected)
    assert "speed-up" in run.stdout and result["cpu"] in run.stdout and "OMP_NUM_THREADS=1" in run.stdout
