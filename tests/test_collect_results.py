"""scripts/collect_results.py on fake run folders, and the command lists of scripts/run_cifar_vanilla.sh
and scripts/run_cifar_distill.sh (PRINT_ONLY=1), each command parsed by the training scripts' own parsers.

Expectations are written out here from the papers' tables, independently of the scripts.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT

SCRIPTS = ROOT / "scripts"


def _load_collect():
    spec = importlib.util.spec_from_file_location("collect_results", SCRIPTS / "collect_results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["collect_results"] = module
    spec.loader.exec_module(module)
    return module


cr = _load_collect()

# ---------------------------------------------------------------------------------------------
# fake runs


# The published CIFAR-100 recipe, written out from the CRD paper (lr 0.01 for the small models).
RECIPE = {"dataset": "cifar100", "train_subset": "full", "test_subset": "full", "epochs": 240, "batch_size": 64,
          "learning_rate": 0.05, "lr_decay_epochs": [150, 180, 210], "lr_decay_rate": 0.1, "weight_decay": 0.0005,
          "momentum": 0.9, "amp": False, "channels_last": False, "compile": False, "world_size": 1}
SMALL_LR = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def recipe_settings(folder: Path) -> dict:
    """A run.json ``settings`` of the published recipe for the model(s) named by the folder."""
    fields = cr.parse_run_name(folder.name)
    if fields:
        model = fields["student"]
        extra = {"model_s": model, "model_t": fields["teacher"], "distill": fields["distill"], "kd_T": 4.0,
                 "gamma": fields["gamma"], "alpha": fields["alpha"], "beta": fields["beta"],
                 "logit_stand": fields["logit_stand"]}
    else:
        model = cr.parse_vanilla_name(folder.name)["model"]
        extra = {"model": model}
    return dict(RECIPE, learning_rate=0.01 if model in SMALL_LR else 0.05, **extra)


def write_run(folder: Path, accs: list[float], last_epoch: int = 240, record: bool = True, **settings) -> None:
    """A run folder: ``accs`` are the test accuracies of its last ``len(accs)`` epochs, ending at
    ``last_epoch``; ``run.json`` holds the recipe's settings, changed by ``settings`` (none without
    ``record``: a run from before run.json existed)."""
    folder.mkdir(parents=True)
    rows = [{"epoch": e, "lr": 0.05, "train_loss": 1.0, "test_acc": a, "test_acc_top5": 90.0}
            for e, a in enumerate(accs, start=last_epoch - len(accs) + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if record:
        record_settings = dict(recipe_settings(folder), **settings)
        (folder / "run.json").write_text(json.dumps({"format": 1, "seed": 0, "settings": record_settings}))


def student_dir(root: Path, s: str, t: str, distill: str, r: float, a: float, b: float, trial: int) -> Path:
    # the name train_student.run_name builds (floats formatted by Python's str, as argparse leaves them)
    return root / f"S:{s}_T:{t}_cifar100_{distill}_r:{float(r)}_a:{float(a)}_b:{float(b)}_{trial}"


# (teacher, student, distill, r, a, b) -> per-trial accuracy curves
STUDENT_RUNS = {
    ("resnet32x4", "resnet8x4", "kd", 0.1, 0.9, 0): {1: [60.0, 73.9, 73.6], 2: [61.0, 73.1, 73.4]},
    ("resnet32x4", "resnet8x4", "crd", 1, 1, 0.8): {1: [62.0, 75.8, 75.2], 2: [63.0, 75.1, 75.9]},
    ("resnet32x4", "resnet8x4", "crd", 1, 0, 0.8): {1: [62.5, 75.0, 74.9]},
    ("wrn_40_2", "wrn_16_2", "hint", 1, 1, 100): {1: [50.0, 70.2]},  # FitNet with KD: not a paper row
    ("wrn_40_2", "ShuffleV1", "kd", 0.1, 0.9, 0): {3: [55.0, 74.0, 74.5, 74.1]},
}
VANILLA_RUNS = {
    "resnet32x4_vanilla": [70.0, 79.6, 79.1],
    "resnet32x4_vanilla_trial_1": [70.0, 79.0, 79.5],
    "resnet8x4_vanilla": [65.0, 72.8, 72.4],
}


@pytest.fixture()
def runs(tmp_path: Path) -> tuple[Path, Path]:
    root, vanilla = tmp_path / "student_model", tmp_path / "models"
    for (t, s, d, r, a, b), trials in STUDENT_RUNS.items():
        for trial, accs in trials.items():
            write_run(student_dir(root, s, t, d, r, a, b, trial), accs)
    for name, accs in VANILLA_RUNS.items():
        write_run(vanilla / name, accs)
    (root / "not_a_run").mkdir()  # ignored
    (root / "S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_9").mkdir()  # no metrics yet: ignored
    return root, vanilla


def expected(curves: list[list[float]], metric: str) -> tuple[float, float, int]:
    values = [c[-1] if metric == "last" else max(c) for c in curves]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), std, len(values)


def md_tables(text: str) -> dict[str, dict[str, list[str]]]:
    """'### <title>' -> {header or row label: cells}."""
    tables, current = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            current = tables.setdefault(line[4:], {})
        elif line.startswith("| ") and current is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            current[cells[0]] = cells[1:]
    return tables


def md_cell(tables, table: int, metric: str, label: str, pair: tuple[str, str]) -> tuple[str, str, str]:
    title = next(k for k in tables if k.startswith(f"Table {table}:") and metric in k)
    header, row = tables[title]["method"], tables[title][label]
    i = header.index(f"{pair[0]} → {pair[1]}")
    assert header[i + 1 : i + 3] == ["paper", "Δ"]
    return row[i], row[i + 1], row[i + 2]


def fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f}±{std:.2f} ({n})"


def test_parse_run_names():
    f = cr.parse_run_name("S:wrn_16_2_T:wrn_40_2_cifar100_kd_r:0.1_a:0.9_b:0.0_3")
    assert (f["student"], f["teacher"], f["dataset"], f["distill"]) == ("wrn_16_2", "wrn_40_2", "cifar100", "kd")
    assert (f["gamma"], f["alpha"], f["beta"], f["trial"]) == (0.1, 0.9, 0.0, "3")
    f = cr.parse_run_name("S:MobileNetV2_T:ResNet50_cifar100_crd_r:1.0_a:1.0_b:0.8_run_a")
    assert (f["student"], f["teacher"], f["distill"], f["trial"]) == ("MobileNetV2", "ResNet50", "crd", "run_a")
    assert cr.parse_run_name("resnet32x4_vanilla") is None
    assert cr.parse_vanilla_name("wrn_40_2_vanilla") == {"model": "wrn_40_2", "trial": "0", "views": None}
    assert cr.parse_vanilla_name("wrn_40_2_vanilla_trial_2") == {"model": "wrn_40_2", "trial": "2", "views": None}
    # Input views other than rgb (train_teacher.py --input, train_student.py --input_t/--input_s).
    assert cr.parse_vanilla_name("resnet8_vanilla_in:lowres:8_trial_2") == {"model": "resnet8", "trial": "2",
                                                                            "views": "lowres:8"}
    f = cr.parse_run_name("S:resnet8_T:resnet14+resnet14_cifar100_crd_r:0.0_a:0.0_b:0.8_in:L-ab_3")
    assert (f["teacher"], f["views"], f["trial"], f["gamma"]) == ("resnet14+resnet14", "L-ab", "3", 0.0)


def test_labels():
    assert cr.method_label("kd", 0.9) == "KD"
    assert cr.method_label("crd", 0.0) == "CRD"
    assert cr.method_label("crd", 1.0) == "CRD+KD"
    assert cr.method_label("rrd", 1.0) == "RRD+KD"
    assert cr.method_label("wcord", 1.0) == "WCoRD+KD"
    assert cr.method_label("hint", 0.0) == "FitNet"
    assert cr.method_label("hint", 0.5) == "FitNet+KD"


def test_markdown_cells(runs):
    root, vanilla = runs
    text = cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--all"])
    tables = md_tables(text)
    assert len(tables) == 4  # two tables x (last, best)
    pair = ("resnet32x4", "resnet8x4")
    for metric, word in (("last", "last-epoch"), ("best", "best-epoch")):
        mean, std, n = expected(list(STUDENT_RUNS[(*pair, "kd", 0.1, 0.9, 0)].values()), metric)
        cell, paper, diff = md_cell(tables, 1, word, "KD", pair)
        assert (cell, paper, diff) == (fmt(mean, std, 2), "73.33", f"{mean - 73.33:+.2f}")

        mean, std, n = expected(list(STUDENT_RUNS[(*pair, "crd", 1, 1, 0.8)].values()), metric)
        cell, paper, diff = md_cell(tables, 1, word, "CRD+KD", pair)
        assert (cell, paper, diff) == (fmt(mean, std, 2), "75.46", f"{mean - 75.46:+.2f}")

        mean, std, n = expected(list(STUDENT_RUNS[(*pair, "crd", 1, 0, 0.8)].values()), metric)
        assert md_cell(tables, 1, word, "CRD", pair) == (fmt(mean, 0.0, 1), "75.51", f"{mean - 75.51:+.2f}")

        # Teacher row: the teacher's two vanilla trials, in every column with that teacher (both tables)
        mean, std, n = expected([VANILLA_RUNS["resnet32x4_vanilla"], VANILLA_RUNS["resnet32x4_vanilla_trial_1"]],
                                metric)
        assert md_cell(tables, 1, word, "Teacher", pair)[0] == fmt(mean, std, 2)
        assert md_cell(tables, 2, word, "Teacher", ("resnet32x4", "ShuffleV2")) == (
            fmt(mean, std, 2), "79.42", f"{mean - 79.42:+.2f}")
        mean, _, _ = expected([VANILLA_RUNS["resnet8x4_vanilla"]], metric)
        assert md_cell(tables, 1, word, "Student", pair) == (fmt(mean, 0.0, 1), "72.50", f"{mean - 72.50:+.2f}")

        # a Table 2 cell, a non-paper row appended after the paper's rows, missing cells
        mean, _, _ = expected(list(STUDENT_RUNS[("wrn_40_2", "ShuffleV1", "kd", 0.1, 0.9, 0)].values()), metric)
        assert md_cell(tables, 2, word, "KD", ("wrn_40_2", "ShuffleV1")) == (
            fmt(mean, 0.0, 1), "74.83", f"{mean - 74.83:+.2f}")
        assert md_cell(tables, 1, word, "FitNet+KD", ("wrn_40_2", "wrn_16_2"))[0] == fmt(70.2, 0.0, 1)
        assert md_cell(tables, 1, word, "FitNet+KD", ("wrn_40_2", "wrn_16_2"))[1:] == ("–", "–")
        assert md_cell(tables, 1, word, "FitNet", ("wrn_40_2", "wrn_16_2")) == ("–", "73.58", "–")
        assert md_cell(tables, 1, word, "FSP", ("wrn_40_2", "wrn_40_1")) == ("–", "–", "–")  # N/A in the paper
        assert md_cell(tables, 1, word, "WCoRD+KD", pair) == ("–", "76.15", "–")

    # rows in the papers' order, the extra row last; FSP absent from Table 2's published values
    title1 = next(k for k in tables if k.startswith("Table 1:") and "last-epoch" in k)
    labels = [k for k in tables[title1] if k != "method"]
    assert labels == cr.ROWS + ["FitNet+KD"]
    assert labels[:4] == ["Teacher", "Student", "KD", "FitNet"] and labels[17:19] == ["RRD", "RRD+KD"]
    assert labels[-2:] == ["DIST+LS", "FitNet+KD"]
    title2 = next(k for k in tables if k.startswith("Table 2:") and "last-epoch" in k)
    assert set(tables[title2]["FSP"][1::3]) == {"–"}


def test_metric_flag_and_min_epochs(runs):
    root, vanilla = runs
    text = cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--metric", "best"])
    tables = md_tables(text)
    assert len(tables) == 2 and all("best-epoch" in k for k in tables)
    # --min_epochs drops runs that stop before it: a run stopped at epoch 100 is gone, the rest stay
    write_run(student_dir(root, "resnet8x4", "resnet32x4", "kd", 0.1, 0.9, 0, 7), [50.0], last_epoch=100)
    for min_epochs, outside in (("0", True), ("240", False)):
        text = cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--metric", "last",
                        "--min_epochs", min_epochs])
        assert ("stopped at epoch 100 of 240" in text) is outside
        assert md_cell(md_tables(text), 2, "last-epoch", "KD", ("wrn_40_2", "ShuffleV1"))[0] == fmt(74.1, 0.0, 1)


def test_csv_output(runs, tmp_path):
    root, vanilla = runs
    out = tmp_path / "results.csv"
    cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--format", "csv", "--output", str(out), "--all"])
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == cr.CSV_FIELDS

    def find(metric, method, t, s):
        (row,) = [r for r in rows if (r["metric"], r["method"], r["teacher"], r["student"]) == (metric, method, t, s)]
        return row

    for metric in ("last", "best"):
        mean, std, n = expected(list(STUDENT_RUNS[("resnet32x4", "resnet8x4", "kd", 0.1, 0.9, 0)].values()), metric)
        row = find(metric, "KD", "resnet32x4", "resnet8x4")
        assert row["table"] == "1" and int(row["n"]) == 2
        assert float(row["mean"]) == pytest.approx(mean, abs=1e-4)
        assert float(row["std"]) == pytest.approx(std, abs=1e-4)
        assert float(row["published"]) == 73.33
        assert float(row["diff"]) == pytest.approx(mean - 73.33, abs=1e-4)
        mean, std, n = expected(list(STUDENT_RUNS[("resnet32x4", "resnet8x4", "crd", 1, 1, 0.8)].values()), metric)
        assert float(find(metric, "CRD+KD", "resnet32x4", "resnet8x4")["mean"]) == pytest.approx(mean, abs=1e-4)
    missing = find("last", "NST", "vgg13", "vgg8")
    assert (missing["mean"], missing["n"], missing["published"], missing["diff"]) == ("", "0", "71.53", "")
    # every (metric, table pair, paper row) appears once
    n_pairs = len(cr.TABLE1_PAIRS) + len(cr.TABLE2_PAIRS)
    assert len([r for r in rows if r["method"] in cr.ROWS]) == 2 * n_pairs * len(cr.ROWS)
    # without --all: the measured cells only
    cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--format", "csv", "--output", str(out)])
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows and all(r["mean"] and int(r["n"]) > 0 for r in rows)
    assert {(r["method"], r["student"]) for r in rows if r["metric"] == "last"} == {
        ("Teacher", "resnet8x4"), ("Student", "resnet8x4"), ("KD", "resnet8x4"), ("CRD", "resnet8x4"),
        ("CRD+KD", "resnet8x4"), ("FitNet+KD", "wrn_16_2"), ("KD", "ShuffleV1")}


def test_cli_is_torch_free(runs, tmp_path):
    """Tables (printed and written with --out_dir) need neither torch nor matplotlib."""
    root, vanilla = runs
    code = ("import runpy, sys; sys.argv = ['collect_results.py'] + sys.argv[1:]; "
            "runpy.run_path(%r, run_name='__main__'); "
            "assert 'torch' not in sys.modules, 'collect_results imported torch'; "
            "assert 'matplotlib' not in sys.modules, 'collect_results imported matplotlib'"
            ) % str(SCRIPTS / "collect_results.py")
    proc = subprocess.run([sys.executable, "-c", code, "--root", str(root), "--vanilla_root", str(vanilla),
                           "--metric", "last", "--out_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "73.33" in proc.stdout and "collected 7 distillation and 3 vanilla runs" in proc.stderr
    assert (tmp_path / "out" / "results.md").read_text() == proc.stdout
    assert (tmp_path / "out" / "results.csv").read_text().startswith(",".join(cr.CSV_FIELDS) + "\n")


def test_embedded_published_values_match_reference():
    rows = json.loads((FIXTURES / "published_results.json").read_text())
    reference = {(teacher, student, row): top1 for teacher, student, row, top1 in rows}
    labels = {label for _, _, label in reference}
    assert {k: v for k, v in cr.PUBLISHED.items() if k[2] in labels} == reference


# Later methods, written out from their sources (named in collect_results.py):
# (teacher, student) -> value, only the pairs each README lists.
LATER_PUBLISHED = {
    "DKD": {("resnet56", "resnet20"): 71.97, ("resnet110", "resnet32"): 74.11, ("resnet32x4", "resnet8x4"): 76.32,
            ("wrn_40_2", "wrn_16_2"): 76.23, ("wrn_40_2", "wrn_40_1"): 74.81, ("vgg13", "vgg8"): 74.68,
            ("resnet32x4", "ShuffleV1"): 76.45, ("wrn_40_2", "ShuffleV1"): 76.70, ("vgg13", "MobileNetV2"): 69.71,
            ("ResNet50", "MobileNetV2"): 70.35, ("resnet32x4", "ShuffleV2"): 77.07},
    "DIST": {("wrn_40_2", "wrn_40_1"): 74.43, ("resnet56", "resnet20"): 71.75, ("resnet32x4", "resnet8x4"): 76.31,
             ("ResNet50", "MobileNetV2"): 68.66, ("resnet32x4", "ShuffleV1"): 76.34,
             ("resnet32x4", "ShuffleV2"): 77.35},
    "KD+LS": {("resnet32x4", "resnet8x4"): 76.62, ("vgg13", "vgg8"): 74.36, ("wrn_40_2", "wrn_40_1"): 74.37,
              ("wrn_40_2", "wrn_16_2"): 76.11, ("resnet56", "resnet20"): 71.43, ("resnet110", "resnet32"): 74.17,
              ("resnet110", "resnet20"): 71.48, ("resnet32x4", "ShuffleV2"): 75.56,
              ("vgg13", "MobileNetV2"): 68.61, ("ResNet50", "MobileNetV2"): 69.02},
    "DKD+LS": {("resnet32x4", "resnet8x4"): 77.01, ("vgg13", "vgg8"): 74.81, ("wrn_40_2", "wrn_40_1"): 74.89,
               ("wrn_40_2", "wrn_16_2"): 76.39, ("resnet56", "resnet20"): 72.32, ("resnet110", "resnet32"): 74.29,
               ("resnet110", "resnet20"): 71.85, ("resnet32x4", "ShuffleV2"): 77.37,
               ("vgg13", "MobileNetV2"): 69.98, ("ResNet50", "MobileNetV2"): 70.45},
    "ReviewKD": {("wrn_40_2", "wrn_16_2"): 76.12, ("wrn_40_2", "wrn_40_1"): 75.09, ("resnet56", "resnet20"): 71.89,
                 ("resnet110", "resnet32"): 73.89, ("resnet32x4", "resnet8x4"): 75.63,
                 ("ResNet50", "MobileNetV2"): 69.89, ("resnet32x4", "ShuffleV1"): 77.45,
                 ("resnet32x4", "ShuffleV2"): 77.78},
    "OFD": {("wrn_40_2", "wrn_40_1"): 74.33, ("resnet56", "resnet20"): 70.98, ("resnet32x4", "resnet8x4"): 74.95,
            ("ResNet50", "MobileNetV2"): 69.04, ("resnet32x4", "ShuffleV1"): 75.98, ("resnet32x4", "ShuffleV2"): 76.82},
}


def test_later_methods_published_values():
    for label, values in LATER_PUBLISHED.items():
        assert {k[:2]: v for k, v in cr.PUBLISHED.items() if k[2] == label} == values, label
    for label in ("KDSVD", "DIST+LS"):  # no published number found: none invented
        assert not [k for k in cr.PUBLISHED if k[2] == label]


# ---------------------------------------------------------------------------------------------
# comparability: only recipe runs in the paper tables, cells never pool different settings


def md_rows(text: str, title_start: str) -> list[list[str]]:
    """The body rows of the first ``### <title_start>...`` table, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {title_start}"))
    rows = []
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_mixed_runs_are_never_pooled(tmp_path, capsys):
    root, vanilla = tmp_path / "students", tmp_path / "models"

    def kd(trial, teacher="resnet32x4", student="resnet8x4"):
        return student_dir(root, student, teacher, "kd", 0.1, 0.9, 0, trial)

    write_run(kd(1), [72.0, 73.5])  # the published recipe, two seeds
    write_run(kd(2), [72.0, 73.9])
    write_run(kd(3), [3.4], last_epoch=1, epochs=1, train_subset=10000)  # pooled with the next one before
    write_run(kd(4), [1.2], last_epoch=1, epochs=1, train_subset=640)
    write_run(kd(5), [2.0], last_epoch=1, epochs=1, train_subset=640, amp=True)
    write_run(kd(6), [60.0], last_epoch=100)  # the recipe, still training
    write_run(kd(7), [70.0], record=False)  # from before run.json: recipe unknown
    write_run(kd(1, "vgg13", "vgg8"), [72.6], kd_T=4.0)  # two recipe runs that differ in kd_T only
    write_run(kd(2, "vgg13", "vgg8"), [71.5], kd_T=3.0)
    write_run(vanilla / "resnet32x4_vanilla", [79.3])
    # a 1-epoch, 10,000-image run: it made the paper's Student cell read "3.23±0.00 (1) | 72.50 | -69.27"
    write_run(vanilla / "resnet8x4_vanilla", [3.23], last_epoch=1, epochs=1, train_subset=10000)

    text = cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--metric", "last"])
    err = capsys.readouterr().err
    tables = md_tables(text)
    assert [k.split(",")[0] for k in tables] == ["Table 1: same-family teacher/student", OUTSIDE := cr.OUTSIDE_TITLE]
    table1 = tables[next(iter(tables))]
    # one column (the only pair with a recipe student), rows with a cell only: the two recipe seeds
    assert list(table1) == ["method", "Teacher", "KD"]
    assert table1["method"] == ["resnet32x4 → resnet8x4", "paper", "Δ"]
    assert table1["KD"] == [fmt(73.7, statistics.stdev([73.5, 73.9]), 2), "73.33", f"{73.7 - 73.33:+.2f}"]
    assert table1["Teacher"] == [fmt(79.3, 0.0, 1), "79.42", f"{79.3 - 79.42:+.2f}"]

    # everything else: one row per setting, named by how it differs, never averaged together
    assert md_rows(text, OUTSIDE) == [
        ["resnet32x4 → resnet8x4", "KD", "recipe unknown (no run.json), trial 7, 240 epochs logged", fmt(70.0, 0, 1)],
        ["resnet32x4 → resnet8x4", "KD", "stopped at epoch 100 of 240", fmt(60.0, 0, 1)],
        ["resnet32x4 → resnet8x4", "KD", "train 10000, epochs 1", fmt(3.4, 0, 1)],
        ["resnet32x4 → resnet8x4", "KD", "train 640, epochs 1", fmt(1.2, 0, 1)],
        ["resnet32x4 → resnet8x4", "KD", "train 640, epochs 1, amp", fmt(2.0, 0, 1)],
        ["vgg13 → vgg8", "KD", "published recipe, kd_T 3.0", fmt(71.5, 0, 1)],
        ["vgg13 → vgg8", "KD", "published recipe, kd_T 4.0", fmt(72.6, 0, 1)],
        ["resnet8x4", "vanilla", "train 10000, epochs 1", fmt(3.23, 0, 1)],
    ]
    # no published value or difference next to any of them
    assert "72.50" not in text and "-69.27" not in text
    assert "KD vgg13->vgg8: 2 groups follow the recipe but differ in kd_T" in err
    assert "8 outside the published recipe" in err

    out = tmp_path / "out"
    cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--out_dir", str(out), "--metric", "last"])
    rows = [r for r in csv.DictReader(io.StringIO((out / "results.csv").read_text())) if r["table"] == "outside_recipe"]
    assert [(r["method"], r["teacher"], r["student"], r["n"], r["differs"]) for r in rows][2:4] == [
        ("KD", "resnet32x4", "resnet8x4", "1", "train 10000, epochs 1"),
        ("KD", "resnet32x4", "resnet8x4", "1", "train 640, epochs 1")]
    assert rows[-1]["method"] == "vanilla" and rows[-1]["teacher"] == "" and float(rows[-1]["mean"]) == 3.23

    # the function for other scripts refuses to average different settings
    with pytest.raises(ValueError, match="different settings"):
        cr.collect_accuracies(root, vanilla)


