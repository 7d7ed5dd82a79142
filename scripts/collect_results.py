#!/usr/bin/env python3
"""Collect CIFAR-100 distillation runs into the layout of the published tables.

    python scripts/collect_results.py                       # Markdown, last-epoch and best accuracy
    python scripts/collect_results.py --metric last --format csv --output results.csv

Reads every run folder directly under ``--root`` (``train_student.py``'s
``S:<student>_T:<teacher>_<dataset>_<distill>_r:<r>_a:<a>_b:<b>_<trial>``) and the vanilla runs
under ``--vanilla_root`` (``train_teacher.py``'s ``<model>_vanilla`` / ``<model>_vanilla_trial_<t>``,
the Teacher and Student rows). From each run's ``metrics.jsonl`` it takes the last epoch's
``test_acc`` ("last", what the papers report) and the maximum over epochs ("best").

Runs are grouped by (teacher, student, method label). The label is the paper's name of
``--distill`` (kd -> KD, hint -> FitNet, ...), with ``+KD`` appended when ``-a`` > 0 for a method
whose paper weights have ``-a 0`` (``crd -a 1`` -> ``CRD+KD``). Each cell is
``mean±std (n)`` over the trials (sample standard deviation; 0 for one trial), next to the published
value and the difference measured - published; ``–`` marks a missing cell.

Pure standard library: it runs anywhere, without torch. The published numbers are embedded below.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

MISSING = "–"

# Columns: the teacher -> student pairs of Table 1 (same family) and Table 2 (cross family), with
# the architecture names of models/ (ShuffleNetV1/V2 are ShuffleV1/V2 there).
TABLE1_PAIRS = [
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
    ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"),
]
TABLE2_PAIRS = [
    ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
    ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1"),
]
TABLES = {
    "Table 1: same-family teacher/student": TABLE1_PAIRS,
    "Table 2: cross-family teacher/student": TABLE2_PAIRS,
}

# Rows, in the papers' order.
ROWS = ["Teacher", "Student", "KD", "FitNet", "AT", "SP", "CC", "VID", "RKD", "PKT", "AB", "FT", "FSP", "NST",
        "CRD", "CRD+KD", "WCoRD+KD", "RRD", "RRD+KD"]

# --distill name -> the papers' name, and the -a of the method's paper weights
# (distiller_zoo/registry.py; CRD/RRD/WCoRD: -a 0, their +KD variants use -a 1).
LABELS = {"kd": "KD", "hint": "FitNet", "attention": "AT", "similarity": "SP", "correlation": "CC", "vid": "VID",
          "rkd": "RKD", "pkt": "PKT", "abound": "AB", "factor": "FT", "fsp": "FSP", "nst": "NST", "crd": "CRD",
          "wcord": "WCoRD", "rrd": "RRD"}
PAPER_ALPHA = {"kd": 0.9}  # every other method: 0

# Published CIFAR-100 top-1 (%), last epoch; transcribed from shared/reference/paper_tables.md
# (CRD paper Tables 1 and 2; CRD+KD from reproductions of the table; WCoRD+KD; RRD authors' README).
# One list per row, in the column order of TABLE1_PAIRS / TABLE2_PAIRS; None = N/A or absent.
_PUBLISHED_TABLE1 = {
    "Teacher":  [75.61, 75.61, 72.34, 74.31, 74.31, 79.42, 74.64],
    "Student":  [73.26, 71.98, 69.06, 69.06, 71.14, 72.50, 70.36],
    "KD":       [74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98],
    "FitNet":   [73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02],
    "AT":       [74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43],
    "SP":       [73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68],
    "CC":       [73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71],
    "VID":      [74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23],
    "RKD":      [73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48],
    "PKT":      [74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88],
    "AB":       [72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94],
    "FT":       [73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58],
    "FSP":      [72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23],
    "NST":      [73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53],
    "CRD":      [75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94],
    "CRD+KD":   [75.64, 74.38, 71.63, 71.56, 73.75, 75.46, 74.29],
    "WCoRD+KD": [76.11, 74.72, 71.92, 71.88, 74.20, 76.15, 74.72],
    "RRD":      [75.33, 73.55, 70.71, 70.72, 73.10, 74.48, 73.99],
    "RRD+KD":   [75.66, 74.67, 72.19, 71.74, 73.54, 75.08, 74.32],
}
_PUBLISHED_TABLE2 = {
    "Teacher":  [74.64, 79.34, 79.34, 79.42, 79.42, 75.61],
    "Student":  [64.60, 64.60, 70.36, 70.50, 71.82, 70.50],
    "KD":       [67.37, 67.35, 73.81, 74.07, 74.45, 74.83],
    "FitNet":   [64.14, 63.16, 70.69, 73.59, 73.54, 73.73],
    "AT":       [59.40, 58.58, 71.84, 71.73, 72.73, 73.32],
    "SP":       [66.30, 68.08, 73.34, 73.48, 74.56, 74.52],
    "CC":       [64.86, 65.43, 70.25, 71.14, 71.29, 71.38],
    "VID":      [65.56, 67.57, 70.30, 73.38, 73.40, 73.61],
    "RKD":      [64.52, 64.43, 71.50, 72.28, 73.21, 72.21],
    "PKT":      [67.13, 66.52, 73.01, 74.10, 74.69, 73.89],
    "AB":       [66.06, 67.20, 70.65, 73.55, 74.31, 73.34],
    "FT":       [61.78, 60.99, 70.29, 71.75, 72.50, 72.03],
    "NST":      [58.16, 64.96, 71.28, 74.12, 74.68, 74.89],
    "CRD":      [69.73, 69.11, 74.30, 75.11, 75.65, 76.05],
    "CRD+KD":   [69.94, 69.54, 74.58, 75.12, 76.05, 76.27],
    "WCoRD+KD": [70.02, 70.12, 74.68, 75.77, 76.48, 76.68],
    "RRD":      [67.93, 68.84, 74.01, 74.11, 74.80, 74.98],
    "RRD+KD":   [69.98, 69.13, 74.26, 75.18, 76.83, 76.31],
}


def _published() -> dict[tuple[str, str, str], float]:
    out = {}
    for pairs, rows in ((TABLE1_PAIRS, _PUBLISHED_TABLE1), (TABLE2_PAIRS, _PUBLISHED_TABLE2)):
        for label, values in rows.items():
            assert len(values) == len(pairs), label
            for (teacher, student), value in zip(pairs, values):
                if value is not None:
                    out[(teacher, student, label)] = value
    return out


PUBLISHED: dict[tuple[str, str, str], float] = _published()

STUDENT_RUN = re.compile(
    r"^S:(?P<student>.+?)_T:(?P<teacher>.+?)_(?P<dataset>[^_]+)_(?P<distill>[^_]+)"
    r"_r:(?P<gamma>[^_]+)_a:(?P<alpha>[^_]+)_b:(?P<beta>[^_]+)_(?P<trial>.+)$"
)
VANILLA_RUN = re.compile(r"^(?P<model>.+?)_vanilla(?:_trial_(?P<trial>.+))?$")


@dataclass(frozen=True)
class Run:
    path: Path
    kind: str  # "student" or "vanilla"
    model_s: str  # the trained model (the student, or the vanilla model)
    model_t: str | None
    dataset: str | None
    distill: str | None
    gamma: float | None
    alpha: float | None
    beta: float | None
    trial: str
    last_epoch: int
    last: float
    best: float

    def value(self, metric: str) -> float:
        return self.last if metric == "last" else self.best


def method_label(distill: str, alpha: float) -> str:
    """The row a distillation run belongs to: the paper's name of ``distill``, plus ``+KD`` when the KD
    term is switched on (``alpha > 0``) for a method whose paper weights leave it off."""
    label = LABELS.get(distill, distill)
    if alpha > 0 and PAPER_ALPHA.get(distill, 0.0) == 0:
        label += "+KD"
    return label


def parse_run_name(name: str) -> dict | None:
    """The fields of a ``train_student.py`` run folder name, or None when it is not one."""
    m = STUDENT_RUN.match(name)
    if not m:
        return None
    fields = m.groupdict()
    try:
        for key in ("gamma", "alpha", "beta"):
            fields[key] = float(fields[key])
    except ValueError:
        return None
    return fields


def parse_vanilla_name(name: str) -> dict | None:
    """``<model>_vanilla`` (trial 0) or ``<model>_vanilla_trial_<t>``, or None."""
    m = VANILLA_RUN.match(name)
    if not m:
        return None
    return {"model": m["model"], "trial": m["trial"] or "0"}


def read_accuracies(run_dir: Path) -> tuple[int, float, float] | None:
    """(last epoch, its test_acc, best test_acc) from ``metrics.jsonl``; None when there is no
    complete row. Unreadable lines (a run killed mid-write) are ignored."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    by_epoch: dict[int, float] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            epoch, acc = int(row["epoch"]), float(row["test_acc"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(acc):
            by_epoch[epoch] = acc  # a later row of the same epoch wins
    if not by_epoch:
        return None
    last_epoch = max(by_epoch)
    return last_epoch, by_epoch[last_epoch], max(by_epoch.values())


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _student_fields(f: dict) -> tuple:
    return ("student", f["student"], f["teacher"], f["dataset"], f["distill"], f["gamma"], f["alpha"], f["beta"],
            f["trial"])


