"""scripts/benchmark.py keeps working (a tiny configuration; figures are reported, never asserted)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_runs_every_contrastive_method_on_a_tiny_configuration(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--teacher", "resnet8", "--student", "resnet8",
         "--methods", "kd,crd,rrd,wcord", "--batch_size", "4", "--nce_k", "16", "--n_data", "64", "--steps", "1",
         "--warmup", "1", "--device", "cpu", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["bound", "kd", "crd", "rrd", "wcord"]
    for r in results:
        assert math.isfinite(r["step_ms"]) and r["step_ms"] > 0 and r["peak_mb"] > 0
    table_rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert len(table_rows) == 1 + len(results)  # header + one row per method


@pytest.mark.slow
def test_benchmark_profile_names_each_methods_own_work(tmp_path):
    """--profile: each method's costliest operators, as shares of its step; KDSVD's SVD shows up in
    its own profile and not in KD's."""
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--teacher", "resnet8", "--student", "resnet8",
         "--methods", "kd,kdsvd", "--batch_size", "4", "--steps", "1", "--warmup", "1", "--device", "cpu",
         "--profile", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    results = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    for r in results.values():
        rows = r["profile"]
        assert 0 < len(rows) <= 8
        assert all(row["ms_per_step"] >= 0 and 0 <= row["share"] <= 1 for row in rows)
        assert sum(row["share"] for row in rows) <= 1 + 1e-9
        assert [row["ms_per_step"] for row in rows] == sorted((row["ms_per_step"] for row in rows), reverse=True)
    ops = {name: {row["op"] for row in r["profile"]} for name, r in results.items()}
    assert any("svd" in op for op in ops["kdsvd"]) and not any("svd" in op for op in ops["kd"])
    assert "costliest operators" in run.stdout