def test_empty_tables_are_not_printed(tmp_path):
    root = tmp_path / "students"
    write_run(student_dir(root, "resnet8", "resnet20", "kd", 0.1, 0.9, 0, 1), [30.0], last_epoch=2, epochs=2)
    text = cr.main(["--root", str(root), "--vanilla_root", "", "--metric", "last"])
    assert [line for line in text.splitlines() if line.startswith("###")] == [
        f"### {cr.OUTSIDE_TITLE}, last-epoch test accuracy (%)"]
    assert len(text.splitlines()) < 10
    assert "No runs found." in cr.main(["--root", str(tmp_path / "none"), "--vanilla_root", ""])


def test_logit_standardisation_and_later_method_labels(tmp_path):
    f = cr.parse_run_name("S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0_ls_1")
    assert f["logit_stand"] and (f["beta"], f["trial"]) == (0.0, "1")
    f = cr.parse_run_name("S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0_1")
    assert not f["logit_stand"] and f["trial"] == "1"
    assert [cr.method_label(d, 0.0) for d in ("dkd", "dist", "reviewkd", "ofd", "kdsvd")] == [
        "DKD", "DIST", "ReviewKD", "OFD", "KDSVD"]
    assert [cr.method_label(d, a, True) for d, a in (("kd", 0.9), ("dkd", 0.0), ("dist", 0.0))] == [
        "KD+LS", "DKD+LS", "DIST+LS"]
    root = tmp_path / "students"
    write_run(root / "S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_ls_1", [76.0])
    write_run(root / "S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_1", [73.0])
    write_run(root / "S:resnet8x4_T:resnet32x4_cifar100_dkd_r:1.0_a:0.0_b:1.0_ls_1", [77.5])
    tables = md_tables(cr.main(["--root", str(root), "--vanilla_root", "", "--metric", "last"]))
    (table1,) = tables.values()
    assert table1["KD"] == [fmt(73.0, 0, 1), "73.33", f"{73.0 - 73.33:+.2f}"]
    assert table1["KD+LS"] == [fmt(76.0, 0, 1), "76.62", f"{76.0 - 76.62:+.2f}"]
    assert table1["DKD+LS"] == [fmt(77.5, 0, 1), "77.01", f"{77.5 - 77.01:+.2f}"]


