#!/usr/bin/env python3
"""Collect CIFAR-100 distillation runs into the layout of the published tables.

    python scripts/collect_results.py                       # Markdown, last-epoch and best accuracy
    python scripts/collect_results.py --metric last --format csv --output results.csv
    python scripts/collect_results.py --out_dir results --plots results/plots  # files + figures

Reads every run folder directly under ``--root`` (``train_student.py``'s
``S:<student>_T:<teacher>_<dataset>_<distill>_r:<r>_a:<a>_b:<b>[_ls]_<trial>``) and the vanilla runs
under ``--vanilla_root`` (``train_teacher.py``'s ``<model>_vanilla`` / ``<model>_vanilla_trial_<t>``,
the Teacher and Student rows). From each run's ``metrics.jsonl`` it takes the last epoch's
``test_acc`` ("last", what the papers report) and the maximum over epochs ("best"); from its
``run.json`` (written by the training scripts when a run starts) the settings that make runs
comparable.

Runs are grouped by (teacher, student, method label, settings): a cell holds only runs whose settings
are identical (they differ in seed and trial only); it reads ``mean±std (n)`` over them (sample
standard deviation; 0 for one run). The label is the paper's name of ``--distill`` (kd -> KD, hint ->
FitNet, ...), with ``+KD`` appended when ``-a`` > 0 for a method whose paper weights have ``-a 0``
(``crd -a 1`` -> ``CRD+KD``) and ``+LS`` for ``--logit_stand``.

The paper tables (Tables 1 and 2, and "Other pairs" for teacher/student pairs in neither) take only
finished runs that follow the published recipe (:data:`PAPER_RECIPE`): CIFAR-100, all 50,000 training
and 10,000 test images, 240 epochs, batch 64, learning rate 0.05 (0.01 for MobileNetV2/ShuffleV1/
ShuffleV2), decayed x0.1 at epochs 150, 180 and 210, weight decay 5e-4, momentum 0.9, float32
(no ``--amp``; ``--channels_last`` and ``--compile`` change no arithmetic and are allowed). Each
measured cell sits next to the published value and the difference measured - published. Every
other run goes to the table "Runs outside the published recipe", one row per group, which names how
the group differs (``epochs 1, train 10000``); runs without ``run.json`` (older runs) are listed
there one by one as "recipe unknown". Where two recipe-following groups would share a paper cell
(e.g. two ``--kd_T``), neither is put there: both go to that table, named by the setting in which
they differ. Empty tables, rows and columns are left out unless ``--all``.

The tables need only the standard library: they render anywhere, without torch. ``--plots`` draws
learning curves and gains over the vanilla student with matplotlib (imported only then). Other
scripts can call :func:`collect_accuracies` and :func:`render_pairs`. The published numbers are
embedded below, each row with its source.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

MISSING = "–"
RUN_RECORD = "run.json"  # kdzoo/helper/run_record.py writes it

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
OUTSIDE_TITLE = "Runs outside the published recipe"

# Rows, in the papers' order; then the later methods.
ROWS = ["Teacher", "Student", "KD", "FitNet", "AT", "SP", "CC", "VID", "RKD", "PKT", "AB", "FT", "FSP", "NST",
        "CRD", "CRD+KD", "WCoRD+KD", "RRD", "RRD+KD", "OFD", "KDSVD", "ReviewKD", "DKD", "DIST", "KD+LS", "DKD+LS",
        "DIST+LS"]

# --distill name -> the papers' name, and the -a of the method's paper weights
# (distiller_zoo/registry.py; CRD/RRD/WCoRD: -a 0, their +KD variants use -a 1).
LABELS = {"kd": "KD", "hint": "FitNet", "attention": "AT", "similarity": "SP", "correlation": "CC", "vid": "VID",
          "rkd": "RKD", "pkt": "PKT", "abound": "AB", "factor": "FT", "fsp": "FSP", "nst": "NST", "crd": "CRD",
          "wcord": "WCoRD", "rrd": "RRD", "dkd": "DKD", "dist": "DIST", "reviewkd": "ReviewKD", "ofd": "OFD",
          "kdsvd": "KDSVD"}
PAPER_ALPHA = {"kd": 0.9}  # every other method: 0
LOGIT_STAND_SUFFIX = "+LS"

# The published CIFAR-100 recipe (the CRD paper's, which every table below follows).
PAPER_RECIPE: dict[str, Any] = {
    "dataset": "cifar100", "train_subset": "full", "test_subset": "full", "epochs": 240, "batch_size": 64,
    "lr_decay_epochs": [150, 180, 210], "lr_decay_rate": 0.1, "weight_decay": 5e-4, "momentum": 0.9,
    "amp": False,
}
SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # trained with lr 0.01 instead of 0.05
# How a setting reads in the "differs" column.
SETTING_NAMES = {"train_subset": "train", "test_subset": "test", "batch_size": "batch", "learning_rate": "lr",
                 "lr_decay_epochs": "decay at", "lr_decay_rate": "decay x", "weight_decay": "wd"}

# Published CIFAR-100 top-1 (%), last epoch. One list per row, in the column order of TABLE1_PAIRS /
# TABLE2_PAIRS; None = N/A or not published for that pair.
# Teacher ... RRD+KD: transcribed from the papers (CRD paper Tables 1 and 2;
# CRD+KD from reproductions of the table; WCoRD+KD; RRD authors' README).
# DKD: the DKD authors' README, github.com/megvii-research/mdistiller (commit a08d46f); its column
#   "ResNet32x4 / MobileNet-V2" (KD 74.45, DKD 77.07) is resnet32x4 -> ShuffleV2 (KD 74.45 is the CRD
#   paper's ShuffleV2 number; the logit-standardization README lists 77.07 under ShuffleNet-V2).
# DIST: the DIST authors' README, github.com/hunto/DIST_KD (commit 2418f18, CIFAR-100 code release;
#   mean of their ±std runs).
# KD+LS, DKD+LS: the logit-standardization authors' README, github.com/sunshangquan/logit-standardization-KD
#   (commit 07356ad), rows "KD+Ours" and "DKD+Ours".
# ReviewKD, OFD: the DKD paper (Zhao et al., CVPR 2022), Tables 1 and 2, whose ReviewKD rows are the
#   ReviewKD paper's; transcribed from two independent copies of those tables (the READMEs of
#   github.com/WangYZ1608/Knowledge-Distillation-via-ND and, for ReviewKD 73.89 and 76.12,
#   github.com/DevPranjal/reproduction-review-kd). Cells that no copy confirmed stay None.
# KDSVD, DIST+LS: no published number for these pairs was found; these rows stay unpublished.
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
    "ReviewKD": [76.12, 75.09, 71.89, None, 73.89, 75.63, None],
    "OFD":      [None, 74.33, 70.98, None, None, 74.95, None],
    "DKD":      [76.23, 74.81, 71.97, None, 74.11, 76.32, 74.68],
    "DIST":     [None, 74.43, 71.75, None, None, 76.31, None],
    "KD+LS":    [76.11, 74.37, 71.43, 71.48, 74.17, 76.62, 74.36],
    "DKD+LS":   [76.39, 74.89, 72.32, 71.85, 74.29, 77.01, 74.81],
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
    "ReviewKD": [None, 69.89, None, 77.45, 77.78, None],
    "OFD":      [None, 69.04, None, 75.98, 76.82, None],
    "DKD":      [69.71, 70.35, None, 76.45, 77.07, 76.70],
    "DIST":     [None, 68.66, None, 76.34, 77.35, None],
    "KD+LS":    [68.61, 69.02, None, None, 75.56, None],
    "DKD+LS":   [69.98, 70.45, None, None, 77.37, None],
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
    r"_r:(?P<gamma>[^_]+)_a:(?P<alpha>[^_]+)_b:(?P<beta>[^_]+)(?P<ls>_ls)?(?:_in:(?P<views>[^_]+))?_(?P<trial>.+)$"
)
VANILLA_RUN = re.compile(r"^(?P<model>.+?)_vanilla(?:_in:(?P<view>[^_]+))?(?:_trial_(?P<trial>.+))?$")


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
    settings: Mapping[str, Any] | None = None  # run.json's settings; None: not recorded (older runs)
    logit_stand: bool = False
    views: str | None = None  # input views other than rgb: "<teachers>-<student>", or a vanilla model's view

    def value(self, metric: str) -> float:
        return self.last if metric == "last" else self.best

    @property
    def label(self) -> str:
        """The row of a distillation run (vanilla runs become the Teacher and Student rows)."""
        label = method_label(self.distill, self.alpha, self.logit_stand) if self.kind == "student" else "vanilla"
        return f"{label} [{self.views}]" if self.views else label


def method_label(distill: str, alpha: float, logit_stand: bool = False) -> str:
    """The row a distillation run belongs to: the paper's name of ``distill``, plus ``+KD`` when the KD
    term is switched on (``alpha > 0``) for a method whose paper weights leave it off, plus ``+LS``
    with logit standardisation."""
    label = LABELS.get(distill, distill)
    if alpha > 0 and PAPER_ALPHA.get(distill, 0.0) == 0:
        label += "+KD"
    return label + LOGIT_STAND_SUFFIX if logit_stand else label


def parse_run_name(name: str) -> dict | None:
    """The fields of a ``train_student.py`` run folder name, or None when it is not one."""
    m = STUDENT_RUN.match(name)
    if not m:
        return None
    fields = m.groupdict()
    fields["logit_stand"] = bool(fields.pop("ls"))
    try:
        for key in ("gamma", "alpha", "beta"):
            fields[key] = float(fields[key])
    except ValueError:
        return None
    return fields


def parse_vanilla_name(name: str) -> dict | None:
    """``<model>_vanilla[_in:<view>]`` (trial 0) or ``<model>_vanilla[_in:<view>]_trial_<t>``, or None."""
    m = VANILLA_RUN.match(name)
    if not m:
        return None
    return {"model": m["model"], "trial": m["trial"] or "0", "views": m["view"]}


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


def read_settings(run_dir: Path, notes: list[str]) -> dict[str, Any] | None:
    """The ``settings`` of ``run.json``, or None when the run has none (or it cannot be read)."""
    path = run_dir / RUN_RECORD
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())["settings"]
        if not isinstance(settings, dict):
            raise TypeError("settings is not an object")
    except (ValueError, KeyError, TypeError) as err:
        notes.append(f"{path} is unreadable ({err}): the run counts as recipe unknown")
        return None
    return settings


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
            settings = read_settings(path, notes)
            logit_stand = fields.get("logit_stand", False)
            if settings is not None:
                logit_stand = bool(settings.get("logit_stand", logit_stand))
            runs.append(Run(path, *run_fields(fields), *_summary(curve), tuple(curve.items()), settings, logit_stand,
                            fields.get("views")))
    return runs


# ---------------------------------------------------------------------------------------------
# comparability: the published recipe and groups of identical settings


def recipe_learning_rate(model: str) -> float:
    return 0.01 if model in SMALL_LR_MODELS else 0.05


def _same(a: Any, b: Any) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if numbers:  # 5e-4 written as 0.0005, 240 as 240.0
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def describe_setting(key: str, value: Any) -> str:
    """One setting as the "differs" column writes it: ``epochs 1``, ``train 10000``, ``amp``."""
    name = SETTING_NAMES.get(key, key)
    if value is True:
        return name
    if value is False:
        return f"no {name}"
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return f"{name} {value}"


def recipe_differences(run: Run) -> list[str]:
    """How a run departs from :data:`PAPER_RECIPE` (empty: it follows it, to the last epoch)."""
    if run.settings is None:
        return [f"recipe unknown (no {RUN_RECORD})", f"trial {run.trial}", f"{run.last_epoch} epochs logged"]
    settings = run.settings
    expected = dict(PAPER_RECIPE, learning_rate=recipe_learning_rate(run.model_s))
    differences = [describe_setting(key, settings.get(key, "unknown")) for key, want in expected.items()
                   if not _same(settings.get(key, "unknown"), want)]
    if run.views:
        differences.append(f"input views {run.views}")  # the papers' tables are all rgb
    epochs = settings.get("epochs")
    if isinstance(epochs, int) and run.last_epoch < epochs:
        differences.append(f"stopped at epoch {run.last_epoch} of {epochs}")
    return differences


def comparability_key(run: Run) -> str:
    """Runs with the same key are repetitions of one setting (they differ in seed and trial only)."""
    if run.settings is None:
        return f"unrecorded:{run.path}"  # nothing says two such runs are alike: never pooled
    key = json.dumps(run.settings, sort_keys=True)
    epochs = run.settings.get("epochs")
    return key + (f"|stopped:{run.last_epoch}" if isinstance(epochs, int) and run.last_epoch < epochs else "")


@dataclass
class Group:
    """Runs of one (teacher, student, label) with identical settings; vanilla runs have no teacher and
    the label ``vanilla``."""

    teacher: str | None
    model: str
    label: str
    runs: list[Run]
    differences: list[str]  # from the published recipe
    distinct: list[str] = field(default_factory=list)  # settings that tell it from look-alike groups

    @property
    def in_paper_tables(self) -> bool:
        return not self.differences and not self.distinct

    @property
    def description(self) -> str:
        parts = self.differences or (["published recipe"] if self.distinct else [])
        return ", ".join(parts + self.distinct)

    def cell(self, metric: str) -> "Cell":
        return Cell(tuple(r.value(metric) for r in self.runs))


def group_runs(runs: Iterable[Run], dataset: str = "cifar100", min_epochs: int = 0,
               notes: list[str] | None = None) -> list[Group]:
    """Groups of identical settings, runs in trial order; groups that look alike (same models, label
    and departures from the recipe) get ``distinct``: the settings in which they differ."""
    notes = [] if notes is None else notes
    buckets: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.last_epoch < min_epochs:
            continue
        run_dataset = run.settings.get("dataset", run.dataset) if run.settings is not None else run.dataset
        if run_dataset not in (None, dataset):
            continue
        buckets.setdefault((run.model_t, run.model_s, run.label, comparability_key(run)), []).append(run)
    groups = [Group(t, s, label, sorted(found, key=lambda r: r.trial), recipe_differences(found[0]))
              for (t, s, label, _), found in buckets.items()]
    alike: dict[tuple, list[Group]] = {}
    for g in groups:
        alike.setdefault((g.teacher, g.model, g.label, tuple(g.differences)), []).append(g)
    for similar in alike.values():
        if len(similar) < 2 or similar[0].runs[0].settings is None:
            continue
        keys = sorted({k for g in similar for k in g.runs[0].settings})
        differing = [k for k in keys if len({json.dumps(g.runs[0].settings.get(k)) for g in similar}) > 1]
        for g in similar:
            g.distinct = [describe_setting(k, g.runs[0].settings.get(k)) for k in differing]
        if not similar[0].differences:
            g = similar[0]
            who = f"{g.label} {g.teacher}->{g.model}" if g.teacher else f"vanilla {g.model}"
            notes.append(f"{who}: {len(similar)} groups follow the recipe but differ in {', '.join(differing)}; "
                         f"listed under '{OUTSIDE_TITLE}', not in the paper tables")
    return sorted(groups, key=lambda g: (g.teacher or "", g.model, g.label, g.description))


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


def paper_members(groups: Iterable[Group]) -> dict[Key, list[Run]]:
    """The runs of the paper tables keyed by (teacher, student, label): recipe-following distillation
    groups by their label, and recipe-following vanilla groups as the Teacher and Student rows of
    every pair of the tables and every pair distilled."""
    members: dict[Key, list[Run]] = {}
    vanilla: dict[str, list[Run]] = {}
    for g in groups:
        if not g.in_paper_tables:
            continue
        if g.teacher is None:
            vanilla[g.model] = g.runs
        else:
            members[(g.teacher, g.model, g.label)] = g.runs
    distilled = sorted({(teacher, student) for teacher, student, _ in members})
    for teacher, student in dict.fromkeys(TABLE1_PAIRS + TABLE2_PAIRS + distilled):
        for label, model in (("Teacher", teacher), ("Student", student)):
            if model in vanilla:
                members[(teacher, student, label)] = vanilla[model]
    return members


def outside_groups(groups: Iterable[Group]) -> list[Group]:
    """The groups of the table of runs outside the recipe: pairs in the tables' order, then others."""
    order = {pair: i for i, pair in enumerate(TABLE1_PAIRS + TABLE2_PAIRS)}
    rows = {label: i for i, label in enumerate(ROWS)}
    chosen = [g for g in groups if not g.in_paper_tables]
    return sorted(chosen, key=lambda g: (g.teacher is None, order.get((g.teacher, g.model), len(order)),
                                         g.teacher or "", g.model, rows.get(g.label, len(rows)), g.label,
                                         g.description))


