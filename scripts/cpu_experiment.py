#!/usr/bin/env python3
"""A distillation experiment sized for a 2-core CPU: proof of learning without a GPU.

    python scripts/cpu_experiment.py --data_folder ./data --out cpu_experiment

On the real CIFAR-100 it trains a small teacher (resnet14, 4 epochs on all 50,000 images), then a
smaller student (resnet8, 2 epochs on the first 25,000) three ways (vanilla, KD, CRD+KD) with several
seeds, and prints a ``mean ± std (n)`` table of last-epoch test accuracy.
Every run is an ordinary ``train_teacher.py`` / ``train_student.py`` run with the paper's loss
weights (KD: ``-r 0.1 -a 0.9``; CRD+KD: ``-r 1 -a 1 -b 0.8``); only the schedule is shortened.
Runs are spread over ``--jobs`` processes, each with ``cores / jobs`` threads (small networks use two
single-threaded processes better than one process with two threads).

Writes to ``--out``: ``models/`` (teacher and vanilla students) and ``student_model/`` (distilled
students) in the usual layouts, ``results.md`` (the table, plus the papers' layout from
``collect_results.py``), ``plots/`` (learning curves, gains over the vanilla student, the teacher -
student logit-correlation figure) and ``summary.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from collect_results import collect_accuracies, render_pairs  # noqa: E402
from experiment_runs import Job, parse_methods, run_command, run_jobs  # noqa: E402

# label -> (entry point, extra flags); the paper weights of distiller_zoo/registry.py, written out
# so that the table's labels (collect_results.method_label) are explicit here too.
STUDENT_RUNS = {
    "Student": ("train_teacher.py", []),
    "KD": ("train_student.py", ["--distill", "kd", "-r", "0.1", "-a", "0.9", "-b", "0"]),
    "CRD+KD": ("train_student.py", ["--distill", "crd", "-r", "1", "-a", "1", "-b", "0.8"]),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_folder", default="./data", help="folder holding cifar-100-python/")
    p.add_argument("--out", default="cpu_experiment", help="output folder (must not hold earlier runs)")
    p.add_argument("--teacher", default="resnet14")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--teacher_epochs", type=int, default=4)
    p.add_argument("--teacher_decay", default="3", help="--lr_decay_epochs of the teacher (lr x0.1 after these)")
    p.add_argument("--student_epochs", type=int, default=2)
    p.add_argument("--student_decay", default="1", help="--lr_decay_epochs of the students")
    p.add_argument("--student_subset", type=int, default=25000,
                   help="students train on the first N images (the teacher on all): two short epochs with a "
                        "learning-rate decay between them cost what one full epoch does")
    p.add_argument("--seeds", default="0,1,2", help="one trial per seed")
    p.add_argument("--methods", default=",".join(STUDENT_RUNS), help=f"subset of {','.join(STUDENT_RUNS)}")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--train_subset", type=int, default=None, help="smoke tests: N training images")
    p.add_argument("--test_subset", type=int, default=None, help="smoke tests: N test images")
    p.add_argument("--nce_k", type=int, default=16384, help="CRD negatives")
    p.add_argument("--no_plots", action="store_true", help="skip the figures (no matplotlib needed)")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    methods = parse_methods(args.methods, STUDENT_RUNS)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out).resolve()
    models, students, logs = out / "models", out / "student_model", out / "logs"
    if models.exists() or students.exists():
        raise SystemExit(f"{out} already holds runs: choose another --out")
    logs.mkdir(parents=True)
    common = ["--data_folder", str(Path(args.data_folder).resolve()), "--device", "cpu", "--num_workers", "1",
              "--print_freq", "1000000"]
    for flag in ("train_subset", "test_subset"):
        if getattr(args, flag):
            common += [f"--{flag}", str(getattr(args, flag))]
    py = sys.executable
    start = time.perf_counter()

    teacher_cmd = [py, "train_teacher.py", "--model", args.teacher, "--epochs", str(args.teacher_epochs),
                   "--lr_decay_epochs", args.teacher_decay, "--seed", "0", "--save_folder", str(models), *common]
    # The teacher alone uses every core.
    seconds = {"teacher": run_command(teacher_cmd, logs / "teacher.log", os.cpu_count() or 1)}
    path_t = models / f"{args.teacher}_vanilla" / f"{args.teacher}_last.pth"

    jobs = []
    # Costliest runs first (CRD+KD, KD, vanilla), so the last ones to finish are short.
    for label in reversed(methods):
        for seed in seeds:
            script, flags = STUDENT_RUNS[label]
            cmd = [py, script, "--epochs", str(args.student_epochs), "--lr_decay_epochs", args.student_decay,
                   "--seed", str(seed), "--trial", str(seed + 1), *common]
            if args.student_subset and not args.train_subset:
                cmd += ["--train_subset", str(args.student_subset)]
            if script == "train_teacher.py":
                cmd += ["--model", args.student, "--save_folder", str(models)]
            else:
                cmd += ["--model_s", args.student, "--path_t", str(path_t), "--save_folder", str(students),
                        "--nce_k", str(args.nce_k), *flags]
            jobs.append(Job(f"{label}_seed{seed}", cmd))
    done = run_jobs(jobs, args.jobs, logs)
    seconds.update((job.name, done[job.name].seconds) for job in jobs)
    seconds["total"] = time.perf_counter() - start

    acc = collect_accuracies(students, models, metric="last")
    pair = (args.teacher, args.student)
    table = render_pairs(acc, [pair], title=f"CPU experiment: {args.teacher} -> {args.student}, "
                                            f"last-epoch test top-1 (%), mean ± std over seeds")
    (out / "results.md").write_text(table + "\n")
    if not args.no_plots:
        plots = out / "plots"
        subprocess.run([py, "scripts/collect_results.py", "--root", str(students), "--vanilla_root", str(models),
                        "--plots", str(plots), "--output", os.devnull], cwd=ROOT, check=True)
        first = seeds[0] + 1
        runs = {"Student": models / f"{args.student}_vanilla_trial_{first}" / f"{args.student}_last.pth"}
        for label in methods:
            if label != "Student":
                hits = sorted(students.glob(f"S:{args.student}_T:*_{STUDENT_RUNS[label][1][1]}_r:*_{first}"))
                runs[label] = hits[0] / f"{args.student}_last.pth"
        chosen = [label for label in methods if label in runs]
        subprocess.run([py, "scripts/plot_corr.py", "--path_t", str(path_t), "--model_t", args.teacher,
                        *sum((["--path_s", str(runs[label])] for label in chosen), []),
                        "--model_s", args.student, "--labels", ",".join(chosen),
                        "--data_folder", str(Path(args.data_folder).resolve()), "--device", "cpu",
                        *(["--test_subset", str(args.test_subset)] if args.test_subset else []),
                        "--output", str(plots / "corr.png")], cwd=ROOT, check=True)
    summary = {"table": table, "seconds": seconds, "accuracies": {" / ".join(k): v for k, v in acc.items()},
               "config": vars(args)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table)
    print(f"wall-clock: {seconds['total'] / 60:.1f} min (teacher {seconds['teacher'] / 60:.1f} min)")
    return summary


if __name__ == "__main__":
    main()
