"""Probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer")."""
from __future__ import annotations

import torch
import torch.nn as nn


class PKT(nn.Module):
    """Match the conditional-probability distributions induced by cosine similarity.

    ``S = cos(f_i, f_j)`` mapped to [0, 1] by ``(S + 1) / 2`` and row-normalised into
    ``P(j | i)``; ``loss = mean_{i,j} P_t(j|i) * log((P_t(j|i) + eps) / (P_s(j|i) + eps))``
    with ``eps = 1e-7`` (a KL(teacher || student) averaged over all B^2 entries).
    """

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        return self.cosine_similarity_loss(f_s, f_t)

    @staticmethod
    def _conditional_probs(f: torch.Tensor, eps: float) -> torch.Tensor:
        f = f.flatten(1)
        f = f / (f.norm(dim=1, keepdim=True) + eps)
        # Only non-finite inputs can produce NaN here; zeroing them keeps the loss defined.
        f = torch.where(f.isnan(), torch.zeros_like(f), f)
        sim = (f @ f.t() + 1.0) / 2.0
        return sim / sim.sum(dim=1, keepdim=True)

    @staticmethod
    def cosine_similarity_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
        p_s = PKT._conditional_probs(f_s, eps)
        p_t = PKT._conditional_probs(f_t, eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()
