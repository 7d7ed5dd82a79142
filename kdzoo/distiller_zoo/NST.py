"""Neuron selectivity transfer (Huang & Wang 2017, "Like What You Like: Knowledge Distill via
Neuron Selectivity Transfer")."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._pooling import pool_to_common_size


class NSTLoss(nn.Module):
    """Squared MMD between channel-wise spatial distributions, one loss per pair of layers.

    Each channel's flattened map is L2-normalised; with the polynomial kernel
    ``k(a, b) = (a . b)^2`` and means over the batch and all channel pairs,
    ``loss = mean k(t, t) + mean k(s, s) - 2 mean k(s, t)``. The teacher-teacher term is a
    constant for the student and is detached. The larger map is average-pooled to the smaller
    size first; pairs are formed with ``zip`` as in the reference.
    """

    def forward(self, g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def nst_loss(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = pool_to_common_size(f_s, f_t)
        f_s = F.normalize(f_s.flatten(2), dim=2)
        f_t = F.normalize(f_t.flatten(2), dim=2)
        return (self.poly_kernel(f_t, f_t).mean().detach() + self.poly_kernel(f_s, f_s).mean()
                - 2 * self.poly_kernel(f_s, f_t).mean())

    @staticmethod
    def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``out[n, i, j] = (b[n, i] . a[n, j])^2`` for (B, C, HW) inputs."""
        # A batched matmul avoids materialising the (B, C_b, C_a, HW) product tensor.
        return torch.bmm(b, a.transpose(1, 2)).pow(2)
