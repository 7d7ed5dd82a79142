"""Exact-fp32 speed choices made at the start of a run.

``--num_workers auto`` (the default) gives the DataLoader the CPU cores the training step leaves
free (see :func:`auto_workers`); it changes where batches are loaded, never what they hold, except
that contrastive negatives are drawn from the generator of the process that loads them.

``--channels_last auto`` (the default) times a few full training steps of the run's own task
(networks, method, batch size, device) in both memory layouts and keeps the faster. Both layouts
compute the same fp32 arithmetic up to rounding, so the choice changes the speed, not the results;
mixed precision (``--amp``) changes the numbers and therefore stays opt-in. The trial runs on deep
copies of the task with the random state restored afterwards, so the run itself starts exactly as
it would with the chosen layout forced; the seconds it takes are part of the run's time and are
logged with the choice, which is also stored in the checkpoint's options (``channels_last`` and
``autotune``).
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import default_collate

from .distributed import all_reduce_sum
from .precision import Precision

AUTO = "auto"
LAYOUTS = {False: "nchw", True: "channels_last"}

# channels_last must beat NCHW (the reference's layout) by this fraction to be chosen: below it the
# difference is within the noise of a few steps and not worth a layout the published runs never used.
MARGIN = 0.03
# Measuring costs eight steps; a run shorter than this many steps (test configurations) keeps NCHW
# unmeasured. The rule depends on the run's length only, never on timings, so such runs stay
# repeatable bit for bit.
MIN_RUN_STEPS = 100


# The most DataLoader workers ``--num_workers auto`` starts (the reference's default count).
MAX_WORKERS = 8


def parse_workers(value: str) -> str | int:
    """``--num_workers auto|N``."""
    if str(value).lower() == AUTO:
        return AUTO
    try:
        workers = int(value)
    except ValueError:
        workers = -1
    if workers < 0:
        raise argparse.ArgumentTypeError(f"--num_workers takes auto or a count of 0 or more, not {value!r}")
    return workers


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity, e.g. under taskset or a container's
    cpuset), else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(device: torch.device, threads: int, processes_per_node: int = 1,
                 cpus: int | None = None) -> tuple[int, str]:
    """``--num_workers auto``: the worker count and the reason, from where the step runs.

    * On an accelerator the step runs beside the host, so the host's cores load the next batches:
      ``min(8, cores per process)`` workers, as the reference's default.
    * On the CPU the step's ``threads`` already occupy that many cores. Workers get only the cores
      left over (``cores per process - threads``, at most 8), and none when the step takes every
      core: loading a batch then runs in the main process between steps, instead of worker
      processes taking turns with the step's threads on the same cores (every thread of a step
      waits for its slowest one) and being started again every epoch. The figures behind the rule
      are in ``docs/performance.md``.
    """
    cpus = usable_cpus() if cpus is None else cpus
    per_process = max(1, cpus // max(1, processes_per_node))
    cores = _count(per_process, "core") + (" per process" if processes_per_node > 1 else "")
    if device.type != "cpu":
        workers = min(MAX_WORKERS, per_process)
        return workers, f"{device.type}: {workers} of {cores} load batches while the device computes"
    workers = max(0, min(MAX_WORKERS, per_process - threads))
    if workers == 0:
        return 0, f"cpu: no core left free by the step's {_count(threads, 'thread')} ({cores}); batches load in the main process"
    return workers, f"cpu: {workers} of {cores} left free by the step's {_count(threads, 'thread')}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class WorkersChoice:
    """The DataLoader workers a run uses and how they were chosen."""

    num_workers: int
    how: str  # "forced", "resumed", or auto_workers' reason

    def describe(self) -> str:
        return f"{_count(self.num_workers, 'DataLoader worker')} ({self.how})"

    def record(self) -> dict[str, Any]:
        return asdict(self)


def choose_workers(opt: argparse.Namespace, device: torch.device,
                   resume_state: dict[str, Any] | None = None) -> WorkersChoice:
    """Resolve ``opt.num_workers`` to a count (in place, with ``opt.autotune['num_workers']``, so the
    checkpoint's options record it). A resumed ``auto`` run keeps its recorded count: contrastive
    negatives are drawn by whichever process loads a batch, so the count is part of what a resumed
    run replays."""
    value = opt.num_workers
    recorded = (resume_state or {}).get("opt", {}).get("num_workers")
    if value == AUTO and isinstance(recorded, int) and not isinstance(recorded, bool):
        choice = WorkersChoice(recorded, "resumed")
    elif value == AUTO:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        choice = WorkersChoice(*auto_workers(device, torch.get_num_threads(), processes))
    else:
        choice = WorkersChoice(int(value), "forced")
    opt.num_workers = choice.num_workers
    opt.autotune = {**(getattr(opt, "autotune", None) or {}), "num_workers": choice.record()}
    return choice


def parse_layout(value: str) -> str | bool:
    """``--channels_last [auto|on|off]``: ``auto`` measures, ``on``/``off`` (or true/false) force."""
    lowered = str(value).lower()
    if lowered == AUTO:
        return AUTO
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"--channels_last takes auto, on or off, not {value!r}")


def add_layout_args(group: argparse._ArgumentGroup) -> None:
    """``--channels_last [auto|on|off]`` (bare ``--channels_last``: on) and ``--no-channels_last``."""
    group.add_argument("--channels_last", type=parse_layout, nargs="?", const=True, default=AUTO,
                       metavar="auto|on|off",
                       help="memory layout: auto (default) times a few steps of both layouts at start and keeps "
                            "the faster (same fp32 numbers); --channels_last forces NHWC, --no-channels_last NCHW")
    group.add_argument("--no-channels_last", dest="channels_last", action="store_const", const=False,
                       help="force the contiguous NCHW layout, the reference's (default: not forced, --channels_last auto)")


@dataclass
class LayoutChoice:
    """The layout a run uses and how it was chosen (``ms_per_step``: the fastest step of each layout
    measured, empty when nothing was measured)."""

    channels_last: bool
    how: str  # "forced", "measured", "resumed", or why nothing was measured
    ms_per_step: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        layout = LAYOUTS[self.channels_last]
        if not self.ms_per_step:
            return f"memory layout {layout} ({self.how})"
        timings = ", ".join(f"{name} {ms:.1f} ms" for name, ms in self.ms_per_step.items())
        return f"memory layout {layout} (measured: {timings} per step; {self.seconds:.1f} s spent choosing)"

    def record(self) -> dict[str, Any]:
        return asdict(self)


def time_step(step: Callable[[], None], warmup: int, steps: int, sync: Callable[[], None],
              timer: Callable[[], float] = time.perf_counter) -> float:
    """Fastest of ``steps`` calls of ``step`` after ``warmup`` untimed ones, in seconds (the minimum:
    other load on the machine only ever adds time)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync()
        start = timer()
        step()
        sync()
        times.append(timer() - start)
    return min(times, default=float("inf"))


def training_step(task: nn.Module, batch: tuple[torch.Tensor, ...], normalize: nn.Module,
                  channels_last: bool, amp: bool = False) -> Callable[[], None]:
    """A full SGD training step of a deep copy of ``task`` (and of its frozen ``teacher``, which
    tasks keep outside their submodules) in the given layout: the real task is not touched."""
    device = batch[0].device
    trial = copy.deepcopy(task)
    precision = Precision(device, amp=amp, channels_last=channels_last)
    precision.prepare_module(trial)
    teacher = getattr(trial, "teacher", None)
    if isinstance(teacher, nn.Module):
        precision.prepare_module(teacher)
    trial.train()
    params = [p for p in trial.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9) if params else None
    images, targets, *extras = batch

    def step() -> None:
        with precision.autocast():
            out = trial(precision.prepare_input(normalize(images)), targets, *extras)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()

    return step


def measure_layouts(make_step: Callable[[bool], Callable[[], None]], device: torch.device, warmup: int = 1,
                    steps: int = 3, margin: float = MARGIN,
                    timer: Callable[[], float] = time.perf_counter) -> LayoutChoice:
    """Time ``make_step(channels_last)()`` in each layout and choose. The timed steps alternate
    between the layouts, so a passing burst of other load hits both (timing one layout after the
    other once chose NCHW for a CRD run whose epoch was 14% faster in NHWC); the cost is that
    both trial copies of the task live at once, for the few seconds of the trial. The defaults
    cost eight steps of the run (a warm-up and three timed steps per layout): one epoch of
    CIFAR-100 is 782 steps at batch 64. Processes of a distributed run add up their timings, so
    all choose the same layout."""
    start = timer()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    best = {layout: float("inf") for layout in LAYOUTS}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        steps_by_layout = {layout: make_step(layout) for layout in LAYOUTS}
        for step in steps_by_layout.values():
            time_step(step, warmup, 0, sync, timer)  # the first steps build each layout's kernels
        for _ in range(steps):
            for layout, step in steps_by_layout.items():
                best[layout] = min(best[layout], time_step(step, 0, 1, sync, timer))
    seconds = timer() - start
    totals = all_reduce_sum(torch.tensor([best[False], best[True]], device=device, dtype=torch.float64)).tolist()
    channels_last = totals[1] < (1 - margin) * totals[0]
    ms = {LAYOUTS[False]: 1000 * best[False], LAYOUTS[True]: 1000 * best[True]}
    return LayoutChoice(channels_last, "measured", ms, seconds)


def first_batch(loader: Any) -> tuple[torch.Tensor, ...]:
    """A batch of the loader's size from the start of its dataset, drawn in this process (the
    batched datasets collate themselves; others through torch's default collate)."""
    dataset = loader.dataset
    indices = range(min(loader.batch_size or 1, len(dataset)))
    if hasattr(dataset, "batch"):
        return tuple(dataset.batch(indices))
    return tuple(default_collate([dataset[i] for i in indices]))


def choose_layout(opt: argparse.Namespace, task: nn.Module, train_loader: Any, normalize: nn.Module,
                  device: torch.device, resume_state: dict[str, Any] | None = None,
                  log: Callable[[str], None] = print) -> LayoutChoice:
    """Resolve ``opt.channels_last`` to a bool (in place, so the checkpoint's options record it, with
    ``opt.autotune``) and log the choice. ``auto`` measures the run's first training batch; a
    resumed run keeps the layout it was started with, so it replays the same arithmetic."""
    value = opt.channels_last
    recorded = (resume_state or {}).get("opt", {}).get("channels_last")
    if value == AUTO and isinstance(recorded, bool):
        choice = LayoutChoice(recorded, "resumed")
    elif value == AUTO and len(train_loader) * opt.epochs < MIN_RUN_STEPS:
        choice = LayoutChoice(False, f"run of under {MIN_RUN_STEPS} steps: not measured")
    elif value == AUTO:
        with torch.random.fork_rng():  # drawing the batch (augmentation, negatives) leaves the run's RNG alone
            batch = tuple(t.to(device) for t in first_batch(train_loader))
        normalize.to(device)
        choice = measure_layouts(lambda cl: training_step(task, batch, normalize, cl, opt.amp), device)
    else:
        choice = LayoutChoice(bool(value), "forced")
    opt.channels_last = choice.channels_last
    opt.autotune = {**(getattr(opt, "autotune", None) or {}), "channels_last": choice.record()}
    log(choice.describe())
    return choice


def run_precision(opt: argparse.Namespace, task: nn.Module, train_loader: Any, normalize: nn.Module,
                  device: torch.device, resume_state: dict[str, Any] | None = None,
                  log: Callable[[str], None] = print) -> Precision:
    """The entry points' :class:`Precision`: ``--amp``/``--compile`` as given, the layout chosen by
    :func:`choose_layout`."""
    choose_layout(opt, task, train_loader, normalize, device, resume_state, log)
    return Precision(device, amp=opt.amp, channels_last=opt.channels_last, compile=opt.compile)
