"""Relational knowledge distillation (Park et al. 2019, "Relational Knowledge Distillation")."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RKDLoss(nn.Module):
    """Distance-wise plus angle-wise relational loss on flattened features.

    ``psi_D(i, j) = ||f_i - f_j|| / mu`` with ``mu`` the mean off-diagonal distance;
    ``psi_A(i, j, k) = <n(f_j - f_i), n(f_k - f_i)>`` with ``n`` the L2 normalisation;
    ``loss = w_d * smoothL1(psi_D^s, psi_D^t) + w_a * smoothL1(psi_A^s, psi_A^t)`` (means over
    B^2 and B^3 entries). Teacher terms are computed without gradient.
    """

    def __init__(self, w_d: float = 25, w_a: float = 50) -> None:
        super().__init__()
        self.w_d = w_d
        self.w_a = w_a

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        student = f_s.flatten(1)
        teacher = f_t.flatten(1)

        with torch.no_grad():
            t_d = self._normalized_distances(teacher)
            t_angle = self._angles(teacher)
        s_d = self._normalized_distances(student)
        s_angle = self._angles(student)

        loss_d = F.smooth_l1_loss(s_d, t_d)
        loss_a = F.smooth_l1_loss(s_angle, t_angle)
        return self.w_d * loss_d + self.w_a * loss_a

    @classmethod
    def _normalized_distances(cls, e: torch.Tensor) -> torch.Tensor:
        d = cls.pdist(e)
        # Mean over the positive entries; d >= 0, so their sum is d.sum(). Counting on device
        # avoids the host sync that boolean indexing would force.
        return d / (d.sum() / (d > 0).sum())

    @staticmethod
    def _angles(e: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # diff[i, j] = n(e_j - e_i)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    @staticmethod
    def pdist(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
        """Pairwise Euclidean distances (B, B) with an exactly zero diagonal.

        Squared distances are clamped at ``eps`` so ``sqrt`` has a finite gradient.
        """
        sq_norm = e.pow(2).sum(dim=1)
        res = (sq_norm.unsqueeze(1) + sq_norm.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
        if not squared:
            res = res.sqrt()
        eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
        return res.masked_fill(eye, 0.0)
