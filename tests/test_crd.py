"""CRD (crd/criterion.py, crd/memory.py): the loss, gradients and memory against a naive
re-implementation written here from the paper's formulas, a hand-worked case, the reference state-dict
layout, both scoring paths, the queue variant, and two gloo processes against one process."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from ddp_launch import WORLD, assert_all_ok, launch
import torch
import torch.nn.functional as F

from conftest import FIXTURES
from kdzoo.crd.criterion import ContrastLoss, ContrastMemory, CRDLoss, Embed, Normalize, QueueContrast

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
EPS = 1e-7


def make_opt(**kw) -> SimpleNamespace:
    base = dict(s_dim=12, t_dim=10, feat_dim=8, nce_k=5, nce_t=0.07, nce_m=0.5, n_data=20)
    base.update(kw)
    return SimpleNamespace(**base)


# ----------------------------------------------------------------------------- naive re-implementation

def naive_normalize(h: torch.Tensor) -> torch.Tensor:
    return torch.stack([row / torch.sqrt((row * row).sum()) for row in h])


def naive_nce(p: torch.Tensor, n_data: int) -> torch.Tensor:
    """Binary NCE of one anchor side from P (B x (K+1)), term by term."""
    b, k1 = p.shape
    mpn = (k1 - 1) / n_data
    total = 0
    for i in range(b):
        total = total + torch.log(p[i, 0] / (p[i, 0] + mpn + EPS))
        for k in range(1, k1):
            total = total + torch.log(mpn / (p[i, k] + mpn + EPS))
    return -total / b


class NaiveCRD:
    """CRD from the formulas: heads as plain tensors, banks as plain tensors, loops everywhere."""

    def __init__(self, crd: CRDLoss) -> None:
        sd = {k: v.detach().clone() for k, v in crd.state_dict().items()}
        self.w = {k: sd[f"embed_{k}.linear.weight"].requires_grad_() for k in "st"}
        self.b = {k: sd[f"embed_{k}.linear.bias"].requires_grad_() for k in "st"}
        self.mem1, self.mem2 = sd["contrast.memory_v1"], sd["contrast.memory_v2"]
        self.z = [-1.0, -1.0]
        self.T = float(torch.tensor(crd.contrast.params[1].item()))
        self.m = 0.5
        self.n = self.mem1.shape[0]

    def params(self) -> list[torch.Tensor]:
        return [self.w["s"], self.b["s"], self.w["t"], self.b["t"]]

    def step(self, f_s: torch.Tensor, f_t: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        v_s = naive_normalize(f_s @ self.w["s"].t() + self.b["s"])
        v_t = naive_normalize(f_t @ self.w["t"].t() + self.b["t"])
        bsz, k1 = idx.shape
        # student anchor against the teacher bank, teacher anchor against the student bank
        e_s = torch.stack([torch.stack([torch.exp(torch.dot(self.mem2[idx[i, k]], v_s[i]) / self.T)
                                        for k in range(k1)]) for i in range(bsz)])
        e_t = torch.stack([torch.stack([torch.exp(torch.dot(self.mem1[idx[i, k]], v_t[i]) / self.T)
                                        for k in range(k1)]) for i in range(bsz)])
        if self.z[0] < 0:
            self.z[0] = e_s.detach().mean().item() * self.n
        if self.z[1] < 0:
            self.z[1] = e_t.detach().mean().item() * self.n
        loss = naive_nce(e_s / self.z[0], self.n) + naive_nce(e_t / self.z[1], self.n)
        # sequential momentum update from the pre-update banks (the last repeat of a row wins)
        new1, new2 = self.mem1.clone(), self.mem2.clone()
        for i in range(bsz):
            r = int(y[i])
            for new, old, v in ((new1, self.mem1, v_s), (new2, self.mem2, v_t)):
                row = self.m * old[r] + (1 - self.m) * v[i].detach()
                new[r] = row / torch.sqrt((row * row).sum())
        self.mem1, self.mem2 = new1, new2
        return loss


def batch(step: int, b: int, opt: SimpleNamespace, dtype=torch.float64, dup: bool = False):
    g = torch.Generator().manual_seed(100 + step)
    f_s = torch.randn(b, opt.s_dim, generator=g, dtype=dtype)
    f_t = torch.randn(b, opt.t_dim, generator=g, dtype=dtype)
    y = torch.randperm(opt.n_data, generator=g)[:b]
    if dup:
        y[-1] = y[0]
    idx = torch.randint(0, opt.n_data, (b, opt.nce_k + 1), generator=g)
    idx[:, 0] = y
    idx[:, 1] = y.roll(1)  # negatives that are other samples of the batch: rows the update changes
    return f_s, f_t, y, idx


def sgd(params, lr: float = 0.5) -> None:
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
            p.grad = None


@pytest.mark.parametrize("given", [True, False], ids=["contrast_idx", "drawn"])
@pytest.mark.parametrize("scoring", ["full", "gather"])
def test_matches_naive_implementation(scoring, given):
    torch.manual_seed(0)
    opt = make_opt(crd_scoring=scoring, seed=7)
    crd = CRDLoss(opt).double()
    naive = NaiveCRD(crd)
    draws = torch.Generator().manual_seed(7)
    for step in range(3):
        f_s, f_t, y, idx = batch(step, 4, opt, dup=(step == 2))
        if not given:
            idx = torch.randint(0, opt.n_data, (4, opt.nce_k + 1), generator=draws)
            idx[:, 0] = y
        fs1, ft1 = f_s.clone().requires_grad_(), f_t.clone().requires_grad_()
        fs2, ft2 = f_s.clone().requires_grad_(), f_t.clone().requires_grad_()
        loss = crd(fs1, ft1, y, idx if given else None)
        expected = naive.step(fs2, ft2, y, idx)
        assert loss.dim() == 0
        loss.backward()
        expected.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
        torch.testing.assert_close(fs1.grad, fs2.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ft1.grad, ft2.grad, rtol=1e-9, atol=1e-12)
        ours = [crd.embed_s.linear.weight, crd.embed_s.linear.bias, crd.embed_t.linear.weight, crd.embed_t.linear.bias]
        for p, q in zip(ours, naive.params()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(crd.contrast.memory_v1, naive.mem1, rtol=0, atol=1e-12)
        torch.testing.assert_close(crd.contrast.memory_v2, naive.mem2, rtol=0, atol=1e-12)
        assert crd.contrast.params[2:4].tolist() == pytest.approx(naive.z, rel=1e-12)
        sgd(ours)
        sgd(naive.params())
    assert crd.contrast.params.tolist() == pytest.approx([5, 0.07, naive.z[0], naive.z[1], 0.5], rel=1e-7)


def test_scoring_paths_agree_float32():
    """Full-bank product and row gather, larger sizes, fp32: same loss, gradients and memory."""
    results = []
    for scoring in ("full", "gather"):
        torch.manual_seed(3)
        opt = make_opt(s_dim=32, t_dim=48, feat_dim=16, nce_k=64, n_data=300, crd_scoring=scoring)
        crd = CRDLoss(opt)
        out = []
        for step in range(3):
            f_s, f_t, y, idx = batch(step, 16, opt, dtype=torch.float32, dup=True)
            f_s.requires_grad_()
            loss = crd(f_s, f_t, y, idx if step != 1 else None)
            loss.backward()
            out.append((loss.detach(), f_s.grad, crd.embed_t.linear.weight.grad.clone()))
            sgd(crd.parameters(), lr=0.1)
        results.append((out, crd.state_dict()))
    (a, sa), (b, sb) = results
    for (la, ga, wa), (lb, gb, wb) in zip(a, b):
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-5)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-5)


def test_auto_scoring_rule():
    # CIFAR-100: the whole-bank product; ImageNet: the row gather
    assert ContrastMemory.prefers_full(64, 50_000, 16_385, 128)
    assert not ContrastMemory.prefers_full(64, 1_281_167, 16_385, 128)
    assert ContrastMemory.prefers_full(64, 16_385 * 32, 16_385, 128)
    assert not ContrastMemory.prefers_full(64, 16_385 * 32 + 1, 16_385, 128)
    mem = ContrastMemory(8, 20, 5, scoring="gather")
    assert not mem.use_full(4, 6)
    mem.scoring = "full"
    assert mem.use_full(4, 6)
    with pytest.raises(ValueError, match="scoring"):
        ContrastMemory(8, 20, 5, scoring="fast")


# ----------------------------------------------------------------------------- hand-worked case

def test_hand_computed_tiny_case():
    """n_data = 4, K = 2, feat_dim = 2, T = 0.5: the four unit vectors of the axes as banks."""
    mem = ContrastMemory(2, 4, 2, T=0.5, momentum=0.5)
    axes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    mem.memory_v1.copy_(axes)
    mem.memory_v2.copy_(axes)
    v1 = torch.tensor([[1.0, 0.0]])  # student embedding
    v2 = torch.tensor([[0.0, 1.0]])  # teacher embedding
    out_v1, out_v2 = mem(v1, v2, torch.tensor([0]), torch.tensor([[0, 1, 2]]))

    e = math.e
    # student anchor vs teacher bank rows 0, 1, 2: <.,v1> = 1, 0, -1 -> exp(2), 1, exp(-2)
    s_scores = [e ** 2, 1.0, e ** -2]
    z1 = sum(s_scores) / 3 * 4
    # teacher anchor vs student bank rows 0, 1, 2: <.,v2> = 0, 1, 0 -> 1, exp(2), 1
    t_scores = [1.0, e ** 2, 1.0]
    z2 = sum(t_scores) / 3 * 4
    assert mem.params[2].item() == pytest.approx(z1, rel=1e-6)
    assert mem.params[3].item() == pytest.approx(z2, rel=1e-6)
    assert out_v1.shape == out_v2.shape == (1, 3, 1)
    assert out_v1.flatten().tolist() == pytest.approx([s / z1 for s in s_scores], rel=1e-6)
    assert out_v2.flatten().tolist() == pytest.approx([s / z2 for s in t_scores], rel=1e-6)

    mpn = 2 / 4  # K * Pn

    def nce(p):
        return -(math.log(p[0] / (p[0] + mpn + EPS)) + sum(math.log(mpn / (q + mpn + EPS)) for q in p[1:]))

    by_hand = nce([s / z1 for s in s_scores]) + nce([s / z2 for s in t_scores])
    loss = ContrastLoss(4)(out_v1) + ContrastLoss(4)(out_v2)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    # row 0 moves half way towards the new embedding and is renormalised; the others stay
    h = math.sqrt(0.5)
    torch.testing.assert_close(mem.memory_v1, axes)  # (1,0) averaged with (1,0)
    torch.testing.assert_close(mem.memory_v2, torch.tensor([[h, h], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))


def test_embed_and_normalize():
    emb = Embed(12, 4)
    assert [k for k in emb.state_dict()] == ["linear.weight", "linear.bias"]
    x = torch.randn(3, 3, 2, 2)
    out = emb(x)
    h = x.reshape(3, -1) @ emb.linear.weight.t() + emb.linear.bias
    torch.testing.assert_close(out, h / h.norm(dim=1, keepdim=True))
    z = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(Normalize(2)(z), torch.tensor([[0.6, 0.8]]))
    assert Embed().linear.in_features == 1024 and Embed().linear.out_features == 128


# ----------------------------------------------------------------------------- state dicts

def layout(module: torch.nn.Module):
    return [(k, list(v.shape)) for k, v in module.state_dict().items()]


def test_state_dict_layout_matches_reference():
    path = FIXTURES / "reference_loss_modules.json"
    name = "CRDLoss(s_dim=256, t_dim=256, feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5, n_data=50000)"
    expected = [(k, list(shape)) for k, shape in json.loads(path.read_text())[name]]
    crd = CRDLoss(SimpleNamespace(s_dim=256, t_dim=256, feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5,
                                  n_data=50000))
    assert layout(crd) == expected
    params = crd.contrast.params
    assert params.tolist() == pytest.approx([16384, 0.07, -1, -1, 0.5])
    stdv = 1 / math.sqrt(128 / 3)
    mem = crd.contrast.memory_v1
    assert mem.min() >= -stdv and mem.max() <= stdv and mem.max() > 0.99 * stdv


def test_queue_state_dict_layout():
    crd = CRDLoss(make_opt(crd_memory="queue"))
    assert layout(crd) == [("embed_s.linear.weight", [8, 12]), ("embed_s.linear.bias", [8]),
                           ("embed_t.linear.weight", [8, 10]), ("embed_t.linear.bias", [8]),
                           ("contrast.queue", [5, 8]), ("contrast.queue_ptr", [1])]


def test_state_dict_round_trip_continues_identically():
    opt = make_opt(seed=1)
    torch.manual_seed(0)
    a = CRDLoss(opt)
    for step in range(2):
        f_s, f_t, y, idx = batch(step, 4, opt, dtype=torch.float32)
        a(f_s, f_t, y, idx).backward()
    saved = {k: v.clone() for k, v in a.state_dict().items()}
    assert (saved["contrast.params"][2:4] > 0).all()

    torch.manual_seed(1)  # different initial weights and banks, overwritten by the load
    b = CRDLoss(opt)
    b.load_state_dict(saved, strict=True)
    f_s, f_t, y, idx = batch(2, 4, opt, dtype=torch.float32)
    la, lb = a(f_s, f_t, y, idx), b(f_s, f_t, y, idx)
    assert la.item() == lb.item()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # Z kept from the checkpoint, not re-set from this batch
    assert torch.equal(b.contrast.params, saved["contrast.params"])

    # a state dict whose Z is unset (-1, as a fresh reference module saves it) gets Z on the next call
    fresh = CRDLoss(opt).state_dict()
    b.load_state_dict(fresh, strict=True)
    assert b.contrast.params[2:4].tolist() == [-1, -1]
    b(f_s, f_t, y, idx)
    assert (b.contrast.params[2:4] > 0).all()


def test_cached_params_follow_a_loaded_state_dict():
    mem = ContrastMemory(8, 20, 5, T=0.07, momentum=0.5)
    sd = mem.state_dict()
    sd["params"] = torch.tensor([5, 0.1, -1, -1, 0.9])
    mem.load_state_dict(sd)
    assert mem.T == pytest.approx(0.1) and mem.momentum == pytest.approx(0.9) and mem.K == 5


# ----------------------------------------------------------------------------- memory properties

def test_memory_rows_stay_unit_norm_and_only_batch_rows_change():
    torch.manual_seed(0)
    opt = make_opt(n_data=50, nce_k=7)
    crd = CRDLoss(opt)
    for step in range(4):
        before = [crd.contrast.memory_v1.clone(), crd.contrast.memory_v2.clone()]
        f_s, f_t, y, idx = batch(step, 6, opt, dtype=torch.float32, dup=(step == 3))
        crd(f_s, f_t, y, idx if step % 2 else None).backward()
        changed = torch.zeros(opt.n_data, dtype=torch.bool)
        changed[y] = True
        for old, new in zip(before, [crd.contrast.memory_v1, crd.contrast.memory_v2]):
            assert torch.equal(old[~changed], new[~changed])
            assert not torch.isclose(old[changed], new[changed]).all(dim=1).any()
            torch.testing.assert_close(new[changed].norm(dim=1), torch.ones(int(changed.sum())))
        assert not crd.contrast.memory_v1.requires_grad


@pytest.mark.parametrize("scoring", ["full", "gather"])
def test_repeated_index_last_occurrence_wins(scoring):
    """A row present several times in y gets the update of its last occurrence (deterministic, as a
    row-by-row update would leave it), computed from the row before this batch."""
    mem = ContrastMemory(2, 4, 2, T=0.5, momentum=0.5, scoring=scoring)
    axes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    mem.memory_v1.copy_(axes)
    mem.memory_v2.copy_(axes)
    v = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    mem(v, v, torch.tensor([2, 2, 2]), torch.tensor([[2, 0, 1]] * 3))
    h = math.sqrt(0.5)
    expected = axes.clone()
    expected[2] = torch.tensor([-h, h])  # normalise(0.5 * (-1, 0) + 0.5 * (0, 1))
    torch.testing.assert_close(mem.memory_v1, expected)
    torch.testing.assert_close(mem.memory_v2, expected)


def test_last_occurrence_helper():
    from kdzoo.crd.memory import _last_occurrence

    src, keep = _last_occurrence(torch.tensor([3, 1, 3, 2, 1, 3]))
    assert src.tolist() == [5, 4, 5, 3, 4, 5]
    assert keep.tolist() == [False, False, False, True, True, True]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda_like_on_cpu():
    results = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        opt = make_opt(n_data=300, nce_k=64, crd_scoring="full")
        crd = CRDLoss(opt).to(device)
        for step in range(2):
            f_s, f_t, y, idx = (t.to(device) for t in batch(step, 8, opt, dtype=torch.float32))
            loss = crd(f_s, f_t, y, idx)
            loss.backward()
        results.append((loss.detach().cpu(), {k: v.cpu() for k, v in crd.state_dict().items()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    for k in results[0][1]:
        torch.testing.assert_close(results[0][1][k], results[1][1][k], rtol=1e-4, atol=1e-5)


def test_no_host_sync_after_first_call(monkeypatch):
    """After the first call a training step (forward, backward) reads nothing back to the host."""
    for kind, scoring, given in [("bank", "full", True), ("bank", "gather", False), ("queue", "auto", False)]:
        opt = make_opt(crd_memory=kind, crd_scoring=scoring)
        crd = CRDLoss(opt)
        f_s, f_t, y, idx = batch(0, 4, opt, dtype=torch.float32)
        crd(f_s, f_t, y, idx if given else None).backward()

        def refuse(*args, **kwargs):
            raise AssertionError("host sync in a CRD step")

        with monkeypatch.context() as mp:
            for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy"):
                mp.setattr(torch.Tensor, name, refuse)
            f_s.requires_grad_()
            loss = crd(f_s, f_t, y, idx if given else None)
            loss.backward()
        assert torch.isfinite(loss) and f_s.grad is not None


# ----------------------------------------------------------------------------- queue variant

def naive_infonce(v_s, v_t, queue, T):
    total = 0.0
    for i in range(len(v_s)):
        logits = [sum(a * b for a, b in zip(v_s[i], v_t[i])) / T]
        logits += [sum(a * b for a, b in zip(v_s[i], q)) / T for q in queue]
        mx = max(logits)
        total += -(logits[0] - mx - math.log(sum(math.exp(z - mx) for z in logits)))
    return total / len(v_s)


def fifo(queue: list, ptr: int, keys: list) -> tuple[list, int]:
    queue = [list(q) for q in queue]
    for k in keys:
        queue[ptr] = list(k)
        ptr = (ptr + 1) % len(queue)
    return queue, ptr


def test_queue_loss_is_infonce_and_queue_is_fifo():
    torch.manual_seed(0)
    opt = make_opt(crd_memory="queue", nce_k=5, nce_t=0.2)
    crd = CRDLoss(opt).double()
    queue, ptr = crd.contrast.queue.tolist(), 0
    for step, bsz in enumerate([3, 3, 3, 7, 2]):  # 5 does not divide by 3; 7 > K
        f_s, f_t, y, _ = batch(step, bsz, opt)
        f_s.requires_grad_()
        v_s, v_t = crd.embed(f_s, f_t)
        expected = naive_infonce(v_s.tolist(), v_t.tolist(), queue, 0.2)
        loss = crd.contrastive_loss(v_s, v_t, y)
        assert loss.dim() == 0 and loss.item() == pytest.approx(expected, rel=1e-10)
        loss.backward()
        assert crd.embed_t.linear.weight.grad is not None  # the positive trains the teacher head
        queue, ptr = fifo(queue, ptr, v_t.tolist())
        torch.testing.assert_close(crd.contrast.queue, torch.tensor(queue, dtype=torch.float64))
        assert crd.contrast.queue_ptr.tolist() == [ptr]
    assert ptr == (3 + 3 + 3 + 7 + 2) % 5


def test_queue_gradient_matches_autograd_on_formula():
    torch.manual_seed(0)
    qc = QueueContrast(4, 6, T=0.1).double()
    v_s = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1).requires_grad_()
    v_t = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1).requires_grad_()
    queue = qc.queue.clone()
    logits = torch.cat([(v_s * v_t).sum(1, keepdim=True), v_s @ queue.t()], 1) / 0.1
    ref = -(logits[:, 0] - torch.logsumexp(logits, 1)).mean()
    gs, gt = torch.autograd.grad(ref, [v_s, v_t])
    loss = qc(v_s, v_t)
    loss.backward()
    torch.testing.assert_close(v_s.grad, gs)
    torch.testing.assert_close(v_t.grad, gt)


# ----------------------------------------------------------------------------- two processes

DDP_B, DDP_STEPS = 8, 3  # global batch, split 4 + 4
DDP_CONFIGS = {
    "bank_given_full": dict(crd_memory="bank", crd_scoring="full", given=True, scramble=True),
    "bank_drawn_gather": dict(crd_memory="bank", crd_scoring="gather", given=False, scramble=False),
    "queue": dict(crd_memory="queue", crd_scoring="auto", given=False, scramble=True),
}


def ddp_run(name: str, rank: int, world: int) -> dict:
    """3 SGD steps on the fixed global batches; this rank feeds rows [rank*b, (rank+1)*b).
    Gradients are averaged over ranks (what DDP does); returns losses (mean over ranks) and the
    final state dict."""
    import torch.distributed as dist

    cfg = DDP_CONFIGS[name]
    opt = make_opt(n_data=40, nce_k=6, seed=11, crd_memory=cfg["crd_memory"], crd_scoring=cfg["crd_scoring"])
    torch.manual_seed(0)  # same heads and banks on every rank and in the one-process run
    crd = CRDLoss(opt)
    if cfg["scramble"] and rank > 0:
        # a rank whose buffers were built under another random state: rank 0's must win
        for buf in crd.contrast.buffers():
            if buf.is_floating_point():
                buf.add_(1.0)
    b = DDP_B // world
    sl = slice(rank * b, (rank + 1) * b)
    losses = []
    for step in range(DDP_STEPS):
        f_s, f_t, y, idx = batch(step, DDP_B, opt, dtype=torch.float32, dup=(step == 2))
        if step == 2:
            y[-1] = y[0]  # a repeat across the two ranks (DistributedSampler pads with repeats)
            idx[:, 0] = y
        loss = crd(f_s[sl], f_t[sl], y[sl], idx[sl] if cfg["given"] else None)
        loss.backward()
        reduced = loss.detach().clone()
        if world > 1:
            dist.all_reduce(reduced)
            for p in crd.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        losses.append(reduced.item() / world)
        sgd(crd.parameters(), lr=0.5)
    return {"losses": losses, "state": crd.state_dict()}


def _child_ddp(out_dir: str) -> None:
    """Entry point of each rank (``python -c``): all configurations, results saved per rank."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        results = {name: ddp_run(name, rank, dist.get_world_size()) for name in DDP_CONFIGS}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    assert_all_ok(launch([sys.executable, "-c", f"import test_crd as t; t._child_ddp({str(tmp_path)!r})"], tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name in DDP_CONFIGS:
        single = ddp_run(name, 0, 1)
        r0, r1 = ranks[0][name], ranks[1][name]
        for key, value in single["state"].items():
            assert torch.equal(r0["state"][key], r1["state"][key]), f"{name}: {key} differs between ranks"
            torch.testing.assert_close(r0["state"][key], value, rtol=1e-6, atol=1e-6,
                                       msg=lambda m: f"{name}: {key}: 2 processes vs 1: {m}")
        assert r0["losses"] == pytest.approx(single["losses"], rel=1e-5), name
