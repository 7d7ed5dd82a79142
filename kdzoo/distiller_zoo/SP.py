"""Similarity-preserving distillation (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation")."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Similarity(nn.Module):
    """Match the batch similarity matrices of student and teacher, one loss per pair of layers.

    With ``A`` the (B, -1) flattened map, ``G = row_l2_normalize(A A^T)`` and
    ``loss = ||G_t - G_s||_F^2 / B^2``. Only the batch dimension must agree, so student and
    teacher maps may have any shapes.
    """

    def forward(self, g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    @staticmethod
    def _gram(f: torch.Tensor) -> torch.Tensor:
        a = f.flatten(1)
        return F.normalize(a @ a.t(), dim=1)

    def similarity_loss(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        bsz = f_s.shape[0]
        return (self._gram(f_t) - self._gram(f_s)).pow(2).sum() / (bsz * bsz)
