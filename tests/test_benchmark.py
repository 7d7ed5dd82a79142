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
