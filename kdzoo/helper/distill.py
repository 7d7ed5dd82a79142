"""Distillation as a training task for ``helper.trainer.fit``: the student, the method's term
(from ``distiller_zoo.registry``) and a frozen teacher, plus the reference's init stage."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdzoo.distiller_zoo.KD import DistillKL
from kdzoo.distiller_zoo.registry import BuildContext, Method, warmup_factor
from kdzoo.models.fusion import fold_batchnorm

from .loops import RunClock, StepOutput, train_epoch
from .precision import Precision
from .trainer import epoch_seed
from .util import seed_everything


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Eval mode, no gradients: the teacher is never trained nor put in train mode."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def fold_teacher_batchnorm(teacher: nn.Module, sample: torch.Tensor, log: Any = print) -> nn.Module:
    """The frozen teacher with its batch norms folded into the convolutions before them
    (``models.fusion``): same outputs up to float rounding, fewer layers to run. A network whose
    folding would change its outputs is returned unfolded, with a note in the log."""
    freeze_teacher(teacher)
    try:
        return fold_batchnorm(teacher, sample)
    except ValueError as err:
        log(f"teacher batch norm left unfolded: {err}")
        return teacher


def probe_shapes(model: nn.Module, sample: torch.Tensor, preact: bool) -> list[torch.Size]:
    """Feature shapes of ``model`` on ``sample`` (batch of 2, as the reference probes), without
    touching its batch-norm statistics."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        feats, _ = model(sample, is_feat=True, preact=preact)
    model.train(was_training)
    return [f.shape for f in feats]


class _TeacherHolder:
    """Keeps the teacher out of the task's submodules: it is not saved in checkpoints, not given
    to the optimizer and not wrapped by DistributedDataParallel."""

    def __init__(self, teacher: nn.Module) -> None:
        self.module = teacher