# ---------------------------------------------------------------------------------------------
# pairs outside the tables, files, the function for other scripts, plots

# A CPU experiment's pair (in neither table), trials of different lengths, and FitNet+KD (not
# published) on a table pair.
OTHER_STUDENT_RUNS = {
    ("resnet20", "resnet8", "kd", 0.1, 0.9, 0): {1: [20.0, 30.0], 2: [22.0, 31.0, 35.0]},
    ("resnet20", "resnet8", "crd", 1, 1, 0.8): {1: [25.0, 33.0, 36.0]},
    ("resnet32x4", "resnet8x4", "hint", 1, 1, 100): {1: [50.0, 71.0, 72.9]},
}
OTHER_VANILLA_RUNS = {
    "resnet20_vanilla": [30.0, 40.0, 41.5],
    "resnet8_vanilla": [18.0, 28.0, 29.5],
    "resnet8_vanilla_trial_1": [19.0, 27.0, 30.5],
}


@pytest.fixture()
def more_runs(runs: tuple[Path, Path]) -> tuple[Path, Path]:
    root, vanilla = runs
    for (t, s, d, r, a, b), trials in OTHER_STUDENT_RUNS.items():
        for trial, accs in trials.items():
            write_run(student_dir(root, s, t, d, r, a, b, trial), accs)
    for name, accs in OTHER_VANILLA_RUNS.items():
        write_run(vanilla / name, accs)
    return root, vanilla


