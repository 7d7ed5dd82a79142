"""The training driver shared by teachers and students: epochs, evaluation, checkpoints, resume,
logging and the final JSON line."""
from __future__ import annotations

import json
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from kdzoo.dataset import DataSpec, build_datasets, build_loaders

from .checkpoint import (
    CheckpointError,
    check_resumable,
    check_same_run,
    load_checkpoint,
    recorded_options,
    remove_stale_temporaries,
    save_checkpoint,
)
from .autotune import choose_workers
from .distributed import DistEnv, any_rank, broadcast_buffers, cleanup
from .logger import RunLogger
from .loops import NonFiniteLossError, RunClock, StepOutput, evaluate, train_epoch
from .precision import Precision
from .run_record import write_run_record
from .util import seed_everything


class TrainingStopped(RuntimeError):
    """Training cannot go on (non-finite loss, a full disk or an unwritable run folder); the message
    says which checkpoint is the last good one."""


class ClassificationTask(nn.Module):
    """Trains ``model`` alone with cross-entropy: teachers and vanilla students."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def eval_model(self) -> nn.Module:
        return self.model

    def forward(self, images: torch.Tensor, targets: torch.Tensor, *unused: torch.Tensor) -> StepOutput:
        logits = self.model(images)
        loss = F.cross_entropy(logits, targets)
        return StepOutput(loss, logits, {"cls": loss})


@dataclass
class Schedule:
    """SGD with a step learning-rate schedule, as in the reference."""

    epochs: int
    learning_rate: float
    lr_decay_epochs: list[int]
    lr_decay_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of (run, epoch, process): an epoch's randomness does not depend on earlier epochs, so a
    resumed run replays it exactly."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**63


def new_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def prepare_run_dir(save_folder: str | Path, run_name: str, resume: str | None) -> Path:
    """The run folder: the resumed checkpoint's folder, or ``save_folder/run_name``, which must not
    already hold checkpoints (nothing is overwritten by accident)."""
    if resume:
        return Path(resume).resolve().parent
    run_dir = Path(save_folder) / run_name
    existing = sorted(run_dir.glob("*.pth")) if run_dir.is_dir() else []
    if existing:
        raise CheckpointError(
            f"{run_dir} already holds checkpoints ({existing[0].name}, ...): continue it with "
            f"--resume {existing[0]}, or choose another --trial or --save_folder"
        )
    return run_dir


def load_resume_state(opt: Any) -> dict[str, Any] | None:
    """The checkpoint ``--resume`` names (None without the flag), refused unless it can resume a run
    and was written under the same flags (``checkpoint.check_same_run``)."""
    if not opt.resume:
        return None
    state = load_checkpoint(opt.resume, trust=opt.trust_checkpoint)
    check_resumable(state, opt.resume)
    check_same_run(state, opt, opt.resume)
    return state


def open_run_dir(run_dir: Path, env: DistEnv, resumed: bool) -> None:
    """Make sure the main process can write into ``run_dir`` before any training (an unwritable
    folder is refused up front, naming it), and clear the temporary files a killed run left there."""
    if not env.is_main:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise CheckpointError(
            f"cannot write to the run folder {run_dir} ({err.strerror or err}): make it writable, or choose "
            "another --save_folder (a resumed run writes next to its checkpoint)"
        ) from err
    if resumed:
        for stale in remove_stale_temporaries(run_dir):
            print(f"removed {stale.name}, a partial file left by an interrupted write")


@dataclass
class RunSetup:
    """Everything an entry point prepares before building its task."""

    env: DistEnv
    seed: int
    run_dir: Path
    resume_state: dict[str, Any] | None
    train_loader: Any
    test_loader: Any
    spec: DataSpec


def prepare_run(opt: Any, env: DistEnv, run_name: str, view: str = "plain", **view_args: Any) -> RunSetup:
    """Seed, run folder, resume state and loaders from the shared flags (``helper/options.py``).
    A resumed run keeps its recorded seed, so its data order and augmentation replay exactly."""
    resume_state = load_resume_state(opt)
    seed = resume_state["seed"] if resume_state else (opt.seed if opt.seed is not None else new_seed())
    # Models are built after this, so their initial weights follow the seed too.
    seed_everything(seed)
    run_dir = prepare_run_dir(opt.save_folder, run_name, opt.resume)
    choose_workers(opt, env.device, resume_state)
    train_set, test_set = build_datasets(
        opt.dataset, opt.data_folder, view=view, train_limit=opt.train_subset, test_limit=opt.test_subset,
        image_size=getattr(opt, "image_size", None), uint8=True, **view_args
    )
    # The folder appears only once the data is known to be good.
    open_run_dir(run_dir, env, resumed=resume_state is not None)
    if env.is_main:
        write_run_record(run_dir, vars(opt), seed, env.world_size, resumed=bool(opt.resume))
    train_loader, test_loader, spec = build_loaders(
        train_set, test_set, opt.batch_size, opt.num_workers, seed=seed, rank=env.rank,
        world_size=env.world_size, pin_memory=env.device.type == "cuda",
    )
    return RunSetup(env, seed, run_dir, resume_state, train_loader, test_loader, spec)


def fit(
    task: nn.Module,
    model_name: str,
    schedule: Schedule,
    env: DistEnv,
    train_loader: Any,
    test_loader: Any,
    normalize: nn.Module,
    run_dir: str | Path,
    seed: int,
    options: dict[str, Any],
    resume_state: dict[str, Any] | None = None,
    save_freq: int = 40,
    print_freq: int = 100,
    log: Callable[[str], None] | None = None,
    precision: Precision | None = None,
    eval_input: nn.Module | None = None,
) -> dict[str, Any]:
    """Train ``task`` (a module whose ``forward(images, targets, *extras)`` returns a
    :class:`StepOutput` and whose ``eval_model`` is evaluated) and return the final metrics.

    Every epoch writes ``<model>_last.pth`` (everything needed to resume), ``<model>_best.pth``
    when test accuracy improves and ``ckpt_epoch_<E>.pth`` every ``save_freq`` epochs, all in the
    reference format (``{'model': state_dict, 'epoch', 'accuracy', ...}``) and atomically.
    A task with a ``set_epoch(epoch)`` method has it called before each training epoch (epochs
    count from 1; a resumed run continues the count), e.g. for DKD's warm-up.
    ``normalize`` turns the loader's uint8 batch into what the task's step reads (one tensor, or one
    input view per network); ``eval_input`` (default ``normalize``) into what ``eval_model`` reads.
    Checkpoints record the latter's input view as ``'input'`` (``'rgb'`` for plain normalisation).
    A write that fails (full disk, unwritable folder) stops every process with
    :class:`TrainingStopped`, naming the folder and the last complete checkpoint.
    """
    run_dir = Path(run_dir)
    device = env.device
    if log is None:
        log = print if env.is_main else (lambda *_: None)
    precision = precision or Precision(device)
    precision.prepare_module(task.to(device))
    normalize.to(device)
    eval_input = (eval_input if eval_input is not None else normalize).to(device)
    input_view = getattr(eval_input, "view", "rgb")
    scaler = precision.grad_scaler()
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=schedule.learning_rate, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, schedule.lr_decay_epochs, schedule.lr_decay_rate)

    start_epoch, best_acc, last_acc = 1, 0.0, float("nan")
    last_path = run_dir / f"{model_name}_last.pth"
    saved_epoch: int | None = None  # the epoch last_path holds
    if resume_state is not None:
        task.load_state_dict(resume_state["task"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if scaler is not None and "scaler" in resume_state:
            scaler.load_state_dict(resume_state["scaler"])
        start_epoch, best_acc = resume_state["epoch"] + 1, resume_state["best_acc"]
        saved_epoch = resume_state["epoch"]
        last_acc = resume_state.get("accuracy", float("nan"))
        log(f"resuming after epoch {resume_state['epoch']} (best {best_acc:.2f}, seed {seed})")

    step_fn: Callable[..., StepOutput] = task
    if env.distributed:
        # Buffers are not broadcast every step: contrastive memories are kept identical by the
        # methods themselves (all-gathered updates) and would cost megabytes per step; batch-norm
        # statistics are synchronised before each evaluation instead.
        step_fn = DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None,
                                          broadcast_buffers=False)

    def last_good() -> str:
        if saved_epoch is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {last_path} (epoch {saved_epoch})"

    def write_failure(when: str, err: OSError | None) -> TrainingStopped:
        reason = f"{err.strerror or err}" if err is not None else "the main process could not write"
        return TrainingStopped(
            f"cannot write to the run folder {run_dir} ({reason}) {when}; training stopped, {last_good()}; "
            f"free space or make the folder writable, then continue with --resume {last_path}"
        )

    try:
        logger = RunLogger(run_dir, enabled=env.is_main, resume_epoch=start_epoch - 1)
    except OSError as err:
        raise write_failure("while opening its logs", err) from err
    eval_model = task.eval_model
    set_task_epoch = getattr(task, "set_epoch", None)
    clock = RunClock(start_epoch, schedule.epochs)

    def checkpoint(epoch: int, accuracy: float) -> dict[str, Any]:
        return {
            "model": eval_model.state_dict(), "epoch": epoch, "accuracy": accuracy, "best_acc": best_acc,
            "task": task.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "seed": seed, "model_name": model_name, "input": input_view, "opt": options,
            **({"scaler": scaler.state_dict()} if scaler is not None else {}),
        }

    try:
        for epoch in range(start_epoch, schedule.epochs + 1):
            seed_everything(epoch_seed(seed, epoch, env.rank))
            train_loader.sampler.set_epoch(epoch)
            train_loader.dataset.set_epoch(epoch, seed)
            if set_task_epoch is not None:
                set_task_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            try:
                train = train_epoch(step_fn, train_loader, optimizer, normalize, device, epoch, print_freq, log,
                                    precision, scaler, clock)
            except NonFiniteLossError as err:
                raise TrainingStopped(f"{err}; training stopped, {last_good()}") from err
            scheduler.step()
            if env.distributed:
                broadcast_buffers(eval_model)
            test = evaluate(eval_model, test_loader, eval_input, device, precision)
            last_acc = test["acc"]
            improved = last_acc > best_acc
            best_acc = max(best_acc, last_acc)
            write_error: OSError | None = None
            if env.is_main:
                row = {"epoch": epoch, "lr": lr}
                row.update({f"train_{k}": v for k, v in train.items() if k not in ("seconds", "images_per_sec")})
                row.update({"test_acc": test["acc"], "test_acc_top5": test["acc_top5"], "test_loss": test["loss"],
                            "images_per_sec": train["images_per_sec"], "seconds": train["seconds"]})
                try:
                    state = checkpoint(epoch, last_acc)
                    if improved:
                        save_checkpoint(state, run_dir / f"{model_name}_best.pth")
                    if epoch % save_freq == 0 or epoch == schedule.epochs:
                        save_checkpoint(state, run_dir / f"ckpt_epoch_{epoch}.pth")
                    logger.log_epoch(row)
                    # Written last: whenever it holds epoch E, every file and row of epoch E is complete;
                    # a run stopped before it is resumed from epoch E-1, redoes E and drops E's row.
                    save_checkpoint(state, last_path)
                except OSError as err:
                    write_error = err
            # Collective (it also keeps the processes in step): all stop when the main one could not write.
            if any_rank(write_error is not None, device):
                raise write_failure(f"at the end of epoch {epoch}", write_error) from write_error
            saved_epoch = epoch
            log(
                f"epoch {epoch}/{schedule.epochs}  lr {lr:.4g}  train loss {train['loss']:.4f} acc {train['acc']:.2f}  "
                f"test acc@1 {test['acc']:.2f} acc@5 {test['acc_top5']:.2f}  best {best_acc:.2f}  "
                f"{train['images_per_sec']:.0f} img/s  {train['seconds']:.1f}s  {clock.progress(epoch, 1.0)}"
                + describe_terms(train)
            )
    finally:
        logger.close()
    result = {"best_acc": best_acc, "last_acc": last_acc, "epochs": schedule.epochs, "run_dir": str(run_dir)}
    if env.is_main:
        sys.stdout.flush()
        print(json.dumps(result), flush=True)
    return result


def describe_terms(train: dict[str, float]) -> str:
    """The epoch's mean loss terms (``cls``, ``div``, ``kd``, ... as ``StepOutput.terms`` names
    them), when the loss has more than one."""
    terms = {k: v for k, v in train.items() if k not in ("loss", "acc", "images_per_sec", "seconds")}
    return ("  terms " + " ".join(f"{k} {v:.4f}" for k, v in terms.items())) if len(terms) > 1 else ""


def run_training(task: nn.Module, model_name: str, opt: Any, setup: RunSetup, normalize: nn.Module,
                 precision: Precision | None = None, eval_input: nn.Module | None = None) -> dict[str, Any]:
    """The entry points' last step: ``fit`` with the shared flags; a stopped run exits with status 1
    (its message on stderr) and the process group is always torn down."""
    schedule = Schedule(opt.epochs, opt.learning_rate, opt.lr_decay_epochs, opt.lr_decay_rate, opt.momentum,
                        opt.weight_decay)
    try:
        return fit(
            task, model_name, schedule, setup.env, setup.train_loader, setup.test_loader, normalize,
            setup.run_dir, setup.seed, recorded_options(opt), resume_state=setup.resume_state, save_freq=opt.save_freq,
            print_freq=opt.print_freq, precision=precision, eval_input=eval_input,
        )
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        cleanup()
