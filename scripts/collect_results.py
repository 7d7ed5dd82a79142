#!/usr/bin/env python3
"""Collect CIFAR-100 distillation runs into the layout of the published tables.

    python scripts/collect_results.py                       # Markdown, last-epoch and best accuracy
    python scripts/collect_results.py --metric last --format csv --output results.csv
    python scripts/collect_results.py --out_dir results --plots results/plots  # files + figures

Reads every run folder directly under ``--root`` (``train_student.py``'s
``S:<student>_T:<teacher>_<dataset>_<distill>_r:<r>_a:<a>_b:<b>_<trial>``) and the vanilla runs
under ``--vanilla_root`` (``train_teacher.py``'s ``<model>_vanilla`` / ``<model>_vanilla_trial_<t>``,
the Teacher and Student rows). From each run's ``metrics.jsonl`` it takes the last epoch's
``test_acc`` ("last", what the papers report) and the maximum over epochs ("best").

Runs are grouped by (teacher, student, method label). The label is the paper's name of
``--distill`` (kd -> KD, hint -> FitNet, ...), with ``+KD`` appended when ``-a`` > 0 for a method
whose paper weights have ``-a 0`` (``crd -a 1`` -> ``CRD+KD``). Each cell is
``mean±std (n)`` over the trials (sample standard deviation; 0 for one trial), next to the published
value and the difference measured - published; ``–`` marks a missing cell. Teacher/student pairs
that are in neither table (e.g. a CPU experiment's resnet20 -> resnet8) get an "Other pairs" table
with the rows found.

The tables need only the standard library: they render anywhere, without torch. ``--plots`` draws
learning curves and gains over the vanilla student with matplotlib (imported only then). Other
scripts can call :func:`collect_accuracies` and :func:`render_pairs`. The published numbers are
embedded below.
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
from typing import Iterable, Mapping, Sequence

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

OTHER_TITLE = "Other pairs: teacher/student pairs not in Tables 1 and 2"

# Rows, in the papers' order.
ROWS = ["Teacher", "Student", "KD", "FitNet", "AT", "SP", "CC", "VID", "RKD", "PKT", "AB", "FT", "FSP", "NST",
        "CRD", "CRD+KD", "WCoRD+KD", "RRD", "RRD+KD"]

# --distill name -> the papers' name, and the -a of the method's paper weights
# (distiller_zoo/registry.py; CRD/RRD/WCoRD: -a 0, their +KD variants use -a 1).
LABELS = {"kd": "KD", "hint": "FitNet", "attention": "AT", "similarity": "SP", "correlation": "CC", "vid": "VID",
          "rkd": "RKD", "pkt": "PKT", "abound": "AB", "factor": "FT", "fsp": "FSP", "nst": "NST", "crd": "CRD",
          "wcord": "WCoRD", "rrd": "RRD"}
PAPER_ALPHA = {"kd": 0.9}  # every other method: 0

# Published CIFAR-100 top-1 (%), last epoch, transcribed from the papers
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
    curve: tuple[tuple[int, float], ...] = ()  # (epoch, test_acc), by epoch

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


def read_curve(run_dir: Path) -> dict[int, float]:
    """``{epoch: test_acc}`` from ``metrics.jsonl`` (empty when there is no complete row).
    Unreadable lines (a run killed mid-write) are ignored."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
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
    return dict(sorted(by_epoch.items()))


def read_accuracies(run_dir: Path) -> tuple[int, float, float] | None:
    """(last epoch, its test_acc, best test_acc) from ``metrics.jsonl``; None when there is no
    complete row."""
    by_epoch = read_curve(run_dir)
    return _summary(by_epoch) if by_epoch else None


def _summary(by_epoch: dict[int, float]) -> tuple[int, float, float]:
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
            curve = read_curve(path)
            if not curve:
                notes.append(f"no metrics in {path}")
                continue
            runs.append(Run(path, *run_fields(fields), *_summary(curve), tuple(curve.items())))
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


Key = tuple[str, str, str]  # (teacher, student, row label)


