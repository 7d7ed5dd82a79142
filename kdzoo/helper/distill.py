"""Distillation as a training task for ``helper.trainer.fit``: the student, the method's term
(from ``distiller_zoo.registry``) and a frozen teacher, plus the reference's init stage."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdzoo.distiller_zoo.KD import DistillKL
from kdzoo.distiller_zoo.registry import BuildContext, Method, warmup_factor
from kdzoo.models.fusion import fold_batchnorm

from .loops import RunClock, StepOutput, train_epoch
from .precision import Precision
from .trainer import epoch_seed
from .util import as_list, seed_everything


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
    """Keeps the teachers out of the task's submodules: they are not saved in checkpoints, not given
    to the optimizer and not wrapped by DistributedDataParallel."""

    def __init__(self, teachers: Sequence[nn.Module]) -> None:
        self.modules = list(teachers)


class TeacherEnsemble(nn.Module):
    """The teachers as one classifier: ``log(mean_k softmax(z^k))`` from one input per teacher (a
    tuple, as ``dataset.views.InputViews`` gives, or one tensor for all), for evaluating the
    ensemble. The teachers are held outside its submodules, so evaluating it never changes their
    mode."""

    def __init__(self, teachers: Sequence[nn.Module]) -> None:
        super().__init__()
        self._teachers = _TeacherHolder(teachers)

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        teachers = self._teachers.modules
        inputs = [images] * len(teachers) if isinstance(images, torch.Tensor) else list(images)
        probs = torch.stack([F.softmax(t(x), dim=1) for t, x in zip(teachers, inputs)]).mean(dim=0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


class TeacherTerms(nn.ModuleList):
    """One method term per teacher (each with its own heads and, for the contrastive methods, its
    own memory); :class:`DistillTask` sums their losses. A run with one teacher holds that teacher's
    term itself, so its checkpoints keep the single-teacher layout."""


def split_inputs(images: torch.Tensor | Sequence[torch.Tensor], n_teachers: int
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(student input, one input per teacher)`` from what the loop passes: one tensor that every
    network reads, or a tuple ``(student, teacher_1, ..., teacher_n)`` of views
    (``dataset.views.InputViews``)."""
    if isinstance(images, torch.Tensor):
        return images, [images] * n_teachers
    if len(images) != n_teachers + 1:
        raise ValueError(f"expected the student's input and {n_teachers} teacher input(s), got {len(images)} tensors")
    return images[0], list(images[1:])


