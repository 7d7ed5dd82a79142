"""The method table: for every ``--distill`` choice, which features it reads, which modules it
builds from their shapes, whether it has an init stage, and its paper weights.

``train_student.py`` and the loop read only this table; adding a method means writing its loss
module and adding one row here.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from kdzoo.crd import CRDLoss, RRDLoss, WCoRDLoss

from .AB import ABLoss, Connector
from .AT import Attention
from .CC import Correlation, LinearEmbed
from .DIST import DIST
from .DKD import DKD
from .FitNet import ConvReg, HintLoss
from .FSP import FSP
from .FT import FactorTransfer, Paraphraser, Translator
from .KDSVD import KDSVD
from .NST import NSTLoss
from .OFD import OFDLoss, ofd_margin
from .PKT import PKT
from .ReviewKD import HCL, ReviewKD, review_levels
from .RKD import RKDLoss
from .SP import Similarity
from .VID import VIDLoss

Features = Sequence[torch.Tensor]
Selector = Callable[[Features], Any]


@dataclass(frozen=True)
class BuildContext:
    """What a method's modules are built from: feature shapes of a probe batch (with the batch
    dimension, as the reference passes them), the flags, the training-set size and the teacher as
    loaded (before any batch-norm folding: OFD reads its batch norms)."""

    s_shapes: list[torch.Size]
    t_shapes: list[torch.Size]
    opt: Any
    n_data: int
    teacher: nn.Module | None = None


class FeatureTerm(nn.Module):
    """``L_method`` computed as ``criterion(adapt_s(select(feat_s)), adapt_t(select(feat_t)))``;
    list-valued criteria (one loss per layer) are summed, as the reference does.

    ``adapt_s`` is trained with the student; ``adapt_t`` sees only teacher features.
    """

    def __init__(
        self, select: Selector, criterion: nn.Module, adapt_s: nn.Module | None = None,
        adapt_t: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.select = select
        self.criterion = criterion
        self.adapt_s = adapt_s
        self.adapt_t = adapt_t

    def forward(self, feat_s: Features, feat_t: Features, *extras: torch.Tensor) -> torch.Tensor:
        g_s, g_t = self.select(feat_s), self.select(feat_t)
        if self.adapt_s is not None:
            g_s = self.adapt_s(g_s)
        if self.adapt_t is not None:
            g_t = self.adapt_t(g_t)
        loss = self.criterion(g_s, g_t)
        return sum(loss) if isinstance(loss, (list, tuple)) else loss


class PairwiseLosses(nn.ModuleList):
    """One loss module per feature pair (VID builds a regressor per layer); returns the list."""

    def forward(self, g_s: Features, g_t: Features) -> list[torch.Tensor]:
        return [loss(s, t) for loss, s, t in zip(self, g_s, g_t)]


class ParaphraserFactor(nn.Module):
    """The teacher side of FT: the frozen paraphraser's factor of the teacher map."""

    def __init__(self, paraphraser: Paraphraser) -> None:
        super().__init__()
        self.paraphraser = paraphraser

    def forward(self, f_t: torch.Tensor) -> torch.Tensor:
        return self.paraphraser(f_t, is_factor=True)


@dataclass(frozen=True)
class InitStage:
    """A stage of ``--init_epochs`` epochs run before distillation (the reference's ``init``):
    ``modules(student, term)`` are trained on ``loss(term, feat_s, feat_t)``; ``finish(term)``
    runs afterwards (e.g. freezing FT's paraphraser)."""

    modules: Callable[[nn.Module, nn.Module], list[nn.Module]]
    loss: Callable[[nn.Module, Features, Features], torch.Tensor]
    finish: Callable[[nn.Module], None] | None = None


