"""Vanilla knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"),
and the logit standardisation that any logit-based loss can apply first (Sun et al., CVPR 2024,
"Logit Standardization in Knowledge Distillation")."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# Added to the standard deviation, as the logit-standardisation authors do: constant logits map to 0.
STANDARDIZE_EPS = 1e-7


def standardize(logits: torch.Tensor, eps: float = STANDARDIZE_EPS) -> torch.Tensor:
    """Z-score each sample's logits over the classes: ``(z - mean(z)) / (eps + std(z))``.

    ``std`` is the sample standard deviation (divisor ``C - 1``), as the authors' code computes it
    (``Tensor.std``). Teacher and student are standardised alike, so the student matches the
    teacher's logit *relations*, not their range.
    """
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (eps + std)


def check_logit_pair(method: str, logits_s: torch.Tensor, logits_t: torch.Tensor) -> None:
    """Refuse logits that cannot be compared class by class (shapes only: no host sync)."""
    if logits_s.dim() != 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            f"{method} compares (batch, classes) logits of the same shape; got student {tuple(logits_s.shape)} and "
            f"teacher {tuple(logits_t.shape)}: give both networks the same batch and number of classes"
        )


def maybe_standardize(logits: torch.Tensor, logit_stand: bool) -> torch.Tensor:
    return standardize(logits) if logit_stand else logits


class DistillKL(nn.Module):
    """Temperature-scaled KL divergence between teacher and student class distributions.

    ``loss = T^2 / B * sum_i KL(softmax(z_t_i / T) || softmax(z_s_i / T))``

    Given several teachers' logits (a list or tuple), the target is the ensemble's mean of their
    softened probabilities, ``p_t = mean_k softmax(z_t^k / T)``, each teacher's logits standardised
    on their own with ``logit_stand``; one tensor is the single teacher of the formula above.

    The ``T^2`` factor keeps the gradient magnitude independent of the temperature, so the
    weight of this term need not be retuned when ``T`` changes. With ``logit_stand=True`` both
    logits are z-scored per sample (:func:`standardize`) before the temperature (Sun et al. 2024).
    """

    def __init__(self, T: float, logit_stand: bool = False) -> None:
        super().__init__()
        self.T = T
        self.logit_stand = logit_stand

    def soften(self, y_t: torch.Tensor) -> torch.Tensor:
        return F.softmax(maybe_standardize(y_t, self.logit_stand) / self.T, dim=1)

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        log_p_s = F.log_softmax(maybe_standardize(y_s, self.logit_stand) / self.T, dim=1)
        if isinstance(y_t, torch.Tensor):
            p_t = self.soften(y_t)
        else:
            p_t = torch.stack([self.soften(y) for y in y_t]).mean(dim=0)
        # 'batchmean' is the sum over all entries divided by B: the true KL averaged over samples.
        return F.kl_div(log_p_s, p_t, reduction="batchmean") * (self.T ** 2)