def test_other_pairs_table(more_runs):
    root, vanilla = more_runs
    tables = md_tables(cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--metric", "last"]))
    assert len(tables) == 3  # Tables 1, 2 (measured parts) and the other pairs
    (title,) = [k for k in tables if k.startswith("Other pairs")]
    other = tables[title]
    assert list(other) == ["method", "Teacher", "Student", "KD", "CRD+KD"]
    assert other["method"] == ["resnet20 → resnet8", "paper", "Δ"]
    assert other["Teacher"] == [fmt(41.5, 0.0, 1), "–", "–"]
    assert other["Student"] == [fmt(30.0, statistics.stdev([29.5, 30.5]), 2), "–", "–"]
    assert other["KD"] == [fmt(32.5, statistics.stdev([30.0, 35.0]), 2), "–", "–"]
    assert other["CRD+KD"] == [fmt(36.0, 0.0, 1), "–", "–"]
    # the vanilla resnet20 is also the Student row of Table 1's resnet20 columns
    assert md_cell(tables, 1, "last-epoch", "Student", ("resnet56", "resnet20")) == (
        fmt(41.5, 0.0, 1), "69.06", f"{41.5 - 69.06:+.2f}")

    out = root.parent / "csv"
    cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--metric", "last", "--out_dir", str(out)])
    rows = [r for r in csv.DictReader(io.StringIO((out / "results.csv").read_text())) if r["table"] == "other"]
    assert [(r["method"], r["teacher"], r["student"], r["n"]) for r in rows] == [
        ("Teacher", "resnet20", "resnet8", "1"), ("Student", "resnet20", "resnet8", "2"),
        ("KD", "resnet20", "resnet8", "2"), ("CRD+KD", "resnet20", "resnet8", "1")]
    assert float(rows[2]["mean"]) == 32.5 and rows[2]["published"] == rows[2]["diff"] == ""


def test_out_dir_writes_both_formats(runs, tmp_path, capsys):
    root, vanilla = runs
    printed = cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--out_dir", str(tmp_path / "out")])
    assert capsys.readouterr().out.rstrip("\n") == printed.rstrip("\n")  # Markdown still printed
    assert (tmp_path / "out" / "results.md").read_text().rstrip("\n") == printed.rstrip("\n")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "results.csv").read_text())))
    assert {r["metric"] for r in rows} == {"last", "best"}
    (kd,) = [r for r in rows if (r["metric"], r["method"], r["teacher"], r["student"]) ==
             ("best", "KD", "resnet32x4", "resnet8x4")]
    assert float(kd["mean"]) == pytest.approx(statistics.mean([73.9, 73.4]), abs=1e-4)


