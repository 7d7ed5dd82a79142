"""Memories that supply CRD's negatives: the reference's two momentum banks and a FIFO queue.

Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020) contrasts each
embedding against K negatives taken from a memory of past embeddings of the whole training set.

* :class:`ContrastMemory` is the paper's memory, with the reference's buffers and math: two banks
  of ``n_data x feat_dim`` unit vectors (``memory_v1`` holds student embeddings, ``memory_v2``
  teacher embeddings), scores ``exp(<m, v> / T) / Z`` and a momentum update of the rows of the
  current samples.
* :class:`QueueContrast` is this project's addition (not in the paper): a MoCo-style ring buffer of
  the last K teacher embeddings and an InfoNCE loss, for datasets whose ``n_data`` banks would not
  fit.

Both work on any device, never read a value back to the host during a training step, and, when
``torch.distributed`` runs with more than one process, keep their buffers identical on every rank
by gathering what each rank writes; a run on P processes then equals a one-process run on the
global batch.
"""
from __future__ import annotations

import math
import weakref
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["ContrastMemory", "QueueContrast"]

SCORING_MODES = ("auto", "full", "gather")


# ----------------------------------------------------------------------------- distributed helpers

def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(t: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) of all ranks along dim 0, in rank order."""
    t = t.detach().contiguous()
    out = t.new_empty((world * t.shape[0],) + tuple(t.shape[1:]))
    dist.all_gather_into_tensor(out, t)
    return out


def _broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers, so that ranks whose modules were built under different
    random states (per-rank seeds) start from the same memory."""
    for buf in module.buffers(recurse=False):
        dist.broadcast(buf, 0)