@dataclass(frozen=True)
class Method:
    """One row of the table.

    ``build`` returns the ``L_method`` module (``None`` when the main stage has no such term);
    ``weights`` are the paper's ``(-r gamma, -a alpha, -b beta)``, used when the flags are omitted;
    ``preact`` asks both networks for pre-activation features, ``teacher_preact`` the teacher
    only; ``warmup`` maps ``--dataset`` to the epochs over which the term's weight ramps up
    linearly, ``beta * min(1, epoch / warmup)`` (none when absent); ``view`` is the training-set view
    the method needs (``plain``, ``instance`` or ``sample``), or a function of the flags that says
    which; ``main_stage_term=False`` means the
    term only drives the init stage (AB and FSP: afterwards the student learns from CE and KD).
    ``logits=True``: the term reads the logits and targets, ``term(logit_s, logit_t, target)``,
    instead of the features. ``options`` are the paper values of the method's own flags (and of
    ``kd_T``, whose default is :data:`KD_TEMPERATURE`); ``pairs`` overrides weights or options for
    a ``(teacher, student)`` pair where the authors tuned them per pair. :meth:`paper_settings`
    merges the three.
    """

    name: str
    paper: str
    build: Callable[[BuildContext], nn.Module | None]
    weights: tuple[float, float, float]
    preact: bool = False
    view: str | Callable[[Any], str] = "plain"
    init: InitStage | None = None
    main_stage_term: bool = True
    teacher_preact: bool = False
    warmup: Mapping[str, int] = field(default_factory=dict)
    logits: bool = False
    options: Mapping[str, float] = field(default_factory=dict)
    pairs: Mapping[tuple[str, str], Mapping[str, float]] = field(default_factory=dict)

    def data_view(self, opt: Any) -> str:
        return self.view(opt) if callable(self.view) else self.view

    @property
    def teacher_reads_preact(self) -> bool:
        return self.preact or self.teacher_preact

    def warmup_epochs(self, dataset: str) -> int:
        return self.warmup.get(dataset, 0)

    @property
    def has_main_term(self) -> bool:
        """Whether the method adds a term to the distillation loss (KD alone has none; AB and FSP
        use theirs in the init stage only)."""
        return self.build is not _none and self.main_stage_term

    def paper_settings(self, teacher: str, student: str) -> dict[str, float]:
        """The value of every flag the paper fixes for this pair: ``gamma``, ``alpha``, ``beta``,
        ``kd_T`` and the method's options, with the pair's overrides applied."""
        gamma, alpha, beta = self.weights
        return {"gamma": gamma, "alpha": alpha, "beta": beta, "kd_T": KD_TEMPERATURE, **self.options,
                **self.pairs.get((teacher, student), {})}


# The temperature of Hinton's KD term in the CRD paper's tables (and of every logit method's term
# unless its row says otherwise).
KD_TEMPERATURE = 4.0


def _stages(feats: Features) -> list[torch.Tensor]:
    return list(feats[1:-1])


def _maps(feats: Features) -> list[torch.Tensor]:
    return list(feats[:-1])


def _last_map(feats: Features) -> torch.Tensor:
    return feats[-2]


def _last_map_list(feats: Features) -> list[torch.Tensor]:
    return [feats[-2]]


def _pooled(feats: Features) -> torch.Tensor:
    return feats[-1]