def _vanilla_fields(f: dict) -> tuple:
    return ("vanilla", f["model"], None, None, None, None, None, None, f["trial"])


def scan(root: Path | None, vanilla_root: Path | None, notes: list[str] | None = None) -> list[Run]:
    """Every parsable run folder directly under ``root`` (students) and ``vanilla_root``."""
    runs: list[Run] = []
    notes = [] if notes is None else notes
    sources = ((root, parse_run_name, _student_fields), (vanilla_root, parse_vanilla_name, _vanilla_fields))
    for folder, parse, run_fields in sources:
        for path in _subdirs(folder) if folder else []:
            fields = parse(path.name)
            if fields is None:
                continue
            acc = read_accuracies(path)
            if acc is None:
                notes.append(f"no metrics in {path}")
                continue
            runs.append(Run(path, *run_fields(fields), *acc))
    return runs


@dataclass(frozen=True)
class Cell:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    def text(self) -> str:
        return f"{self.mean:.2f}±{self.std:.2f} ({self.n})"


def group(runs: Iterable[Run], metric: str, dataset: str = "cifar100", min_epochs: int = 0,
          notes: list[str] | None = None) -> dict[tuple[str, str, str], Cell]:
    """Cells keyed by (teacher, student, label): distillation runs by their label, and the vanilla runs
    as the Teacher and Student rows of every table column that names their model."""
    notes = [] if notes is None else notes
    members: dict[tuple[str, str, str], list[Run]] = {}
    vanilla: dict[str, list[Run]] = {}
    for run in runs:
        if run.last_epoch < min_epochs:
            continue
        if run.kind == "vanilla":
            vanilla.setdefault(run.model_s, []).append(run)
        elif run.dataset == dataset:
            key = (run.model_t, run.model_s, method_label(run.distill, run.alpha))
            members.setdefault(key, []).append(run)
    for pairs in TABLES.values():
        for teacher, student in pairs:
            for label, model in (("Teacher", teacher), ("Student", student)):
                if model in vanilla:
                    members[(teacher, student, label)] = vanilla[model]
    cells = {}
    for key, group_runs in members.items():
        cells[key] = Cell(tuple(r.value(metric) for r in sorted(group_runs, key=lambda r: r.trial)))
        where = f"{key[2]} {key[0]}->{key[1]}"
        weights = sorted({(r.gamma, r.alpha, r.beta) for r in group_runs if r.kind == "student"})
        if len(weights) > 1:
            notes.append(f"{where}: runs with different weights (-r, -a, -b) averaged together: {weights}")
        epochs = sorted({r.last_epoch for r in group_runs})
        if len(epochs) > 1:
            notes.append(f"{where}: runs end at different epochs {epochs}")
    return cells


