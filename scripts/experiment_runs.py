"""Shared parts of the experiment scripts (cpu_experiment.py, ensemble_experiment.py,
crossmodal_experiment.py, privileged_experiment.py): running training commands with a fixed number
of threads into log files, a small job pool with dependencies, reading what a run reports (its final
JSON line, its ``metrics.jsonl``), ``mean±std (n)`` cells, Markdown tables and the output files.

Only the standard library is imported here, so the pure parts are testable without torch.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MISSING = "–"

# The CRD paper's ablation of the number of negatives changes little from 4096 to 16384, and each
# teacher of an ensemble holds its own memory bank of that size: 4096 keeps CPU runs short.
NCE_K_HELP = ("CRD/WCoRD/RRD negatives (default 4096 on CPU: the CRD paper's ablation shows little change from 4096 "
              "to 16384, and each teacher holds its own memory; pass 16384 for the paper's setting)")


def run_command(cmd: Sequence[str], log: Path, threads: int) -> float:
    """Run one training command from the repository root with ``threads`` torch threads (two
    single-threaded processes use 2 cores better than one two-threaded one for small networks);
    stdout and stderr go to ``log``. Returns the seconds it took; raises when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        done = subprocess.run(list(cmd), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - start


def parse_final_json(text: str) -> dict[str, Any]:
    """The final JSON line a training script prints (``{"best_acc", "last_acc", "epochs", "run_dir"}``):
    the last line of ``text`` that is a JSON object holding ``run_dir``."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict) and "run_dir" in value:
                return value
    raise ValueError("no final JSON line with 'run_dir' found")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/metrics.jsonl``, one per epoch."""
    text = (Path(run_dir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def last_test_acc(run_dir: Path) -> float:
    """The last epoch's ``test_acc`` (what the papers report)."""
    return float(read_metrics(run_dir)[-1]["test_acc"])


def mean_std(values: Sequence[float]) -> str:
    """``mean±std (n)``: sample standard deviation, 0 for one value; ``–`` for none."""
    if not values:
        return MISSING
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f}±{std:.2f} ({len(values)})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> str:
    """A Markdown table (with an optional bold title line above it)."""
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def prepare_out(out: str | Path) -> Path:
    """The output folder, created; refused when it already holds anything (an earlier experiment's
    runs would be mixed into the table)."""
    path = Path(out).resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SystemExit(f"{path} already holds runs: choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def subset_flag(n: int | None) -> list[str]:
    """``--train_subset N`` for N > 0; nothing for None or 0 (all images)."""
    return ["--train_subset", str(n)] if n else []


def common_flags(args: Any) -> list[str]:
    """The flags every run of an experiment shares: data, device, workers, quiet progress, smoke sizes."""
    flags = ["--data_folder", str(Path(args.data_folder).resolve()), "--device", args.device,
             "--num_workers", str(args.num_workers), "--print_freq", "1000000"]
    if args.test_subset:
        flags += ["--test_subset", str(args.test_subset)]
    return flags


def add_common_args(p: Any, out: str, seeds: str) -> None:
    """The flags all experiment scripts share."""
    p.add_argument("--data_folder", default="./data", help="folder holding cifar-100-python/")
    p.add_argument("--out", default=out, help="output folder (must be empty or absent)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, each with cores/jobs threads")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="passed to every run")
    p.add_argument("--num_workers", type=int, default=1, help="DataLoader workers per run")
    p.add_argument("--seeds", default=seeds, help="comma-separated seeds, one trial (seed + 1) per seed")
    p.add_argument("--train_subset", type=int, default=None,
                   help="smoke tests: N training images for every run (replaces the per-stage sizes)")
    p.add_argument("--test_subset", type=int, default=None, help="smoke tests: N test images")
    p.add_argument("--nce_k", type=int, default=4096, help=NCE_K_HELP)
    p.add_argument("--no_plots", action="store_true", help="skip the figure (no matplotlib needed)")


def add_stage_args(p: Any, stage: str, epochs: int, decay: str, subset: int, who: str) -> None:
    """The size flags of one stage of an experiment (``teacher``, ``student``, ``probe``):
    ``--<stage>_epochs``, ``--<stage>_decay`` (its ``--lr_decay_epochs``) and ``--<stage>_subset``
    (the first N training images; 0: all). ``who`` names the stage's runs in the help."""
    p.add_argument(f"--{stage}_epochs", type=int, default=epochs, help=f"epochs of the {who} (default: %(default)s)")
    p.add_argument(f"--{stage}_decay", default=decay, help=f"--lr_decay_epochs of the {who} (default: %(default)s)")
    p.add_argument(f"--{stage}_subset", type=int, default=subset,
                   help=f"training images of the {who}: the first N, 0 for all (default: %(default)s)")


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` as integers."""
    return [int(s) for s in text.split(",") if s.strip()]


@dataclass
class Job:
    """One command of an experiment. ``command`` is a list, or a function of the finished jobs'
    results (a student reads its teacher's run folder from the teacher's final JSON line).
    ``needs``: names of jobs that must finish first. ``wide``: the job uses every thread of the
    pool alone (a single teacher everything else waits for)."""

    name: str
    command: Sequence[str] | Callable[[Mapping[str, "JobResult"]], Sequence[str]] | None
    needs: tuple[str, ...] = ()
    wide: bool = False
    # In-process work instead of a command (e.g. saving a random network); returns a final-JSON-like dict.
    action: Callable[[Mapping[str, "JobResult"]], dict[str, Any]] | None = None


@dataclass
class JobResult:
    """A finished job: its seconds and its final JSON line (``run_dir`` names its run folder)."""

    name: str
    seconds: float
    final: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.final["run_dir"])


def log_name(name: str) -> str:
    """A file-system-friendly log name (``CRD+KD`` -> ``CRDpKD``)."""
    return "".join(c if c.isalnum() or c in "-_." else ("p" if c == "+" else "_") for c in name) + ".log"


def run_jobs(jobs: Sequence[Job], workers: int, logs: Path, cores: int | None = None,
             runner: Callable[[Sequence[str], Path, int], float] = run_command) -> dict[str, JobResult]:
    """Run ``jobs`` at most ``workers`` at a time, each with ``cores // workers`` threads (a wide job
    with all of them, alone). Whenever a slot frees, the first job in list order whose ``needs`` are
    done starts (list the costliest first, so that the last to finish are short). The first failure
    stops new starts; it is raised once the running jobs end."""
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError("job names must be unique")
    unknown = {n for j in jobs for n in j.needs} - set(names)
    if unknown:
        raise ValueError(f"jobs need unknown jobs {sorted(unknown)}")
    workers = max(1, workers)
    per_job = max(1, (cores or os.cpu_count() or 1) // workers)
    budget = per_job * workers
    results: dict[str, JobResult] = {}
    pending = list(jobs)
    running: dict[Future, tuple[Job, int]] = {}
    failure: BaseException | None = None

    def execute(job: Job, threads: int) -> JobResult:
        start = time.perf_counter()
        if job.action is not None:
            final = job.action(results)
            return JobResult(job.name, time.perf_counter() - start, final)
        cmd = job.command(results) if callable(job.command) else job.command
        log = logs / log_name(job.name)
        runner(cmd, log, threads)
        seconds = time.perf_counter() - start
        return JobResult(job.name, seconds, parse_final_json(log.read_text()))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            if failure is None:
                used = sum(t for _, t in running.values())
                ready = [j for j in pending if all(n in results for n in j.needs)]
                while ready and len(running) < workers:
                    job = ready[0]
                    threads = budget if job.wide else per_job
                    if used + threads > budget:
                        break
                    pending.remove(job)
                    ready.pop(0)
                    running[pool.submit(execute, job, threads)] = (job, threads)
                    used += threads
            if not running:
                if failure is None and pending:
                    raise RuntimeError(f"jobs {[j.name for j in pending]} can never start (circular needs)")
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                job, _ = running.pop(fut)
                try:
                    results[job.name] = fut.result()
                except BaseException as err:  # noqa: BLE001 - re-raised below, after the others end
                    failure = failure or err
    if failure is not None:
        raise failure
    return results


def write_outputs(out: Path, table: str, summary: dict[str, Any], started: float) -> dict[str, Any]:
    """``results.md`` (the table) and ``summary.json`` (``summary`` plus the table and the total
    seconds); prints the table and the wall-clock time."""
    total = time.perf_counter() - started
    summary = dict(summary, table=table)
    summary.setdefault("seconds", {})["total"] = total
    (out / "results.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(table)
    print(f"wall-clock: {total / 60:.1f} min")
    return summary


def save_figure(fig: Any, ax: Any, path: Path, title: str, legend_loc: str = "best") -> None:
    """Title (wrapped to the figure's width), legend, tight layout; written as a PNG, then closed."""
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    ax.legend(fontsize=8, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def parse_methods(text: str, known: Iterable[str]) -> list[str]:
    """``--methods a,b``: the names, each one of ``known`` (else exit naming the choices)."""
    known = list(known)
    methods = [m for m in text.split(",") if m]
    unknown = set(methods) - set(known)
    if unknown:
        raise SystemExit(f"unknown --methods {sorted(unknown)}: choose from {', '.join(known)}")
    return methods


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (imported only when a figure is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
