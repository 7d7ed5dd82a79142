#!/usr/bin/env python3
"""Cross-modal transfer without labels (the CRD paper's L -> ab experiment), sized for a 2-core CPU.

    python scripts/crossmodal_experiment.py --data_folder ./data --out crossmodal_experiment

A resnet14 teacher learns CIFAR-100 from the lightness channel L of CIELAB (with labels). resnet8
students see only the colour channels ab and learn from the teacher's features alone: ``-r 0 -a 0
-b <the method's paper weight>``, so their classifier is never trained. Each student's features are
then judged by a linear probe (``transfer_student.py --dataset cifar100 --input ab``: a linear
classifier trained on the frozen network's pooled features). Two baselines bound the result: a
randomly initialised resnet8 on ab (saved by this script) and a resnet8 trained with labels on ab on
the students' budget; the teacher is probed on L for reference.

Writes to ``--out``: ``models/`` (teacher, supervised baseline), ``baselines/`` (random networks),
``student_model/`` (students), ``transfer/`` (probes), ``logs/``, ``results.md`` (network -> probe
accuracy, mean±std (n) over seeds), ``crossmodal.png`` (bars sorted by accuracy, the random and
supervised baselines as lines) and ``summary.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiment_runs import (  # noqa: E402
    add_stage_args, parse_methods, save_figure,
    PY, Job, JobResult, add_common_args, common_flags, last_test_acc, markdown_table, mean_std, parse_seeds,
    prepare_out, pyplot, run_jobs, subset_flag, write_outputs,
)

# Method -> its paper weight of the method term (distiller_zoo/registry.py's -b), written out so the
# table says what was run.
BETAS = {"crd": 0.8, "hint": 100, "attention": 1000, "similarity": 3000, "pkt": 30000, "rkd": 1, "rrd": 1,
         "wcord": 0.8}
LABELS = {"crd": "CRD", "hint": "FitNet", "attention": "AT", "similarity": "SP", "pkt": "PKT", "rkd": "RKD",
          "rrd": "RRD", "wcord": "WCoRD"}
VIEW_T, VIEW_S = "L", "ab"
RANDOM, SUPERVISED, TEACHER = "random init (ab)", "supervised on ab (labels)", "teacher on L (reference)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, out="crossmodal_experiment", seeds="0")
    p.add_argument("--teacher", default="resnet14")
    p.add_argument("--student", default="resnet8")
    add_stage_args(p, "teacher", epochs=4, decay="3", subset=0, who="teacher")
    add_stage_args(p, "student", epochs=3, decay="2", subset=20000, who="students and the supervised baseline")
    add_stage_args(p, "probe", epochs=2, decay="1", subset=0, who="linear probes")  # tested on the full test set
    p.add_argument("--methods", default=",".join(BETAS), help=f"subset of {','.join(BETAS)}")
    return p


def save_random_network(model: str, seed: int, path: Path) -> dict[str, Any]:
    """A seeded, untrained ``model`` with 2 input channels, saved as a checkpoint of the ab view (the
    lower bound of the probes). Returns what a run's final JSON line would hold."""
    import torch

    from kdzoo.helper.checkpoint import save_checkpoint
    from kdzoo.models import model_dict

    torch.manual_seed(seed)
    network = model_dict[model](num_classes=100, in_channels=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": network.state_dict(), "epoch": 0, "accuracy": 0.0, "model_name": model,
                     "opt": {"dataset": "cifar100", "model": model, "input": VIEW_S, "seed": seed},
                     "input": VIEW_S}, path)
    return {"run_dir": str(path.parent), "checkpoint": str(path)}