def group_runs(runs: Iterable[Run], dataset: str = "cifar100", min_epochs: int = 0) -> dict[Key, list[Run]]:
    """Runs keyed by (teacher, student, label), each list in trial order: distillation runs by their
    label, and the vanilla runs as the Teacher and Student rows of every pair of the tables and every
    pair distilled in ``runs``."""
    members: dict[Key, list[Run]] = {}
    vanilla: dict[str, list[Run]] = {}
    for run in runs:
        if run.last_epoch < min_epochs:
            continue
        if run.kind == "vanilla":
            vanilla.setdefault(run.model_s, []).append(run)
        elif run.dataset == dataset:
            key = (run.model_t, run.model_s, method_label(run.distill, run.alpha))
            members.setdefault(key, []).append(run)
    distilled = sorted({(teacher, student) for teacher, student, _ in members})
    for teacher, student in dict.fromkeys(TABLE1_PAIRS + TABLE2_PAIRS + distilled):
        for label, model in (("Teacher", teacher), ("Student", student)):
            if model in vanilla:
                members[(teacher, student, label)] = vanilla[model]
    return {key: sorted(found, key=lambda r: r.trial) for key, found in members.items()}


def group(runs: Iterable[Run], metric: str, dataset: str = "cifar100", min_epochs: int = 0,
          notes: list[str] | None = None) -> dict[Key, Cell]:
    """Cells keyed by (teacher, student, label), from :func:`group_runs`."""
    notes = [] if notes is None else notes
    cells = {}
    for key, members in group_runs(runs, dataset, min_epochs).items():
        cells[key] = Cell(tuple(r.value(metric) for r in members))
        where = f"{key[2]} {key[0]}->{key[1]}"
        weights = sorted({(r.gamma, r.alpha, r.beta) for r in members if r.kind == "student"})
        if len(weights) > 1:
            notes.append(f"{where}: runs with different weights (-r, -a, -b) averaged together: {weights}")
        epochs = sorted({r.last_epoch for r in members})
        if len(epochs) > 1:
            notes.append(f"{where}: runs end at different epochs {epochs}")
    return cells


def fmt_diff(measured: float, published: float) -> str:
    d = round(measured - published, 2)
    return f"{d:+.2f}" if d != 0 else "+0.00"


def table_rows(cells: dict[Key, Cell], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The paper's rows, then any other label measured on these pairs (e.g. FitNet+KD), sorted."""
    return ROWS + [label for label in found_rows(cells, pairs) if label not in ROWS]


def found_rows(cells: Mapping[Key, object], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Teacher and Student, then the labels measured on these pairs: the papers' rows in their order,
    then any other label, sorted."""
    found = {label for (t, s, label) in cells if (t, s) in pairs}
    return ["Teacher", "Student"] + [r for r in ROWS[2:] if r in found] + sorted(found - set(ROWS))


def method_labels(cells: Mapping[Key, object], pair: tuple[str, str]) -> list[str]:
    """The distillation labels measured on one pair, in the tables' row order."""
    return found_rows(cells, [pair])[2:]


def distilled_pairs(cells: Mapping[Key, object]) -> list[tuple[str, str]]:
    """Pairs with distillation runs (not only Teacher/Student rows), sorted."""
    return sorted({(t, s) for (t, s, label) in cells if label not in ("Teacher", "Student")})


def other_pairs(cells: Mapping[Key, object]) -> list[tuple[str, str]]:
    """Pairs with distillation runs that are in neither published table, sorted."""
    in_tables = set(TABLE1_PAIRS + TABLE2_PAIRS)
    return [pair for pair in distilled_pairs(cells) if pair not in in_tables]


def pair_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]} → {pair[1]}"


METRIC_TITLES = {"last": "last-epoch test accuracy (%)", "best": "best-epoch test accuracy (%)"}


@dataclass(frozen=True)
class TableSpec:
    number: str  # the CSV's "table" field: 1, 2 or other
    title: str
    pairs: list[tuple[str, str]]
    rows: list[str]


