"""Correlation congruence (Peng et al. 2019, "Correlation Congruence for Knowledge Distillation")."""
from __future__ import annotations

import torch
import torch.nn as nn


class Correlation(nn.Module):
    """The CC variant shared by the CC authors, applied to embedded vectors.

    With ``d_i = |e_s_i - e_t_i|`` (e = :class:`LinearEmbed` outputs),
    ``loss = sum_{i=1}^{B-1} <d_i, d_{i+1}> / (B - 1)``: it correlates the errors of consecutive
    samples in the batch.
    """

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        delta = (f_s - f_t).abs()
        return (delta[:-1] * delta[1:]).sum(dim=1).mean()


class LinearEmbed(nn.Module):
    """Flatten, then a linear projection (``dim_in -> dim_out``); the CC embedding head."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))
