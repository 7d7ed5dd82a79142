"""One epoch of the reference's ``train_student.py`` against this project's, side by side.

    python scripts/compare_reference.py --reference ~/RepDistiller --data_folder ./data \
        --teacher resnet14 --student resnet8 --distill kd --train_subset 10000 --threads 1 --num_workers 1

Both programs get the same data (the first ``--train_subset`` / ``--test_subset`` images of the
CIFAR-100 in ``--data_folder``, written as a small CIFAR-100 folder, since the reference cannot take
a subset), the same teacher file (``--path_t``, or a freshly initialised teacher of ``--teacher``:
the same arithmetic, so the same time) and the same flags, with one epoch each, in interleaved rounds
(the order alternating every round, so a drift in the machine's load hits both), each in its own
process with ``OMP_NUM_THREADS=--threads``. ``--num_workers`` is the reference's DataLoader worker
count; this project runs at its own default (``--num_workers auto``) unless ``--ours_flags`` gives
one. Timed: the whole process (start-up, teacher evaluation, this project's layout measurement, the
epoch, the test pass, checkpoints) and the training epoch
alone (what each program reports: the reference prints it, this project logs it in metrics.jsonl).
Prints the per-round seconds and the speed-up (reference time / this project's time): median and
range over the rounds.

The reference needs a few small patches to run on a CPU with current torch and torchvision; they
are applied to a temporary copy (the checkout pointed at is never modified) and listed in the
output. None of them touches the arithmetic of a training step.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Patch:
    """A change to one file of the reference copy; ``apply`` returns the new text, or ``None`` when
    the file does not need it (a newer reference may already be fixed)."""

    name: str
    path: str
    apply: Callable[[str, Path], str | None]


def _replace_all(pairs: list[tuple[str, str]]) -> Callable[[str, Path], str | None]:
    def apply(text: str, _data: Path) -> str | None:
        new = text
        for pattern, replacement in pairs:
            new = re.sub(pattern, replacement, new, flags=re.MULTILINE)
        return new if new != text else None
    return apply


def _append_once(marker: str, code: Callable[[Path], str]) -> Callable[[str, Path], str | None]:
    def apply(text: str, data: Path) -> str | None:
        return None if marker not in text else text + "\n\n" + code(data) + "\n"
    return apply


PATCHES = [
    Patch("CUDA-only alias sampler: kept on the CPU, where the comparison runs", "crd/memory.py",
          _replace_all([(r"^(\s*)self\.multinomial\.cuda\(\)", r"\1pass  # the comparison runs on CPU")])),
    Patch("torchvision renamed train_data/train_labels/test_data/test_labels to data/targets",
          "dataset/cifar100.py",
          _replace_all([(r"\bself\.(train|test)_data\b", "self.data"), (r"\bself\.(train|test)_labels\b", "self.targets")])),
    Patch("md5 integrity check skipped (the data folder is a re-pickled subset)", "dataset/cifar100.py",
          _append_once("torchvision", lambda _d: "import torchvision.datasets.cifar as _cifar\n"
                                                 "_cifar.check_integrity = lambda *args, **kwargs: True")),
    Patch("data path: the comparison's data folder", "dataset/cifar100.py",
          _append_once("def get_data_folder", lambda d: f"def get_data_folder():\n    return {str(d)!r}")),
    Patch("per-class index lists kept as lists: current numpy refuses a ragged array (a subset is not "
          "class-balanced)", "dataset/cifar100.py",
          _replace_all([(r"^(\s*)self\.cls_(positive|negative) = np\.asarray\(self\.cls_\2\)\s*$",
                         r"\1self.cls_\2 = list(self.cls_\2)")])),
    Patch(".view on a non-contiguous tensor -> .reshape", "helper/util.py",
          _replace_all([(r"correct\[:k\]\.view\(-1\)", "correct[:k].reshape(-1)")])),
]
TENSORBOARD_STUB = "tensorboard_logger stub (the package no longer installs)"


def patched_reference(source: Path, dest: Path, data: Path) -> list[str]:
    """Copy the reference checkout ``source`` to ``dest``, patch the copy, return what was applied."""
    if not (source / "train_student.py").is_file():
        raise SystemExit(f"--reference {source}: no train_student.py there; point it at a RepDistiller checkout")
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git", "save", "data", "__pycache__"))
    applied = []
    for patch in PATCHES:
        path = dest / patch.path
        if not path.is_file():
            continue
        new = patch.apply(path.read_text(), data)
        if new is not None:
            path.write_text(new)
            applied.append(f"{patch.path}: {patch.name}")
    uses_tb = any("tensorboard_logger" in p.read_text() for p in dest.glob("*.py"))
    if uses_tb:
        (dest / "tensorboard_logger.py").write_text(
            "class Logger:\n    def __init__(self, *args, **kwargs):\n        pass\n\n"
            "    def log_value(self, *args, **kwargs):\n        pass\n")
        applied.append(f"tensorboard_logger.py: {TENSORBOARD_STUB}")
    return applied


def write_subset(source: Path, dest: Path, n_train: int | None, n_test: int | None) -> Path:
    """``dest/cifar-100-python`` with the first ``n_train`` / ``n_test`` images of ``source``
    (the official archive's layout, readable by both programs)."""
    from kdzoo.dataset.cifar100 import ensure_cifar100, read_cifar100

    folder = dest / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, limit in (("train", n_train), ("test", n_test)):
        images, labels = read_cifar100(source, train=split == "train")
        images, labels = images[:limit], labels[:limit]
        entry = {"data": images.reshape(len(images), -1).numpy(), "fine_labels": labels.tolist(),
                 "coarse_labels": [0] * len(labels), "filenames": [f"{i}.png" for i in range(len(labels))],
                 "batch_label": split}
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    shutil.copy(ensure_cifar100(source) / "meta", folder / "meta")
    return dest


def make_teacher(arch: str, folder: Path) -> Path:
    """A freshly initialised ``arch`` in the reference's checkpoint format and folder naming."""
    import torch

    from kdzoo.models import model_dict

    if arch not in model_dict:
        raise SystemExit(f"--teacher {arch!r}: unknown architecture; choose one of {', '.join(model_dict)}")
    torch.manual_seed(0)
    path = folder / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    torch.save({"model": model_dict[arch](num_classes=100).state_dict(), "epoch": 240}, path)
    return path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {done.returncode}) in {cwd}; its output is in {log}:\n"
                         + done.stderr[-3000:])
    return seconds, done.stdout


