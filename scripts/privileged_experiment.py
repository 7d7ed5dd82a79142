#!/usr/bin/env python3
"""Distillation with privileged information (the WCoRD paper's setting), sized for a 2-core CPU.

    python scripts/privileged_experiment.py --data_folder ./data --out privileged_experiment

The teacher (resnet14) sees the full colour images; the students (resnet8) see only a degraded view
(``--student_input lowres:8``: downsampled to 8x8 and scaled back; or ``gray``), at training and at
test time, and learn with labels. The teacher's view is the privileged information: does
distillation carry some of it over? Compared: the student alone (``train_teacher.py --input VIEW``),
KD (``-r 0.1 -a 0.9 -b 0``), CRD+KD (``-r 1 -a 1 -b 0.8``) and WCoRD+KD (``-r 1 -a 1 -b 0.8``); the
teacher's own test accuracy (on its own view) is reported for reference.

Writes to ``--out``: ``models/`` (teacher, students alone), ``student_model/`` (distilled students),
``logs/``, ``results.md`` (method -> last-epoch test accuracy, mean±std (n) over seeds),
``privileged.png`` (bars with error bars) and ``summary.json``.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiment_runs import (  # noqa: E402
    add_stage_args, parse_methods, save_figure,
    PY, Job, add_common_args, common_flags, last_test_acc, markdown_table, mean_std, parse_seeds, prepare_out,
    pyplot, run_jobs, subset_flag, write_outputs,
)

# label -> (entry point, flags): the papers' weights.
METHODS = {
    "Student": ("train_teacher.py", []),
    "KD": ("train_student.py", ["--distill", "kd", "-r", "0.1", "-a", "0.9", "-b", "0"]),
    "CRD+KD": ("train_student.py", ["--distill", "crd", "-r", "1", "-a", "1", "-b", "0.8"]),
    "WCoRD+KD": ("train_student.py", ["--distill", "wcord", "-r", "1", "-a", "1", "-b", "0.8"]),
}
TEACHER_VIEW = "rgb"


def student_view(text: str) -> str:
    """``lowres:N`` (N a positive integer) or ``gray``: the degraded views this experiment is about."""
    if text == "gray" or re.fullmatch(r"lowres:[1-9][0-9]*", text):
        return text
    raise argparse.ArgumentTypeError(f"expected lowres:N or gray, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, out="privileged_experiment", seeds="0,1,2")
    p.add_argument("--teacher", default="resnet14")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--student_input", type=student_view, default="lowres:8",
                   help="the students' view: lowres:N (NxN, scaled back) or gray")
    add_stage_args(p, "teacher", epochs=5, decay="4", subset=0, who="teacher")
    add_stage_args(p, "student", epochs=3, decay="2", subset=20000, who="students")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    return p


def design(args: argparse.Namespace, out: Path) -> list[Job]:
    """The teacher (alone, on every core), then the students, costliest first."""
    common = common_flags(args)
    models, students = out / "models", out / "student_model"
    s_subset = subset_flag(args.train_subset or args.student_subset)
    jobs = [Job("teacher", [PY, "train_teacher.py", "--model", args.teacher, "--input", TEACHER_VIEW,
                            "--epochs", str(args.teacher_epochs), "--lr_decay_epochs", args.teacher_decay,
                            "--seed", "0", "--save_folder", str(models),
                            *subset_flag(args.train_subset or args.teacher_subset), *common], wide=True)]
    for label in reversed(args.methods):
        script, flags = METHODS[label]
        for seed in parse_seeds(args.seeds):
            base = [PY, script, "--epochs", str(args.student_epochs), "--lr_decay_epochs", args.student_decay,
                    "--seed", str(seed), "--trial", str(seed + 1), *s_subset, *common]
            name = f"{label}_seed{seed}"
            if script == "train_teacher.py":
                jobs.append(Job(name, [*base, "--model", args.student, "--input", args.student_input,
                                       "--save_folder", str(models)]))
            else:
                jobs.append(Job(name, lambda done, base=base, flags=flags: [
                    *base, "--model_s", args.student, "--path_t", str(done["teacher"].run_dir / f"{args.teacher}_last.pth"),
                    "--input_t", TEACHER_VIEW, "--input_s", args.student_input, "--save_folder", str(students),
                    "--nce_k", str(args.nce_k), *flags], needs=("teacher",)))
    return jobs


def build_table(acc: Mapping[str, Sequence[float]], teacher_acc: float, title: str, view: str) -> str:
    rows = [[f"Teacher ({TEACHER_VIEW}, its own view)", f"{teacher_acc:.2f}"]]
    rows += [[label, mean_std(values)] for label, values in acc.items()]
    return markdown_table(["Method", f"Student on {view}: test top-1 (%)"], rows, title)


def plot(acc: Mapping[str, Sequence[float]], teacher_acc: float, path: Path, title: str) -> None:
    """One bar per method (mean, ± std over seeds); the teacher as a dashed line."""
    plt = pyplot()
    labels = list(acc)
    means = [statistics.mean(acc[k]) for k in labels]
    stds = [statistics.stdev(acc[k]) if len(acc[k]) > 1 else 0.0 for k in labels]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar(range(len(labels)), means, yerr=stds, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels)
    ax.axhline(teacher_acc, color="0.3", linestyle="--", label=f"teacher ({TEACHER_VIEW})")
    ax.set_ylabel("test top-1 (%)")
    save_figure(fig, ax, path, title)


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.methods = parse_methods(args.methods, METHODS)
    out = prepare_out(args.out)
    started = time.perf_counter()
    done = run_jobs(design(args, out), args.jobs, out / "logs")

    teacher_acc = last_test_acc(done["teacher"].run_dir)
    acc: dict[str, list[float]] = {}
    runs = [{"name": "teacher", "method": "Teacher", "input": TEACHER_VIEW, "last_acc": teacher_acc,
             "run_dir": str(done["teacher"].run_dir), "seconds": done["teacher"].seconds}]
    for label in args.methods:
        for seed in parse_seeds(args.seeds):
            result = done[f"{label}_seed{seed}"]
            value = last_test_acc(result.run_dir)
            acc.setdefault(label, []).append(value)
            runs.append({"name": result.name, "method": label, "input": args.student_input, "seed": seed,
                         "last_acc": value, "run_dir": str(result.run_dir), "seconds": result.seconds})
    title = (f"Privileged information: {args.teacher} teacher on {TEACHER_VIEW}, {args.student} students on "
             f"{args.student_input}; last-epoch test top-1 (%), mean±std (n) over seeds")
    table = build_table(acc, teacher_acc, title, args.student_input)
    if not args.no_plots:
        plot(acc, teacher_acc, out / "privileged.png", title)
    summary = {"config": vars(args), "runs": runs, "accuracies": acc, "teacher": teacher_acc,
               "seconds": {name: r.seconds for name, r in done.items()}}
    return write_outputs(out, table, summary, started)


if __name__ == "__main__":
    main()