def test_collect_accuracies_and_render_pairs(more_runs):
    root, vanilla = more_runs
    acc = cr.collect_accuracies(root, vanilla)
    assert acc[("resnet20", "resnet8", "KD")] == [30.0, 35.0]
    assert acc[("resnet20", "resnet8", "Student")] == [29.5, 30.5]
    assert acc[("resnet32x4", "resnet8x4", "KD")] == [73.6, 73.4]
    assert acc[("resnet32x4", "resnet8x4", "FitNet+KD")] == [72.9]
    assert acc[("resnet32x4", "resnet8x4", "Teacher")] == [79.1, 79.5]
    assert cr.collect_accuracies(root, vanilla, metric="best")[("resnet20", "resnet8", "KD")] == [30.0, 35.0]
    assert cr.collect_accuracies(root, vanilla, min_epochs=241) == {}
    with pytest.raises(ValueError, match="metric"):
        cr.collect_accuracies(root, vanilla, metric="mean")

    text = cr.render_pairs(acc, [("resnet20", "resnet8"), ("resnet32x4", "resnet8x4")], title="CPU run")
    (table,) = md_tables(text).values()
    assert list(table) == ["method", "Teacher", "Student", "KD", "CRD", "CRD+KD", "FitNet+KD"]
    assert table["KD"] == [fmt(32.5, statistics.stdev([30.0, 35.0]), 2), "–", "–",
                           fmt(73.5, statistics.stdev([73.6, 73.4]), 2), "73.33", f"{73.5 - 73.33:+.2f}"]
    assert table["CRD"][:3] == ["–", "–", "–"]
    # default pairs: every pair with distillation runs (not c -> d), sorted; hand-made numbers work too
    hand = {("a", "b", "KD"): [1.0, 2.0, 3.0], ("a", "b", "Student"): [0.5], ("c", "d", "Student"): [1.0]}
    assert md_tables(cr.render_pairs(hand, title="t"))["t"] == {
        "method": ["a → b", "paper", "Δ"], "Teacher": ["–"] * 3, "Student": [fmt(0.5, 0, 1), "–", "–"],
        "KD": [fmt(2.0, 1.0, 3), "–", "–"]}


