"""scripts/cpu_experiment.py end to end at a tiny size on the real CIFAR-100 (the full-size run's
table is in docs/experiments.md)."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def last_test_acc(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows[-1]["test_acc"]


@pytest.mark.slow
def test_tiny_cpu_experiment(shared_data, tmp_path):
    out = tmp_path / "exp"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cpu_experiment.py"), "--data_folder", str(shared_data),
         "--out", str(out), "--teacher", "resnet14", "--teacher_epochs", "1", "--teacher_decay", "1",
         "--student_epochs", "1", "--student_decay", "1", "--seeds", "0,1", "--train_subset", "256",
         "--test_subset", "100", "--nce_k", "64"],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    models, students = out / "models", out / "student_model"
    # Every run of the design exists, one per seed: 2 vanilla students, 2 KD, 2 CRD+KD.
    assert sorted(p.name for p in models.iterdir()) == ["resnet14_vanilla", "resnet8_vanilla_trial_1",
                                                         "resnet8_vanilla_trial_2"]
    kd = sorted(students.glob("S:resnet8_T:resnet14_cifar100_kd_r:0.1_a:0.9_b:0.0_*"))
    crd = sorted(students.glob("S:resnet8_T:resnet14_cifar100_crd_r:1.0_a:1.0_b:0.8_*"))
    assert len(kd) == 2 and len(crd) == 2

    # The printed table's cells, recomputed from the runs' own metrics files.
    expected = {
        "Student": [last_test_acc(models / f"resnet8_vanilla_trial_{t}") for t in (1, 2)],
        "KD": [last_test_acc(d) for d in kd],
        "CRD+KD": [last_test_acc(d) for d in crd],
    }
    table = (out / "results.md").read_text()
    assert table.strip() in run.stdout
    for label, values in expected.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
        cell = f"{statistics.mean(values):.2f}±{statistics.stdev(values):.2f} (2)"
        assert cell in row, (row, cell)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seconds"]["total"] > 0
    for name in ("curves_resnet14_resnet8.png", "gain_resnet14_resnet8.png", "corr.png"):
        assert (out / "plots" / name).read_bytes()[:8] == PNG_MAGIC, name
    corr = json.loads((out / "plots" / "corr.json").read_text())
    assert [s["label"] for s in corr["students"]] == ["Student", "KD", "CRD+KD"]
