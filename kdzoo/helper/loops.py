"""One training epoch and one evaluation pass, shared by teachers and students.

Meters stay on the device and are read only when a line is printed, so a CUDA step never waits
for the host.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn

from .distributed import all_reduce_min, all_reduce_sum
from .precision import Precision
from .util import correct_topk


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (``step`` counts from 0, like ``enumerate``)."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"the training loss became non-finite at epoch {epoch}, step {step} (counted from 0)")
        self.epoch, self.step = epoch, step


_NO_BAD_STEP = 2**62


def _raise_if_non_finite(first_bad: torch.Tensor, epoch: int) -> None:
    """Collective: every process learns the earliest bad step of any process, so all stop together
    (one rank stopping alone would leave the others waiting in the next collective)."""
    earliest = all_reduce_min(torch.where(first_bad < 0, torch.full_like(first_bad, _NO_BAD_STEP), first_bad))
    step = int(earliest)
    if step != _NO_BAD_STEP:
        raise NonFiniteLossError(epoch, step)


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``?`` while there is nothing to estimate from)."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunClock:
    """Wall time of a stage of epochs ``first_epoch..last_epoch`` (the run, or an init stage), for
    the elapsed time and estimated times left that the progress lines end with. Read only when a
    line is printed, after the loop has synchronised anyway."""

    def __init__(self, first_epoch: int, last_epoch: int, label: str = "run") -> None:
        self.first_epoch, self.last_epoch, self.label = first_epoch, last_epoch, label
        self.start: float | None = None
        self.epoch_start = 0.0

    def begin_epoch(self) -> None:
        self.epoch_start = time.perf_counter()
        if self.start is None:
            self.start = self.epoch_start

    def progress(self, epoch: int, fraction: float | None) -> str:
        """``elapsed ...  epoch eta ...  <label> eta ...`` with ``fraction`` of epoch ``epoch`` done
        (``None``: unknown). The stage's estimate is its mean time per epoch so far (evaluation
        and checkpoints included), times the epochs left; the epoch's, this epoch's own pace."""
        now = time.perf_counter()
        elapsed = now - (self.start if self.start is not None else now)
        parts = [f"elapsed {format_duration(elapsed)}"]
        if fraction is None:
            return parts[0]
        if fraction < 1:
            in_epoch = now - self.epoch_start
            parts.append(f"epoch eta {format_duration(in_epoch / fraction - in_epoch)}")
        if epoch < self.last_epoch or fraction < 1:
            per_epoch = elapsed / (epoch - self.first_epoch + fraction)
            epochs_left = self.last_epoch - epoch + 1 - fraction
            parts.append(f"{self.label} eta {format_duration(per_epoch * epochs_left)}")
        return "  ".join(parts)


@dataclass
class StepOutput:
    """What a task's training step returns: the loss to minimise, the logits scored for training
    accuracy, and named loss terms to log (``cls``, ``div``, ``kd`` ...), all on the device."""

    loss: torch.Tensor
    logits: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def _to_device(batch: Iterable[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [t.to(device, non_blocking=True) for t in batch]


def train_epoch(
    step_fn: Callable[..., StepOutput],
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    normalize: nn.Module,
    device: torch.device,
    epoch: int,
    print_freq: int = 100,
    log: Callable[[str], None] = print,
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clock: RunClock | None = None,
) -> dict[str, float]:
    """Run one epoch of ``step_fn(images, targets, *extras) -> StepOutput`` with SGD updates.

    Returns averages over every sample seen by every process: ``loss``, ``acc`` and each term,
    plus ``images_per_sec`` and ``seconds``. Raises :class:`NonFiniteLossError` (naming the first
    bad step) when the loss stops being finite. ``precision`` selects autocast and memory layout
    (default: fp32, contiguous); ``scaler`` (float16 autocast) lives as long as the run; ``clock``
    times the stage this epoch belongs to (default: this epoch alone).
    """
    precision = precision or Precision(device)
    clock = clock or RunClock(epoch, epoch)
    clock.begin_epoch()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device)
    seen = torch.zeros((), device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    total_steps = len(loader) if hasattr(loader, "__len__") else -1
    start = time.perf_counter()
    n_local = 0
    for step, batch in enumerate(loader):
        images, targets, *extras = _to_device(batch, device)
        with precision.autocast():
            out = step_fn(precision.prepare_input(normalize(images)), targets, *extras)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            out.loss.backward()
            optimizer.step()
        else:
            scaler.scale(out.loss).backward()
            scaler.step(optimizer)
            scaler.update()

        with torch.no_grad():
            n = targets.numel()
            n_local += n
            for key, value in (("loss", out.loss), *out.terms.items()):
                sums[key] = sums.get(key, torch.zeros((), device=device)) + value.detach().float() * n
            correct += correct_topk(out.logits.detach(), targets)[0]
            seen += n
            bad = ~torch.isfinite(out.loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)

        if (step + 1) % print_freq == 0 or step + 1 == total_steps:
            _raise_if_non_finite(first_bad, epoch)
            rate = n_local / (time.perf_counter() - start)
            fraction = (step + 1) / total_steps if total_steps > 0 else None
            log(
                f"Epoch [{epoch}][{step + 1}/{total_steps}]  loss {float(sums['loss'] / seen):.4f}  "
                f"acc@1 {float(100 * correct / seen):.2f}  {rate:.0f} img/s  {clock.progress(epoch, fraction)}"
            )
    _raise_if_non_finite(first_bad, epoch)
    seconds = time.perf_counter() - start
    keys = sorted(sums)
    packed = all_reduce_sum(torch.stack([sums[k] for k in keys] + [correct, seen]))
    total = float(packed[-1])
    result = {key: float(packed[i]) / total for i, key in enumerate(keys)}
    result["acc"] = 100.0 * float(packed[-2]) / total
    result["images_per_sec"] = total / seconds
    result["seconds"] = seconds
    return result


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: Iterable, normalize: nn.Module, device: torch.device,
    precision: Precision | None = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) and cross-entropy of ``model`` over ``loader``, summed over
    all processes (each test image counted once)."""
    precision = precision or Precision(device)
    was_training = model.training
    model.eval()
    stats = torch.zeros(4, device=device)  # loss sum, top-1 hits, top-5 hits, count
    for batch in loader:
        images, targets = _to_device(batch[:2], device)
        with precision.autocast():
            logits = model(precision.prepare_input(normalize(images)))
        top1, top5 = correct_topk(logits, targets, (1, 5))
        loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        stats += torch.stack([loss, top1.float(), top5.float(), torch.tensor(float(targets.numel()), device=device)])
    model.train(was_training)
    loss_sum, top1, top5, count = all_reduce_sum(stats).tolist()
    if count == 0:
        return {"acc": math.nan, "acc_top5": math.nan, "loss": math.nan, "count": 0}
    return {"acc": 100 * top1 / count, "acc_top5": 100 * top5 / count, "loss": loss_sum / count, "count": int(count)}