def reference_epoch_seconds(stdout: str) -> float:
    found = re.findall(r"epoch 1, total time ([0-9.]+)", stdout)
    return float(found[-1]) if found else float("nan")


def our_epoch_seconds(stdout: str) -> float:
    from kdzoo.helper.logger import read_metrics

    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and "run_dir" in line:
            return float(read_metrics(json.loads(line)["run_dir"])[0]["seconds"])
    return float("nan")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, type=Path, help="a checkout of the reference (RepDistiller)")
    parser.add_argument("--data_folder", required=True, type=Path, help="folder holding cifar-100-python/")
    parser.add_argument("--teacher", default="resnet32x4", help="teacher architecture (a fresh one unless --path_t)")
    parser.add_argument("--path_t", type=Path, default=None,
                        help="teacher checkpoint, in a <arch>_vanilla/ folder as the reference expects")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--distill", default="kd")
    parser.add_argument("--weights", default=None, help="-r,-a,-b for both (default: kd 0.1,0.9,0; else 1,0,0.8)")
    parser.add_argument("--train_subset", type=int, default=6400)
    parser.add_argument("--test_subset", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=1,
                        help="the reference's DataLoader workers; this project keeps its default, --num_workers auto, "
                             "unless --ours_flags sets it")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both programs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ours_flags", default="", help="extra flags for this project only, e.g. --no-channels_last")
    parser.add_argument("--work_dir", type=Path, default=None, help="keep the copies, data and logs here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    weights = args.weights or ("0.1,0.9,0" if args.distill == "kd" else "1,0,0.8")
    gamma, alpha, beta = weights.split(",")
    temp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="kdzoo_compare_")
    work = args.work_dir or Path(temp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = write_subset(args.data_folder, work / "data", args.train_subset, args.test_subset)
        reference = work / "reference"
        applied = patched_reference(args.reference.resolve(), reference, data)
        path_t = args.path_t.resolve() if args.path_t else make_teacher(args.teacher, work / "teachers")
        common = ["--path_t", str(path_t), "--model_s", args.student, "--distill", args.distill, "-r", gamma,
                  "-a", alpha, "-b", beta, "--epochs", "1", "--batch_size", str(args.batch_size)]
        threads = str(args.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": ""}
        commands = {
            "reference": ([sys.executable, "train_student.py", *common, "--num_workers", str(args.num_workers)],
                          reference),
            "ours": ([sys.executable, str(ROOT / "train_student.py"), *common, "--data_folder", str(data),
                      "--device", "cpu", "--seed", "0", *args.ours_flags.split()], ROOT),
        }
        print(f"CPU: {cpu_model()} ({os.cpu_count()} cores), OMP_NUM_THREADS={threads}, "
              f"{args.train_subset} train / {args.test_subset} test images, batch {args.batch_size}, "
              f"the reference's --num_workers {args.num_workers}")
        print("reference patches (on a temporary copy): " + ("; ".join(applied) or "none needed"))
        for name, (cmd, cwd) in commands.items():
            print(f"{name}: (cd {cwd} && OMP_NUM_THREADS={threads} {' '.join(cmd)})")
        times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "epoch": []} for n in commands}
        for round_ in range(args.rounds):
            order = list(commands) if round_ % 2 == 0 else list(commands)[::-1]
            for name in order:
                cmd, cwd = commands[name]
                if name == "ours":
                    cmd = [*cmd, "--save_folder", str(work / "ours" / f"round{round_}")]
                wall, stdout = run_timed(cmd, cwd, env, work / f"{name}_round{round_}.log")
                epoch = reference_epoch_seconds(stdout) if name == "reference" else our_epoch_seconds(stdout)
                times[name]["wall"].append(wall)
                times[name]["epoch"].append(epoch)
                print(f"round {round_ + 1}: {name:9s} process {wall:7.1f} s, epoch {epoch:7.1f} s", flush=True)
        ratios = {kind: [r / o for r, o in zip(times["reference"][kind], times["ours"][kind])]
                  for kind in ("wall", "epoch")}
        print(f"\nspeed-up (reference time / this project's time), {args.teacher if not args.path_t else path_t.parent.name} "
              f"-> {args.student}, {args.distill}, {args.rounds} interleaved rounds:")
        print(f"| measured | reference (s, median) | this project (s, median) | speed-up |")
        print("|---|---:|---:|---:|")
        for kind, label in (("wall", "whole process"), ("epoch", "training epoch")):
            print(f"| {label} | {statistics.median(times['reference'][kind]):.1f} | "
                  f"{statistics.median(times['ours'][kind]):.1f} | {spread(ratios[kind])} |")
        result = {"cpu": cpu_model(), "threads": args.threads, "patches": applied, "times": times, "ratios": ratios,
                  "commands": {n: c for n, (c, _) in commands.items()}, "config": {k: str(v) for k, v in vars(args).items()}}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return result
    finally:
        if temp is not None:
            temp.cleanup()


if __name__ == "__main__":
    main()