def _lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_curve_figures(more_runs):
    root, vanilla = more_runs
    notes = []
    figures = cr.make_figures(cr.scan(root, vanilla), notes=notes)
    # curves for every distilled pair; gains only where the vanilla student was run
    assert set(figures) == {
        "curves_resnet32x4_resnet8x4.png", "gain_resnet32x4_resnet8x4.png", "curves_wrn_40_2_wrn_16_2.png",
        "curves_wrn_40_2_ShuffleV1.png", "curves_resnet20_resnet8.png", "gain_resnet20_resnet8.png"}
    assert any("ShuffleV1" in n and "no gain plot" in n for n in notes)

    (ax,) = figures["curves_resnet32x4_resnet8x4.png"].axes
    lines = _lines(ax)
    kd = STUDENT_RUNS[("resnet32x4", "resnet8x4", "kd", 0.1, 0.9, 0)]
    assert lines["KD (2)"][0] == [238, 239, 240]
    assert lines["KD (2)"][1] == pytest.approx([statistics.mean(v) for v in zip(*kd.values())])
    assert lines["CRD (1)"][1] == pytest.approx([62.5, 75.0, 74.9])
    assert lines["Student (vanilla) (1)"][1] == pytest.approx([65.0, 72.8, 72.4])
    assert lines["Teacher (final) (2)"][1] == pytest.approx([79.3, 79.3])  # mean of 79.1 and 79.5
    # the KD band spans min..max over the two trials at every epoch
    line_colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
    from matplotlib.colors import to_rgba

    (band,) = [c for c in ax.collections if tuple(c.get_facecolor()[0][:3]) == to_rgba(line_colors["KD (2)"])[:3]]
    vertices = band.get_paths()[0].vertices
    for epoch, values in zip([238, 239, 240], zip(*kd.values())):
        ys = vertices[vertices[:, 0] == epoch][:, 1]
        assert min(ys) == pytest.approx(min(values)) and max(ys) == pytest.approx(max(values))

    # trials that logged different epochs: each epoch averages the trials that logged it
    lines = _lines(figures["curves_resnet20_resnet8.png"].axes[0])
    assert lines["KD (2)"] == ([238, 239, 240], pytest.approx([22.0, (20.0 + 31.0) / 2, (30.0 + 35.0) / 2]))
    assert lines["Student (vanilla) (2)"][1] == pytest.approx([18.5, 27.5, 30.0])
    assert lines["Teacher (final) (1)"][1] == pytest.approx([41.5, 41.5])


