"""CRD, WCoRD, RRD and the queue memory under every call order the reference code allows: several
forwards before one backward, forwards under ``torch.no_grad``, ``load_state_dict`` between a
forward and its backward or between steps, a graph kept across steps, two losses at once.

Each order is run on the module and on a straightforward formulation written here the way the
reference computes it (rows gathered by indexing, a copy autograd keeps; the memory moved in place
afterwards), and values, the gradient of every call's inputs, the heads' gradients and the final
memories are compared. The last tests check that the full-bank path keeps only what the order needs.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdzoo.crd import CRDLoss, RRDLoss, WCoRDLoss

EPS = 1e-7
B, N_DATA, K = 4, 20, 5
TOL = dict(rtol=1e-9, atol=1e-12)


def make_opt(**kw) -> SimpleNamespace:
    base = dict(s_dim=12, t_dim=10, feat_dim=8, nce_k=K, nce_t=0.07, nce_m=0.5, n_data=N_DATA)
    base.update(kw)
    return SimpleNamespace(**base)


def batch(step: int, dup: bool = False):
    """Batch ``step``: features, indices ``y`` overlapping the neighbouring steps' (so that a later
    update rewrites rows an earlier forward read) and ``idx`` reading rows 0..7 besides its own."""
    g = torch.Generator().manual_seed(500 + step)
    f_s = torch.randn(B, 12, generator=g, dtype=torch.float64)
    f_t = torch.randn(B, 10, generator=g, dtype=torch.float64)
    y = (torch.arange(B) + 2 * step) % 8
    if dup:
        y[-1] = y[0]
    idx = torch.randint(0, N_DATA, (B, K + 1), generator=g)
    idx[:, 0] = y
    idx[:, 1:3] = torch.randint(0, 8, (B, 2), generator=g)
    return f_s, f_t, y, idx


# ----------------------------------------------------------------------------- the reference's way

def binary_nce(p: torch.Tensor, n_data: int) -> torch.Tensor:
    mpn = (p.shape[1] - 1) / n_data
    return -(torch.log(p[:, 0] / (p[:, 0] + mpn + EPS)).sum()
             + torch.log(mpn / (p[:, 1:] + mpn + EPS)).sum()) / p.shape[0]


class GatherCRD:
    """CRD's contrastive term as the reference computes it: the sampled rows copied out of the banks
    by indexing (autograd keeps that copy), ``h = exp(<m, v> / T) / Z`` with Z fixed by the first
    call, binary NCE per anchor, then rows ``y`` moved towards the embeddings in place, row by row.
    The heads are a copy of the module's (they are not what these tests are about)."""

    def __init__(self, crd: CRDLoss) -> None:
        twin = copy.deepcopy(crd)
        self.embed = twin.embed
        self.heads = [p for p in twin.parameters() if p.requires_grad]
        self.twin = twin
        self.mem_s = crd.contrast.memory_v1.detach().clone()
        self.mem_t = crd.contrast.memory_v2.detach().clone()
        self.z = crd.contrast.params[2:4].detach().clone()
        self.T, self.momentum = crd.contrast.T, crd.contrast.momentum

    def contrastive(self, v_s: torch.Tensor, v_t: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        e_s = torch.exp(torch.bmm(self.mem_t[idx], v_s.unsqueeze(2)).squeeze(2) / self.T)
        e_t = torch.exp(torch.bmm(self.mem_s[idx], v_t.unsqueeze(2)).squeeze(2) / self.T)
        if self.z[0] < 0:
            self.z = torch.stack([e_s.detach().mean(), e_t.detach().mean()]) * N_DATA
        loss = binary_nce(e_s / self.z[0], N_DATA) + binary_nce(e_t / self.z[1], N_DATA)
        with torch.no_grad():
            for mem, v in ((self.mem_s, v_s), (self.mem_t, v_t)):
                new = F.normalize(self.momentum * mem[y] + (1 - self.momentum) * v, dim=1)
                for i, row in enumerate(y.tolist()):  # in batch order: the last repeat wins
                    mem[row] = new[i]
        return loss

    def __call__(self, f_s, f_t, y, idx):
        return self.contrastive(*self.embed(f_s, f_t), y, idx)

    def load_memory(self, state: dict) -> None:
        self.mem_s.copy_(state["memory_v1"])
        self.mem_t.copy_(state["memory_v2"])
        self.z = state["params"][2:4].clone()

    def memories(self):
        return [self.mem_s, self.mem_t, self.z]


class GatherWCoRD(GatherCRD):
    """WCoRD's two terms: the global one on :class:`GatherCRD`'s memory (plus the gradient penalty of
    the module copy, which reads no memory), the local one from the module copy."""

    def __call__(self, f_s, f_t, y, idx):
        v_s, v_t = self.embed(f_s, f_t)
        loss_global = self.contrastive(v_s, v_t, y, idx)
        if self.twin.critic == "gp":
            loss_global = loss_global + self.twin.gp_weight * self.twin.gradient_penalty(f_s, f_t)
        return loss_global + self.twin.local_loss(v_s, v_t)


class Twins:
    """The module under test and the reference, fed the same calls; every call gets its own leaf
    inputs, so that each call's gradient is compared on its own even when losses are summed."""

    def __init__(self, module, reference=None) -> None:
        self.module = module
        self.ref = reference if reference is not None else GatherCRD(module)
        self.leaves: list[tuple[list, list]] = []

    def module_loss(self, f_s, f_t, y, idx) -> torch.Tensor:
        out = self.module(f_s, f_t, y, idx)
        return out[0] + out[1] if isinstance(out, tuple) else out  # WCoRD returns (global, local)

    def forward(self, step: int, dup: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        f_s, f_t, y, idx = batch(step, dup)
        grad = torch.is_grad_enabled()
        ours = [f_s.clone().requires_grad_(grad), f_t.clone().requires_grad_(grad)]
        theirs = [f_s.clone().requires_grad_(grad), f_t.clone().requires_grad_(grad)]
        self.leaves.append((ours, theirs))
        a = self.module_loss(*ours, y, idx)
        b = self.ref(*theirs, y, idx)
        torch.testing.assert_close(a, b, **TOL)
        return a, b

    def step(self, step: int, dup: bool = False) -> None:
        a, b = self.forward(step, dup)
        a.backward()
        b.backward()
        self.check()

    def module_memories(self):
        c = self.module.contrast
        return [c.memory_v1, c.memory_v2, c.params[2:4]]

    def check(self) -> None:
        for ours, theirs in self.leaves:
            for a, b in zip(ours, theirs):
                if b.grad is None:
                    assert a.grad is None
                else:
                    torch.testing.assert_close(a.grad, b.grad, **TOL)
        heads = [p for p in self.module.parameters() if p.requires_grad]
        for a, b in zip(heads, self.ref.heads, strict=True):
            if b.grad is None:
                assert a.grad is None
            else:
                torch.testing.assert_close(a.grad, b.grad, **TOL)
        for a, b in zip(self.module_memories(), self.ref.memories(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def crd_twins(scoring: str = "full", seed: int = 0, **kw) -> Twins:
    torch.manual_seed(seed)
    return Twins(CRDLoss(make_opt(crd_scoring=scoring, **kw)).double())


SCORINGS = ["full", "gather"]


# ----------------------------------------------------------------------------- CRD

@pytest.mark.parametrize("scoring", SCORINGS)
def test_two_forwards_then_one_backward_of_the_sum(scoring):
    t = crd_twins(scoring)
    (a1, b1), (a2, b2) = t.forward(0), t.forward(1)
    (a1 + a2).backward()
    (b1 + b2).backward()
    t.check()
    t.step(2)  # and the ordinary order carries on from there


@pytest.mark.parametrize("scoring", SCORINGS)
def test_three_forwards_with_a_repeated_row(scoring):
    t = crd_twins(scoring)
    t.step(0)
    pairs = [t.forward(1), t.forward(2, dup=True), t.forward(3)]
    sum(a for a, _ in pairs).backward()
    sum(b for _, b in pairs).backward()
    t.check()


def test_backwards_interleaved_with_forwards():
    t = crd_twins()
    (a1, b1), (a2, b2) = t.forward(0), t.forward(1)
    a2.backward()
    b2.backward()
    t.check()
    a3, b3 = t.forward(2)
    (a1 + 2 * a3).backward()
    (b1 + 2 * b3).backward()
    t.check()


@pytest.mark.parametrize("scoring", SCORINGS)
def test_forwards_under_no_grad_move_the_memory(scoring):
    t = crd_twins(scoring)
    with torch.no_grad():
        t.forward(0)  # the very first call, under no_grad, fixes Z as the reference's does
    t.check()
    t.step(1)
    with torch.no_grad():
        t.forward(2)
    t.check()
    t.step(3)
    assert not t.module.contrast._pending.waiting(t.module.contrast.memory_v1)


def test_backward_again_on_a_retained_graph_after_another_forward():
    t = crd_twins()
    a1, b1 = t.forward(0)
    a1.backward(retain_graph=True)
    b1.backward(retain_graph=True)
    a2, b2 = t.forward(1)
    (a1 + a2).backward()
    (b1 + b2).backward()
    t.check()


@pytest.mark.parametrize("scoring", SCORINGS)
def test_load_state_dict_between_a_forward_and_its_backward(scoring):
    t = crd_twins(scoring)
    t.step(0)
    torch.manual_seed(9)
    other = CRDLoss(make_opt()).double()
    other(*batch(7))  # a loaded memory whose Z is set
    loaded = {k: v.clone() for k, v in other.contrast.state_dict().items()}
    a1, b1 = t.forward(1)
    t.module.contrast.load_state_dict(loaded)
    t.ref.load_memory(loaded)
    a2, b2 = t.forward(2)
    (a1 + a2).backward()
    (b1 + b2).backward()
    t.check()
    t.step(3)


def test_load_state_dict_between_steps():
    t = crd_twins()
    t.step(0)
    saved = {k: v.clone() for k, v in t.module.state_dict().items()}
    t.step(1)
    t.module.load_state_dict(saved)  # heads and memory back to after step 0
    t.ref.load_memory({k[len("contrast."):]: v for k, v in saved.items() if k.startswith("contrast.")})
    with torch.no_grad():
        for p, q in zip(t.ref.heads, [saved[k] for k in ("embed_s.linear.weight", "embed_s.linear.bias",
                                                          "embed_t.linear.weight", "embed_t.linear.bias")]):
            p.copy_(q)
    t.step(2)


def test_a_graph_kept_over_many_steps():
    """Seven later steps rewrite more rows than the bank has: the pending forward switches to one
    copy of the bank instead of collecting old rows without bound."""
    t = crd_twins()
    a0, b0 = t.forward(0)
    nodes = bank_nodes(a0)
    for step in range(1, 8):
        t.step(step)
    assert all(node.detached for node in nodes)
    a0.backward()
    b0.backward()
    t.check()


def test_two_crd_losses_at_once():
    first, second = crd_twins(seed=1), crd_twins(seed=2)
    pairs = [first.forward(0), second.forward(0), first.forward(1), second.forward(2)]
    sum(a for a, _ in pairs).backward()
    sum(b for _, b in pairs).backward()
    first.check()
    second.check()


# ----------------------------------------------------------------------------- WCoRD

@pytest.mark.parametrize("critic", ["spectral", "gp", "none"])
def test_wcord_two_forwards_then_one_backward(critic):
    torch.manual_seed(0)
    w = WCoRDLoss(make_opt(crd_scoring="full", critic=critic)).double()
    t = Twins(w, GatherWCoRD(w))
    (a1, b1), (a2, b2) = t.forward(0), t.forward(1)
    (a1 + a2).backward()
    (b1 + b2).backward()
    t.check()
    with torch.no_grad():
        t.forward(2)
    t.step(3)


# ----------------------------------------------------------------------------- RRD and the CRD queue

class QueueReference:
    """A FIFO queue written row by row at a Python pointer, similarities against the queue's values
    taken by indexing (a copy): RRD's relational loss or the CRD queue's InfoNCE."""

    def __init__(self, module, queue: torch.Tensor, kind: str) -> None:
        self.twin = copy.deepcopy(module)
        self.heads = [p for p in self.twin.parameters() if p.requires_grad]
        self.queue, self.ptr, self.kind = queue.detach().clone(), 0, kind

    def push(self, keys: torch.Tensor) -> None:
        for row in keys.detach():
            self.queue[self.ptr] = row
            self.ptr = (self.ptr + 1) % self.queue.shape[0]

    def __call__(self, f_s, f_t, y, idx):
        rows = torch.arange(self.queue.shape[0])
        if self.kind == "crd-queue":
            v_s, v_t = self.twin.embed(f_s, f_t)
            logits = torch.cat([(v_s * v_t).sum(1, keepdim=True), v_s @ self.queue[rows].t()], 1) / self.twin.contrast.T
            loss = -(logits[:, 0] - torch.logsumexp(logits, 1)).mean()
            self.push(v_t)
            return loss
        s = F.normalize(self.twin.embed_s(f_s), dim=1)
        with torch.no_grad():
            t = F.normalize(self.twin.embed_t(f_t), dim=1)
        if self.kind == "2025":
            self.push(t)
        target = F.softmax(t @ self.queue[rows].t() / self.twin.nce_t_t, dim=1)
        loss = -(target * F.log_softmax(s @ self.queue[rows].t() / self.twin.nce_t_s, dim=1)).sum(1).mean()
        if self.kind == "2024":
            self.push(t)
        return loss

    def load_memory(self, state: dict) -> None:
        self.queue.copy_(state["queue"])
        self.ptr = int(state["queue_ptr"])

    def memories(self):
        return [self.queue, torch.tensor([self.ptr])]


class QueueTwins(Twins):
    def __init__(self, module, kind: str) -> None:
        self.holder = module.contrast if kind == "crd-queue" else module
        super().__init__(module, QueueReference(module, self.holder.queue, kind))

    def module_loss(self, f_s, f_t, y, idx) -> torch.Tensor:
        if isinstance(self.module, RRDLoss):  # RRD's forward takes no indices
            return self.module(f_s, f_t)
        return self.module(f_s, f_t, y, idx)

    def module_memories(self):
        return [self.holder.queue, self.holder.queue_ptr]


@pytest.mark.parametrize("kind", ["2024", "2025", "crd-queue"])
def test_queues_under_every_order(kind):
    torch.manual_seed(0)
    if kind == "crd-queue":
        module = CRDLoss(make_opt(crd_memory="queue", nce_k=6)).double()
    else:
        module = RRDLoss(SimpleNamespace(s_dim=12, t_dim=10, feat_dim=8, nce_k=6, rrd_variant=kind)).double()
    t = QueueTwins(module, kind)
    (a1, b1), (a2, b2) = t.forward(0), t.forward(1)  # 8 keys into a queue of 6: it wraps
    (a1 + a2).backward()
    (b1 + b2).backward()
    t.check()
    with torch.no_grad():
        t.forward(2)
    t.check()
    a3, b3 = t.forward(3)
    state = {k: v.clone() for k, v in t.holder.state_dict().items() if k in ("queue", "queue_ptr")}
    state["queue"] = F.normalize(torch.randn_like(state["queue"]), dim=1)
    t.holder.load_state_dict(state, strict=False)
    t.ref.load_memory(state)
    a4, b4 = t.forward(4)
    (a3 + a4).backward()
    (b3 + b4).backward()
    t.check()


# ----------------------------------------------------------------------------- what is kept

def bank_nodes(loss: torch.Tensor) -> list:
    """The full-bank scoring nodes in ``loss``'s graph."""
    found, seen, todo = [], set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "_BankScoresBackward":
            found.append(node)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return found


def test_the_ordinary_order_keeps_only_its_own_update():
    crd = crd_twins().module
    f_s, f_t, y, idx = batch(0)
    loss0 = crd(f_s.requires_grad_(), f_t, y, idx)
    nodes0 = bank_nodes(loss0)
    assert len(nodes0) == 2
    loss0.backward()
    loss1 = crd(*batch(1))  # loss0's graph is still referenced, its backward done
    for node in nodes0 + bank_nodes(loss1):
        assert len(node.writes) == 1 and node.writes[0][1].shape == (B, 8) and not node.detached
    assert sorted(map(id, crd.contrast._pending.waiting(crd.contrast.memory_v1)
                      + crd.contrast._pending.waiting(crd.contrast.memory_v2))) == sorted(map(id, bank_nodes(loss1)))
    with torch.no_grad():
        crd(*batch(2))
    assert len(crd.contrast._pending._nodes) == 2  # a no_grad forward leaves nothing to follow


def test_unusual_orders_keep_the_rows_they_overwrite_or_one_shared_copy():
    crd = crd_twins().module
    f_s = batch(0)[0].requires_grad_()
    loss0 = crd(f_s, *batch(0)[1:])
    crd(*batch(1))
    for node in bank_nodes(loss0):  # its own update and the next one's old rows, B rows each
        assert [w[1].shape for w in node.writes] == [(B, 8), (B, 8)] and not node.detached
    loss2 = crd(f_s, *batch(2)[1:])
    crd.contrast.load_state_dict(crd.contrast.state_dict())
    copies = {}
    for node in bank_nodes(loss0) + bank_nodes(loss2):
        assert node.detached and node.writes[-1][0] is None
        copies.setdefault(id(node.memory), set()).add(id(node.writes[-1][1]))
    assert [len(ids) for ids in copies.values()] == [1, 1]  # one copy per bank, shared
    assert not crd.contrast._pending.waiting(crd.contrast.memory_v1)


def test_a_write_that_bypasses_the_memory_raises():
    crd = crd_twins().module
    f_s = batch(0)[0].requires_grad_()
    loss = crd(f_s, *batch(0)[1:])
    with torch.no_grad():
        crd.contrast.memory_v2.mul_(1.0)
    with pytest.raises(RuntimeError, match="modified in place, outside ContrastMemory"):
        loss.backward()


def test_a_module_copy_does_not_follow_the_original_forwards():
    crd = crd_twins().module
    loss = crd(*batch(0))
    clone = copy.deepcopy(crd)
    clone(*batch(1))
    assert [len(node.writes) for node in bank_nodes(loss)] == [1, 1]


def test_following_pending_backwards_unpacks_nothing():
    """Saved-tensor hooks (e.g. save_on_cpu) see the indices unpacked only by the backward passes."""
    crd = crd_twins().module
    unpacked = []

    def unpack(t):
        if t.dtype == torch.long and t.shape == (B, K + 1):
            unpacked.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack):
        for step in range(3):
            f_s, f_t, y, idx = batch(step)
            crd(f_s.requires_grad_(), f_t, y, idx).backward()
    assert len(unpacked) == 3 * 2  # one per bank and backward
