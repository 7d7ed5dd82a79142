"""Self-supervised KD with SVD (Lee, Kim & Song, ECCV 2018): "Self-supervised Knowledge
Distillation using Singular Value Decomposition", in the form mdistiller implements (k = 1)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# RBF kernel exp(-d^2 / RBF_SCALE) between singular vectors of consecutive stages.
RBF_SCALE = 8.0
# Matrices with at least this many rows per column go through QR first (see
# singular_values_and_right_vectors); LAPACK takes the same route from about 1.5 rows per column.
_TALL = 2


def singular_values_and_right_vectors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``S`` and ``V^T`` of ``torch.linalg.svd(x, full_matrices=False)`` for a batch ``(B, M, C)``,
    without forming the left vectors ``U`` (``B x M x C``) that the method never reads.

    For a tall matrix LAPACK's divide-and-conquer SVD first factors ``x = QR`` and then takes the
    SVD of ``R``; calling it on ``R`` (``torch.linalg.qr(x, mode='r')``, which does not form ``Q``)
    runs those same steps and gives the same values and vectors, signs included (bit for bit on
    CPU, checked by ``tests/test_feature_methods.py``), while skipping ``Q`` and ``U``. Stage maps
    of CIFAR networks are tall (``M = H*W`` up to 1,024 positions against 16-256 channels); for 64
    maps on a 2-core CPU this took 67 ms instead of 98 ms at 1024 x 64 and 113 ms instead of 135 ms
    at 256 x 128. Other shapes and other devices (whose solvers take other routes) keep the direct
    call."""
    if x.device.type == "cpu" and x.shape[-2] >= _TALL * x.shape[-1]:
        x = torch.linalg.qr(x, mode="r").R
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    return s, vh


class _TopRightSingularVectors(torch.autograd.Function):
    """The leading ``count`` right singular vectors (and all singular values) of a batch of
    matrices ``(B, M, C)``, with the gradient the method's authors use.

    The exact SVD gradient couples every pair of singular vectors through ``1 / (s_i^2 - s_j^2)``,
    which is infinite for repeated singular values (common for ReLU maps: zero channels give
    repeated zeros) and turns the whole gradient into NaN. As in the authors' code, the gradient
    keeps only the coupling among the leading ``count + 1`` vectors and drops non-finite
    coefficients: for ``G = X^T X`` with eigenvectors ``v_i`` and eigenvalues ``s_i^2``,
    ``dL/dX = 2 X sym(V (K^T * (V^T dL/dV)) V^T)`` with ``K_ij = 1 / (s_i^2 - s_j^2)``, ``i != j``.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            s, vh = singular_values_and_right_vectors(x)
        coupled = min(count + 1, s.shape[-1])
        v = vh.transpose(-2, -1)
        ctx.save_for_backward(x, s[:, :coupled], v[:, :, :coupled])
        # The method weights by the teacher's singular values only: the student's get no gradient.
        ctx.mark_non_differentiable(s)
        return v[:, :, :count], s

    @staticmethod
    def backward(ctx: Any, grad_v: torch.Tensor, grad_s: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        x, s, v = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            grad_v = F.pad(grad_v, (0, v.shape[-1] - grad_v.shape[-1]))
            s2 = s.pow(2)
            gap = s2.unsqueeze(-1) - s2.unsqueeze(-2)  # (B, k, k): s_i^2 - s_j^2
            coefficient = torch.where(gap != 0, 1.0 / gap, torch.zeros_like(gap))
            coefficient = torch.where(torch.isfinite(coefficient), coefficient, torch.zeros_like(coefficient))
            inner = coefficient.transpose(-2, -1) * (v.transpose(-2, -1) @ grad_v)
            grad_gram = v @ inner @ v.transpose(-2, -1)
            grad_x = x @ (grad_gram + grad_gram.transpose(-2, -1))
        return torch.where(torch.isfinite(grad_x), grad_x, torch.zeros_like(grad_x)), None


def top_right_singular_vectors(feat: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD of each ``(C, H, W)`` map seen as an ``(H*W) x C`` matrix: its leading ``count`` right
    singular vectors ``(B, C, count)`` (unit vectors over the channels) and its singular values,
    in float32 (SVD is not implemented in half precision)."""
    b, c, h, w = feat.shape
    matrix = feat.float().reshape(b, c, h * w).transpose(1, 2)
    return _TopRightSingularVectors.apply(matrix, count)


def align_singular_vectors(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector (columns of ``v_t``, ``(B, C, k)``), the student vector (column
    of ``v_s``, ``(B, C, k')``) with the largest absolute cosine to it, its sign flipped to match
    (singular vectors are only defined up to sign). Returns ``(B, C, k)``."""
    cosine = v_s.transpose(1, 2) @ v_t  # (B, k', k)
    best = cosine.abs().argmax(dim=1, keepdim=True)  # (B, 1, k)
    sign = torch.where(cosine.gather(1, best) >= 0, 1.0, -1.0)
    chosen = v_s.gather(2, best.expand(-1, v_s.shape[1], -1))
    return chosen * sign


class KDSVD(nn.Module):
    """KD-SVD: the leading right singular vectors of each stage map, weighted by the teacher's
    normalised leading singular values, related between consecutive stages by an RBF kernel; the
    student's kernel matrices are pulled to the teacher's::

        v_l: top-k right singular vectors of stage l (student: the best-aligned of its top k + 3)
        R_l[p, q, j] = exp(-(w_j v_l[p, j] - w_j v_{l-1}[q, j])^2 / 8)
        L = sum_{l >= 1} ||R_l^s - R_l^t||^2 / B

    ``w`` are the teacher's first ``k`` singular values divided by their L2 norm (k = 1: w = 1).
    Needs equal channel counts per stage on both sides (the kernels are indexed by channel).
    """

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.k = k

    def forward(self, g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(g_s) != len(g_t):
            raise ValueError(f"KDSVD pairs stages one to one; got {len(g_s)} student and {len(g_t)} teacher maps")
        for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
            if f_s.shape[1] != f_t.shape[1]:
                raise ValueError(
                    f"KDSVD compares channel-indexed singular vectors, but stage {i} has {f_s.shape[1]} student "
                    f"and {f_t.shape[1]} teacher channels; use a pair with equal channels per stage"
                )
        total = g_s[0].new_zeros((), dtype=torch.float32)
        previous: tuple[torch.Tensor, torch.Tensor] | None = None
        for f_s, f_t in zip(g_s, g_t):
            with torch.no_grad():
                v_t, s_t = top_right_singular_vectors(f_t, self.k)
                weight = F.normalize(s_t[:, : self.k], dim=1).unsqueeze(1)  # (B, 1, k)
            v_s, _ = top_right_singular_vectors(f_s, self.k + 3)
            v_s = align_singular_vectors(v_s, v_t) * weight
            v_t = v_t * weight
            if previous is not None:
                v_s_prev, v_t_prev = previous
                total = total + (self._rbf(v_s, v_s_prev) - self._rbf(v_t, v_t_prev)).pow(2).sum()
            previous = (v_s, v_t)
        return total / g_s[0].shape[0]

    @staticmethod
    def _rbf(deeper: torch.Tensor, shallower: torch.Tensor) -> torch.Tensor:
        """``exp(-(a_p - b_q)^2 / 8)`` for every channel pair, per singular vector: ``(B, C_l, C_{l-1}, k)``."""
        return torch.exp(-(deeper.unsqueeze(2) - shallower.unsqueeze(1)).pow(2) / RBF_SCALE)