def _bars(ax):
    from matplotlib.container import BarContainer, ErrorbarContainer

    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    (errors,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    heights = [p.get_height() for p in bars.patches]
    half_widths = [(seg[1][1] - seg[0][1]) / 2 for seg in errors.lines[2][0].get_segments()]
    ax.figure.canvas.draw()
    labels = [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]
    return labels, heights, half_widths


def test_gain_figures(more_runs):
    root, vanilla = more_runs
    figures = cr.make_figures(cr.scan(root, vanilla))
    (ax,) = figures["gain_resnet32x4_resnet8x4.png"].axes
    labels, heights, errors = _bars(ax)
    student = 72.4  # the one vanilla resnet8x4 run's last epoch
    assert labels == ["KD", "CRD", "CRD+KD", "FitNet+KD"]
    assert heights == pytest.approx([73.5 - student, 74.9 - student, 75.55 - student, 72.9 - student])
    assert errors == pytest.approx([statistics.stdev([73.6, 73.4]), 0.0, statistics.stdev([75.2, 75.9]), 0.0])
    # published gain = published method - published student (72.50); none for FitNet+KD
    published = _lines(ax)["published gain"][1]
    assert published[:3] == pytest.approx([73.33 - 72.50, 75.51 - 72.50, 75.46 - 72.50])
    assert math.isnan(published[3])

    (ax,) = figures["gain_resnet20_resnet8.png"].axes
    labels, heights, errors = _bars(ax)
    assert labels == ["KD", "CRD+KD"]
    assert heights == pytest.approx([32.5 - 30.0, 36.0 - 30.0])
    assert errors == pytest.approx([statistics.stdev([30.0, 35.0]), 0.0])
    assert "published gain" not in _lines(ax)  # a pair without published values


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plots_cli_writes_pngs(more_runs, tmp_path):
    root, vanilla = more_runs
    proc = subprocess.run([sys.executable, str(SCRIPTS / "collect_results.py"), "--root", str(root),
                           "--vanilla_root", str(vanilla), "--plots", str(tmp_path / "plots"),
                           "--min_epochs", "240"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["curves_resnet20_resnet8.png", "curves_resnet32x4_resnet8x4.png", "curves_wrn_40_2_ShuffleV1.png",
                       "curves_wrn_40_2_wrn_16_2.png", "gain_resnet20_resnet8.png", "gain_resnet32x4_resnet8x4.png"]
    for name in written:
        width, height = _png_size(tmp_path / "plots" / name)
        assert width > 200 and height > 200
        assert f"wrote {tmp_path / 'plots' / name}" in proc.stderr
    assert "no gain plot for wrn_40_2 → ShuffleV1" in proc.stderr


def test_plots_without_matplotlib(runs, tmp_path, monkeypatch, capsys):
    root, vanilla = runs
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    with pytest.raises(SystemExit):
        cr.main(["--root", str(root), "--vanilla_root", str(vanilla), "--plots", str(tmp_path / "p")])
    assert "pip install" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the run scripts

# The tables, written out again: (teacher, student) of Table 1, then Table 2.
TABLE1 = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
          ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]
TABLE2 = [("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
          ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]
# FSP: N/A for wrn-40-2 -> wrn-40-1 and absent from Table 2
FSP_PAIRS = [p for p in TABLE1 if p != ("wrn_40_2", "wrn_40_1")]
CLASSIC = ["kd", "hint", "attention", "similarity", "correlation", "vid", "rkd", "pkt", "abound", "factor", "nst",
           "reviewkd", "ofd"]
# KD-SVD compares channel-indexed singular vectors: the same pairs as FSP.
SAME_CHANNELS = ["fsp", "kdsvd"]
# ReviewKD's -b where its authors' CIFAR-100 script differs from the row's 5 (resnet110 -> resnet20: ours).
REVIEWKD_BETA = {("resnet56", "resnet20"): 0.6, ("resnet110", "resnet20"): 1.0, ("resnet110", "resnet32"): 1.0,
                 ("resnet32x4", "ShuffleV2"): 8.0}
PER_TRIAL = len(CLASSIC) * 13 + len(SAME_CHANNELS) * 6  # 13 pairs; FSP_PAIRS has 6
# contrastive rows: (distill, alpha, beta)
CONTRASTIVE = [("crd", 0.0, 0.8), ("crd", 1.0, 0.8), ("rrd", 0.0, 1.0), ("rrd", 1.0, 1.0), ("wcord", 1.0, 0.8)]
# logit rows: (distill, --logit_stand, (-r, -a, -b)); the +LS rows use the authors' base temperature 2
LOGIT = [("dkd", False, (1.0, 0.0, 1.0)), ("dist", False, (1.0, 0.0, 2.0)), ("kd", True, (0.1, 9.0, 0.0)),
         ("dkd", True, (1.0, 0.0, 9.0))]


def expected_runs(available: set[str]) -> set[tuple]:
    """(distill, alpha, teacher, student) of one trial."""
    runs = {(d, None, t, s) for d in CLASSIC for t, s in TABLE1 + TABLE2}
    runs |= {(d, None, t, s) for d in SAME_CHANNELS for t, s in FSP_PAIRS}
    runs |= {(d, a, t, s) for d, a, _ in CONTRASTIVE if d in available for t, s in TABLE1 + TABLE2}
    runs |= {(d, "ls" if ls else "logit", t, s) for d, ls, _ in LOGIT for t, s in TABLE1 + TABLE2}
    return runs


def run_script(name: str, extra_env: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "LAUNCHER", "TRIALS", "TEACHER_DIR",
                                                            "DATA_FOLDER")}
    # `python` on PATH is this interpreter (the distill script asks it which methods exist)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(PRINT_ONLY="1", **extra_env)
    proc = subprocess.run(["bash", str(SCRIPTS / name), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def parse_commands(stdout: str, script: str, parser) -> list:
    parsed = []
    for line in stdout.splitlines():
        tokens = shlex.split(line)
        assert tokens[:2] == ["python", script], line
        parsed.append(parser.parse_args(tokens[2:]))
    return parsed


def test_vanilla_script_print_only():
    import train_teacher

    proc = run_script("run_cifar_vanilla.sh", {"DATA_FOLDER": "/data/cifar dir"}, "--epochs", "1", "--seed", "7")
    opts = parse_commands(proc.stdout, "train_teacher.py", train_teacher.build_parser())
    assert len(opts) == 6
    assert [o.model for o in opts] == ["wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"]
    for o in opts:
        assert (o.data_folder, o.epochs, o.seed, o.trial) == ("/data/cifar dir", 1, 7, "0")
        assert (o.batch_size, o.lr_decay_epochs, o.save_folder) == (64, [150, 180, 210], "./save/models")


def test_distill_script_print_only():
    import train_student
    from kdzoo.distiller_zoo.registry import METHODS

    available = {m for m in ("crd", "rrd", "wcord") if m in METHODS}
    proc = run_script("run_cifar_distill.sh", {"TRIALS": "1"}, "--device", "cpu")
    opts = parse_commands(proc.stdout, "train_student.py", train_student.build_parser())
    want = expected_runs(available)
    assert len(opts) == len(want)
    got = set()
    for o in opts:
        assert len(o.path_t) == 1, o.path_t  # one teacher per run
        m = re.fullmatch(r"\./save/models/(.+)_vanilla/ckpt_epoch_240\.pth", o.path_t[0])
        assert m, o.path_t
        teacher = m[1]
        assert (o.trial, o.data_folder, o.device) == ("1", "./data", "cpu")
        logit = [(d, ls) for d, ls, weights in LOGIT if (o.distill, o.logit_stand, (o.gamma, o.alpha, o.beta)) ==
                 (d, ls, weights)]
        if logit:
            assert o.kd_T == (2.0 if o.logit_stand else None)  # None: the registry's paper temperature
            got.add((o.distill, "ls" if o.logit_stand else "logit", teacher, o.model_s))
        elif o.distill == "reviewkd":
            assert o.beta is None  # left to the registry, which knows the authors' value per pair
            resolved = train_student.resolve_options(train_student.build_parser(), o, require_teacher_file=False)
            assert (resolved.gamma, resolved.alpha, resolved.beta) == (
                1.0, 0.0, REVIEWKD_BETA.get((teacher, o.model_s), 5.0))
            got.add((o.distill, None, teacher, o.model_s))
        elif o.distill in METHODS and o.distill not in {"crd", "rrd", "wcord"}:
            assert (o.gamma, o.alpha, o.beta) == METHODS[o.distill].weights  # the paper weights
            got.add((o.distill, None, teacher, o.model_s))
        else:
            assert (o.gamma, o.alpha, o.beta) in {(1.0, a, b) for d, a, b in CONTRASTIVE if d == o.distill}
            got.add((o.distill, o.alpha, teacher, o.model_s))
    assert got == want
    fsp = {(t, s) for d, _, t, s in got if d == "fsp"}
    assert fsp == set(FSP_PAIRS)
    assert ("wrn_40_2", "wrn_40_1") not in fsp and not fsp & set(TABLE2)
    if not available:
        assert "skipping CRD CRD+KD RRD RRD+KD WCoRD+KD" in proc.stderr
        assert len(opts) == PER_TRIAL + len(LOGIT) * 13


def test_distill_script_with_contrastive_methods(tmp_path):
    """When the library provides crd/rrd/wcord, their five rows join; TRIALS numbers the trials 1..N."""
    fake = tmp_path / "fake_python"
    fake.write_text("#!/bin/sh\necho crd rrd wcord\n")
    fake.chmod(0o755)
    proc = run_script("run_cifar_distill.sh", {"TRIALS": "2", "PYTHON": str(fake),
                                               "TEACHER_DIR": "/ckpt/teachers", "DATA_FOLDER": "/d"})
    lines = proc.stdout.splitlines()
    per_trial = PER_TRIAL + 5 * 13 + len(LOGIT) * 13
    assert len(lines) == 2 * per_trial == 2 * len(expected_runs({"crd", "rrd", "wcord"}))
    tokens = [shlex.split(line) for line in lines]
    trials = [t[t.index("--trial") + 1] for t in tokens]
    assert trials.count("1") == trials.count("2") == per_trial
    assert all(t[t.index("--path_t") + 1].startswith("/ckpt/teachers/") for t in tokens)
    assert all(t[t.index("--data_folder") + 1] == "/d" for t in tokens)
    wcord = [t for t in tokens if t[t.index("--distill") + 1] == "wcord"]
    assert len(wcord) == 2 * 13 and all(t[t.index("-a") + 1] == "1" for t in wcord)
    assert "skipping" not in proc.stderr

    # a Python that cannot import the library: contrastive rows skipped with a note
    broken = tmp_path / "broken_python"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    proc = run_script("run_cifar_distill.sh", {"TRIALS": "1", "PYTHON": str(broken)})
    assert len(proc.stdout.splitlines()) == PER_TRIAL + len(LOGIT) * 13
    assert "could not import" in proc.stderr and "skipping" in proc.stderr


@pytest.mark.slow
def test_renders_runs_made_by_train_student(tmp_path, capsys):
    """End to end: real train_student runs (fake data, random resnet32x4 teacher) become table cells."""
    import torch

    import train_student
    from fakedata import write_fake_cifar
    from kdzoo.models import model_dict

    data = write_fake_cifar(tmp_path / "data", n_train=64, n_test=32)
    teacher_dir = tmp_path / "models" / "resnet32x4_vanilla"
    teacher_dir.mkdir(parents=True)
    torch.save({"model": model_dict["resnet32x4"](num_classes=100).state_dict(), "epoch": 240, "accuracy": 0.0},
               teacher_dir / "ckpt_epoch_240.pth")
    results = {}
    for distill in ("kd", "attention"):
        results[distill] = train_student.main([
            "--path_t", str(teacher_dir / "ckpt_epoch_240.pth"), "--model_s", "resnet8x4", "--distill", distill,
            "--epochs", "1", "--batch_size", "16", "--num_workers", "0", "--device", "cpu", "--seed", "0",
            "--data_folder", str(data), "--save_folder", str(tmp_path / "students"),
        ])
    capsys.readouterr()
    # each run recorded its settings when it started
    for distill in ("kd", "attention"):
        record = json.loads((Path(results[distill]["run_dir"]) / "run.json").read_text())
        assert (record["seed"], record["trial"]) == (0, "1")
        assert (record["settings"]["epochs"], record["settings"]["batch_size"]) == (1, 16)
        assert record["settings"]["distill"] == distill and record["settings"]["train_subset"] == "full"
    table = cr.main(["--root", str(tmp_path / "students"), "--vanilla_root", str(tmp_path / "models"),
                     "--metric", "last"])
    # 1 epoch at batch 16: not the published recipe, so not in the paper tables
    assert not [line for line in table.splitlines() if line.startswith("### Table")]
    for label, distill in (("KD", "kd"), ("AT", "attention")):
        cell = f"{results[distill]['last_acc']:.2f}±0.00 (1)"
        assert f"| resnet32x4 → resnet8x4 | {label} | epochs 1, batch 16 | {cell} |" in table
