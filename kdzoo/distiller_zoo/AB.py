"""Activation-boundary distillation (Heo et al., AAAI 2019): "Knowledge Transfer via Distillation
of Activation Boundaries Formed by Hidden Neurons"."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .FitNet import ConvReg


class ABLoss(nn.Module):
    """AB: a hinge-like squared loss that makes the student's pre-activations fall on the same
    side of zero as the teacher's, with margin ``m``::

        l(s, t) = sum[ (s + m)^2 * 1(s > -m and t <= 0) + (s - m)^2 * 1(s <= m and t > 0) ]

    Expects the pre-ReLU stage outputs (``feats[1:-1]`` from ``model(x, is_feat=True,
    preact=True)``); the student maps go through a :class:`Connector` first so their shapes match
    the teacher's. Layer ``l`` of ``L`` (0-based) is weighted ``2^(l - L + 1)`` (the deepest gets
    1), and each term is divided by the batch size and scaled by 3/1000.

    Returns the list of per-layer losses; sum it. In the reference protocol AB is only used in an
    init stage (connector + student feature modules trained on ``sum(ABLoss(...))``), after which
    the main stage trains with CE + KD and no AB term.
    """

    def __init__(self, feat_num: int, margin: float = 1.0) -> None:
        super().__init__()
        self.feat_num = feat_num
        self.w = [2 ** (i - feat_num + 1) for i in range(feat_num)]
        self.margin = margin

    def forward(self, g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(g_s) != len(g_t) or len(g_s) != self.feat_num:
            raise ValueError(
                f"ABLoss was built for {self.feat_num} layers but got {len(g_s)} student and "
                f"{len(g_t)} teacher feature maps; the layer weights 2^(l-L+1) need them to agree"
            )
        bsz = g_s[0].shape[0]
        return [
            w * self._boundary_loss(s, t) / bsz / 1000 * 3
            for w, s, t in zip(self.w, g_s, g_t)
        ]

    def _boundary_loss(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = self.margin
        # The teacher only selects which side each neuron must be on; it gets no gradient.
        push_negative = (source > -m) & (target <= 0)
        push_positive = (source <= m) & (target > 0)
        loss = (source + m) ** 2 * push_negative + (source - m) ** 2 * push_positive
        return loss.sum()


class Connector(nn.Module):
    """Per-layer adapters from student to teacher feature shapes for :class:`ABLoss`.

    ``s_shapes``/``t_shapes`` are the full shapes (batch dimension included, as
    ``[f.shape for f in feats[1:-1]]``). A layer whose channels and spatial size already match is
    passed through unchanged (no parameters); otherwise the FitNet regressor without its ReLU
    (AB works on pre-activations, which must keep their sign). ``forward(g_s)`` returns the list of adapted student maps.
    """

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise ValueError(
                f"Connector needs one teacher shape per student shape, got {len(s_shapes)} "
                f"student and {len(t_shapes)} teacher shapes"
            )
        self.s_shapes = s_shapes
        self.t_shapes = t_shapes
        self.connectors = nn.ModuleList(
            nn.Identity() if tuple(s[1:]) == tuple(t[1:]) else ConvReg(s, t, use_relu=False)
            for s, t in zip(s_shapes, t_shapes)
        )

    def forward(self, g_s: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [connector(f) for connector, f in zip(self.connectors, g_s)]
