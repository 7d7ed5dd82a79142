"""Flow of Solution Procedure (Yim et al., CVPR 2017): "A Gift from Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning"."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class FSP(nn.Module):
    """FSP: match the "flow" between consecutive feature maps.

    For each consecutive pair ``(F_a, F_b)`` of one network (the larger map average-pooled to the
    smaller (H, W) first) the FSP matrix is ``G = F_b F_a^T / (H W)``, of shape ``(B, C_b, C_a)``;
    the loss of a pair is ``mean((G_s - G_t)^2)``. ``forward`` returns the list of per-pair
    losses; sum it.

    Takes ``feats[:-1]`` of both networks; ``s_shapes``/``t_shapes`` are their full shapes (batch
    dimension included). The Gram matrices are only comparable if both networks have identical
    channel lists, which is checked here. In the reference protocol FSP is only used in an init
    stage (student feature modules trained on ``sum(FSP(...))``); the main stage has no FSP term.
    """

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        s_channels = [int(s[1]) for s in s_shapes]
        t_channels = [int(t[1]) for t in t_shapes]
        if s_channels != t_channels:
            raise ValueError(
                "FSP needs identical channel lists for the student and the teacher features "
                f"(one FSP matrix per consecutive pair); got student channels {s_channels} and "
                f"teacher channels {t_channels}"
            )

    def forward(self, g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(g_s) != len(g_t):
            raise ValueError(f"FSP got {len(g_s)} student but {len(g_t)} teacher feature maps")
        return [
            self.compute_loss(s, t) for s, t in zip(self.compute_fsp(g_s), self.compute_fsp(g_t))
        ]

    @staticmethod
    def compute_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (s - t).pow(2).mean()

    @staticmethod
    def compute_fsp(g: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The FSP matrices ``(B, C_{i+1}, C_i)`` of consecutive maps ``g[i], g[i+1]``."""
        fsp_list = []
        for bottom, top in zip(g[:-1], g[1:]):
            size = (min(bottom.shape[-2], top.shape[-2]), min(bottom.shape[-1], top.shape[-1]))
            if tuple(bottom.shape[-2:]) != size:
                bottom = F.adaptive_avg_pool2d(bottom, size)
            if tuple(top.shape[-2:]) != size:
                top = F.adaptive_avg_pool2d(top, size)
            a = bottom.flatten(2)
            b = top.flatten(2)
            fsp_list.append(torch.bmm(b, a.transpose(1, 2)) / a.shape[-1])
        return fsp_list
