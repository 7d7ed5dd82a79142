"""FitNets hint learning (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets")."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class HintLoss(nn.Module):
    """Mean squared error between the (regressed) student map and the teacher map.

    ``loss = mean((r(F_s) - F_t)^2)``; the regressor ``r`` is a separate :class:`ConvReg`.
    """

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(f_s, f_t)


def _chw(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    # Callers pass feature shapes with the batch dimension (N, C, H, W), as the reference does;
    # a bare (C, H, W) is accepted too since the batch size plays no role here.
    if len(shape) not in (3, 4):
        raise ValueError(f"ConvReg: {name} must be (N, C, H, W) or (C, H, W), got {tuple(shape)}")
    c, h, w = (int(v) for v in shape[-3:])
    return c, h, w


class ConvReg(nn.Module):
    """Convolutional regressor mapping a student feature map onto the teacher's shape.

    The layer is chosen from the spatial sizes (compared on the height, as in the reference):

    * ``H_s == 2 H_t``: 3x3 convolution, stride 2, padding 1;
    * ``2 H_s == H_t``: 4x4 transposed convolution, stride 2, padding 1;
    * ``H_s >= H_t`` otherwise: convolution with kernel ``(1 + H_s - H_t, 1 + W_s - W_t)``.

    It is followed by batch norm and, if ``use_relu``, a ReLU. Shape pairs that none of these
    rules maps exactly onto ``(H_t, W_t)`` raise ``ValueError`` at construction.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True) -> None:
        super().__init__()
        self.use_relu = use_relu
        s_c, s_h, s_w = _chw(s_shape, "s_shape")
        t_c, t_h, t_w = _chw(t_shape, "t_shape")

        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
            out_w = (s_w - 1) // 2 + 1
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
            out_w = 2 * s_w
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
            out_w = t_w
        else:
            out_w = None
        if out_w != t_w:
            # Fail here rather than let a mis-shaped output broadcast silently inside the loss.
            raise ValueError(
                f"ConvReg cannot map student shape {tuple(s_shape)} onto teacher shape {tuple(t_shape)}: "
                "need H_s == 2*H_t, 2*H_s == H_t, or H_s >= H_t and W_s >= W_t, "
                "with the width following the same rule"
            )
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x
