"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation")."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .KD import check_logit_pair, maybe_standardize

# Subtracted from the target class's scaled logit so that it drops out of the non-target softmax.
# Finite (unlike -inf), so the KL's 0 * log 0 entries stay 0 instead of NaN; exp(-1000) is 0 in
# every float format, so the result is exactly the softmax over the other classes. The authors
# mask the same way.
_TARGET_OFFSET = 1000.0


class DKD(nn.Module):
    """``alpha * TCKD + beta * NCKD``, the KD loss split at the target class.

    With ``p = softmax(z / T)`` and the target class ``y`` of each sample:

    * TCKD: ``KL(b_t || b_s)`` for the binary distributions ``b = (p_y, sum_{c != y} p_c)``;
    * NCKD: ``KL(q_t || q_s)`` for ``q = softmax`` of the scaled logits over the classes ``c != y``;

    each summed over the batch, divided by ``B`` and multiplied by ``T^2``, as the authors compute
    them. (Classical KD equals ``TCKD + (1 - p_t_y) * NCKD`` per sample.) ``logit_stand=True``
    z-scores both logits first (Sun et al. 2024, :func:`~kdzoo.distiller_zoo.KD.standardize`).
    The authors' linear warm-up is applied by the training loop (``Method.warmup``), not here.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 logit_stand: bool = False) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.logit_stand = logit_stand

    def decoupled(self, logits_s: torch.Tensor, logits_t: torch.Tensor,
                  target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(TCKD, NCKD)``, unweighted."""
        check_logit_pair("DKD", logits_s, logits_t)
        if target.shape != logits_s.shape[:1]:
            raise ValueError(f"DKD needs one class index per sample: target has shape {tuple(target.shape)}, "
                             f"the logits {tuple(logits_s.shape)}")
        T = self.temperature
        scaled_s = maybe_standardize(logits_s, self.logit_stand) / T
        scaled_t = maybe_standardize(logits_t, self.logit_stand) / T
        is_target = F.one_hot(target, scaled_s.shape[1]).to(scaled_s.dtype)
        batch = logits_s.shape[0]

        # Binary (target, rest) log-probabilities, in log space: the rest is a logsumexp over the
        # other classes, which stays finite where 1 - p_y would round to 0.
        log_p_s, log_p_t = F.log_softmax(scaled_s, dim=1), F.log_softmax(scaled_t, dim=1)
        binary_s = _target_and_rest(log_p_s, is_target)
        binary_t = _target_and_rest(log_p_t, is_target)
        tckd = F.kl_div(binary_s, binary_t, reduction="sum", log_target=True) * T**2 / batch

        log_q_s = F.log_softmax(scaled_s - _TARGET_OFFSET * is_target, dim=1)
        q_t = F.softmax(scaled_t - _TARGET_OFFSET * is_target, dim=1)
        nckd = F.kl_div(log_q_s, q_t, reduction="sum") * T**2 / batch
        return tckd, nckd

    def forward(self, logits_s: torch.Tensor, logits_t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tckd, nckd = self.decoupled(logits_s, logits_t, target)
        return self.alpha * tckd + self.beta * nckd


def _target_and_rest(log_p: torch.Tensor, is_target: torch.Tensor) -> torch.Tensor:
    """``(log p_y, log sum_{c != y} p_c)`` per sample, shape ``(B, 2)``."""
    log_target = (log_p * is_target).sum(dim=1)
    log_rest = (log_p - _TARGET_OFFSET * is_target).logsumexp(dim=1)
    return torch.stack([log_target, log_rest], dim=1)
