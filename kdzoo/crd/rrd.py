"""Relational Representation Distillation (Giakoumoglou & Stathaki, 2024, arXiv:2407.12073).

The student matches the teacher's *relations* to a FIFO queue of past teacher embeddings. With
``s = normalize(embed_s(f_s))``, ``t = normalize(embed_t(f_t))`` and the queue ``Q`` (K x d, unit rows):

    p   = softmax(t Q^T / tau_t)            target, no gradient
    q   = log_softmax(s Q^T / tau_s)        prediction
    L   = mean_i  -sum_k p_ik * q_ik

then the current teacher embeddings ``t`` are written into the queue (FIFO, oldest first out).

Variants (``opt.rrd_variant``):

- ``"2024"`` (default): the published form behind the RRD tables. Similarities are taken against the queue
  *before* the current teacher batch is enqueued; ``tau_s = 0.04``, ``tau_t = 0.10``.
- ``"2025"``: the authors' 2025 code. The batch is enqueued *first*, so each sample also sees its own teacher
  key; ``tau_s = 0.1``, ``tau_t = 0.02``.

``opt.nce_t_s`` / ``opt.nce_t_t`` override the variant's temperatures when present and not None.

Facts kept from the authors' code: plain ``nn.Linear`` heads named ``embed_s`` / ``embed_t``, buffers
``queue`` (K x feat_dim) and ``queue_ptr`` (1 long), i.e. the state dict
``embed_s.weight, embed_s.bias, embed_t.weight, embed_t.bias, queue, queue_ptr``; the teacher head receives no
gradient from this loss (it keeps its random initialisation: the target distribution is computed without
grad, and the queued keys are detached).

Differences from the authors' code, none of which changes the loss:

- the queue starts as random *unit rows* (the reference normalises ``randn(K, d)`` along dim 0, i.e. per
  column; its rows are then far from unit norm until the first K keys have been written);
- any batch size works: keys are written at ``queue_ptr`` with wrap-around (the reference asserts
  ``K % B == 0``, which needs ``drop_last``); a batch larger than K keeps its last K keys, as a FIFO would;
- ``embed_t`` has ``requires_grad=False`` (so the optimizer skips it and DistributedDataParallel does not
  wait for its gradient); it is still in the state dict;
- under ``torch.distributed`` (world size > 1) the teacher keys of all ranks are all-gathered (rank order)
  before they are enqueued, so every rank's queue stays identical; every rank must then call forward with
  the same batch size (a DistributedSampler gives that; checked on the first call, when rank 0's queue
  is also broadcast to every rank);
- no host synchronisation in forward (after that first distributed call): the queue pointer stays a
  device tensor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["RRDLoss", "RRD_VARIANTS"]

#: (tau_s, tau_t) per variant.
RRD_VARIANTS = {"2024": (0.04, 0.10), "2025": (0.1, 0.02)}


def _opt_or(opt, name, default):
    value = getattr(opt, name, None)
    return default if value is None else value


class RRDLoss(nn.Module):
    """Relational Representation Distillation loss with a FIFO teacher queue.

    Args (attributes of ``opt``):
        s_dim: student feature size (inputs are flattened per sample).
        t_dim: teacher feature size.
        feat_dim: projection size (128 in the paper).
        nce_k: queue size K (16384 in the paper).
        nce_t_s: student temperature tau_s (default 0.04, or 0.1 for the 2025 variant).
        nce_t_t: teacher temperature tau_t (default 0.10, or 0.02 for the 2025 variant).
        rrd_variant: ``"2024"`` (default) or ``"2025"``, see the module docstring.

    ``forward(f_s, f_t)`` returns the 0-dim loss and updates the queue.
    """

    def __init__(self, opt):
        super().__init__()
        variant = str(_opt_or(opt, "rrd_variant", "2024"))
        if variant not in RRD_VARIANTS:
            raise ValueError(f"rrd_variant must be one of {sorted(RRD_VARIANTS)}, got {variant!r}")
        self.variant = variant
        tau_s, tau_t = RRD_VARIANTS[variant]
        self.nce_t_s = float(_opt_or(opt, "nce_t_s", tau_s))
        self.nce_t_t = float(_opt_or(opt, "nce_t_t", tau_t))
        self.nce_k = int(_opt_or(opt, "nce_k", 16384))
        feat_dim = int(_opt_or(opt, "feat_dim", 128))
        if self.nce_k < 1:
            raise ValueError(f"nce_k must be positive, got {self.nce_k}")

        self.embed_s = nn.Linear(opt.s_dim, feat_dim)
        self.embed_t = nn.Linear(opt.t_dim, feat_dim)
        self.embed_t.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(self.nce_k, feat_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._synced = False  # distributed: rank 0's queue is broadcast on the first forward

    def extra_repr(self) -> str:
        return f"variant={self.variant}, nce_k={self.nce_k}, nce_t_s={self.nce_t_s}, nce_t_t={self.nce_t_t}"

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        if not self._synced:
            _first_call_sync(self, f_t.shape[0])
            self._synced = True
        s = F.normalize(self.embed_s(f_s.flatten(1)), dim=1)
        with torch.no_grad():
            t = F.normalize(self.embed_t(f_t.detach().flatten(1)), dim=1)

        if self.variant == "2025":
            self._dequeue_and_enqueue(t)
        # A snapshot: the queue buffer is updated in place below (2024) or in the next step (2025), and
        # autograd needs the values this step's similarities were taken against.
        bank = self.queue.detach().clone()

        with torch.no_grad():
            target = F.softmax(t @ bank.to(t.dtype).t() / self.nce_t_t, dim=1)
        log_pred = F.log_softmax(s @ bank.to(s.dtype).t() / self.nce_t_s, dim=1)
        loss = -(target.to(log_pred.dtype) * log_pred).sum(dim=1).mean()

        if self.variant == "2024":
            self._dequeue_and_enqueue(t)
        return loss

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (all ranks' keys under torch.distributed) at ``queue_ptr``, wrapping around."""
        keys = _gather(keys.detach())
        n, k = keys.shape[0], self.nce_k
        m = min(n, k)                      # a batch larger than the queue keeps its newest k keys
        rows = (self.queue_ptr + (n - m) + torch.arange(m, device=self.queue.device)) % k
        self.queue.index_copy_(0, rows, keys[n - m:].to(self.queue.dtype))
        self.queue_ptr.add_(n).remainder_(k)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def _first_call_sync(module: RRDLoss, batch: int) -> None:
    """Under torch.distributed, once: check that every rank has the same batch size (the all-gather
    needs it) and give every rank rank 0's queue and pointer (DDP with ``broadcast_buffers=False``
    does not, and ranks seeded differently start from different random queues)."""
    if not _distributed():
        return
    sizes = _gather(torch.tensor([batch], device=module.queue.device)).tolist()  # one sync, first step only
    if len(set(sizes)) != 1:
        raise ValueError(f"RRDLoss under torch.distributed needs the same batch size on every rank, got {sizes}")
    dist.broadcast(module.queue, 0)
    dist.broadcast(module.queue_ptr, 0)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank (rank order) when torch.distributed runs with world size > 1."""
    if not _distributed():
        return x
    x = x.contiguous()
    out = torch.empty((dist.get_world_size() * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # newer name in recent torch
    gather(out, x)
    return out