def _last_occurrence(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For indices ``y`` (1-D), ``src`` with ``y[src[j]] == y[j]`` and ``src[j]`` the last position
    holding that value, and the mask ``src == arange``.

    A batch can hold a sample twice (``DistributedSampler`` pads the last batches with repeats).
    ``index_copy_`` with repeated indices leaves an unspecified winner on GPUs, which would let ranks
    drift apart; writing the last occurrence's row at every repeat makes the result deterministic
    and equal to a sequential row-by-row update. Found with a stable sort, without a host sync.
    """
    n = y.numel()
    pos = torch.arange(n, device=y.device)
    ys, order = torch.sort(y, stable=True)
    run_end = torch.ones(n, dtype=torch.bool, device=y.device)
    run_end[:-1] = ys[1:] != ys[:-1]
    # the end of each run of equal values, propagated backwards over the run
    end = torch.where(run_end, pos, torch.full_like(pos, n)).flip(0).cummin(0).values.flip(0)
    src = torch.empty_like(order)
    src[order] = order[end]
    return src, src == pos


def _check_equal_batches(local: int, world: int, device: torch.device) -> None:
    """Gathering assumes the same batch size on every rank (``DistributedSampler`` pads the epoch
    so that it holds); checked once, on the first call, which synchronises anyway."""
    sizes = torch.tensor([local], device=device)
    gathered = _all_gather(sizes, world).tolist()
    if len(set(gathered)) != 1:
        raise ValueError(f"CRD memory under torch.distributed needs the same batch size on every rank, got {gathered}")


# ----------------------------------------------------------------------------- full-bank scoring

def _first_occurrence(rows: torch.Tensor) -> torch.Tensor:
    """Mask of the first position of each value in ``rows`` (1-D), without a host sync."""
    return _last_occurrence(rows.flip(0))[1].flip(0)


# The raw handles, where torch has them, answer without unpacking: unpacking could copy the saved
# indices back to the device under saved-tensor hooks (e.g. torch.autograd.graph.save_on_cpu).
_SAVED = "_raw_saved_tensors" if hasattr(torch._C._FunctionBase, "_raw_saved_tensors") else "saved_tensors"


def _awaits_backward(node) -> bool:
    """Whether a :class:`_BankScores` node can still run its backward: autograd frees a node's saved
    tensors once a backward without ``retain_graph`` has gone through it."""
    try:
        getattr(node, _SAVED)
    except RuntimeError:
        return False
    return True


class _PendingReads:
    """The full-bank forwards of a memory whose backward is still to run, and what each of them
    needs of its bank as it was at its forward.

    The backward of :class:`_BankScores` reads the bank when it runs. Every write into a bank goes
    through :meth:`write_rows` or :meth:`before_overwrite`, which first hand each waiting forward
    the values the write destroys: the old rows (one tensor shared by all of them), or one shared
    copy of the whole bank before everything is overwritten (``load_state_dict``) or once a
    forward's saved rows would outgrow one bank (a graph kept for many steps); after a whole copy
    the forward no longer depends on the live bank. In the ordinary order (forward, backward,
    forward, ...) the only write between a forward and its backward is that forward's own momentum
    update, whose old rows the update reads anyway; any other order keeps only the rows it
    overwrites while a backward is pending.

    Each node carries ``memory`` (the bank it scored against), ``writes`` (chronological
    ``(rows, old values, first-of-each-row mask)``, ``rows=None`` for a whole copy), ``saved_rows``,
    ``detached`` (holds a whole copy) and ``version`` (the bank's version after the last write it
    was told of, so that a write that bypassed this class raises instead of giving a wrong gradient).
    A copy of the module (``deepcopy``, pickling) starts with none: the nodes belong to the original.
    """

    def __init__(self) -> None:
        self._nodes: list[weakref.ref] = []

    def __deepcopy__(self, memo: dict) -> "_PendingReads":
        return _PendingReads()

    def __reduce__(self):
        return (_PendingReads, ())

    def add(self, node) -> None:
        self._nodes.append(weakref.ref(node))

    def waiting(self, memory: torch.Tensor) -> list:
        """The nodes whose backward will still read ``memory``; forgets finished and freed ones."""
        kept, found = [], []
        for ref in self._nodes:
            node = ref()
            if node is None or node.detached or not _awaits_backward(node):
                continue
            kept.append(ref)
            if node.memory is memory:
                found.append(node)
        self._nodes = kept
        return found

    @torch.no_grad()
    def before_overwrite(self, memory: torch.Tensor, nodes: Optional[list] = None) -> None:
        """Give the waiting nodes (or ``nodes``) one shared copy of ``memory`` before all of it changes."""
        nodes = self.waiting(memory) if nodes is None else nodes
        if nodes:
            whole = memory.clone()
            for node in nodes:
                node.writes.append((None, whole, None))
                node.detached = True

    @torch.no_grad()
    def write_rows(self, memory: torch.Tensor, rows: torch.Tensor, old: torch.Tensor, keep: torch.Tensor,
                   new: torch.Tensor) -> None:
        """``memory[rows] = new``, where ``old`` holds ``memory[rows]`` and ``keep`` marks one
        position of each row."""
        nodes = self.waiting(memory)
        n = rows.numel()
        self.before_overwrite(memory, [node for node in nodes if node.saved_rows + n > memory.shape[0]])
        before = memory._version
        memory.index_copy_(0, rows, new)
        for node in nodes:
            if not node.detached:
                node.writes.append((rows, old, keep))
                node.saved_rows += n
                if node.version == before:  # otherwise an unknown write came first: keep the mismatch
                    node.version = memory._version


_BACKWARD_ROWS = 16


class _BankScores(torch.autograd.Function):
    """``(v @ memory.T).gather(1, idx)``: one matrix product against the whole bank, then the
    sampled entries, for when that is cheaper than gathering ``B x (K+1)`` rows.

    Autograd would keep a reference to the bank for the backward pass and then refuse it, since the
    momentum update writes into the bank in place before backward runs (and copying the bank every
    step would double this path's memory traffic and hold a second bank until backward). So the
    backward pass uses the bank as it is then and puts back what the writes since the forward
    changed, as :class:`_PendingReads` recorded it (or a whole copy it saved):
    ``grad_v = G @ M_then = G @ M_now + G[:, rows] @ (M_then[rows] - M_now[rows])`` with ``G`` the
    score gradient scattered to ``B x n_data``.
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        with torch.autocast(v.device.type, enabled=False):  # scores in the bank's precision
            scores = torch.mm(v.to(memory.dtype), memory.t()).gather(1, idx)
        ctx.save_for_backward(idx)
        ctx.memory = memory  # not saved as a tensor on purpose: see the class docstring
        ctx.writes, ctx.saved_rows, ctx.detached, ctx.version = [], 0, False, memory._version
        ctx.v_dtype = v.dtype
        return scores

    @staticmethod
    def bank_then(ctx) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """The bank the forward scored against, as a tensor ``base`` and a correction
        ``(rows, keep, delta)``: it equals ``base`` but for ``base[rows] + delta`` where ``keep`` is 1."""
        writes = ctx.writes
        if ctx.detached:  # the whole copy is its last write: nothing was recorded after it
            base, writes = writes[-1][1], writes[:-1]
        else:
            base = ctx.memory
            if base._version != ctx.version:
                raise RuntimeError(
                    "the CRD memory bank was modified in place, outside ContrastMemory, between a forward "
                    "and its backward pass; the full-bank scoring path cannot compute this gradient. Change "
                    "the bank only through ContrastMemory (forward, load_state_dict), or use scoring='gather'.")
        if not writes:
            return base, None
        if len(writes) == 1:
            rows, old, keep = writes[0]
        else:  # several writes: the earliest old value of each row is the forward's
            rows = torch.cat([w[0] for w in writes])
            old = torch.cat([w[1] for w in writes])
            keep = _first_occurrence(rows)
        return base, (rows, keep.to(base.dtype).unsqueeze(0), old - base.index_select(0, rows))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        base, correction = _BankScores.bank_then(ctx)
        grad = grad.to(base.dtype)
        grad_v = grad.new_empty(grad.shape[0], base.shape[1])
        # The scattered score gradient is B x n_data; building it a few rows at a time keeps this
        # transient small at the point where the step's memory peaks (the start of backward).
        for start in range(0, grad.shape[0], _BACKWARD_ROWS):
            rows = slice(start, start + _BACKWARD_ROWS)
            dense = grad.new_zeros(grad[rows].shape[0], base.shape[0]).scatter_add_(1, idx[rows], grad[rows])
            grad_v[rows] = dense @ base
            if correction is not None:
                changed, keep, delta = correction
                grad_v[rows] += (dense[:, changed] * keep) @ delta
        return grad_v.to(ctx.v_dtype), None, None


# ----------------------------------------------------------------------------- the reference memory

class ContrastMemory(nn.Module):
    """CRD's memory: two banks of past embeddings and the scores against them (Tian et al. 2020).

    Buffers (the reference's layout, so its state dicts load strictly): ``params`` =
    ``[K, T, Z_v1, Z_v2, momentum]`` (Z < 0 means "not set yet"), ``memory_v1`` and ``memory_v2``,
    each ``outputSize (n_data) x inputSize (feat_dim)``, initialised uniformly in ``[-s, s]`` with
    ``s = 1 / sqrt(inputSize / 3)``. ``memory_v1`` stores student embeddings ``v1``,
    ``memory_v2`` teacher embeddings ``v2``.

    ``forward(v1, v2, y, idx=None)`` with ``v1, v2`` the L2-normalised embeddings (``B x D``),
    ``y`` the dataset indices of the batch and ``idx`` (``B x (K+1)``) the bank rows to contrast
    with, the positive first, returns ``(out_v1, out_v2)``, each ``B x (K+1) x 1``::

        out_v1[b, k] = exp(<memory_v2[idx[b, k]], v1[b]> / T) / Z_v1      (student anchor)
        out_v2[b, k] = exp(<memory_v1[idx[b, k]], v2[b]> / T) / Z_v2      (teacher anchor)

    Each ``Z`` is fixed on the first call to ``mean(exp scores) * n_data`` of that batch (the
    paper's approximation of the partition function). Afterwards the rows ``y`` of each bank move
    towards the new embeddings and are renormalised:
    ``memory_v1[y] <- normalise(momentum * memory_v1[y] + (1 - momentum) * v1)`` (same for v2),
    without gradient; scores and Z use the banks as they were before the update. Gradients reach
    ``v1`` and ``v2`` only.

    ``idx=None`` draws the negatives uniformly from all ``n_data`` rows (the reference's alias
    sampler over uniform weights), with a module-owned generator seeded with ``seed``:
    ``torch.randint(0, n_data, (world * B, K + 1), generator=g, device=memory.device)``, this rank's
    rows ``[rank * B, (rank + 1) * B)`` of it, column 0 replaced by ``y``. The generator belongs to
    the memory's device and is not part of the state dict (whose layout is the reference's): after
    loading one, draws restart from ``seed``.

    Scoring (``scoring``): ``"gather"`` copies the ``B x (K+1) x D`` sampled rows and multiplies
    (the reference's way); ``"full"`` scores the batch against the whole bank (``B x n_data``) and
    picks the sampled entries; ``"auto"`` picks by :meth:`prefers_full`. Both give the same values
    and gradients, in any call order the reference allows (several forwards before one backward,
    forwards under ``torch.no_grad``, which move the banks too, ``load_state_dict`` between a forward
    and its backward): each call's value and gradient are those against the banks as they were at
    that call. The full path keeps extra memory only in the orders that need it (see
    :class:`_PendingReads`).

    Differences from the reference, none in the math: no hard-coded CUDA device (runs wherever the module is),
    no ``.item()`` per step (Z is set with ``torch.where`` on the buffer the first time and a Python
    flag skips it afterwards; ``T`` and ``momentum`` are cached from ``params`` on construction and
    on ``load_state_dict``), no print of Z, repeated indices in ``y`` update deterministically (the
    last occurrence wins), and under ``torch.distributed`` with several processes the embeddings and
    indices of all ranks are gathered before the update (every rank writes every row), Z comes from
    the global first batch, and rank 0's banks are broadcast on the first call.
    """

    def __init__(self, inputSize: int, outputSize: int, K: int, T: float = 0.07, momentum: float = 0.5,
                 seed: int = 0, scoring: str = "auto") -> None:
        super().__init__()
        if scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {SCORING_MODES}, got {scoring!r}")
        if not 0 < K:
            raise ValueError(f"K (number of negatives) must be positive, got {K}")
        self.nLem = outputSize
        self.scoring = scoring
        self.seed = int(seed)
        self.register_buffer("params", torch.tensor([K, T, -1, -1, momentum]))
        stdv = 1.0 / math.sqrt(inputSize / 3)
        self.register_buffer("memory_v1", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))
        self._generators: dict[torch.device, torch.Generator] = {}
        self._pending = _PendingReads()
        self._cache_params()

    # -- state

    def _cache_params(self) -> None:
        """K, T and momentum as Python numbers (the float32 values the buffer holds, as the
        reference reads them), and "Z still to check" for the next call."""
        k, t, _, _, m = self.params.tolist()
        self.K, self.T, self.momentum = int(k), float(t), float(m)
        self._z_checked = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        for name in ("memory_v1", "memory_v2"):
            if prefix + name in state_dict:
                self._pending.before_overwrite(getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._cache_params()
        self._generators = {}

    @property
    def Z(self) -> torch.Tensor:
        """``[Z_v1, Z_v2]`` (negative until set)."""
        return self.params[2:4]

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator that draws negatives on ``device``, seeded with ``seed`` on first use."""
        device = torch.device(device)
        if device not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generators[device] = g
        return self._generators[device]

    def draw(self, y: torch.Tensor, rank: int = 0, world: int = 1) -> torch.Tensor:
        """``B x (K+1)`` rows to contrast with: the global batch's uniform draws, this rank's slice,
        column 0 set to ``y`` (the positives)."""
        b = y.shape[0]
        device = self.memory_v1.device
        idx = torch.randint(0, self.memory_v1.shape[0], (world * b, self.K + 1),
                            generator=self.generator(device), device=device)
        idx = idx[rank * b:(rank + 1) * b].clone()
        idx[:, 0] = y
        return idx

    @staticmethod
    def prefers_full(batch: int, n_data: int, k1: int, dim: int) -> bool:
        """The scoring rule of ``scoring="auto"``: score against the whole bank when
        ``4 * n_data <= (K + 1) * dim``.

        Per side and step the gather path moves about ``4 B (K+1) D`` floats (copy the sampled rows,
        read them in the product, again in backward) and keeps ``B (K+1) D`` of them alive until
        backward; the full path reads the bank twice (``2 N D``), writes and reads the ``B x N`` score
        gradient (``~3 B N``) and keeps only the ``B x (K+1)`` indices, but does ``N / (K+1)`` times
        the multiply-adds, in dense products that run far closer to peak than gathers. Under the rule
        the full path's largest temporary (``B x N``) is at most a quarter of the gather path's, and
        its extra arithmetic at most ``D / 4`` times the gather path's. Measured on a 2-core CPU
        (fp32, B = 64, D = 128, K = 16384, forward + backward of one side, other jobs sharing the
        cores): n_data = 50,000 (CIFAR): full 115 ms, gather 850 ms; 400,000: 500 vs 1,120 ms;
        800,000: 850 vs 890 ms (break-even, about ``(K + 1) * D / 2.6``); 1,281,167 (ImageNet):
        1,390 vs 940 ms. The rule keeps a margin below the CPU break-even (GPUs favour the product
        more); it picks full for CIFAR-100 and gather for ImageNet. ``batch`` cancels out, since
        both costs grow linearly with it.
        """
        del batch
        return 4 * n_data <= k1 * dim

    def use_full(self, batch: int, k1: int) -> bool:
        if self.scoring != "auto":
            return self.scoring == "full"
        return self.prefers_full(batch, self.memory_v1.shape[0], k1, self.memory_v1.shape[1])

    # -- forward

    def _scores(self, v: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor, full: bool) -> torch.Tensor:
        """``<memory[idx[b, k]], v[b]>``, ``B x (K+1) x 1``, before the exponential."""
        b, k1 = idx.shape
        if full:
            scores = _BankScores.apply(v, memory, idx)
            if scores.grad_fn is not None:  # its backward will read the bank: follow the writes till then
                self._pending.add(scores.grad_fn)
            return scores.unsqueeze(2)
        weight = torch.index_select(memory, 0, idx.reshape(-1)).detach().view(b, k1, memory.shape[1])
        return torch.bmm(weight, v.view(b, memory.shape[1], 1))

    @torch.no_grad()
    def _update(self, memory: torch.Tensor, v: torch.Tensor, y: torch.Tensor, src: torch.Tensor,
                keep: torch.Tensor) -> None:
        """Momentum update of rows ``y`` with embeddings ``v`` (already gathered over ranks)."""
        old = torch.index_select(memory, 0, y)
        new = old.mul(self.momentum).add_(torch.mul(v, 1 - self.momentum))
        new = new.div(new.pow(2).sum(1, keepdim=True).pow(0.5)).to(memory.dtype)
        # repeated rows: every repeat writes the last occurrence's value
        self._pending.write_rows(memory, y, old, keep, new[src])

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor,
                idx: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        rank, world = _world()
        distributed = world > 1
        b = v1.shape[0]
        y = y.view(-1).to(self.memory_v1.device, torch.long)
        first = not self._z_checked
        if first and distributed:
            _check_equal_batches(b, world, y.device)
            for bank in (self.memory_v1, self.memory_v2):
                self._pending.before_overwrite(bank)
            _broadcast_buffers(self)
        if idx is None:
            idx = self.draw(y, rank, world)
        else:
            idx = idx.to(self.memory_v1.device, torch.long).view(b, -1)
        k1 = idx.shape[1]
        full = self.use_full(b, k1)

        logit_v2 = torch.div(self._scores(v2, self.memory_v1, idx, full), self.T)
        logit_v1 = torch.div(self._scores(v1, self.memory_v2, idx, full), self.T)

        if first:
            # Z_v1, Z_v2 = mean(exp score) * n_data of this (global) batch, only where not yet set
            with torch.no_grad():
                n = self.memory_v1.shape[0]
                sums = torch.stack([logit_v1.exp().sum(), logit_v2.exp().sum()]).to(self.params.dtype)
                if distributed:
                    dist.all_reduce(sums)
                z = sums / (world * logit_v1.numel()) * n
                self.params[2:4] = torch.where(self.params[2:4] < 0, z, self.params[2:4])
            self._z_checked = True
        # exp(s/T) / Z computed as exp(s/T - log Z): one B x (K+1) tensor kept for backward, not two.
        log_z = self.params[2:4].log()  # a new tensor: later writes to params must not touch this graph
        out_v1 = torch.exp(logit_v1 - log_z[0].to(logit_v1.dtype))
        out_v2 = torch.exp(logit_v2 - log_z[1].to(logit_v2.dtype))

        # every rank applies the whole global batch's update, in rank order, so banks stay equal
        if distributed:
            vv = _all_gather(torch.cat([v1.detach(), v2.detach()], 1), world)
            g1, g2 = vv[:, :v1.shape[1]], vv[:, v1.shape[1]:]
            gy = _all_gather(y, world)
        else:
            g1, g2, gy = v1.detach(), v2.detach(), y
        src, keep = _last_occurrence(gy)
        self._update(self.memory_v1, g1, gy, src, keep)
        self._update(self.memory_v2, g2, gy, src, keep)
        return out_v1, out_v2

    def extra_repr(self) -> str:
        n, d = self.memory_v1.shape
        return f"n_data={n}, feat_dim={d}, K={self.K}, T={self.T:g}, momentum={self.momentum:g}, scoring={self.scoring}"


# ----------------------------------------------------------------------------- the queue variant

class QueueContrast(nn.Module):
    """FIFO queue of teacher embeddings with an InfoNCE loss: this project's addition, not in the
    CRD paper (Tian, Krishnan & Isola, ICLR 2020) nor its code.

    For datasets whose two ``n_data x feat_dim`` CRD banks would not fit (or whose per-sample
    indices are unavailable), the negatives are the ``K`` most recent teacher embeddings (as in
    MoCo), kept in the buffer ``queue`` (``K x feat_dim``) with write position ``queue_ptr``.
    With the student embedding as the anchor::

        logits_b = [<v_s[b], v_t[b]>, <v_s[b], queue[0]>, ..., <v_s[b], queue[K-1]>] / T
        loss     = mean_b cross_entropy(logits_b, target 0)

    computed with the queue as it was before this batch; then the batch's teacher embeddings
    (detached) overwrite the oldest entries (the ring wraps, so any batch size works; a batch larger
    than K keeps its last K). Gradients reach ``v_s`` and, through the positive, ``v_t``, so both
    projection heads train as in CRD. The queue starts as random unit vectors. Under
    ``torch.distributed`` the keys of all ranks are enqueued in rank order on every rank (and rank
    0's queue is broadcast on the first call), so the queues stay identical and equal to a
    one-process run on the global batch.
    """

    def __init__(self, feat_dim: int, K: int, T: float = 0.07) -> None:
        super().__init__()
        if not 0 < K:
            raise ValueError(f"K (queue length) must be positive, got {K}")
        self.K = int(K)
        self.T = float(T)
        self.register_buffer("queue", nn.functional.normalize(torch.randn(K, feat_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._synced = False

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)
        self._synced = False

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (``n x feat_dim``) over the oldest entries and advance the pointer."""
        n = keys.shape[0]
        skip = max(0, n - self.K)  # only the last K of an oversized batch survive
        keys = keys[skip:]
        pos = (self.queue_ptr + skip + torch.arange(keys.shape[0], device=self.queue.device)) % self.K
        self.queue.index_copy_(0, pos, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + n) % self.K)

    def forward(self, v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
        _, world = _world()
        if world > 1 and not self._synced:
            _check_equal_batches(v_s.shape[0], world, v_s.device)
            _broadcast_buffers(self)
        self._synced = True
        l_pos = (v_s * v_t).sum(1, keepdim=True)
        # a copy of the queue: the enqueue below writes into it before backward runs
        l_neg = v_s @ self.queue.clone().t()
        logits = torch.cat([l_pos, l_neg], 1) / self.T
        target = torch.zeros(v_s.shape[0], dtype=torch.long, device=v_s.device)
        loss = nn.functional.cross_entropy(logits, target)
        keys = _all_gather(v_t, world) if world > 1 else v_t.detach()
        self.enqueue(keys)
        return loss

    def extra_repr(self) -> str:
        return f"K={self.K}, feat_dim={self.queue.shape[1]}, T={self.T:g}"
