"""Knowledge review (Chen et al., CVPR 2021): "Distilling Knowledge via Knowledge Review".

The student's stage outputs (and its pooled vector, as a 1x1 map) are fused from the deepest level
to the shallowest by attention-based fusion (ABF) modules, so that each student level is trained
against the teacher's same level with knowledge from the deeper student levels mixed in; the
fused maps are compared with the teacher's pre-activation maps by the hierarchical context loss.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# Pyramid levels of the hierarchical context loss: each map is also compared after average pooling
# to 4x4, 2x2 and 1x1 (those smaller than the map), with weights halving level by level.
HCL_LEVELS = (4, 2, 1)


def hcl_loss(feats_s: Sequence[torch.Tensor], feats_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss, summed over the pairs of ``(N, C, H, W)`` maps::

        hcl(s, t) = (mse(s, t) + sum_k 2^-k mse(pool_k(s), pool_k(t))) / (1 + sum_k 2^-k)

    where ``pool_k`` is adaptive average pooling to the ``k``-th size of (4, 2, 1) smaller than the
    map's height (k = 1, 2, ...) and ``mse`` is the mean squared error over all elements.
    """
    if len(feats_s) != len(feats_t):
        raise ValueError(f"hcl_loss needs as many student maps as teacher maps; got {len(feats_s)} and {len(feats_t)}")
    total = feats_s[0].new_zeros(())
    for f_s, f_t in zip(feats_s, feats_t):
        if f_s.shape != f_t.shape:
            raise ValueError(f"hcl_loss compares maps of equal shape; got student {tuple(f_s.shape)} and "
                             f"teacher {tuple(f_t.shape)} (fuse the student's maps with ReviewKD first)")
        loss = F.mse_loss(f_s, f_t)
        weight, weight_sum = 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= f_s.shape[2]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size))
            weight_sum += weight
        total = total + loss / weight_sum
    return total


class HCL(nn.Module):
    """:func:`hcl_loss` as a module (the criterion of the ``reviewkd`` row)."""

    def forward(self, feats_s: Sequence[torch.Tensor], feats_t: Sequence[torch.Tensor]) -> torch.Tensor:
        return hcl_loss(feats_s, feats_t)


class ABF(nn.Module):
    """Attention-based fusion of one student level with the fused result of the deeper levels.

    The student map goes through a 1x1 conv + BN to ``mid_channels``; with ``fuse``, the deeper
    result (upsampled, nearest, to this map's size) is mixed in with two per-position sigmoid
    attention weights computed from both. The mix is resized (nearest) to the teacher's spatial
    size and mapped by a 3x3 conv + BN to the teacher's channels.
    Returns ``(output for the loss, mix passed to the next shallower level)``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None)
        # The authors' initialisation (Kaiming uniform with a=1) for the two convolutions.
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None,
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if deeper is None:
                raise ValueError("this ABF fuses a deeper level: pass the deeper level's mix")
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            attention = self.att_conv(torch.cat([x, deeper], dim=1))
            x = x * attention[:, :1] + deeper * attention[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def review_levels(feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The levels ReviewKD reads from a feature list ``[stem, stage_1..stage_N, pooled]``: the
    stage maps and the pooled vector as a 1x1 map."""
    pooled = feats[-1]
    return [*feats[1:-1], pooled.reshape(*pooled.shape, 1, 1)]


class ReviewKD(nn.Module):
    """The student side of ReviewKD: one :class:`ABF` per level, run from the deepest level (the
    pooled vector) to the shallowest, each fusing the mix of the level below it.

    ``s_shapes``/``t_shapes``: the ``(N, C, H, W)`` shapes of the student's and teacher's levels
    (:func:`review_levels`). ``mid_channels`` defaults to the authors' ``min(512, C of the
    student's deepest level)``. ``forward`` takes the student's levels and returns maps shaped
    like the teacher's, shallowest first, for :func:`hcl_loss`.
    """

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]],
                 mid_channels: int | None = None) -> None:
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise ValueError(
                f"ReviewKD pairs every student level with a teacher level; the student has {len(s_shapes)} "
                f"(stages + pooled) and the teacher {len(t_shapes)}: choose networks with as many stages"
            )
        mid = mid_channels if mid_channels is not None else min(512, s_shapes[-1][1])
        deepest = len(s_shapes) - 1
        self.abfs = nn.ModuleList(
            ABF(s[1], mid, t[1], fuse=i < deepest) for i, (s, t) in enumerate(zip(s_shapes, t_shapes)))
        self.out_sizes = [tuple(t[2:]) for t in t_shapes]

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(levels) != len(self.abfs):
            raise ValueError(f"ReviewKD was built for {len(self.abfs)} levels but got {len(levels)}")
        outputs: list[torch.Tensor] = []
        mix = None
        for abf, level, size in zip(reversed(self.abfs), reversed(levels), reversed(self.out_sizes)):
            out, mix = abf(level, mix, size)
            outputs.append(out)
        return outputs[::-1]
