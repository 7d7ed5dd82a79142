"""WCoRD: Wasserstein Contrastive Representation Distillation (Chen, Wang, Gan, Liu, Henao & Carin, CVPR 2021,
arXiv:2012.08674). No public code exists; this is built from the paper's description on CRD's machinery.

Two terms, both on the projected, L2-normalised embeddings ``v_s = embed_s(f_s)``, ``v_t = embed_t(f_t)`` of
:class:`~crd.criterion.CRDLoss` (``B x feat_dim``):

* **global** (dual form of the Wasserstein distance): CRD's contrastive loss (memory, K negatives per anchor,
  binary NCE, :meth:`CRDLoss.contrastive_loss`) with the critic constrained to be 1-Lipschitz. ``opt.critic``:

  - ``"spectral"`` (default): ``torch.nn.utils.parametrizations.spectral_norm`` on ``embed_s.linear`` and
    ``embed_t.linear``: each head's weight is divided by its largest singular value, estimated by one power
    iteration per training-mode forward (Miyato et al., 2018); under torch.distributed rank 0's power-iteration
    vectors are broadcast on the first forward, after which the ranks stay identical. The state-dict keys of the two linear layers
    become ``embed_*.linear.parametrizations.weight.original`` plus the power-iteration vectors ``..._u``,
    ``..._v`` (no reference checkpoint exists for WCoRD, so nothing is lost).
  - ``"gp"``: plain heads plus a one-sided gradient penalty (in the spirit of Gulrajani et al., 2017, one-sided
    as in Petzka et al., 2018). The critic is the score of a pair, ``h(x_s, x_t) = <v_s, v_t>`` =
    ``cos(embed_s.linear(x_s), embed_t.linear(x_t))``, as a function of the flattened features. At each
    positive pair ``(f_s_i, f_t_i)`` of the batch, taken as constants (detached, so the penalty trains the heads
    and cannot be lowered by moving the student's features),

        penalty = mean_i max(0, ||grad_{(x_s, x_t)} h(f_s_i, f_t_i)||_2 - 1)^2

    where the norm is over the concatenated gradient w.r.t. both inputs. It is zero while the critic's
    gradient norm is <= 1 and quadratic beyond. ``loss_global = contrastive + opt.gp_weight * penalty`` (so
    the training task's beta multiplies both); the last penalty is kept in ``self.last_penalty`` (detached).
    The penalty is built with ``create_graph=True`` (double backward through the heads).
  - ``"none"``: plain CRD heads (then the global term is exactly CRD's loss).

* **local** (primal form): entropic optimal transport inside the mini-batch between the teacher embeddings
  (rows) and the student embeddings (columns), cost ``C_ij = 1 - cos(v_t_i, v_s_j)``, uniform marginals
  ``1/B``, plan ``P`` from log-domain Sinkhorn (:func:`crd.sinkhorn.sinkhorn_plan`, ``opt.ot_eps``,
  ``opt.ot_iters``) on the detached cost, i.e. treated as a constant; ``loss_local = <P, C> = sum_ij P_ij C_ij``,
  whose gradient flows through ``C`` only (into both heads and the student). Under torch.distributed the
  transport is within each process's share of the batch. The cost and the plan are computed in float32
  (or float64) even under autocast.

``forward(f_s, f_t, idx, contrast_idx=None) -> (loss_global, loss_local)``, unweighted: the training task forms
``beta * loss_global + lambda_local * loss_local`` (plus CE and alpha * KD).

Defaults (:data:`WCORD_DEFAULTS`) and where they come from. The paper fixes the structure above; none of the
four numbers below could be confirmed from the paper's text, so all four are this project's choices:

==============  =========  ======================================================================================
flag            default    source
==============  =========  ======================================================================================
critic          spectral   spectral normalisation of the heads: the project's method spec (methods.md)
gp_weight       10         ours; the usual WGAN-GP weight (Gulrajani et al., 2017); only for critic="gp"
ot_eps          0.05       ours; costs lie in [0, 2], so 0.05 gives a sharp but not degenerate plan
ot_iters        50         ours; with eps=0.05 and B=64 the plan's row marginals are within ~1e-3 (relative) of
                           uniform and <P, C> within ~1e-4 of its converged value on typical costs
lambda_local    0.8        ours (same weight as CRD's beta = 0.8); used by the training task, not by forward
==============  =========  ======================================================================================

The other flags (``feat_dim`` 128, ``nce_k`` 16384, ``nce_t`` 0.07, ``nce_m`` 0.5, ``n_data``, ``crd_memory``)
are CRD's, read by :class:`~crd.criterion.CRDLoss`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from .criterion import CRDLoss
from .sinkhorn import sinkhorn_plan

__all__ = ["WCoRDLoss", "WCORD_DEFAULTS", "CRITICS"]

CRITICS = ("spectral", "gp", "none")

#: Defaults for the flags the paper leaves open (see the module docstring for their sources).
WCORD_DEFAULTS = {"critic": "spectral", "gp_weight": 10.0, "ot_eps": 0.05, "ot_iters": 50, "lambda_local": 0.8}


def _opt_or(opt: Any, name: str):
    value = getattr(opt, name, None)
    return WCORD_DEFAULTS[name] if value is None else value


class WCoRDLoss(CRDLoss):
    """WCoRD = CRD's contrastive loss with a 1-Lipschitz critic (global) + in-batch entropic OT (local).

    ``opt``: CRD's fields (``s_dim``, ``t_dim``, ``feat_dim``, ``nce_k``, ``nce_t``, ``nce_m``, ``n_data``, ...)
    and ``critic``, ``gp_weight``, ``ot_eps``, ``ot_iters``, ``lambda_local`` (missing or None: the defaults
    of :data:`WCORD_DEFAULTS`). ``forward(f_s, f_t, idx, contrast_idx=None)`` returns
    ``(loss_global, loss_local)``, both 0-dim and unweighted.
    """

    def __init__(self, opt: Any) -> None:
        super().__init__(opt)
        self.critic = str(_opt_or(opt, "critic"))
        if self.critic not in CRITICS:
            raise ValueError(f"critic must be one of {CRITICS}, got {self.critic!r}")
        self.gp_weight = float(_opt_or(opt, "gp_weight"))
        self.ot_eps = float(_opt_or(opt, "ot_eps"))
        self.ot_iters = int(_opt_or(opt, "ot_iters"))
        self.lambda_local = float(_opt_or(opt, "lambda_local"))
        if not self.ot_eps > 0 or self.ot_iters < 1:
            raise ValueError(f"ot_eps must be > 0 and ot_iters >= 1, got {self.ot_eps}, {self.ot_iters}")
        if self.critic == "spectral":
            spectral_norm(self.embed_s.linear)
            spectral_norm(self.embed_t.linear)
        self.last_penalty: Optional[torch.Tensor] = None
        self._synced = False  # distributed + spectral: rank 0's power-iteration vectors, once

    def extra_repr(self) -> str:
        return (f"critic={self.critic}, gp_weight={self.gp_weight:g}, ot_eps={self.ot_eps:g}, "
                f"ot_iters={self.ot_iters}, lambda_local={self.lambda_local:g}")

    # ------------------------------------------------------------------------------------------ terms

    def local_loss(self, v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
        """``<P, C>`` with ``C_ij = 1 - cos(v_t_i, v_s_j)`` and ``P`` the (constant) entropic OT plan."""
        return self.transport(v_s, v_t)[1]

    def transport(self, v_s: torch.Tensor, v_t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(P, <P, C>)`` for the local term (``P``: ``B x B``, rows = teacher samples, detached)."""
        with torch.autocast(device_type=v_s.device.type, enabled=False):
            dtype = torch.float64 if v_s.dtype == torch.float64 else torch.float32
            a = F.normalize(v_t.flatten(1).to(dtype), dim=1)
            b = F.normalize(v_s.flatten(1).to(dtype), dim=1)
            cost = 1.0 - a @ b.t()
            return sinkhorn_plan(cost, eps=self.ot_eps, iters=self.ot_iters)

    def gradient_penalty(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """``mean_i max(0, ||grad h(f_s_i, f_t_i)|| - 1)^2`` for the pair critic ``h = <v_s, v_t>`` (see module doc)."""
        x_s = f_s.detach().flatten(1).requires_grad_(True)
        x_t = f_t.detach().flatten(1).requires_grad_(True)
        with torch.enable_grad():
            v_s, v_t = self.embed(x_s, x_t)
            score = (v_s * v_t).sum(dim=1)      # each pair's score depends on its own inputs only
            g_s, g_t = torch.autograd.grad(score.sum(), (x_s, x_t), create_graph=True)
        norm = torch.sqrt(g_s.pow(2).sum(1) + g_t.pow(2).sum(1))
        return F.relu(norm - 1.0).pow(2).mean()

    # ---------------------------------------------------------------------------------------- forward

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor,
                contrast_idx: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if not self._synced:
            self._sync_power_iteration()
            self._synced = True
        v_s, v_t = self.embed(f_s, f_t)
        loss_global = self.contrastive_loss(v_s, v_t, idx, contrast_idx)
        if self.critic == "gp":
            penalty = self.gradient_penalty(f_s, f_t)
            self.last_penalty = penalty.detach()
            loss_global = loss_global + self.gp_weight * penalty
        loss_local = self.local_loss(v_s, v_t)
        return loss_global, loss_local.to(loss_global.dtype)

    @torch.no_grad()
    def _sync_power_iteration(self) -> None:
        """Under torch.distributed, give every rank rank 0's spectral-norm vectors ``_u``, ``_v`` (DDP with
        ``broadcast_buffers=False`` does not, and ranks seeded differently start from different ones)."""
        if self.critic != "spectral" or not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_world_size() == 1:
            return
        for head in (self.embed_s, self.embed_t):
            for buf in head.linear.parametrizations.weight.buffers():
                dist.broadcast(buf, 0)

    @property
    def is_spectral(self) -> bool:
        """True when both heads carry the spectral-norm parametrisation."""
        return (parametrize.is_parametrized(self.embed_s.linear, "weight")
                and parametrize.is_parametrized(self.embed_t.linear, "weight"))