def design(args: argparse.Namespace, out: Path) -> tuple[list[Job], dict[str, tuple[str, int]]]:
    """Every run, costliest first, and probe name -> (row label, seed)."""
    seeds = parse_seeds(args.seeds)
    common = common_flags(args)
    models, students, transfer = out / "models", out / "student_model", out / "transfer"
    s_subset = subset_flag(args.train_subset or args.student_subset)
    p_subset = subset_flag(args.train_subset or args.probe_subset)
    jobs = [Job("teacher", [PY, "train_teacher.py", "--model", args.teacher, "--input", VIEW_T,
                            "--epochs", str(args.teacher_epochs), "--lr_decay_epochs", args.teacher_decay,
                            "--seed", "0", "--save_folder", str(models),
                            *subset_flag(args.train_subset or args.teacher_subset), *common], wide=True)]
    teacher_ckpt = lambda done: str(done["teacher"].run_dir / f"{args.teacher}_last.pth")  # noqa: E731
    probes: dict[str, tuple[str, int]] = {}
    probe_jobs = []

    def probe(name: str, label: str, seed: int, source: str, ckpt, view: str) -> None:
        def command(done: Mapping[str, JobResult]) -> list[str]:
            return [PY, "transfer_student.py", "--dataset", "cifar100", "--path_s", ckpt(done), "--input", view,
                    "--epochs", str(args.probe_epochs), "--lr_decay_epochs", args.probe_decay,
                    "--seed", str(seed), "--trial", str(seed + 1), "--save_folder", str(transfer),
                    *p_subset, *common]
        probes[name] = (label, seed)
        probe_jobs.append(Job(name, command, needs=(source,)))

    for method in args.methods:
        for seed in seeds:
            name = f"{method}_seed{seed}"
            jobs.append(Job(name, lambda done, method=method, seed=seed: [
                PY, "train_student.py", "--model_s", args.student, "--path_t", teacher_ckpt(done),
                "--distill", method, "-r", "0", "-a", "0", "-b", str(BETAS[method]),
                "--input_t", VIEW_T, "--input_s", VIEW_S, "--epochs", str(args.student_epochs),
                "--lr_decay_epochs", args.student_decay, "--seed", str(seed), "--trial", str(seed + 1),
                "--save_folder", str(students), "--nce_k", str(args.nce_k), *s_subset, *common], needs=("teacher",)))
            probe(f"probe_{name}", LABELS[method], seed, name,
                  lambda done, name=name: str(done[name].run_dir / f"{args.student}_last.pth"), VIEW_S)
    for seed in seeds:
        name = f"supervised_seed{seed}"
        jobs.append(Job(name, [PY, "train_teacher.py", "--model", args.student, "--input", VIEW_S,
                               "--epochs", str(args.student_epochs), "--lr_decay_epochs", args.student_decay,
                               "--seed", str(seed), "--trial", str(seed + 1), "--save_folder", str(models),
                               *s_subset, *common]))
        probe(f"probe_{name}", SUPERVISED, seed, name,
              lambda done, name=name: str(done[name].run_dir / f"{args.student}_last.pth"), VIEW_S)
        random_name = f"random_seed{seed}"
        random_path = out / "baselines" / f"{args.student}_random_in:{VIEW_S}_seed{seed}" / f"{args.student}_last.pth"
        jobs.append(Job(random_name, None,
                        action=lambda done, seed=seed, path=random_path: save_random_network(args.student, seed, path)))
        probe(f"probe_{random_name}", RANDOM, seed, random_name, lambda done, path=random_path: str(path), VIEW_S)
    probe("probe_teacher", TEACHER, seeds[0], "teacher", teacher_ckpt, VIEW_T)
    return jobs + probe_jobs, probes


def build_table(acc: Mapping[str, Sequence[float]], title: str) -> str:
    """Distilled students sorted by probe accuracy (best first), then the baselines and the teacher."""
    fixed = [RANDOM, SUPERVISED, TEACHER]
    methods = sorted((k for k in acc if k not in fixed), key=lambda k: -statistics.mean(acc[k]))
    rows = [[f"{label} (label-free)", mean_std(acc[label])] for label in methods]
    rows += [[label, mean_std(acc[label])] for label in fixed if label in acc]
    return markdown_table(["Network", "Linear-probe top-1 (%)"], rows, title)


def plot(acc: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    """Horizontal bars, sorted by probe accuracy, for the label-free students; the random and
    supervised baselines as vertical lines."""
    plt = pyplot()
    methods = sorted((k for k in acc if k not in (RANDOM, SUPERVISED, TEACHER)), key=lambda k: statistics.mean(acc[k]))
    means = [statistics.mean(acc[k]) for k in methods]
    stds = [statistics.stdev(acc[k]) if len(acc[k]) > 1 else 0.0 for k in methods]
    fig, ax = plt.subplots(figsize=(5.5, 0.4 * len(methods) + 1.8))
    ax.barh(range(len(methods)), means, xerr=stds, color="tab:blue", capsize=3)
    ax.set_yticks(range(len(methods)), methods)
    for label, style in ((RANDOM, ":"), (SUPERVISED, "--")):
        if acc.get(label):
            ax.axvline(statistics.mean(acc[label]), color="0.3", linestyle=style, label=label)
    ax.set_xlabel("linear-probe test top-1 on ab (%)")
    save_figure(fig, ax, path, title, legend_loc="lower right")


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.methods = parse_methods(args.methods, BETAS)
    out = prepare_out(args.out)
    started = time.perf_counter()
    jobs, probes = design(args, out)
    done = run_jobs(jobs, args.jobs, out / "logs")

    acc: dict[str, list[float]] = {}
    runs = []
    for name, (label, seed) in probes.items():
        result = done[name]
        value = last_test_acc(result.run_dir)
        acc.setdefault(label, []).append(value)
        runs.append({"name": name, "network": label, "seed": seed, "probe_acc": value, "run_dir": str(result.run_dir),
                     "seconds": result.seconds})
    for name, result in done.items():
        if name not in probes and name.split("_seed")[0] != "random":
            runs.append({"name": name, "run_dir": str(result.run_dir), "own_test_acc": last_test_acc(result.run_dir),
                         "seconds": result.seconds})
    title = (f"Cross-modal transfer {VIEW_T} -> {VIEW_S}: {args.teacher} teacher on {VIEW_T}, label-free "
             f"{args.student} students on {VIEW_S}; linear-probe test top-1 (%), mean±std (n) over seeds")
    table = build_table(acc, title)
    if not args.no_plots:
        plot(acc, out / "crossmodal.png", title)
    summary = {"config": dict(vars(args), betas={m: BETAS[m] for m in args.methods}), "runs": runs,
               "accuracies": acc, "seconds": {name: r.seconds for name, r in done.items()}}
    return write_outputs(out, table, summary, started)


if __name__ == "__main__":
    main()