class DistillTask(nn.Module):
    """``loss = gamma * CE(student) + alpha * KD_T(student, teachers) + beta * sum_k L_method(student, teacher_k)``.

    Logged terms: ``cls``, ``div`` and, when the method has a main-stage term, ``kd`` (the
    reference's names). A term may return a dict: its ``'kd'`` entry is weighted by ``beta`` and
    every other entry (already weighted by its own flag, e.g. WCoRD's ``local``) is added as is.
    A logit method's term (``method.logits``) is called as ``term(logit_s, logit_t, targets)``.
    ``logit_stand`` z-scores the logits of the KD term (Sun et al. 2024); the logit methods' own
    terms take it from the flags when they are built.
    With ``warmup_epochs`` W, the ``'kd'`` entry is multiplied by ``min(1, epoch / W)`` (and logged
    so), the epoch (counted from 1) being set by :meth:`set_epoch`.

    Several teachers (``teacher`` a list, ``term`` a list with one term per teacher, as
    ``build_term`` makes them): the KD term reads the mean of the teachers' softened probabilities,
    and the method's terms are summed over the teachers (the CRD authors' recipe for an ensemble).
    A term whose weight is 0 is logged but not added to the loss; with ``gamma = alpha = 0`` and a
    feature method, the student's classifier gets no gradient at all and is frozen
    (``trains_classifier`` is False): label-free distillation, judged by a linear probe.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | Sequence[nn.Module], method: Method,
                 term: nn.Module | Sequence[nn.Module | None] | None, gamma: float, alpha: float, beta: float,
                 kd_T: float, logit_stand: bool = False, warmup_epochs: int = 0) -> None:
        super().__init__()
        teachers = as_list(teacher)
        terms = as_list(term) if isinstance(term, (list, tuple)) else [term] * len(teachers)
        if len(terms) != len(teachers):
            raise ValueError(f"{len(teachers)} teachers need one method term each, got {len(terms)}")
        self.student = student
        has_term = terms[0] is not None
        self.term = (terms[0] if len(terms) == 1 else TeacherTerms(terms)) if has_term else None
        self.criterion_div = DistillKL(kd_T, logit_stand=logit_stand)
        self._teachers = _TeacherHolder([freeze_teacher(t) for t in teachers])
        self.preact = method.preact
        self.teacher_preact = method.teacher_reads_preact
        self.warmup_epochs = warmup_epochs
        self.term_scale = 1.0  # a Python number: changing it neither syncs nor recompiles anything
        self.use_term = has_term and method.main_stage_term
        self.term_reads_logits = method.logits
        if has_term and not method.main_stage_term:
            self.term.requires_grad_(False)  # used by the init stage only
        self.gamma, self.alpha, self.beta = gamma, alpha, beta
        self.trains_classifier = bool(gamma or alpha or (self.use_term and method.logits))
        if not self.trains_classifier:
            # Nothing reaches it; frozen, it is not given to the optimizer (whose weight decay would
            # otherwise shrink it) nor expected to receive gradients by DistributedDataParallel.
            student.get_classifier().requires_grad_(False)

    @property
    def teacher(self) -> nn.Module:
        """The first (with one teacher: the) teacher."""
        return self._teachers.modules[0]

    @property
    def teachers(self) -> list[nn.Module]:
        return self._teachers.modules

    @property
    def terms(self) -> list[nn.Module]:
        """The method's term of each teacher, in the teachers' order (empty without a term)."""
        if self.term is None:
            return []
        return list(self.term) if isinstance(self.term, TeacherTerms) else [self.term]

    def set_epoch(self, epoch: int) -> None:
        """Called by ``helper.trainer.fit`` before each epoch: the warm-up of the method's term."""
        self.term_scale = warmup_factor(epoch, self.warmup_epochs)

    @property
    def eval_model(self) -> nn.Module:
        return self.student

    def teacher_outputs(self, images: torch.Tensor, features: bool = True, teacher: nn.Module | None = None
                        ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """A teacher's (default: the first's) features and logits. inference_mode skips autograd
        bookkeeping entirely, but its outputs cannot be saved for the student's backward pass, so
        what the step reads is cloned into ordinary tensors: the logits, and the features only when
        ``features`` (KD alone reads none of them)."""
        teacher = self.teacher if teacher is None else teacher
        with torch.inference_mode():
            feats, logits = teacher(images, is_feat=True, preact=self.teacher_preact)
        return ([f.clone() for f in feats] if features else feats), logits.clone()

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor,
                *extras: torch.Tensor) -> StepOutput:
        x_s, x_ts = split_inputs(images, len(self.teachers))
        # Teachers first: their temporaries are freed before the student's graph holds activations,
        # which lowers the peak memory and the step time.
        read_features = self.use_term and not self.term_reads_logits
        outputs = [self.teacher_outputs(x, read_features, t) for t, x in zip(self.teachers, x_ts)]
        feat_s, logit_s = self.student(x_s, is_feat=True, preact=self.preact)
        logits_t = [logit for _, logit in outputs]
        loss_cls = F.cross_entropy(logit_s, targets)
        loss_div = self.criterion_div(logit_s, logits_t[0] if len(logits_t) == 1 else logits_t)
        terms = {"cls": loss_cls, "div": loss_div}
        loss = loss_cls.new_zeros(())
        if self.gamma:
            loss = loss + self.gamma * loss_cls
        if self.alpha:
            loss = loss + self.alpha * loss_div
        if self.use_term:
            parts: dict[str, torch.Tensor] = {}
            for term, (feat_t, logit_t) in zip(self.terms, outputs):
                out = term(logit_s, logit_t, targets) if self.term_reads_logits else term(feat_s, feat_t, *extras)
                for name, value in (out.items() if isinstance(out, dict) else [("kd", out)]):
                    parts[name] = parts[name] + value if name in parts else value
            if self.term_scale != 1.0:
                parts["kd"] = self.term_scale * parts["kd"]  # logged warmed up: loss = ... + beta * kd still holds
            for name, value in parts.items():
                loss = loss + (self.beta * value if name == "kd" else value)
            terms.update(parts)
        return StepOutput(loss, logit_s, terms)


class InitTask(nn.Module):
    """The init stage's step: ``method.init.loss`` on both networks' features, summed over the
    teachers (each with its own term)."""

    def __init__(self, task: DistillTask, method: Method) -> None:
        super().__init__()
        self.task = task
        self.init = method.init

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor,
                *extras: torch.Tensor) -> StepOutput:
        x_s, x_ts = split_inputs(images, len(self.task.teachers))
        feats_t = [self.task.teacher_outputs(x, teacher=t)[0] for t, x in zip(self.task.teachers, x_ts)]
        feat_s, logit_s = self.task.student(x_s, is_feat=True, preact=self.task.preact)
        loss = sum(self.init.loss(term, feat_s, feat_t) for term, feat_t in zip(self.task.terms, feats_t))
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
    modules = [m for term in task.terms for m in init.modules(task.student, term)]
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
    finish_init_stage(task, method)


def finish_init_stage(task: DistillTask, method: Method) -> None:
    """What follows the init stage (e.g. freezing FT's paraphrasers), for every teacher's term; also
    run on resume, whose checkpoint already holds the stage's result."""
    if method.init is not None and method.init.finish is not None:
        for term in task.terms:
            method.init.finish(term)


def build_term(method: Method, student: nn.Module, teacher: nn.Module, sample: torch.Tensor, opt: Any,
               n_data: int, teacher_sample: torch.Tensor | None = None) -> nn.Module | None:
    """The method's ``L_method`` module, built from the feature shapes of both networks (and, for
    OFD, the teacher's batch norms: call it before folding them). ``teacher_sample`` is the probe
    batch of a teacher that reads another input view than the student (default: ``sample``)."""
    teacher_sample = sample if teacher_sample is None else teacher_sample
    ctx = BuildContext(probe_shapes(student, sample, method.preact),
                       probe_shapes(teacher, teacher_sample, method.teacher_reads_preact), opt, n_data, teacher)
    return method.build(ctx)
