"""Variational Information Distillation (Ahn et al., CVPR 2019)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._pooling import pool_to_common_size


def _inverse_softplus(y: float) -> float:
    # float64 keeps log(exp(y) - 1) accurate before the parameter is rounded to float32.
    return torch.tensor(y, dtype=torch.float64).expm1().log().item()


class VIDLoss(nn.Module):
    """VID: maximise a variational lower bound on the mutual information between the student and
    teacher feature maps of one layer.

    The teacher map ``t`` is modelled as a Gaussian whose mean is regressed from the student map
    ``s`` by three bias-free 1x1 convolutions (ReLU between) and whose per-channel variance is
    ``softplus(log_scale) + eps`` (initialised to ``init_pred_var``)::

        loss = mean( 0.5 * ((mu(s) - t)^2 / var + log var) )

    If the spatial sizes differ, the larger map is average-pooled to the smaller (H, W) first.
    One ``VIDLoss`` is built per distilled layer, e.g. for ``feats[1:-1]``::

        nn.ModuleList(VIDLoss(fs.shape[1], ft.shape[1], ft.shape[1]) for fs, ft in zip(g_s, g_t))

    and its parameters are trained together with the student. The teacher side is not detached
    here: compute teacher features under ``torch.no_grad()``.
    """

    def __init__(
        self,
        num_input_channels: int,
        num_mid_channel: int,
        num_target_channels: int,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if init_pred_var <= eps:
            raise ValueError(
                f"init_pred_var ({init_pred_var}) must exceed eps ({eps}): the variance is "
                "softplus(log_scale) + eps"
            )
        self.regressor = nn.Sequential(
            nn.Conv2d(num_input_channels, num_mid_channel, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(num_mid_channel, num_mid_channel, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(num_mid_channel, num_target_channels, kernel_size=1, bias=False),
        )
        # Chosen so that softplus(log_scale) + eps == init_pred_var at the start.
        self.log_scale = nn.Parameter(
            torch.full((num_target_channels,), _inverse_softplus(init_pred_var - eps))
        )
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Argument names follow the reference so keyword calls keep working.
        student, teacher = pool_to_common_size(input, target)
        pred_mean = self.regressor(student)
        pred_var = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((pred_mean - teacher) ** 2 / pred_var + torch.log(pred_var))
        return neg_log_prob.mean()