def fmt_diff(measured: float, published: float) -> str:
    d = round(measured - published, 2)
    return f"{d:+.2f}" if d != 0 else "+0.00"


def table_rows(cells: dict[tuple[str, str, str], Cell], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The paper's rows, then any other label measured on these pairs (e.g. FitNet+KD), sorted."""
    extra = sorted({label for (t, s, label) in cells if (t, s) in pairs and label not in ROWS})
    return ROWS + extra


def pair_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]} → {pair[1]}"


METRIC_TITLES = {"last": "last-epoch test accuracy (%)", "best": "best-epoch test accuracy (%)"}


def render_markdown(cells_by_metric: dict[str, dict], metrics: Sequence[str]) -> str:
    out = ["Cells: measured mean±std (trials) | published (last epoch) | measured − published; "
           f"{MISSING} = no runs / not published.", ""]
    for metric in metrics:
        cells = cells_by_metric[metric]
        for title, pairs in TABLES.items():
            out.append(f"### {title}, {METRIC_TITLES[metric]}")
            out.append("")
            header = ["method"]
            for pair in pairs:
                header += [pair_name(pair), "paper", "Δ"]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" + "---:|---:|---:|" * len(pairs))
            for label in table_rows(cells, pairs):
                row = [label]
                for teacher, student in pairs:
                    cell = cells.get((teacher, student, label))
                    published = PUBLISHED.get((teacher, student, label))
                    row.append(cell.text() if cell else MISSING)
                    row.append(f"{published:.2f}" if published is not None else MISSING)
                    row.append(fmt_diff(cell.mean, published) if cell and published is not None else MISSING)
                out.append("| " + " | ".join(row) + " |")
            out.append("")
    return "\n".join(out)


