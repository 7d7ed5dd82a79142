"""RRD (crd/rrd.py): the loss against an explicit loop computation, the FIFO queue, the two variants."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from ddp_launch import run_script_on_ranks
import torch
import torch.nn.functional as F

from kdzoo.crd.rrd import RRDLoss

ROOT = Path(__file__).resolve().parents[1]


def make(variant=None, k=10, s_dim=7, t_dim=5, feat_dim=4, **extra):
    opt = SimpleNamespace(s_dim=s_dim, t_dim=t_dim, feat_dim=feat_dim, nce_k=k, **extra)
    if variant is not None:
        opt.rrd_variant = variant
    return RRDLoss(opt)


def teacher_keys(crit, f_t):
    with torch.no_grad():
        return F.normalize(crit.embed_t(f_t.flatten(1)), dim=1)


def naive_loss(s, t, queue, tau_s, tau_t):
    """Cross-entropy between the teacher's and the student's softmax over queue similarities, by loops."""
    s, t, queue = s.double().tolist(), t.double().tolist(), queue.double().tolist()
    total = 0.0
    for s_i, t_i in zip(s, t):
        zs = [sum(a * b for a, b in zip(s_i, q)) / tau_s for q in queue]
        zt = [sum(a * b for a, b in zip(t_i, q)) / tau_t for q in queue]
        ms, mt = max(zs), max(zt)
        log_norm_s = ms + math.log(sum(math.exp(z - ms) for z in zs))
        norm_t = sum(math.exp(z - mt) for z in zt)
        p = [math.exp(z - mt) / norm_t for z in zt]
        total += -sum(p_k * (z_k - log_norm_s) for p_k, z_k in zip(p, zs))
    return total / len(s)


def fifo_reference(queue, ptr, batches):
    """Write each batch row by row at the pointer, wrapping around."""
    queue = queue.clone()
    for keys in batches:
        for row in keys:
            queue[ptr] = row
            ptr = (ptr + 1) % queue.shape[0]
    return queue, ptr


def test_defaults_and_overrides():
    c24, c25 = make(), make("2025")
    assert (c24.variant, c24.nce_t_s, c24.nce_t_t) == ("2024", 0.04, 0.10)
    assert (c25.variant, c25.nce_t_s, c25.nce_t_t) == ("2025", 0.1, 0.02)
    c = make("2025", nce_t_s=0.3, nce_t_t=0.5)
    assert (c.nce_t_s, c.nce_t_t) == (0.3, 0.5)
    c = make("2024", nce_t_s=None, nce_t_t=None)  # None = the variant's default (argparse default None)
    assert (c.nce_t_s, c.nce_t_t) == (0.04, 0.10)
    with pytest.raises(ValueError, match="rrd_variant"):
        make("2023")


def test_state_dict_layout():
    crit = make(k=16384, s_dim=64, t_dim=256, feat_dim=128)
    sd = crit.state_dict()
    # same keys as the authors' module (own buffers first, then the heads, as nn.Module orders them)
    assert list(sd) == ["queue", "queue_ptr", "embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"]
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes == {"embed_s.weight": (128, 64), "embed_s.bias": (128,), "embed_t.weight": (128, 256),
                      "embed_t.bias": (128,), "queue": (16384, 128), "queue_ptr": (1,)}
    assert sd["queue_ptr"].dtype == torch.long and sd["queue_ptr"].item() == 0
    assert torch.allclose(sd["queue"].norm(dim=1), torch.ones(16384), atol=1e-5)
    # a checkpoint in this layout loads strictly into a fresh module
    other = make(k=16384, s_dim=64, t_dim=256, feat_dim=128)
    other.load_state_dict(sd, strict=True)
    assert torch.equal(other.queue, crit.queue)


@pytest.mark.parametrize("variant", ["2024", "2025"])
def test_loss_matches_loop_computation(variant):
    torch.manual_seed(0)
    crit = make(variant).double()
    f_s, f_t = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    queue0 = crit.queue.clone()
    s = F.normalize(crit.embed_s(f_s), dim=1).detach()
    t = teacher_keys(crit, f_t)
    loss = crit(f_s, f_t)
    assert loss.dim() == 0
    if variant == "2024":
        bank = queue0                      # similarities before the batch is enqueued
    else:
        bank, _ = fifo_reference(queue0, 0, [t])
    expected = naive_loss(s, t, bank, crit.nce_t_s, crit.nce_t_t)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # a second step uses the updated queue
    queue1 = crit.queue.clone()
    f_s2, f_t2 = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    s2, t2 = F.normalize(crit.embed_s(f_s2), dim=1).detach(), teacher_keys(crit, f_t2)
    loss2 = crit(f_s2, f_t2)
    bank2 = queue1 if variant == "2024" else fifo_reference(queue1, 4, [t2])[0]
    assert loss2.item() == pytest.approx(naive_loss(s2, t2, bank2, crit.nce_t_s, crit.nce_t_t), rel=1e-10)


def test_conv_features_are_flattened():
    torch.manual_seed(0)
    crit = make(s_dim=8, t_dim=12)
    loss = crit(torch.randn(4, 2, 2, 2), torch.randn(4, 3, 2, 2))
    assert torch.isfinite(loss)


def test_student_head_gets_gradient_teacher_head_does_not():
    torch.manual_seed(0)
    crit = make()
    f_s = torch.randn(4, 7, requires_grad=True)
    f_t = torch.randn(4, 5, requires_grad=True)   # even a teacher feature that requires grad
    crit(f_s, f_t).backward()
    assert crit.embed_s.weight.grad is not None and crit.embed_s.weight.grad.abs().sum() > 0
    assert crit.embed_s.bias.grad is not None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert crit.embed_t.weight.grad is None and crit.embed_t.bias.grad is None
    assert f_t.grad is None
    # not even when someone switches requires_grad back on
    crit.embed_t.requires_grad_(True)
    crit(f_s, f_t).backward()
    assert crit.embed_t.weight.grad is None and crit.embed_t.bias.grad is None
    fresh = make()                                     # the optimizer (requires_grad filter) skips embed_t
    trainable = {id(p) for p in fresh.parameters() if p.requires_grad}
    assert trainable == {id(fresh.embed_s.weight), id(fresh.embed_s.bias)}


def test_enqueue_wraps_around_when_batch_does_not_divide_queue():
    torch.manual_seed(0)
    crit = make("2024", k=10)
    queue0 = crit.queue.clone()
    ptrs, keys = [], []
    for _ in range(3):
        f_s, f_t = torch.randn(4, 7), torch.randn(4, 5)
        keys.append(teacher_keys(crit, f_t))
        crit(f_s, f_t)
        ptrs.append(crit.queue_ptr.item())
    assert ptrs == [4, 8, 2]
    t1, t2, t3 = keys
    expected = queue0.clone()
    expected[0:4] = t1
    expected[4:8] = t2
    expected[8:10] = t3[0:2]
    expected[0:2] = t3[2:4]
    assert torch.equal(crit.queue, expected)
    assert torch.equal(crit.queue[2:4], t1[2:4])          # the oldest rows not yet overwritten survive


def test_enqueue_matches_row_by_row_fifo_for_any_batch_sizes():
    torch.manual_seed(1)
    crit = make("2024", k=10)
    queue, ptr = crit.queue.clone(), 0
    for b in [1, 3, 7, 13, 10, 2, 25, 4]:                   # includes batches larger than the queue
        f_s, f_t = torch.randn(b, 7), torch.randn(b, 5)
        t = teacher_keys(crit, f_t)
        crit(f_s, f_t)
        queue, ptr = fifo_reference(queue, ptr, [t])
        assert crit.queue_ptr.item() == ptr
        assert torch.equal(crit.queue, queue)


def _no_enqueue_copy(crit):
    other = make(crit.variant)
    other.load_state_dict(crit.state_dict())
    other._dequeue_and_enqueue = lambda keys: None
    return other


def test_2024_computes_before_enqueue_2025_after():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(4, 7), torch.randn(4, 5)

    crit = make("2024")
    frozen = _no_enqueue_copy(crit)
    # the batch's own keys play no part in its loss: same value as with no enqueue at all
    assert torch.equal(crit(f_s, f_t), frozen(f_s, f_t))
    assert not torch.equal(crit.queue, frozen.queue)

    crit = make("2025")
    frozen = _no_enqueue_copy(crit)
    without_own_keys = frozen(f_s, f_t)
    frozen_after = _no_enqueue_copy(crit)
    own_keys = teacher_keys(crit, f_t)
    RRDLoss._dequeue_and_enqueue(frozen_after, own_keys)     # enqueue by hand, then compute
    with_own_keys = frozen_after(f_s, f_t)
    loss = crit(f_s, f_t)
    assert torch.allclose(loss, with_own_keys, rtol=0, atol=1e-6)
    assert not torch.allclose(loss, without_own_keys, atol=1e-3)


def test_queue_keeps_float32_under_autocast():
    torch.manual_seed(0)
    crit = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crit(torch.randn(4, 7), torch.randn(4, 5))
    assert torch.isfinite(loss) and crit.queue.dtype == torch.float32 and crit.queue_ptr.item() == 4


DDP_SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    from types import SimpleNamespace
    from kdzoo.crd.rrd import RRDLoss
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)                             # ranks build different random queues
    crit = RRDLoss(SimpleNamespace(s_dim=7, t_dim=5, feat_dim=4, nce_k=20))
    initial = crit.queue.clone()
    torch.manual_seed(100 + rank)                       # and see different data
    keys = []
    for _ in range(3):
        f_s, f_t = torch.randn(3, 7), torch.randn(3, 5)
        with torch.no_grad():
            keys.append(torch.nn.functional.normalize(crit.embed_t(f_t), dim=1))
        crit(f_s, f_t).backward()
    queues = [torch.empty_like(crit.queue) for _ in range(2)]
    dist.all_gather(queues, crit.queue)
    all_keys = [torch.empty_like(torch.stack(keys)) for _ in range(2)]
    dist.all_gather(all_keys, torch.stack(keys))
    initials = [torch.empty_like(initial) for _ in range(2)]
    dist.all_gather(initials, initial)
    assert torch.equal(queues[0], queues[1]), "queues differ across ranks"
    assert crit.queue_ptr.item() == 18
    # per step, rank 0's 3 keys then rank 1's
    order = torch.cat([torch.cat([all_keys[r][step] for r in range(2)]) for step in range(3)])
    assert torch.equal(crit.queue[:18], order)
    assert torch.equal(crit.queue[18:], initials[0][18:]), "untouched rows are rank 0's"
    print("ok", rank)
    dist.destroy_process_group()
""")



@pytest.mark.slow
def test_queues_stay_identical_across_ranks(tmp_path):
    run_script_on_ranks(DDP_SCRIPT, tmp_path)


def test_forward_has_no_host_sync():
    """Every tensor -> Python conversion raises inside forward/backward (a CPU stand-in for a CUDA sync check)."""
    crit = make("2024")
    crit25 = make("2025")
    f_s, f_t = torch.randn(4, 7, requires_grad=True), torch.randn(4, 5)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation (tensor -> Python value)")

    names = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    try:
        for name in names:
            setattr(torch.Tensor, name, forbidden)
        for c in (crit, crit25):
            for _ in range(3):                      # past the wrap-around
                c(f_s, f_t).backward()
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
    assert crit.queue_ptr.item() == 2 and crit25.queue_ptr.item() == 2
