"""Entropic optimal transport with a log-domain Sinkhorn solver.

For a cost matrix ``C`` (n x m) and marginals ``a`` (n), ``b`` (m) the entropic OT problem

    P* = argmin_{P >= 0, P 1 = a, P^T 1 = b}  <P, C> - eps * H(P),   H(P) = -sum_ij P_ij (log P_ij - 1)

(Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013) has the solution
``P_ij = exp((f_i + g_j - C_ij) / eps)`` for dual potentials ``f``, ``g``. Sinkhorn's algorithm alternates the
two marginal constraints; written on the potentials with ``logsumexp`` (Peyre & Cuturi, "Computational Optimal
Transport", 2019, ch. 4.4, "log-domain" stabilisation) it never forms ``exp(-C / eps)``, so it stays finite for
any ``eps`` where the kernel form underflows (e.g. ``eps = 1e-3`` with costs of order 1):

    f <- eps * log a - eps * logsumexp_j((g_j - C_ij) / eps)      (rows sum to a afterwards)
    g <- eps * log b - eps * logsumexp_i((f_i - C_ij) / eps)      (columns sum to b afterwards)

(the code keeps ``f / eps`` and ``g / eps``, starting from zero, and forms ``C / eps`` once).

Both functions run a fixed number of iterations with no convergence test, hence no host synchronisation
(nothing calls ``.item()``): they are cheap to put in a training step on any device. They accept a single
problem (``cost`` of shape ``(n, m)``) or a batch of problems (``(..., n, m)``), any floating dtype
(half precision is solved in float32 and the plan returned in the input dtype) and any device.

- :func:`sinkhorn_log` returns the plan; it is differentiable through the unrolled iterations if ``cost``
  requires grad (usually not what a loss wants: see :func:`sinkhorn_plan`).
- :func:`sinkhorn_plan` returns ``(plan, transport_cost)`` where the plan is computed from ``cost.detach()``
  (a constant) and ``transport_cost = <plan, cost>`` carries gradient through ``cost`` only. This is the form
  WCoRD's local term uses.

After the last iteration the column marginals equal ``b`` to rounding; the row marginals equal ``a`` up to
the remaining Sinkhorn error, which decreases geometrically with ``iters`` (more slowly for small ``eps``).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = ["sinkhorn_log", "sinkhorn_plan"]


def _log_marginal(w: Optional[torch.Tensor], size: int, like: torch.Tensor) -> torch.Tensor:
    """log of a marginal, broadcastable to ``like.shape[:-2] + (size,)``; uniform when ``w`` is None."""
    if w is None:
        return torch.full((size,), -math.log(size), dtype=like.dtype, device=like.device)
    w = torch.as_tensor(w, device=like.device).to(like.dtype)
    if w.shape[-1] != size:
        raise ValueError(f"marginal of length {w.shape[-1]} does not match cost dimension {size}")
    return w.log()


def sinkhorn_log(cost: torch.Tensor, eps: float, iters: int,
                 a: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Entropic OT plan by log-domain Sinkhorn iterations (Cuturi 2013; Peyre & Cuturi 2019, ch. 4).

    Args:
        cost: ``(n, m)`` or batched ``(..., n, m)`` cost matrix.
        eps: entropic regularisation (same units as ``cost``); > 0.
        iters: number of Sinkhorn iterations (each = one row and one column update); fixed, no early stop.
        a: row marginal, ``(n,)`` or ``(..., n)``, non-negative, summing to the same mass as ``b``;
           default uniform ``1/n``.
        b: column marginal, ``(m,)`` or ``(..., m)``; default uniform ``1/m``.

    Returns:
        The plan ``P`` with the shape, device and dtype of ``cost``.
    """
    if cost.dim() < 2:
        raise ValueError(f"cost must have at least 2 dimensions (n, m), got shape {tuple(cost.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    out_dtype = cost.dtype
    c = cost if cost.dtype in (torch.float32, torch.float64) else cost.float()
    n, m = c.shape[-2], c.shape[-1]
    log_a = _log_marginal(a, n, c)
    log_b = _log_marginal(b, m, c)
    batch = c.shape[:-2]
    scaled = c / eps                                             # C / eps, formed once
    f = torch.zeros(batch + (n,), dtype=c.dtype, device=c.device)   # potentials divided by eps
    g = torch.zeros(batch + (m,), dtype=c.dtype, device=c.device)
    for _ in range(iters):
        f = log_a - torch.logsumexp(g.unsqueeze(-2) - scaled, dim=-1)
        g = log_b - torch.logsumexp(f.unsqueeze(-1) - scaled, dim=-2)
    plan = torch.exp(f.unsqueeze(-1) + g.unsqueeze(-2) - scaled)
    return plan.to(out_dtype)


def sinkhorn_plan(cost: torch.Tensor, eps: float, iters: int,
                  a: Optional[torch.Tensor] = None,
                  b: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(plan, <plan, cost>)`` with the plan treated as a constant.

    The plan is :func:`sinkhorn_log` of ``cost.detach()`` (no gradient, no graph through the iterations);
    the transport cost ``sum_ij plan_ij * cost_ij`` (summed over the last two dimensions, so a scalar for a
    single problem and shape ``cost.shape[:-2]`` for a batch) is differentiable with respect to ``cost``,
    with gradient exactly ``plan``.
    """
    with torch.no_grad():
        plan = sinkhorn_log(cost.detach(), eps=eps, iters=iters, a=a, b=b)
    return plan, (plan * cost).sum(dim=(-2, -1))