CSV_FIELDS = ["metric", "table", "method", "teacher", "student", "mean", "std", "n", "published", "diff"]


def render_csv(cells_by_metric: dict[str, dict], metrics: Sequence[str]) -> str:
    """One row per (metric, table, method, pair), in the tables' order; empty fields where missing."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for metric in metrics:
        cells = cells_by_metric[metric]
        for number, pairs in enumerate(TABLES.values(), start=1):
            for label in table_rows(cells, pairs):
                for teacher, student in pairs:
                    cell = cells.get((teacher, student, label))
                    published = PUBLISHED.get((teacher, student, label))
                    writer.writerow([
                        metric, number, label, teacher, student,
                        f"{cell.mean:.4f}" if cell else "", f"{cell.std:.4f}" if cell else "", cell.n if cell else 0,
                        f"{published:.2f}" if published is not None else "",
                        f"{cell.mean - published:.4f}" if cell and published is not None else "",
                    ])
    return buf.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Collect distillation runs into the published tables' layout.")
    parser.add_argument("--root", default="./save/student_model", help="parent of the train_student.py run folders")
    parser.add_argument("--vanilla_root", default="./save/models",
                        help="parent of the train_teacher.py run folders (Teacher and Student rows); '' to skip")
    parser.add_argument("--metric", default="both", choices=["last", "best", "both"],
                        help="last-epoch accuracy (what the papers report), best epoch, or both (default)")
    parser.add_argument("--format", default="markdown", choices=["markdown", "csv"])
    parser.add_argument("--output", default=None, help="write to this file instead of stdout")
    parser.add_argument("--dataset", default="cifar100", help="only distillation runs on this dataset")
    parser.add_argument("--min_epochs", type=int, default=0,
                        help="ignore runs whose metrics stop before this epoch (e.g. 240: finished runs only)")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    opt = build_parser().parse_args(argv)
    notes: list[str] = []
    runs = scan(Path(opt.root) if opt.root else None, Path(opt.vanilla_root) if opt.vanilla_root else None, notes)
    metrics = ["last", "best"] if opt.metric == "both" else [opt.metric]
    cells_by_metric = {}
    for i, metric in enumerate(metrics):
        cells_by_metric[metric] = group(runs, metric, opt.dataset, opt.min_epochs, notes if i == 0 else None)
    render = render_csv if opt.format == "csv" else render_markdown
    text = render(cells_by_metric, metrics)
    if opt.output:
        Path(opt.output).write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    n_student = sum(r.kind == "student" for r in runs)
    print(f"collected {n_student} distillation and {len(runs) - n_student} vanilla runs "
          f"from {opt.root} and {opt.vanilla_root}", file=sys.stderr)
    for note in dict.fromkeys(notes):
        print(f"note: {note}", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
