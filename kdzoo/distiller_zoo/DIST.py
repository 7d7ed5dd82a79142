"""DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher")."""
from __future__ import annotations

import torch
import torch.nn as nn

from .KD import check_logit_pair, maybe_standardize

# Added to the product of norms, as the authors do: a constant row or column gives correlation 0, not NaN.
_PEARSON_EPS = 1e-8


def _row_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + _PEARSON_EPS)


class DIST(nn.Module):
    """Relations of the softened class probabilities ``Y = softmax(z / tau)`` (rows: samples):

    ``loss = tau^2 * (beta * (1 - mean_i rho(Y_s[i, :], Y_t[i, :]))
                    + gamma * (1 - mean_c rho(Y_s[:, c], Y_t[:, c])))``

    where ``rho`` is the Pearson correlation: the inter-class relation compares each sample's
    distribution over the classes, the intra-class relation each class's scores over the batch.
    ``logit_stand=True`` z-scores both logits first (Sun et al. 2024).
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0, logit_stand: bool = False) -> None:
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.tau = tau
        self.logit_stand = logit_stand

    def forward(self, logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
        check_logit_pair("DIST", logits_s, logits_t)
        y_s = (maybe_standardize(logits_s, self.logit_stand) / self.tau).softmax(dim=1)
        y_t = (maybe_standardize(logits_t, self.logit_stand) / self.tau).softmax(dim=1)
        inter = 1 - _row_pearson(y_s, y_t).mean()
        intra = 1 - _row_pearson(y_s.t(), y_t.t()).mean()
        return self.tau**2 * (self.beta * inter + self.gamma * intra)
