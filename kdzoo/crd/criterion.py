"""CRD: Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020).

The student learns to assign a high score to (its embedding of x, the teacher's embedding of x) and
low scores to the teacher's embeddings of other samples, and symmetrically. Both penultimate
features pass through a linear head to ``feat_dim`` (128) and are L2-normalised (:class:`Embed`);
the critic is ``h(v, m) = exp(<v, m> / T) / Z`` against a memory bank of past embeddings
(:class:`~crd.memory.ContrastMemory`), and the loss is the paper's binary NCE bound (its Eq. 18,
:class:`ContrastLoss`), once with the student as anchor and once with the teacher::

    L = NCE(out_s) + NCE(out_t)

Module names, buffers, constructor arguments and the forward signature are those of the authors'
code (RepDistiller), so its state dicts load strictly. ``opt.crd_memory = "queue"`` swaps the
memory for this project's FIFO-queue InfoNCE variant (:class:`~crd.memory.QueueContrast`).
"""
from __future__ import annotations

import math

from typing import Any, Optional

import torch
from torch import nn

from .memory import ContrastMemory, QueueContrast

__all__ = ["CRDLoss", "ContrastLoss", "Embed", "Normalize", "ContrastMemory", "QueueContrast"]

eps = 1e-7


class Normalize(nn.Module):
    """``x / ||x||_p`` along dim 1 (the reference computes the norm as ``sum(x^p)^(1/p)``)."""

    def __init__(self, power: int = 2) -> None:
        super().__init__()
        self.power = power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1.0 / self.power)
        return x.div(norm)


class Embed(nn.Module):
    """CRD's projection head: flatten, ``Linear(dim_in, dim_out)`` (attribute ``linear``), L2-normalise."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.l2norm = Normalize(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2norm(self.linear(x.flatten(1)))


class ContrastLoss(nn.Module):
    """CRD's binary NCE loss (Tian et al. 2020, Eq. 18) on the normalised scores of one anchor side.

    ``x`` is ``B x (K+1)`` (or ``B x (K+1) x 1``), column 0 the positive. With noise probability
    ``Pn = 1 / n_data`` and ``m = K``::

        loss = -( sum_b log(P_b0 / (P_b0 + m Pn + eps))
                + sum_{b, k>=1} log(m Pn / (P_bk + m Pn + eps)) ) / B,     eps = 1e-7

    Returns a 0-dim tensor (the reference returned shape ``[1]``).
    """

    def __init__(self, n_data: int) -> None:
        super().__init__()
        self.n_data = n_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz = x.shape[0]
        x = x.reshape(bsz, -1)
        m = x.shape[1] - 1
        mpn = m * (1.0 / float(self.n_data))  # m * Pn, as the reference forms it
        p_pos = x[:, 0]
        log_d1 = torch.div(p_pos, p_pos.add(mpn + eps)).log()
        # log(m Pn / (P + m Pn + eps)) as a difference of logs: the same value without two more
        # B x K tensors kept for the backward pass.
        log_d0_sum = math.log(mpn) * x[:, 1:].numel() - x[:, 1:].add(mpn + eps).log().sum()
        return -(log_d1.sum() + log_d0_sum) / bsz


class CRDLoss(nn.Module):
    """Contrastive Representation Distillation loss (Tian, Krishnan & Isola, ICLR 2020).

    ``opt`` fields (the reference's): ``s_dim``, ``t_dim`` (feature sizes), ``feat_dim`` (128),
    ``nce_k`` (K negatives, 16384), ``nce_t`` (T, 0.07), ``nce_m`` (bank momentum, 0.5),
    ``n_data`` (training-set size). Optional, this project's: ``crd_memory`` = ``"bank"`` (the
    paper's, default) or ``"queue"`` (:class:`QueueContrast`); ``crd_scoring`` = ``"auto"``,
    ``"full"`` or ``"gather"`` (see :meth:`ContrastMemory.prefers_full`); ``seed`` for the
    negatives drawn when ``contrast_idx`` is None.

    ``forward(f_s, f_t, idx, contrast_idx=None)``: features ``B x s_dim`` / ``B x t_dim`` (any
    trailing shape is flattened), ``idx`` the dataset indices of the batch, ``contrast_idx``
    ``B x (K+1)`` bank rows with the positive first (the dataset's ``sample_idx``); returns the
    0-dim loss ``NCE(out_s) + NCE(out_t)``, where ``out_s`` has the student as anchor (scored
    against the teacher bank) and ``out_t`` the teacher. It is :meth:`embed` followed by
    :meth:`contrastive_loss`, which other methods (WCoRD) use separately.

    State dict (bank): ``embed_s.linear.{weight,bias}``, ``embed_t.linear.{weight,bias}``,
    ``contrast.params``, ``contrast.memory_v1``, ``contrast.memory_v2``, as in the reference. Queue:
    the heads and ``contrast.queue``, ``contrast.queue_ptr``.
    """

    def __init__(self, opt: Any) -> None:
        super().__init__()
        self.memory_kind = getattr(opt, "crd_memory", "bank") or "bank"
        if self.memory_kind not in ("bank", "queue"):
            raise ValueError(f"crd_memory must be 'bank' or 'queue', got {self.memory_kind!r}")
        self.embed_s = Embed(opt.s_dim, opt.feat_dim)
        self.embed_t = Embed(opt.t_dim, opt.feat_dim)
        self.contrast: nn.Module
        if self.memory_kind == "bank":
            self.contrast = ContrastMemory(opt.feat_dim, opt.n_data, opt.nce_k, opt.nce_t, opt.nce_m,
                                           seed=getattr(opt, "seed", 0) or 0,
                                           scoring=getattr(opt, "crd_scoring", "auto") or "auto")
            self.criterion_t = ContrastLoss(opt.n_data)
            self.criterion_s = ContrastLoss(opt.n_data)
        else:
            self.contrast = QueueContrast(opt.feat_dim, opt.nce_k, opt.nce_t)

    def embed(self, f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two L2-normalised embeddings ``(v_s, v_t)``, each ``B x feat_dim``."""
        return self.embed_s(f_s), self.embed_t(f_t)

    def contrastive_loss(self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor,
                         contrast_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The contrastive term on given embeddings; updates the memory (0-dim result)."""
        if self.memory_kind == "queue":
            return self.contrast(v_s, v_t)
        out_s, out_t = self.contrast(v_s, v_t, idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor,
                contrast_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.contrastive_loss(*self.embed(f_s, f_t), idx, contrast_idx)
