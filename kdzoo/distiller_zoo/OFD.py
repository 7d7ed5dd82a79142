"""Overhaul of feature distillation (Heo et al., ICCV 2019): "A Comprehensive Overhaul of Feature
Distillation"."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# Below this probability of a negative response the expectation is numerically unreliable and
# the authors fall back to -3 sigma.
_MIN_NEGATIVE_PROBABILITY = 1e-3


def ofd_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Per-channel margin ``m`` from a teacher batch norm that feeds a ReLU.

    The teacher's pre-ReLU response of a channel is modelled as ``N(beta, |gamma|^2)`` (the batch
    norm's shift and scale); the margin is the expectation of its negative part::

        m = beta - |gamma| * phi(beta/|gamma|) / Phi(-beta/|gamma|)   if Phi(-beta/|gamma|) > 0.001
        m = -3 |gamma|                                                otherwise

    with ``phi``/``Phi`` the standard normal density and distribution. Returns a float32 tensor
    of shape ``(1, C, 1, 1)``.
    """
    if not isinstance(bn, nn.BatchNorm2d):
        raise ValueError(
            f"OFD reads its margins from the teacher's batch norms before each stage's ReLU, but got "
            f"{type(bn).__name__}: build the OFD term before folding the teacher's batch norms"
        )
    scale = bn.weight.detach().double().abs().clamp_min(1e-12)
    shift = bn.bias.detach().double()
    z = shift / scale
    p_negative = 0.5 * torch.erfc(z / math.sqrt(2))  # Phi(-z)
    density = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    expectation = shift - scale * density / p_negative.clamp_min(torch.finfo(torch.float64).tiny)
    margin = torch.where(p_negative > _MIN_NEGATIVE_PROBABILITY, expectation, -3 * scale)
    return margin.float().reshape(1, -1, 1, 1)


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 distance, summed over all elements::

        t' = max(t, m);   d = sum (s - t')^2 * 1(s > t' or t' > 0)

    The student is pulled to the teacher where the teacher responds positively; where the teacher
    is negative (ReLU would zero it) only a student above the teacher's value, or above the margin
    when the teacher is below it, is penalised.
    """
    target = torch.maximum(target, margin)
    return ((source - target).pow(2) * ((source > target) | (target > 0))).sum()


class OFDConnector(nn.Module):
    """Student-side connector of one stage: a 1x1 conv to the teacher's channels + batch norm,
    initialised as the authors do (He-normal conv, identity batch norm)."""

    def __init__(self, s_channels: int, t_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(s_channels, t_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(t_channels)
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / t_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class OFDLoss(nn.Module):
    """OFD on the pre-ReLU stage outputs (``feats[1:-1]`` with ``preact=True``)::

        L = sum_l 2^(l - L + 1) * partial_l2(connector_l(s_l), pool(t_l), m_l) / B

    ``pool`` averages the teacher map to the student's spatial size; the deepest stage gets weight
    1, each shallower one half the next. When the networks have different numbers of stages, the
    deepest ``min`` of each are paired. ``margins`` come from :func:`ofd_margin` on the teacher's
    ``get_bn_before_relu()``; they are buffers, saved with the term.
    """

    def __init__(self, s_channels: Sequence[int], t_channels: Sequence[int], margins: Sequence[torch.Tensor]) -> None:
        super().__init__()
        count = min(len(s_channels), len(t_channels))
        s_channels, t_channels = list(s_channels)[-count:], list(t_channels)[-count:]
        margins = list(margins)[-count:]
        for i, (t, margin) in enumerate(zip(t_channels, margins)):
            if margin.numel() != t:
                raise ValueError(
                    f"OFD stage {i}: the teacher map has {t} channels but its batch norm before the ReLU has "
                    f"{margin.numel()}; this teacher's get_bn_before_relu() does not match its stages"
                )
        self.count = count
        self.connectors = nn.ModuleList(OFDConnector(s, t) for s, t in zip(s_channels, t_channels))
        for i, margin in enumerate(margins):
            self.register_buffer(f"margin{i}", margin.detach().float().reshape(1, -1, 1, 1).clone())

    def forward(self, g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> torch.Tensor:
        g_s, g_t = list(g_s)[-self.count:], list(g_t)[-self.count:]
        batch = g_s[0].shape[0]
        total = g_s[0].new_zeros(())
        for i, (connector, f_s, f_t) in enumerate(zip(self.connectors, g_s, g_t)):
            source = connector(f_s)
            target = F.adaptive_avg_pool2d(f_t.detach(), source.shape[-2:])
            margin = getattr(self, f"margin{i}").to(source.dtype)
            total = total + partial_l2(source, target, margin) / 2 ** (self.count - i - 1)
        return total / batch