def table_specs(cells: dict[Key, Cell]) -> list[TableSpec]:
    """Tables 1 and 2 with all the papers' rows, then, when there are any, the other pairs with the
    rows found."""
    specs = [TableSpec(str(number), title, pairs, table_rows(cells, pairs))
             for number, (title, pairs) in enumerate(TABLES.items(), start=1)]
    others = other_pairs(cells)
    if others:
        specs.append(TableSpec("other", OTHER_TITLE, others, found_rows(cells, others)))
    return specs


def markdown_table(title: str, cells: Mapping[Key, Cell], pairs: Sequence[tuple[str, str]],
                   rows: Sequence[str]) -> list[str]:
    """One ``### title`` table: a row per label, three columns per pair (measured, paper, Δ)."""
    header = ["method"]
    for pair in pairs:
        header += [pair_name(pair), "paper", "Δ"]
    out = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" + "---:|---:|---:|" * len(pairs)]
    for label in rows:
        row = [label]
        for teacher, student in pairs:
            cell = cells.get((teacher, student, label))
            published = PUBLISHED.get((teacher, student, label))
            row.append(cell.text() if cell else MISSING)
            row.append(f"{published:.2f}" if published is not None else MISSING)
            row.append(fmt_diff(cell.mean, published) if cell and published is not None else MISSING)
        out.append("| " + " | ".join(row) + " |")
    return out + [""]


def render_markdown(cells_by_metric: dict[str, dict], metrics: Sequence[str]) -> str:
    out = ["Cells: measured mean±std (trials) | published (last epoch) | measured − published; "
           f"{MISSING} = no runs / not published.", ""]
    for metric in metrics:
        cells = cells_by_metric[metric]
        for spec in table_specs(cells):
            out += markdown_table(f"{spec.title}, {METRIC_TITLES[metric]}", cells, spec.pairs, spec.rows)
    return "\n".join(out)


CSV_FIELDS = ["metric", "table", "method", "teacher", "student", "mean", "std", "n", "published", "diff"]


