#!/usr/bin/env python3
"""Distillation from an ensemble of teachers (the CRD paper's ensemble experiment), sized for a 2-core CPU.

    python scripts/ensemble_experiment.py --data_folder ./data --out ensemble_experiment

Trains ``--n_teachers`` teachers (resnet14, seeds 0.. and trials 1..; 3 epochs on the first 25,000
images by default), then resnet8 students from the first 1, 2 and 4 of them with KD
(``-r 0.1 -a 0.9 -b 0``), CRD (``-r 1 -a 0 -b 0.8``) and CRD+KD (``-r 1 -a 1 -b 0.8``), plus a vanilla
resnet8 trained alone on the same budget (the no-teacher line). Several teachers are passed as
repeated ``--path_t``: train_student.py adds one method term per teacher and distils KD from the mean
of the teachers' softened probabilities; each run records the teachers' and the ensemble's test
accuracy in ``teachers.json``.

Writes to ``--out``: ``models/`` (teachers, vanilla students), ``student_model/`` (distilled students),
``logs/``, ``results.md`` (rows: methods; columns: number of teachers; last-epoch test accuracy,
mean±std (n) over seeds; plus the teachers' rows), ``ensemble.png`` (student accuracy against the
number of teachers, the vanilla student as a horizontal line) and ``summary.json``.
The full-size version (240 epochs, all images, 3 seeds, ``--nce_k 16384``) is in docs/transfer_settings.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiment_runs import (  # noqa: E402
    add_stage_args, parse_methods, save_figure,
    MISSING, PY, Job, JobResult, add_common_args, common_flags, last_test_acc, markdown_table, mean_std,
    parse_seeds, prepare_out, pyplot, run_jobs, subset_flag, write_outputs,
)

# label -> train_student.py flags (the CRD paper's weights).
METHODS = {
    "KD": ["--distill", "kd", "-r", "0.1", "-a", "0.9", "-b", "0"],
    "CRD": ["--distill", "crd", "-r", "1", "-a", "0", "-b", "0.8"],
    "CRD+KD": ["--distill", "crd", "-r", "1", "-a", "1", "-b", "0.8"],
}
VANILLA = "Student (no teacher)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, out="ensemble_experiment", seeds="0")
    p.add_argument("--teacher", default="resnet14")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--n_teachers", type=int, default=4, help="teachers trained (seeds 0..n-1, trials 1..n)")
    p.add_argument("--teacher_counts", default="1,2,4", help="students learn from the first N teachers, for each N")
    add_stage_args(p, "teacher", epochs=3, decay="2", subset=25000, who="teachers")
    add_stage_args(p, "student", epochs=3, decay="2", subset=15000, who="students")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    return p


def teacher_name(i: int) -> str:
    return f"teacher{i + 1}"


def student_name(label: str, k: int, seed: int) -> str:
    return f"{label}_T{k}_seed{seed}"


def design(args: argparse.Namespace, out: Path) -> list[Job]:
    """Every run of the experiment, costliest first (students of many teachers, then the vanilla student)."""
    seeds, counts = parse_seeds(args.seeds), parse_seeds(args.teacher_counts)
    common = common_flags(args)
    models, students = out / "models", out / "student_model"
    t_subset = subset_flag(args.train_subset or args.teacher_subset)
    s_subset = subset_flag(args.train_subset or args.student_subset)
    jobs = [Job(teacher_name(i), [PY, "train_teacher.py", "--model", args.teacher, "--epochs", str(args.teacher_epochs),
                                  "--lr_decay_epochs", args.teacher_decay, "--seed", str(i), "--trial", str(i + 1),
                                  "--save_folder", str(models), *t_subset, *common])
            for i in range(args.n_teachers)]
    for k in sorted(counts, reverse=True):
        needs = tuple(teacher_name(i) for i in range(k))
        for label in args.methods:
            for seed in seeds:
                def command(done: Mapping[str, JobResult], needs=needs, label=label, seed=seed) -> list[str]:
                    paths = sum((["--path_t", str(done[n].run_dir / f"{args.teacher}_last.pth")] for n in needs), [])
                    return [PY, "train_student.py", "--model_s", args.student, *paths, *METHODS[label],
                            "--epochs", str(args.student_epochs), "--lr_decay_epochs", args.student_decay,
                            "--seed", str(seed), "--trial", str(seed + 1), "--save_folder", str(students),
                            "--nce_k", str(args.nce_k), *s_subset, *common]
                jobs.append(Job(student_name(label, k, seed), command, needs=needs))
    for seed in seeds:
        jobs.append(Job(f"vanilla_seed{seed}", [
            PY, "train_teacher.py", "--model", args.student, "--epochs", str(args.student_epochs),
            "--lr_decay_epochs", args.student_decay, "--seed", str(seed), "--trial", str(seed + 1),
            "--save_folder", str(models), *s_subset, *common]))
    return jobs


def read_teachers(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "teachers.json").read_text())


def ensemble_accuracy(record: Mapping[str, Any]) -> float:
    """The ensemble's test accuracy of a teachers.json; with one teacher (``ensemble`` null) that teacher's."""
    if record.get("ensemble"):
        return float(record["ensemble"]["acc"])
    return float(record["teachers"][0]["acc"])


def build_table(acc: Mapping[str, Mapping[int, Sequence[float]]], vanilla: Sequence[float], counts: Sequence[int],
                ensemble: Mapping[int, float], teacher_accs: Sequence[float], title: str) -> str:
    """Rows: the methods, the vanilla student, the teachers' ensemble and each teacher; columns: the
    number of teachers."""
    header = ["Method", *(f"{k} teacher{'s' if k > 1 else ''}" for k in counts)]
    rows = [[label, *(mean_std(acc[label].get(k, [])) for k in counts)] for label in acc]
    rows.append([VANILLA, *(mean_std(vanilla) for _ in counts)])
    rows.append(["Teacher ensemble", *(f"{ensemble[k]:.2f}" if k in ensemble else MISSING for k in counts)])
    rows.append(["Teachers (each)", *(" / ".join(f"{a:.2f}" for a in teacher_accs[:k]) for k in counts)])
    return markdown_table(header, rows, title)


def plot(acc: Mapping[str, Mapping[int, Sequence[float]]], vanilla: Sequence[float], counts: Sequence[int],
         path: Path, title: str) -> None:
    """Student accuracy against the number of teachers, one line per method (± std when several
    seeds), the vanilla student as a horizontal line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, by_k in acc.items():
        ks = [k for k in counts if by_k.get(k)]
        means = [statistics.mean(by_k[k]) for k in ks]
        stds = [statistics.stdev(by_k[k]) if len(by_k[k]) > 1 else 0.0 for k in ks]
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=label)
    if vanilla:
        ax.axhline(statistics.mean(vanilla), color="0.4", linestyle="--", label=VANILLA)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(counts), [str(k) for k in counts])
    ax.set_xlabel("number of teachers")
    ax.set_ylabel("student test top-1 (%)")
    save_figure(fig, ax, path, title)


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.methods = parse_methods(args.methods, METHODS)
    counts, seeds = parse_seeds(args.teacher_counts), parse_seeds(args.seeds)
    if max(counts) > args.n_teachers:
        raise SystemExit(f"--teacher_counts {args.teacher_counts} asks for more than --n_teachers {args.n_teachers}")
    out = prepare_out(args.out)
    started = time.perf_counter()
    jobs = design(args, out)
    done = run_jobs(jobs, args.jobs, out / "logs")

    teacher_accs = [last_test_acc(done[teacher_name(i)].run_dir) for i in range(args.n_teachers)]
    acc: dict[str, dict[int, list[float]]] = {label: {} for label in args.methods}
    ensemble: dict[int, float] = {}
    runs = []
    for k in counts:
        for label in args.methods:
            for seed in seeds:
                result = done[student_name(label, k, seed)]
                value = last_test_acc(result.run_dir)
                acc[label].setdefault(k, []).append(value)
                record = read_teachers(result.run_dir)
                ensemble.setdefault(k, ensemble_accuracy(record))
                runs.append({"name": result.name, "method": label, "teachers": k, "seed": seed, "last_acc": value,
                             "run_dir": str(result.run_dir), "seconds": result.seconds, "teachers_json": record})
    vanilla = [last_test_acc(done[f"vanilla_seed{s}"].run_dir) for s in seeds]
    runs += [{"name": f"vanilla_seed{s}", "method": VANILLA, "teachers": 0, "seed": s, "last_acc": a,
              "run_dir": str(done[f"vanilla_seed{s}"].run_dir), "seconds": done[f"vanilla_seed{s}"].seconds}
             for s, a in zip(seeds, vanilla)]
    runs += [{"name": teacher_name(i), "method": "Teacher", "seed": i, "last_acc": a,
              "run_dir": str(done[teacher_name(i)].run_dir), "seconds": done[teacher_name(i)].seconds}
             for i, a in enumerate(teacher_accs)]
    title = (f"Ensemble distillation: {args.teacher} teachers -> {args.student}, last-epoch test top-1 (%), "
             f"mean±std (n) over seeds")
    table = build_table(acc, vanilla, counts, ensemble, teacher_accs, title)
    if not args.no_plots:
        plot(acc, vanilla, counts, out / "ensemble.png", title)
    summary = {"config": vars(args), "runs": runs, "accuracies": {k: {str(n): v for n, v in by.items()}
                                                                  for k, by in acc.items()},
               "vanilla": vanilla, "teachers": teacher_accs, "ensemble": {str(k): v for k, v in ensemble.items()},
               "seconds": {name: r.seconds for name, r in done.items()}}
    return write_outputs(out, table, summary, started)


if __name__ == "__main__":
    main()
