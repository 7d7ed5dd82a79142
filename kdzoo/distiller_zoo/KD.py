"""Vanilla knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network")."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DistillKL(nn.Module):
    """Temperature-scaled KL divergence between teacher and student class distributions.

    ``loss = T^2 / B * sum_i KL(softmax(z_t_i / T) || softmax(z_s_i / T))``

    The ``T^2`` factor keeps the gradient magnitude independent of the temperature, so the
    weight of this term need not be retuned when ``T`` changes.
    """

    def __init__(self, T: float) -> None:
        super().__init__()
        self.T = T

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        log_p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        # 'batchmean' is the sum over all entries divided by B: the true KL averaged over samples.
        return F.kl_div(log_p_s, p_t, reduction="batchmean") * (self.T ** 2)