def render_csv(cells_by_metric: dict[str, dict], metrics: Sequence[str]) -> str:
    """One row per (metric, table, method, pair), in the tables' order; empty fields where missing."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for metric in metrics:
        cells = cells_by_metric[metric]
        for spec in table_specs(cells):
            for label in spec.rows:
                for teacher, student in spec.pairs:
                    cell = cells.get((teacher, student, label))
                    published = PUBLISHED.get((teacher, student, label))
                    writer.writerow([
                        metric, spec.number, label, teacher, student,
                        f"{cell.mean:.4f}" if cell else "", f"{cell.std:.4f}" if cell else "", cell.n if cell else 0,
                        f"{published:.2f}" if published is not None else "",
                        f"{cell.mean - published:.4f}" if cell and published is not None else "",
                    ])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# for other scripts


def collect_accuracies(root: str | Path | None, vanilla_root: str | Path | None = None, metric: str = "last",
                       dataset: str = "cifar100", min_epochs: int = 0) -> dict[Key, list[float]]:
    """Per (teacher, student, label), the accuracies of the runs, one per trial in trial order.

    ``root`` holds ``train_student.py`` run folders, ``vanilla_root`` ``train_teacher.py`` ones (they
    become the Teacher and Student rows of every pair that names their model). ``metric`` is
    ``last`` (last-epoch test accuracy) or ``best``. Labels as in the tables (KD, CRD+KD, ...).
    """
    if metric not in METRIC_TITLES:
        raise ValueError(f"metric must be one of {sorted(METRIC_TITLES)}, got {metric!r}")
    runs = scan(Path(root) if root else None, Path(vanilla_root) if vanilla_root else None)
    return {key: list(cell.values) for key, cell in group(runs, metric, dataset, min_epochs).items()}


def render_pairs(accuracies: Mapping[Key, Sequence[float]], pairs: Sequence[tuple[str, str]] | None = None,
                 title: str = "Measured test accuracy (%)") -> str:
    """A Markdown table of ``mean±std (n)`` cells for any teacher/student pairs (default: every pair
    with distillation runs in ``accuracies``, sorted): rows Teacher, Student and the labels found; the
    paper and Δ columns are filled where the pair is in the published tables, ``–`` elsewhere."""
    cells = {key: Cell(tuple(values)) for key, values in accuracies.items() if len(values)}
    pairs = list(pairs) if pairs is not None else distilled_pairs(cells)
    return "\n".join(markdown_table(title, cells, pairs, found_rows(cells, pairs)))


# ---------------------------------------------------------------------------------------------
# plots (matplotlib, imported only when asked for)

CURVE_STUDENT = "Student (vanilla)"
CURVE_TEACHER = "Teacher (final)"
PUBLISHED_GAIN = "published gain"


class PlotError(RuntimeError):
    """Plots cannot be drawn (matplotlib missing)."""


def new_figure(width: float, height: float):
    """An empty matplotlib Figure on the Agg canvas (no pyplot, so no global state to clean up);
    scripts/plot_corr.py draws on it too."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise PlotError("plots need matplotlib: pip install 'matplotlib>=3.5'") from err
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def curve_stats(runs: Sequence[Run]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Epochs, and per epoch the mean, min and max test accuracy over the runs that logged it."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for epoch, acc in run.curve:
            by_epoch.setdefault(epoch, []).append(acc)
    epochs = sorted(by_epoch)
    return (epochs, [statistics.mean(by_epoch[e]) for e in epochs], [min(by_epoch[e]) for e in epochs],
            [max(by_epoch[e]) for e in epochs])


def plot_curves(groups: Mapping[Key, Sequence[Run]], pair: tuple[str, str]):
    """Test accuracy vs epoch on one pair: a line per method (mean over trials, min-max band), the
    vanilla student's curve (dashed) and the teacher's mean final accuracy (dotted)."""
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    for label in method_labels(groups, pair):
        runs = groups[(*pair, label)]
        epochs, mean, low, high = curve_stats(runs)
        (line,) = ax.plot(epochs, mean, label=f"{label} ({len(runs)})")
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    student = groups.get((*pair, "Student"))
    if student:
        epochs, mean, low, high = curve_stats(student)
        ax.plot(epochs, mean, color="black", linestyle="--", label=f"{CURVE_STUDENT} ({len(student)})")
        ax.fill_between(epochs, low, high, color="black", alpha=0.1, linewidth=0)
    teacher = groups.get((*pair, "Teacher"))
    if teacher:
        ax.axhline(statistics.mean(r.last for r in teacher), color="black", linestyle=":",
                   label=f"{CURVE_TEACHER} ({len(teacher)})")
    ax.set(title=f"{pair_name(pair)}: test accuracy\n(mean over trials, band: min-max; legend: trials)",
           xlabel="epoch", ylabel="top-1 accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_gains(groups: Mapping[Key, Sequence[Run]], pair: tuple[str, str]):
    """Each method's last-epoch gain over the vanilla student on one pair (bars: mean, error bars:
    std over trials), with the published gain (method - student in the paper) as a black mark."""
    student = groups[(*pair, "Student")]
    base = statistics.mean(r.last for r in student)
    labels = method_labels(groups, pair)
    cells = [Cell(tuple(r.last for r in groups[(*pair, label)])) for label in labels]
    x = list(range(len(labels)))
    fig = new_figure(max(5.0, 0.8 * len(labels) + 2), 4.5)
    ax = fig.add_subplot()
    # grey error bars, so that the black published marks stand out
    ax.bar(x, [c.mean - base for c in cells], yerr=[c.std for c in cells], capsize=3, color="tab:blue",
           ecolor="0.45", label="measured (mean, ± std)")
    paper_student = PUBLISHED.get((*pair, "Student"))
    published = [PUBLISHED[(*pair, label)] - paper_student
                 if paper_student is not None and (*pair, label) in PUBLISHED else math.nan for label in labels]
    if not all(math.isnan(g) for g in published):
        ax.plot(x, published, linestyle="none", marker="_", markersize=28, markeredgewidth=3, color="black",
                label=PUBLISHED_GAIN)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xticks(x, [f"{label}\n({c.n})" for label, c in zip(labels, cells)])
    ax.set(title=f"{pair_name(pair)}: gain over the vanilla student\n(student {base:.2f}%, {len(student)} trials)",
           ylabel="last-epoch top-1 gain (points)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def make_figures(runs: Iterable[Run], dataset: str = "cifar100", min_epochs: int = 0,
                 notes: list[str] | None = None) -> dict[str, object]:
    """``{file name: Figure}``: ``curves_<teacher>_<student>.png`` for every pair with distillation
    runs, and ``gain_<teacher>_<student>.png`` where the vanilla student was also run."""
    notes = [] if notes is None else notes
    groups = group_runs(runs, dataset, min_epochs)
    figures = {}
    distilled = distilled_pairs(groups)
    if not distilled:
        notes.append("no distillation runs: nothing to plot")
    for pair in [p for p in TABLE1_PAIRS + TABLE2_PAIRS if p in distilled] + other_pairs(groups):
        stem = f"{pair[0]}_{pair[1]}"
        figures[f"curves_{stem}.png"] = plot_curves(groups, pair)
        if (*pair, "Student") in groups:
            figures[f"gain_{stem}.png"] = plot_gains(groups, pair)
        else:
            notes.append(f"no vanilla {pair[1]} runs: no gain plot for {pair_name(pair)}")
    return figures


def save_figures(figures: Mapping[str, object], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=120)
        paths.append(out_dir / name)
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Collect distillation runs into the published tables' layout.")
    parser.add_argument("--root", default="./save/student_model", help="parent of the train_student.py run folders")
    parser.add_argument("--vanilla_root", default="./save/models",
                        help="parent of the train_teacher.py run folders (Teacher and Student rows); '' to skip")
    parser.add_argument("--metric", default="both", choices=["last", "best", "both"],
                        help="last-epoch accuracy (what the papers report), best epoch, or both (default)")
    parser.add_argument("--format", default="markdown", choices=["markdown", "csv"])
    parser.add_argument("--output", default=None, help="write to this file instead of stdout")
    parser.add_argument("--out_dir", default=None,
                        help="also write the tables to DIR/results.md and DIR/results.csv")
    parser.add_argument("--plots", default=None, metavar="DIR",
                        help="draw learning curves and gains over the vanilla student into DIR (needs matplotlib)")
    parser.add_argument("--dataset", default="cifar100", help="only distillation runs on this dataset")
    parser.add_argument("--min_epochs", type=int, default=0,
                        help="ignore runs whose metrics stop before this epoch (e.g. 240: finished runs only)")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    parser = build_parser()
    opt = parser.parse_args(argv)
    notes: list[str] = []
    runs = scan(Path(opt.root) if opt.root else None, Path(opt.vanilla_root) if opt.vanilla_root else None, notes)
    metrics = ["last", "best"] if opt.metric == "both" else [opt.metric]
    cells_by_metric = {}
    for i, metric in enumerate(metrics):
        cells_by_metric[metric] = group(runs, metric, opt.dataset, opt.min_epochs, notes if i == 0 else None)
    rendered = {"markdown": render_markdown(cells_by_metric, metrics), "csv": render_csv(cells_by_metric, metrics)}
    text = rendered[opt.format]
    if opt.output:
        Path(opt.output).write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    written = []
    if opt.out_dir:
        out_dir = Path(opt.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, fmt in (("results.md", "markdown"), ("results.csv", "csv")):
            (out_dir / name).write_text(rendered[fmt] if rendered[fmt].endswith("\n") else rendered[fmt] + "\n")
            written.append(out_dir / name)
    if opt.plots:
        try:
            figures = make_figures(runs, opt.dataset, opt.min_epochs, notes)
        except PlotError as err:
            parser.error(str(err))
        written += save_figures(figures, Path(opt.plots))
    n_student = sum(r.kind == "student" for r in runs)
    print(f"collected {n_student} distillation and {len(runs) - n_student} vanilla runs "
          f"from {opt.root} and {opt.vanilla_root}", file=sys.stderr)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    for note in dict.fromkeys(notes):
        print(f"note: {note}", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