class DistillTask(nn.Module):
    """``loss = gamma * CE(student) + alpha * KD_T(student, teacher) + beta * L_method``.

    Logged terms: ``cls``, ``div`` and, when the method has a main-stage term, ``kd`` (the
    reference's names). A term may return a dict: its ``'kd'`` entry is weighted by ``beta`` and
    every other entry (already weighted by its own flag, e.g. WCoRD's ``local``) is added as is.
    A logit method's term (``method.logits``) is called as ``term(logit_s, logit_t, targets)``.
    ``logit_stand`` z-scores the logits of the KD term (Sun et al. 2024); the logit methods' own
    terms take it from the flags when they are built.
    With ``warmup_epochs`` W, the ``'kd'`` entry is multiplied by ``min(1, epoch / W)`` (and logged
    so), the epoch (counted from 1) being set by :meth:`set_epoch`.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, method: Method, term: nn.Module | None,
                 gamma: float, alpha: float, beta: float, kd_T: float, logit_stand: bool = False,
                 warmup_epochs: int = 0) -> None:
        super().__init__()
        self.student = student
        self.term = term
        self.criterion_div = DistillKL(kd_T, logit_stand=logit_stand)
        self._teacher = _TeacherHolder(freeze_teacher(teacher))
        self.preact = method.preact
        self.teacher_preact = method.teacher_reads_preact
        self.warmup_epochs = warmup_epochs
        self.term_scale = 1.0  # a Python number: changing it neither syncs nor recompiles anything
        self.use_term = term is not None and method.main_stage_term
        self.term_reads_logits = method.logits
        if term is not None and not method.main_stage_term:
            term.requires_grad_(False)  # used by the init stage only
        self.gamma, self.alpha, self.beta = gamma, alpha, beta

    @property
    def teacher(self) -> nn.Module:
        return self._teacher.module

    def set_epoch(self, epoch: int) -> None:
        """Called by ``helper.trainer.fit`` before each epoch: the warm-up of the method's term."""
        self.term_scale = warmup_factor(epoch, self.warmup_epochs)

    @property
    def eval_model(self) -> nn.Module:
        return self.student

    def teacher_outputs(self, images: torch.Tensor,
                        features: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The teacher's features and logits. inference_mode skips autograd bookkeeping entirely, but
        its outputs cannot be saved for the student's backward pass, so what the step reads is cloned
        into ordinary tensors: the logits, and the features only when ``features`` (KD alone reads
        none of them)."""
        with torch.inference_mode():
            feats, logits = self.teacher(images, is_feat=True, preact=self.teacher_preact)
        return ([f.clone() for f in feats] if features else feats), logits.clone()

    def forward(self, images: torch.Tensor, targets: torch.Tensor, *extras: torch.Tensor) -> StepOutput:
        # Teacher first: its temporaries are freed before the student's graph holds activations,
        # which lowers the peak memory and the step time.
        feat_t, logit_t = self.teacher_outputs(images, features=self.use_term and not self.term_reads_logits)
        feat_s, logit_s = self.student(images, is_feat=True, preact=self.preact)
        loss_cls = F.cross_entropy(logit_s, targets)
        loss_div = self.criterion_div(logit_s, logit_t)
        terms = {"cls": loss_cls, "div": loss_div}
        loss = self.gamma * loss_cls + self.alpha * loss_div
        if self.use_term:
            if self.term_reads_logits:
                out = self.term(logit_s, logit_t, targets)
            else:
                out = self.term(feat_s, feat_t, *extras)
            parts = dict(out) if isinstance(out, dict) else {"kd": out}
            if self.term_scale != 1.0:
                parts["kd"] = self.term_scale * parts["kd"]  # logged warmed up: loss = ... + beta * kd still holds
            for name, value in parts.items():
                loss = loss + (self.beta * value if name == "kd" else value)
            terms.update(parts)
        return StepOutput(loss, logit_s, terms)


class InitTask(nn.Module):
    """The init stage's step: ``method.init.loss`` on both networks' features."""

    def __init__(self, task: DistillTask, method: Method) -> None:
        super().__init__()
        self.task = task
        self.init = method.init

    def forward(self, images: torch.Tensor, targets: torch.Tensor, *extras: torch.Tensor) -> StepOutput:
        feat_t, _ = self.task.teacher_outputs(images)
        feat_s, logit_s = self.task.student(images, is_feat=True, preact=self.task.preact)
        loss = self.init.loss(self.task.term, feat_s, feat_t)
        return StepOutput(loss, logit_s, {"init": loss})


# Init-stage epochs draw their randomness as epochs INIT_EPOCH_OFFSET + e, apart from the main stage's.
INIT_EPOCH_OFFSET = 1_000_000


def _unique_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())


def run_init_stage(task: DistillTask, method: Method, loader: Any, normalize: nn.Module, opt: Any,
                   env: Any, seed: int, log: Any = print, precision: Precision | None = None) -> None:
    """Train ``method.init.modules`` for ``opt.init_epochs`` epochs (SGD with the main stage's lr,
    momentum and weight decay, as the reference does), then run ``method.init.finish``."""
    init = method.init
    modules = init.modules(task.student, task.term)
    was_frozen = {id(p): p.requires_grad for p in task.parameters()}
    was_training = task.training
    # As the reference: only the init modules train (and update batch-norm statistics); the rest
    # of the student runs in eval mode.
    task.eval()
    for m in modules:
        m.requires_grad_(True)
        m.train()
    optimizer = torch.optim.SGD(_unique_parameters(modules), lr=opt.learning_rate, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    step: nn.Module = InitTask(task, method).to(env.device)
    scaler = precision.grad_scaler() if precision is not None else None
    if env.distributed:
        # The classifier and any head outside the init loss get no gradient here.
        step = nn.parallel.DistributedDataParallel(
            step, device_ids=[env.device.index] if env.device.type == "cuda" else None, find_unused_parameters=True)
    log(f"init stage of {method.name}: {opt.init_epochs} epochs (--init_epochs) before distillation")
    clock = RunClock(1, opt.init_epochs, label="init stage")
    for epoch in range(1, opt.init_epochs + 1):
        data_epoch = INIT_EPOCH_OFFSET + epoch
        seed_everything(epoch_seed(seed, data_epoch, env.rank))
        loader.sampler.set_epoch(data_epoch)
        loader.dataset.set_epoch(data_epoch, seed)
        stats = train_epoch(step, loader, optimizer, normalize, env.device, epoch, opt.print_freq,
                            lambda line: log("init " + line), precision, scaler, clock)
        log(f"init epoch {epoch}/{opt.init_epochs}  loss {stats['loss']:.4f}  {stats['seconds']:.1f}s  "
            f"{clock.progress(epoch, 1.0)}")
    for p in task.parameters():
        p.requires_grad_(was_frozen[id(p)])
    task.train(was_training)
    if init.finish is not None:
        init.finish(task.term)


def build_term(method: Method, student: nn.Module, teacher: nn.Module, sample: torch.Tensor, opt: Any,
               n_data: int) -> nn.Module | None:
    """The method's ``L_method`` module, built from the feature shapes of both networks (and, for
    OFD, the teacher's batch norms: call it before folding them)."""
    ctx = BuildContext(probe_shapes(student, sample, method.preact),
                       probe_shapes(teacher, sample, method.teacher_reads_preact), opt, n_data, teacher)
    return method.build(ctx)