def cells_of(members: Mapping[Key, Sequence[Run]], metric: str) -> dict[Key, Cell]:
    return {key: Cell(tuple(r.value(metric) for r in runs)) for key, runs in members.items()}


def fmt_diff(measured: float, published: float) -> str:
    d = round(measured - published, 2)
    return f"{d:+.2f}" if d != 0 else "+0.00"


def table_rows(cells: Mapping[Key, object], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The papers' rows, then any other label measured on these pairs (e.g. FitNet+KD), sorted."""
    return ROWS + [label for label in found_rows(cells, pairs) if label not in ROWS]


def found_rows(cells: Mapping[Key, object], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Teacher and Student, then the labels measured on these pairs: the papers' rows in their order,
    then any other label (by the paper row it extends, then by name)."""
    found = {label for (t, s, label) in cells if (t, s) in pairs}
    return ["Teacher", "Student"] + [r for r in ROWS[2:] if r in found] + sorted(found - set(ROWS), key=_row_order)


def _row_order(label: str) -> tuple[int, str]:
    """Labels outside the paper rows: a figure's ``KD [epochs 1]`` next to where KD would be."""
    base = label.split(" [")[0]
    return (ROWS.index(base) if base in ROWS else len(ROWS), label)


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


def _measured_pairs(cells: Mapping[Key, Cell], pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs with a measured student (distilled or vanilla); when no table has one, those with a
    measured teacher: a teacher trained for many pairs does not open a column for each."""
    if any(label != "Teacher" for _, _, label in cells):
        return [p for p in pairs if any((t, s) == p and label != "Teacher" for t, s, label in cells)]
    return [p for p in pairs if any((t, s) == p for t, s, _ in cells)]


def table_specs(cells: Mapping[Key, Cell], full: bool = False) -> list[TableSpec]:
    """Tables 1 and 2, then the other pairs. By default only what was measured: pair columns with a
    measured student (see :func:`_measured_pairs`), rows with a cell in them, tables with a column;
    ``full``: Tables 1 and 2 with every paper row and pair (the other pairs' table still only when
    there are any)."""
    specs = []
    for number, (title, pairs) in enumerate(TABLES.items(), start=1):
        if full:
            specs.append(TableSpec(str(number), title, pairs, table_rows(cells, pairs)))
            continue
        measured = _measured_pairs(cells, pairs)
        rows = [label for label in found_rows(cells, measured) if any((*p, label) in cells for p in measured)]
        if measured:
            specs.append(TableSpec(str(number), title, measured, rows))
    others = other_pairs(cells)
    if others:
        rows = [label for label in found_rows(cells, others) if any((*p, label) in cells for p in others)]
        specs.append(TableSpec("other", OTHER_TITLE, others, rows))
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


def outside_models(g: Group) -> str:
    return pair_name((g.teacher, g.model)) if g.teacher else g.model


def markdown_outside(title: str, groups: Sequence[Group], metric: str) -> list[str]:
    """One row per group outside the recipe: models, method, how it differs, the measured cell (no
    published value next to it: the published numbers are for the recipe)."""
    out = [f"### {title}", "", "| teacher → student | method | differs from the published recipe | measured |",
           "|---|---|---|---:|"]
    for g in groups:
        out.append(f"| {outside_models(g)} | {g.label} | {g.description} | {g.cell(metric).text()} |")
    return out + [""]


def render_markdown(groups: Sequence[Group], metrics: Sequence[str], full: bool = False) -> str:
    out = ["Cells: measured mean±std (runs) | published (last epoch) | measured − published; "
           f"{MISSING} = no runs / not published. Paper tables: finished runs of the published recipe only.", ""]
    members, outside = paper_members(groups), outside_groups(groups)
    if not groups:
        out.append("No runs found.")
    for metric in metrics:
        cells = cells_of(members, metric)
        for spec in table_specs(cells, full):
            out += markdown_table(f"{spec.title}, {METRIC_TITLES[metric]}", cells, spec.pairs, spec.rows)
        if outside:
            out += markdown_outside(f"{OUTSIDE_TITLE}, {METRIC_TITLES[metric]}", outside, metric)
    return "\n".join(out)


CSV_FIELDS = ["metric", "table", "method", "teacher", "student", "mean", "std", "n", "published", "diff", "differs"]
OUTSIDE_TABLE = "outside_recipe"


def render_csv(groups: Sequence[Group], metrics: Sequence[str], full: bool = False) -> str:
    """One row per (metric, table, method, pair) shown in the Markdown (every one with ``full``, empty
    fields where missing), then one per group outside the recipe (table ``outside_recipe``; vanilla
    runs have method ``vanilla`` and no teacher)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    members, outside = paper_members(groups), outside_groups(groups)
    for metric in metrics:
        cells = cells_of(members, metric)
        for spec in table_specs(cells, full):
            for label in spec.rows:
                for teacher, student in spec.pairs:
                    cell = cells.get((teacher, student, label))
                    published = PUBLISHED.get((teacher, student, label))
                    if cell is None and not full:
                        continue
                    writer.writerow([
                        metric, spec.number, label, teacher, student,
                        f"{cell.mean:.4f}" if cell else "", f"{cell.std:.4f}" if cell else "", cell.n if cell else 0,
                        f"{published:.2f}" if published is not None else "",
                        f"{cell.mean - published:.4f}" if cell and published is not None else "", "",
                    ])
        for g in outside:
            cell = g.cell(metric)
            writer.writerow([metric, OUTSIDE_TABLE, g.label, g.teacher or "", g.model, f"{cell.mean:.4f}",
                             f"{cell.std:.4f}", cell.n, "", "", g.description])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# for other scripts


def collect_accuracies(root: str | Path | None, vanilla_root: str | Path | None = None, metric: str = "last",
                       dataset: str = "cifar100", min_epochs: int = 0) -> dict[Key, list[float]]:
    """Per (teacher, student, label), the accuracies of the runs, one per trial in trial order,
    whatever their recipe (e.g. a CPU-sized experiment).

    ``root`` holds ``train_student.py`` run folders, ``vanilla_root`` ``train_teacher.py`` ones (they
    become the Teacher and Student rows of every pair that names their model). ``metric`` is
    ``last`` (last-epoch test accuracy) or ``best``. Labels as in the tables (KD, CRD+KD, ...).
    Raises ``ValueError`` when runs of one key differ in their settings (they must not be averaged).
    """
    if metric not in METRIC_TITLES:
        raise ValueError(f"metric must be one of {sorted(METRIC_TITLES)}, got {metric!r}")
    runs = scan(Path(root) if root else None, Path(vanilla_root) if vanilla_root else None)
    groups = group_runs(runs, dataset, min_epochs)
    by_key: dict[tuple, list[Group]] = {}
    for g in groups:
        by_key.setdefault((g.teacher, g.model, g.label), []).append(g)
    for (teacher, model, label), found in by_key.items():
        if len(found) > 1:
            raise ValueError(
                f"{label} {teacher or ''}->{model}: runs with different settings ({'; '.join(g.description for g in found)}) "
                "would be averaged together; point root/vanilla_root at folders that hold one setting each"
            )
    members: dict[Key, list[Run]] = {}
    vanilla = {model: found[0].runs for (teacher, model, _), found in by_key.items() if teacher is None}
    for (teacher, model, label), found in by_key.items():
        if teacher is not None:
            members[(teacher, model, label)] = found[0].runs
    for teacher, student in dict.fromkeys(TABLE1_PAIRS + TABLE2_PAIRS + sorted({k[:2] for k in members})):
        for label, model in (("Teacher", teacher), ("Student", student)):
            if model in vanilla:
                members[(teacher, student, label)] = vanilla[model]
    return {key: [r.value(metric) for r in runs] for key, runs in members.items()}


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


def plot_members(groups: Sequence[Group], notes: list[str]) -> dict[Key, list[Run]]:
    """What the figures draw, keyed like the tables: the paper tables' cells, and each group outside
    the recipe under its label with ``[how it differs]``; a pair's Teacher and Student lines come from
    the recipe's vanilla runs, or from the only vanilla group of that model when none follows it."""
    members = paper_members(groups)
    for g in outside_groups(groups):
        if g.teacher is not None:
            members[(g.teacher, g.model, f"{g.label} [{g.description}]")] = g.runs
    vanilla: dict[str, list[Group]] = {}
    for g in groups:
        if g.teacher is None:
            vanilla.setdefault(g.model, []).append(g)
    for teacher, student in distilled_pairs(members):
        for label, model in (("Teacher", teacher), ("Student", student)):
            found = vanilla.get(model, [])
            if (teacher, student, label) in members or not found:
                continue
            if len(found) == 1:
                members[(teacher, student, label)] = found[0].runs
            else:
                notes.append(f"vanilla {model}: {len(found)} groups of different settings and none of the "
                             f"published recipe: no {label} line for {pair_name((teacher, student))}")
    return members


def make_figures(runs: Iterable[Run], dataset: str = "cifar100", min_epochs: int = 0,
                 notes: list[str] | None = None) -> dict[str, object]:
    """``{file name: Figure}``: ``curves_<teacher>_<student>.png`` for every pair with distillation
    runs, and ``gain_<teacher>_<student>.png`` where the vanilla student was also run."""
    notes = [] if notes is None else notes
    groups = plot_members(group_runs(runs, dataset, min_epochs), notes)
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
    parser.add_argument("--dataset", default="cifar100", help="only runs on this dataset")
    parser.add_argument("--min_epochs", type=int, default=0,
                        help="ignore runs whose metrics stop before this epoch")
    parser.add_argument("--all", action="store_true",
                        help="print Tables 1 and 2 in full (every paper row and pair, empty cells as –), "
                             "not only what was measured")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    parser = build_parser()
    opt = parser.parse_args(argv)
    notes: list[str] = []
    runs = scan(Path(opt.root) if opt.root else None, Path(opt.vanilla_root) if opt.vanilla_root else None, notes)
    metrics = ["last", "best"] if opt.metric == "both" else [opt.metric]
    groups = group_runs(runs, opt.dataset, opt.min_epochs, notes)
    rendered = {"markdown": render_markdown(groups, metrics, opt.all), "csv": render_csv(groups, metrics, opt.all)}
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
    n_outside = sum(len(g.runs) for g in outside_groups(groups))
    print(f"collected {n_student} distillation and {len(runs) - n_student} vanilla runs "
          f"from {opt.root} and {opt.vanilla_root}; {n_outside} outside the published recipe", file=sys.stderr)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    for note in dict.fromkeys(notes):
        print(f"note: {note}", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
