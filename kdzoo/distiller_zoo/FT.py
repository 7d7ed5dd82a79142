"""Factor Transfer (Kim et al., NeurIPS 2018): "Paraphrasing Complex Network: Network Compression
via Factor Transfer"."""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._pooling import pool_to_common_size


class FactorTransfer(nn.Module):
    """FT: match the student's and the teacher's *factors*.

    Inputs are the factors themselves, ``f_s = translator(student feats[-2])`` and
    ``f_t = paraphraser(teacher feats[-2], is_factor=True)``. Each is reduced to an attention-like
    vector ``F(f) = normalize(flatten(mean_c f^p1))`` and::

        loss = mean |F(f_s) - F(f_t)|          (p2 = 1, the paper's L1)
        loss = mean (F(f_s) - F(f_t))^p2       (otherwise)

    If the spatial sizes differ, the larger map is average-pooled to the smaller (H, W) first.
    """

    def __init__(self, p1: float = 2, p2: float = 1) -> None:
        super().__init__()
        self.p1 = p1
        self.p2 = p2

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = pool_to_common_size(f_s, f_t)
        diff = self.factor(f_s) - self.factor(f_t)
        if self.p2 == 1:
            return diff.abs().mean()
        return diff.pow(self.p2).mean()

    def factor(self, f: torch.Tensor) -> torch.Tensor:
        """``normalize(flatten(mean over channels of f^p1))``, one unit vector per sample."""
        return F.normalize(f.pow(self.p1).mean(1).flatten(1))


def _conv_stack(a: int, b: int, use_bn: bool, transposed: bool = False) -> nn.Sequential:
    """Three 3x3 size-preserving (transposed) convolutions with channels ``a->a->b->b``, each
    followed by BN (or an empty slot) and LeakyReLU(0.1).

    The empty :class:`nn.Identity` slot keeps the layer indices (``.0``, ``.3``, ``.6``) of the
    reference state-dict layout whether or not BN is used.
    """
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in ((a, a), (a, b), (b, b)):
        layers += [
            conv(c_in, c_out, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(c_out) if use_bn else nn.Identity(),
            nn.LeakyReLU(0.1, inplace=True),
        ]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """FT's teacher-side autoencoder on the teacher map of shape ``t_shape`` (batch dimension
    included, e.g. ``feats_t[-2].shape``); the code has ``int(k * C_t)`` channels.

    ``forward(f_t)`` returns ``(factor, reconstruction)``; ``forward(f_t, is_factor=True)`` returns
    the factor alone.

    Two stages, as in the paper:

    1. init stage: train the paraphraser alone as an autoencoder,
       ``MSE(reconstruction, f_t)`` on the (no-grad) teacher features;
    2. main stage: call :meth:`freeze` and use ``paraphraser(f_t, is_factor=True)`` as the
       teacher factor for :class:`FactorTransfer`. Freezing turns off ``requires_grad`` (so the
       FT loss no longer fills ``.grad`` of a module nobody updates) and keeps the module in eval
       mode even if a parent calls ``.train()``. Leave it out of the main-stage optimizer.
    """

    def __init__(self, t_shape: Sequence[int], k: float = 0.5, use_bn: bool = False) -> None:
        super().__init__()
        in_channel = t_shape[1]
        out_channel = int(t_shape[1] * k)
        self.encoder = _conv_stack(in_channel, out_channel, use_bn)
        self.decoder = _conv_stack(out_channel, in_channel, use_bn, transposed=True)
        self.frozen = False

    def forward(
        self, f_s: torch.Tensor, is_factor: bool = False
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        # The argument keeps the reference's name, although it is the teacher's map.
        factor = self.encoder(f_s)
        if is_factor:
            return factor
        return factor, self.decoder(factor)

    def freeze(self) -> "Paraphraser":
        """End of the init stage: no more gradients, eval mode from now on."""
        self.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def unfreeze(self) -> "Paraphraser":
        """Undo :meth:`freeze` (the train/eval mode is left to the caller)."""
        self.requires_grad_(True)
        self.frozen = False
        return self

    def train(self, mode: bool = True) -> "Paraphraser":
        # A parent's .train() must not put a frozen paraphraser back into training mode.
        return super().train(mode and not getattr(self, "frozen", False))


class Translator(nn.Module):
    """FT's student-side encoder: maps the student map (``s_shape``) to a factor with
    ``int(k * C_t)`` channels, the paraphraser's code size for the teacher map (``t_shape``).
    Trained with the student in the main stage; ``forward(f_s)`` returns the factor.
    """

    def __init__(
        self, s_shape: Sequence[int], t_shape: Sequence[int], k: float = 0.5, use_bn: bool = True
    ) -> None:
        super().__init__()
        self.encoder = _conv_stack(s_shape[1], int(t_shape[1] * k), use_bn)

    def forward(self, f_s: torch.Tensor) -> torch.Tensor:
        return self.encoder(f_s)