class _Layer:
    """Selects ``feats[index]`` (a picklable callable, unlike a lambda)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, feats: Features) -> torch.Tensor:
        return feats[self.index]


def _build_hint(ctx: BuildContext) -> nn.Module:
    layer = ctx.opt.hint_layer
    for network, shapes in (("student", ctx.s_shapes), ("teacher", ctx.t_shapes)):
        if not -len(shapes) < layer < len(shapes) - 1:
            raise ValueError(
                f"--hint_layer {layer} is out of range for the {network}: it has {len(shapes)} features, the "
                f"last being the pooled vector; choose a feature map 0..{len(shapes) - 2}"
            )
    return FeatureTerm(_Layer(layer), HintLoss(), adapt_s=ConvReg(ctx.s_shapes[layer], ctx.t_shapes[layer]))


def _build_correlation(ctx: BuildContext) -> nn.Module:
    dim = ctx.opt.feat_dim
    return FeatureTerm(_pooled, Correlation(), adapt_s=LinearEmbed(ctx.s_shapes[-1][1], dim),
                       adapt_t=LinearEmbed(ctx.t_shapes[-1][1], dim))


def _build_vid(ctx: BuildContext) -> nn.Module:
    pairs = zip(ctx.s_shapes[1:-1], ctx.t_shapes[1:-1])
    return FeatureTerm(_stages, PairwiseLosses(VIDLoss(s[1], t[1], t[1]) for s, t in pairs))


def _build_abound(ctx: BuildContext) -> nn.Module:
    stages_s, stages_t = ctx.s_shapes[1:-1], ctx.t_shapes[1:-1]
    return FeatureTerm(_stages, ABLoss(len(stages_s)), adapt_s=Connector(stages_s, stages_t))


def _build_factor(ctx: BuildContext) -> nn.Module:
    for network, shape in (("student", ctx.s_shapes[-2]), ("teacher", ctx.t_shapes[-2])):
        if shape[2] * shape[3] == 1:
            # FT compares normalised spatial maps: a single position gives the constant 1 on both sides.
            raise ValueError(
                f"factor (FT) compares spatial maps, but the {network}'s last map is 1x1 ({tuple(shape)}), which "
                "makes its loss constant; use larger inputs (ImageNet ResNets: --image_size 64 or more)"
            )
    paraphraser = Paraphraser(ctx.t_shapes[-2])
    return FeatureTerm(_last_map, FactorTransfer(), adapt_s=Translator(ctx.s_shapes[-2], ctx.t_shapes[-2]),
                       adapt_t=ParaphraserFactor(paraphraser))


def _build_fsp(ctx: BuildContext) -> nn.Module:
    s_channels = [s[1] for s in ctx.s_shapes[:-1]]
    t_channels = [t[1] for t in ctx.t_shapes[:-1]]
    if s_channels != t_channels:
        raise ValueError(
            f"FSP needs student and teacher maps with identical channel lists; the student has {s_channels}, "
            f"the teacher {t_channels} (the reference marks such pairs N/A)"
        )
    return FeatureTerm(_maps, FSP(ctx.s_shapes[:-1], ctx.t_shapes[:-1]))


class ReviewTerm(nn.Module):
    """ReviewKD: the student's levels (stages + pooled) fused by :class:`ReviewKD`, compared with
    the teacher's pre-activation levels by the hierarchical context loss."""

    def __init__(self, fusion: ReviewKD) -> None:
        super().__init__()
        self.fusion = fusion
        self.criterion = HCL()

    def forward(self, feat_s: Features, feat_t: Features, *unused: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.fusion(review_levels(feat_s)), review_levels(feat_t))


def _review_shapes(shapes: Sequence[torch.Size]) -> list[tuple[int, ...]]:
    pooled = shapes[-1]
    return [tuple(s) for s in shapes[1:-1]] + [(*pooled, 1, 1)]


def _build_reviewkd(ctx: BuildContext) -> nn.Module:
    return ReviewTerm(ReviewKD(_review_shapes(ctx.s_shapes), _review_shapes(ctx.t_shapes)))


def _build_ofd(ctx: BuildContext) -> nn.Module:
    if ctx.teacher is None:
        raise ValueError("ofd reads its margins from the teacher's batch norms: build it with the teacher "
                         "(helper.distill.build_term passes it)")
    margins = [ofd_margin(bn) for bn in ctx.teacher.get_bn_before_relu()]
    s_channels = [s[1] for s in ctx.s_shapes[1:-1]]
    t_channels = [t[1] for t in ctx.t_shapes[1:-1]]
    if len(margins) != len(t_channels):
        raise ValueError(f"the teacher has {len(t_channels)} stages but get_bn_before_relu() gives {len(margins)} "
                         "batch norms; OFD needs one per stage")
    return FeatureTerm(_stages, OFDLoss(s_channels, t_channels, margins))


def _build_kdsvd(ctx: BuildContext) -> nn.Module:
    s_channels = [s[1] for s in ctx.s_shapes[1:-1]]
    t_channels = [t[1] for t in ctx.t_shapes[1:-1]]
    if s_channels != t_channels:
        raise ValueError(
            f"kdsvd compares channel-indexed singular vectors stage by stage and needs identical stage channels; "
            f"the student has {s_channels}, the teacher {t_channels}"
        )
    return FeatureTerm(_stages, KDSVD())


def _term_loss(term: nn.Module, feat_s: Features, feat_t: Features) -> torch.Tensor:
    """AB and FSP train their init stage on the term itself (which the main stage then drops)."""
    return term(feat_s, feat_t)


def _factor_init_loss(term: nn.Module, feat_s: Features, feat_t: Features) -> torch.Tensor:
    target = feat_t[-2]
    _, reconstruction = term.adapt_t.paraphraser(target)
    return nn.functional.mse_loss(reconstruction, target)


def _freeze_paraphraser(term: nn.Module) -> None:
    term.adapt_t.paraphraser.freeze()


class CRDTerm(nn.Module):
    """CRD on the pooled features; ``index``/``contrast_idx`` come from the training set's view."""

    def __init__(self, loss: CRDLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, feat_s: Features, feat_t: Features, index: torch.Tensor | None = None,
                contrast_idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss(feat_s[-1], feat_t[-1], index, contrast_idx)


class RRDTerm(nn.Module):
    """RRD on the pooled features (it needs no dataset indices)."""

    def __init__(self, loss: RRDLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, feat_s: Features, feat_t: Features, *unused: torch.Tensor) -> torch.Tensor:
        return self.loss(feat_s[-1], feat_t[-1])


class WCoRDTerm(nn.Module):
    """WCoRD's two parts: the global (CRD-form) term, weighted by beta as ``kd``, and the local
    optimal-transport term, weighted here by ``--lambda_local``."""

    def __init__(self, loss: WCoRDLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, feat_s: Features, feat_t: Features, index: torch.Tensor | None = None,
                contrast_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        loss_global, loss_local = self.loss(feat_s[-1], feat_t[-1], index, contrast_idx)
        return {"kd": loss_global, "local": self.loss.lambda_local * loss_local}


def _contrastive_options(ctx: BuildContext) -> argparse.Namespace:
    """The flags plus what the contrastive losses read from the shapes and the data."""
    return argparse.Namespace(**{**vars(ctx.opt), "s_dim": ctx.s_shapes[-1][1], "t_dim": ctx.t_shapes[-1][1],
                                 "n_data": ctx.n_data})


def _build_crd(ctx: BuildContext) -> nn.Module:
    return CRDTerm(CRDLoss(_contrastive_options(ctx)))


def _build_rrd(ctx: BuildContext) -> nn.Module:
    return RRDTerm(RRDLoss(_contrastive_options(ctx)))


def _build_wcord(ctx: BuildContext) -> nn.Module:
    return WCoRDTerm(WCoRDLoss(_contrastive_options(ctx)))


def _crd_view(opt: Any) -> str:
    # The bank scores the dataset's sampled negatives; the queue needs only the batch.
    return "sample" if getattr(opt, "crd_memory", "bank") == "bank" else "instance"


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """``min(epoch / warmup_epochs, 1)``: the linear warm-up of DKD and ReviewKD (epochs count from 1, so the first
    epoch already trains with ``1 / warmup_epochs``); 1 throughout when ``warmup_epochs`` is 0."""
    return min(epoch / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0


class LogitTerm(nn.Module):
    """A loss on the logits as the method's term: ``criterion(logit_s, logit_t[, target])``. Its
    warm-up, like every method's, is applied by ``DistillTask`` (``Method.warmup``)."""

    def __init__(self, criterion: nn.Module, with_target: bool) -> None:
        super().__init__()
        self.criterion = criterion
        self.with_target = with_target

    def forward(self, logit_s: torch.Tensor, logit_t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(logit_s, logit_t, target) if self.with_target else self.criterion(logit_s, logit_t)


def _build_dkd(ctx: BuildContext) -> nn.Module:
    opt = ctx.opt
    dkd = DKD(opt.dkd_alpha, opt.dkd_beta, opt.kd_T, logit_stand=opt.logit_stand)
    return LogitTerm(dkd, with_target=True)


def _build_dist(ctx: BuildContext) -> nn.Module:
    opt = ctx.opt
    dist = DIST(opt.dist_beta, opt.dist_gamma, opt.kd_T, logit_stand=opt.logit_stand)
    return LogitTerm(dist, with_target=False)


# ReviewKD's -b where its authors' CIFAR-100 script departs from 5; resnet110 -> resnet20 is not in
# that script and takes the value of resnet110's other student.
_REVIEWKD_PAIRS: dict[tuple[str, str], dict[str, float]] = {
    ("resnet56", "resnet20"): {"beta": 0.6}, ("resnet110", "resnet20"): {"beta": 1.0},
    ("resnet110", "resnet32"): {"beta": 1.0}, ("resnet32x4", "ShuffleV2"): {"beta": 8.0},
}

# DKD's beta (the NCKD weight) per teacher/student pair, from the authors' configurations
# (mdistiller configs/cifar100/dkd/*.yaml and configs/imagenet/r34_r18/dkd.yaml); every other
# pair keeps their default 8. On ImageNet the authors also use T = 1 and a one-epoch warm-up.
_DKD_PAIRS: dict[tuple[str, str], dict[str, float]] = {
    ("resnet56", "resnet20"): {"dkd_beta": 2.0},
    ("resnet110", "resnet32"): {"dkd_beta": 2.0},
    # Not in the DKD paper: 2 as for the other ResNet-20/32 students (the logit-standardisation
    # authors' DKD runs of this pair also use 2).
    ("resnet110", "resnet20"): {"dkd_beta": 2.0},
    ("wrn_40_2", "wrn_16_2"): {"dkd_beta": 6.0},
    ("wrn_40_2", "wrn_40_1"): {"dkd_beta": 6.0},
    ("vgg13", "vgg8"): {"dkd_beta": 6.0},
    ("vgg13", "MobileNetV2"): {"dkd_beta": 6.0},
    ("imagenet_resnet34", "imagenet_resnet18"): {"dkd_beta": 0.5, "kd_T": 1.0},
}
# DIST: tau = 4 on CIFAR-100 (the authors' dist_cifar config), 1 on ImageNet.
_DIST_PAIRS: dict[tuple[str, str], dict[str, float]] = {
    ("imagenet_resnet34", "imagenet_resnet18"): {"kd_T": 1.0},
}


def _simple(select: Selector, criterion: type[nn.Module], **kwargs: Any) -> Callable[[BuildContext], nn.Module]:
    def build(ctx: BuildContext) -> nn.Module:
        return FeatureTerm(select, criterion(**kwargs))
    return build


def _none(ctx: BuildContext) -> None:
    return None


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("kd", "Hinton et al. 2015, Distilling the Knowledge in a Neural Network", _none, (0.1, 0.9, 0.0)),
    Method("hint", "Romero et al. 2015, FitNets", _build_hint, (1.0, 0.0, 100.0)),
    Method("attention", "Zagoruyko & Komodakis 2017, Attention Transfer", _simple(_stages, Attention),
           (1.0, 0.0, 1000.0)),
    Method("similarity", "Tung & Mori 2019, Similarity-Preserving KD", _simple(_last_map_list, Similarity),
           (1.0, 0.0, 3000.0)),
    Method("correlation", "Peng et al. 2019, Correlation Congruence", _build_correlation, (1.0, 0.0, 0.02)),
    Method("vid", "Ahn et al. 2019, Variational Information Distillation", _build_vid, (1.0, 0.0, 1.0)),
    Method("rkd", "Park et al. 2019, Relational KD", _simple(_pooled, RKDLoss), (1.0, 0.0, 1.0)),
    Method("pkt", "Passalis & Tefas 2018, Probabilistic Knowledge Transfer", _simple(_pooled, PKT),
           (1.0, 0.0, 30000.0)),
    Method("abound", "Heo et al. 2019, Activation Boundaries", _build_abound, (1.0, 0.0, 1.0), preact=True,
           init=InitStage(lambda student, term: [student.get_feat_modules(), term.adapt_s], _term_loss),
           main_stage_term=False),
    Method("factor", "Kim et al. 2018, Paraphrasing Complex Network (Factor Transfer)", _build_factor,
           (1.0, 0.0, 200.0),
           init=InitStage(lambda student, term: [term.adapt_t.paraphraser], _factor_init_loss, _freeze_paraphraser)),
    Method("fsp", "Yim et al. 2017, A Gift from Knowledge Distillation (FSP)", _build_fsp, (1.0, 0.0, 50.0),
           init=InitStage(lambda student, term: [student.get_feat_modules()], _term_loss),
           main_stage_term=False),
    Method("nst", "Huang & Wang 2017, Neuron Selectivity Transfer", _simple(_stages, NSTLoss), (1.0, 0.0, 50.0)),
    Method("crd", "Tian, Krishnan & Isola 2020, Contrastive Representation Distillation", _build_crd,
           (1.0, 0.0, 0.8), view=_crd_view),
    Method("rrd", "Giakoumoglou & Stathaki 2024, Relational Representation Distillation", _build_rrd,
           (1.0, 0.0, 1.0)),
    Method("wcord", "Chen et al. 2021, Wasserstein Contrastive Representation Distillation", _build_wcord,
           (1.0, 0.0, 0.8), view=_crd_view),
    # mdistiller / the authors: CIFAR-100 weight 5 (per pair: _REVIEWKD_PAIRS),
    # ImageNet 1 (ResNet34 -> ResNet18) or 8 (ResNet50 -> MobileNet); warm-up 20 epochs, ImageNet 1.
    Method("reviewkd", "Chen et al. 2021, Distilling Knowledge via Knowledge Review", _build_reviewkd,
           (1.0, 0.0, 5.0), teacher_preact=True, warmup={"cifar100": 20, "imagenet": 1}, pairs=_REVIEWKD_PAIRS),
    # Weight 1e-3 on CIFAR-100 (the authors' loss / B / 1000); 1e-4 on ImageNet.
    Method("ofd", "Heo et al. 2019, A Comprehensive Overhaul of Feature Distillation", _build_ofd,
           (1.0, 0.0, 0.001), preact=True),
    Method("kdsvd", "Lee et al. 2018, Self-supervised Knowledge Distillation using Singular Value Decomposition",
           _build_kdsvd, (1.0, 0.0, 1.0)),
    # DKD's own alpha/beta weight TCKD/NCKD inside the term; -b weights the whole term (the
    # logit-standardisation recipe raises it to 9).
    Method("dkd", "Zhao et al. 2022, Decoupled Knowledge Distillation", _build_dkd, (1.0, 0.0, 1.0), logits=True,
           options={"dkd_alpha": 1.0, "dkd_beta": 8.0}, pairs=_DKD_PAIRS, warmup={"cifar100": 20, "imagenet": 1}),
    Method("dist", "Huang et al. 2022, Knowledge Distillation from A Stronger Teacher (DIST)", _build_dist,
           (1.0, 0.0, 2.0), logits=True, options={"dist_beta": 1.0, "dist_gamma": 1.0}, pairs=_DIST_PAIRS),
]}
