"""Log-domain Sinkhorn (crd/sinkhorn.py) and WCoRD (crd/wcord.py)."""
from __future__ import annotations

import contextlib
import copy
import math
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from ddp_launch import run_script_on_ranks
import torch
import torch.nn.functional as F

from kdzoo.crd.criterion import CRDLoss
from kdzoo.crd.sinkhorn import sinkhorn_log, sinkhorn_plan
from kdzoo.crd.wcord import WCORD_DEFAULTS, WCoRDLoss

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def no_host_sync():
    """Make every tensor -> Python conversion raise inside the block (a CPU stand-in for a CUDA sync check)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation (tensor -> Python value)")
    names = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    try:
        for name in names:
            setattr(torch.Tensor, name, forbidden)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def random_problem(n, m, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(n, m, generator=g, dtype=dtype)
    a = torch.rand(n, generator=g, dtype=dtype) + 0.1
    b = torch.rand(m, generator=g, dtype=dtype) + 0.1
    return cost, a / a.sum(), b / b.sum()


# ------------------------------------------------------------------------------------------ Sinkhorn

@pytest.mark.parametrize("n,m", [(5, 7), (16, 16), (30, 11)])
def test_sinkhorn_marginals(n, m):
    cost, a, b = random_problem(n, m)
    plan = sinkhorn_log(cost, eps=0.1, iters=500, a=a, b=b)
    assert plan.shape == (n, m) and plan.dtype == torch.float64 and (plan >= 0).all()
    torch.testing.assert_close(plan.sum(1), a, rtol=0, atol=1e-5)
    torch.testing.assert_close(plan.sum(0), b, rtol=0, atol=1e-5)
    uniform = sinkhorn_log(cost, eps=0.1, iters=500)          # default marginals: uniform
    torch.testing.assert_close(uniform.sum(1), torch.full((n,), 1 / n, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(uniform.sum(0), torch.full((m,), 1 / m, dtype=torch.float64), rtol=0, atol=1e-5)


def test_sinkhorn_batched_equals_one_by_one():
    problems = [random_problem(6, 4, seed=s) for s in range(3)]
    cost = torch.stack([p[0] for p in problems])
    a, b = torch.stack([p[1] for p in problems]), torch.stack([p[2] for p in problems])
    plans = sinkhorn_log(cost, eps=0.2, iters=100, a=a, b=b)
    assert plans.shape == (3, 6, 4)
    for i, (c, ai, bi) in enumerate(problems):
        torch.testing.assert_close(plans[i], sinkhorn_log(c, eps=0.2, iters=100, a=ai, b=bi))
    # shared marginals broadcast over the batch; the transport cost is per problem
    plan, value = sinkhorn_plan(cost, eps=0.2, iters=100)
    assert value.shape == (3,)
    torch.testing.assert_close(value, (plan * cost).sum((-2, -1)))


@pytest.mark.parametrize("n,m,eps", [(3, 4, 0.1), (10, 10, 0.05), (17, 9, 0.2), (64, 64, 0.05)])
def test_sinkhorn_matches_pot(n, m, eps):
    ot = pytest.importorskip("ot")
    cost, a, b = random_problem(n, m, seed=n * m)
    plan = sinkhorn_log(cost, eps=eps, iters=2000, a=a, b=b)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), reg=eps, numItermax=100000, stopThr=1e-13)
    ref = torch.from_numpy(ref)
    torch.testing.assert_close(plan, ref, rtol=1e-7, atol=1e-10)
    assert (plan * cost).sum().item() == pytest.approx((ref * cost).sum().item(), rel=1e-9)
    # uniform marginals by default, as POT's empty lists
    plan_u = sinkhorn_log(cost, eps=eps, iters=2000)
    ref_u = torch.from_numpy(ot.sinkhorn([], [], cost.numpy(), reg=eps, numItermax=100000, stopThr=1e-13))
    torch.testing.assert_close(plan_u, ref_u, rtol=1e-7, atol=1e-10)


def test_sinkhorn_tiny_eps_stays_finite_where_the_kernel_underflows():
    torch.manual_seed(0)
    cost = (0.5 + torch.rand(12, 12)).requires_grad_(True)          # float32, costs in [0.5, 1.5]
    eps = 1e-3
    assert (torch.exp(-cost.detach() / eps) == 0).all()             # the kernel form has nothing left
    plan = sinkhorn_log(cost, eps=eps, iters=200)
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    assert plan.sum().item() == pytest.approx(1.0, abs=1e-4)
    # float32 with C / eps ~ 1500: entries carry ~1e-4 relative rounding in the exponent
    torch.testing.assert_close(plan.sum(0), torch.full((12,), 1 / 12), rtol=1e-3, atol=0)
    # differentiable through the unrolled iterations, with finite gradients
    (plan * cost).sum().backward()
    assert torch.isfinite(cost.grad).all()
    # the detached-plan helper: gradient w.r.t. the cost is exactly the plan
    cost.grad = None
    plan2, value = sinkhorn_plan(cost, eps=eps, iters=200)
    assert not plan2.requires_grad and value.requires_grad
    value.backward()
    torch.testing.assert_close(cost.grad, plan2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sinkhorn_half_precision(dtype):
    cost, _, _ = random_problem(8, 8, dtype=torch.float32)
    plan = sinkhorn_log(cost.to(dtype), eps=0.05, iters=100)
    assert plan.dtype == dtype and torch.isfinite(plan).all()
    torch.testing.assert_close(plan.float(), sinkhorn_log(cost, eps=0.05, iters=100), rtol=2e-2, atol=1e-3)


def test_sinkhorn_has_no_host_sync():
    cost = torch.rand(2, 9, 9, requires_grad=True)
    a = torch.full((9,), 1 / 9)
    with no_host_sync():
        plan = sinkhorn_log(cost, eps=0.01, iters=30, a=a)
        _, value = sinkhorn_plan(cost, eps=0.01, iters=30)
        value.sum().backward()
    assert plan.shape == (2, 9, 9)


# -------------------------------------------------------------------------------------------- WCoRD

def make_opt(**kw):
    opt = SimpleNamespace(s_dim=12, t_dim=10, feat_dim=6, nce_k=15, nce_t=0.07, nce_m=0.5, n_data=40)
    for k, v in kw.items():
        setattr(opt, k, v)
    return opt


def batch(b=8, seed=0, n_data=40, k=15):
    g = torch.Generator().manual_seed(seed)
    f_s, f_t = torch.randn(b, 12, generator=g), torch.randn(b, 10, generator=g)
    idx = torch.randperm(n_data, generator=g)[:b]
    contrast_idx = torch.cat([idx[:, None], torch.randint(0, n_data, (b, k), generator=g)], 1)
    return f_s, f_t, idx, contrast_idx


def test_defaults_and_flags():
    w = WCoRDLoss(make_opt())
    assert (w.critic, w.gp_weight, w.ot_eps, w.ot_iters, w.lambda_local) == (
        "spectral", 10.0, 0.05, 50, 0.8)
    assert WCORD_DEFAULTS == {"critic": "spectral", "gp_weight": 10.0, "ot_eps": 0.05, "ot_iters": 50,
                              "lambda_local": 0.8}
    w = WCoRDLoss(make_opt(critic="gp", gp_weight=3, ot_eps=0.2, ot_iters=7, lambda_local=None))
    assert (w.critic, w.gp_weight, w.ot_eps, w.ot_iters, w.lambda_local) == ("gp", 3.0, 0.2, 7, 0.8)
    with pytest.raises(ValueError, match="critic"):
        WCoRDLoss(make_opt(critic="clip"))
    assert isinstance(w, CRDLoss)


def test_forward_returns_two_unweighted_scalars():
    torch.manual_seed(0)
    w = WCoRDLoss(make_opt())
    out = w(*batch())
    assert isinstance(out, tuple) and len(out) == 2
    g, l = out
    assert g.dim() == 0 and l.dim() == 0 and torch.isfinite(g) and torch.isfinite(l)
    assert 0 <= l.item() <= 2
    (g + l).backward()
    assert w.embed_s.linear.parametrizations.weight.original.grad is not None


def test_local_term_equals_pot_plan_on_the_detached_cost():
    ot = pytest.importorskip("ot")
    torch.manual_seed(0)
    w = WCoRDLoss(make_opt(critic="none", ot_eps=0.05, ot_iters=2000)).double()
    f_s, f_t, idx, cidx = batch()
    f_s, f_t = f_s.double(), f_t.double()
    v_s, v_t = w.embed(f_s, f_t)
    cost = (1 - F.cosine_similarity(v_t[:, None, :], v_s[None, :, :], dim=-1)).detach()
    ref_plan = torch.from_numpy(ot.sinkhorn([], [], cost.numpy(), reg=0.05, numItermax=100000, stopThr=1e-13))
    expected = (ref_plan * cost).sum()
    assert w.local_loss(v_s, v_t).item() == pytest.approx(expected.item(), rel=1e-9)
    _, local = w(f_s, f_t, idx, cidx)
    assert local.item() == pytest.approx(expected.item(), rel=1e-9)
    plan, _ = w.transport(v_s, v_t)
    assert not plan.requires_grad
    torch.testing.assert_close(plan, ref_plan, rtol=1e-6, atol=1e-10)


def test_local_term_default_iterations_close_to_converged():
    torch.manual_seed(0)
    w = WCoRDLoss(make_opt(critic="none"))
    v_s, v_t = F.normalize(torch.randn(64, 6), dim=1), F.normalize(torch.randn(64, 6), dim=1)
    converged = WCoRDLoss(make_opt(critic="none", ot_iters=1000)).local_loss(v_s.double(), v_t.double())
    assert w.local_loss(v_s, v_t).item() == pytest.approx(converged.item(), abs=1e-3)


def test_local_gradient_is_that_of_constant_plan_times_cost():
    torch.manual_seed(0)
    w = WCoRDLoss(make_opt(critic="none", ot_eps=0.1, ot_iters=200)).double()
    v_s = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)   # not normalised: cos normalises
    v_t = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    w.local_loss(v_s, v_t).backward()
    grad_s, grad_t = v_s.grad.clone(), v_t.grad.clone()

    # independently: C_ij = 1 - <t_i, s_j> / (|t_i| |s_j|) by explicit formula, P a constant
    s2 = v_s.detach().clone().requires_grad_(True)
    t2 = v_t.detach().clone().requires_grad_(True)
    dots = t2 @ s2.t()
    cost = 1 - dots / (t2.norm(dim=1)[:, None] * s2.norm(dim=1)[None, :])
    plan = sinkhorn_log(cost.detach(), eps=0.1, iters=200)
    (plan * cost).sum().backward()
    torch.testing.assert_close(grad_s, s2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_t, t2.grad, rtol=1e-10, atol=1e-12)
    # and it is not the gradient through the Sinkhorn iterations
    s3 = v_s.detach().clone().requires_grad_(True)
    cost3 = 1 - (v_t.detach() @ s3.t()) / (v_t.detach().norm(dim=1)[:, None] * s3.norm(dim=1)[None, :])
    (sinkhorn_log(cost3, eps=0.1, iters=200) * cost3).sum().backward()
    assert not torch.allclose(s3.grad, grad_s, atol=1e-6)


def test_local_term_under_autocast_is_float32():
    torch.manual_seed(0)
    w = WCoRDLoss(make_opt(critic="none"))
    f_s, f_t, idx, cidx = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v_s, v_t = w.embed(f_s, f_t)
        local = w.local_loss(v_s, v_t)
    assert local.dtype == torch.float32 and torch.isfinite(local)


def test_global_term_is_crds_contrastive_loss_on_the_same_embeddings():
    torch.manual_seed(0)
    f_s, f_t, idx, cidx = batch()
    for critic in ("none", "spectral"):
        w = WCoRDLoss(make_opt(critic=critic))
        twin = copy.deepcopy(w)
        w.eval(), twin.eval()            # eval: the spectral estimate is not advanced by the extra embed
        g, _ = w(f_s, f_t, idx, cidx)
        v_s, v_t = twin.embed(f_s, f_t)
        expected = CRDLoss.contrastive_loss(twin, v_s, v_t, idx, cidx)
        torch.testing.assert_close(g, expected, rtol=1e-6, atol=1e-6)
    # with plain heads it is CRD's loss itself, for the same weights and memory
    w = WCoRDLoss(make_opt(critic="none"))
    crd = CRDLoss(make_opt())
    crd.load_state_dict(w.state_dict(), strict=True)
    g, _ = w(f_s, f_t, idx, cidx)
    torch.testing.assert_close(g, crd(f_s, f_t, idx, cidx), rtol=1e-6, atol=1e-6)


def test_spectral_critic_normalises_the_heads():
    torch.manual_seed(0)
    w = WCoRDLoss(make_opt(s_dim=64, t_dim=48, feat_dim=32))
    assert w.is_spectral
    keys = set(w.state_dict())
    assert "embed_s.linear.parametrizations.weight.original" in keys and "embed_s.linear.weight" not in keys
    with torch.no_grad():                           # make the raw weights far from norm 1
        w.embed_s.linear.parametrizations.weight.original.mul_(5.0)
        w.embed_t.linear.parametrizations.weight.original.mul_(0.2)
    w.train()
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        w(torch.randn(8, 64, generator=g), torch.randn(8, 48, generator=g), torch.arange(8))
    for head in (w.embed_s, w.embed_t):
        sigma = torch.linalg.matrix_norm(head.linear.weight.detach(), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.03)
    raw = torch.linalg.matrix_norm(w.embed_s.linear.parametrizations.weight.original.detach(), ord=2).item()
    assert raw > 3                                  # the raw weight itself is not normalised


def test_none_critic_leaves_plain_linear_layers():
    w = WCoRDLoss(make_opt(critic="none"))
    assert not w.is_spectral
    for head in (w.embed_s, w.embed_t):
        assert type(head.linear) is torch.nn.Linear
        assert isinstance(head.linear.weight, torch.nn.Parameter)
    assert set(w.state_dict()) == set(CRDLoss(make_opt()).state_dict())
    assert w.last_penalty is None


def _gp_case(r):
    """2-d identity heads; x_s = (r, 0), x_t = (0, r): cosine 0, gradient norm sqrt(2) / r."""
    w = WCoRDLoss(make_opt(s_dim=2, t_dim=2, feat_dim=2, critic="gp", gp_weight=10))
    with torch.no_grad():
        for head in (w.embed_s, w.embed_t):
            head.linear.weight.copy_(torch.eye(2))
            head.linear.bias.zero_()
    f_s = torch.tensor([[r, 0.0]]).repeat(3, 1)
    f_t = torch.tensor([[0.0, r]]).repeat(3, 1)
    return w, f_s, f_t


def test_gradient_penalty_zero_within_bound_positive_beyond():
    w, f_s, f_t = _gp_case(2.0)                     # gradient norm sqrt(2)/2 < 1
    assert w.gradient_penalty(f_s, f_t).item() == 0.0
    w, f_s, f_t = _gp_case(math.sqrt(2.0))          # exactly on the bound
    assert w.gradient_penalty(f_s, f_t).item() == pytest.approx(0.0, abs=1e-12)
    w, f_s, f_t = _gp_case(0.5)                     # gradient norm 2 sqrt(2)
    penalty = w.gradient_penalty(f_s, f_t)
    assert penalty.item() == pytest.approx((2 * math.sqrt(2) - 1) ** 2, rel=1e-5)
    penalty.backward()                              # create_graph: the penalty trains the heads
    assert w.embed_s.linear.weight.grad is not None and w.embed_s.linear.weight.grad.abs().sum() > 0


def test_gradient_penalty_enters_the_global_term_and_spares_the_student_features():
    torch.manual_seed(0)
    w, f_s, f_t = _gp_case(0.5)
    twin = copy.deepcopy(w)
    twin.critic = "none"
    f_s = f_s.clone().requires_grad_(True)
    idx = torch.arange(3)
    cidx = torch.cat([idx[:, None], torch.randint(0, 40, (3, 15))], 1)
    g, _ = w(f_s, f_t, idx, cidx)
    g_plain, _ = twin(f_s.detach(), f_t, idx, cidx)
    expected_penalty = (2 * math.sqrt(2) - 1) ** 2
    assert w.last_penalty.item() == pytest.approx(expected_penalty, rel=1e-5)
    assert g.item() == pytest.approx(g_plain.item() + 10 * expected_penalty, rel=1e-5)
    # the penalty's gradient does not reach the inputs (they are detached inside the penalty)
    f_s2 = f_s.detach().clone().requires_grad_(True)
    w.gradient_penalty(f_s2, f_t).backward()
    assert f_s2.grad is None


def test_local_term_has_no_host_sync():
    w = WCoRDLoss(make_opt())
    v_s = torch.randn(8, 6, requires_grad=True)
    v_t = torch.randn(8, 6)
    with no_host_sync():
        w.local_loss(v_s, v_t).backward()


DDP_SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    from types import SimpleNamespace
    from kdzoo.crd.wcord import WCoRDLoss
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)                          # ranks build different heads and power-iteration vectors
    w = WCoRDLoss(SimpleNamespace(s_dim=12, t_dim=10, feat_dim=6, nce_k=15, nce_t=0.07, nce_m=0.5,
                                  n_data=40, crd_memory="queue"))
    for p in w.parameters():                         # what DistributedDataParallel does at construction
        dist.broadcast(p.data, 0)
    torch.manual_seed(100 + rank)
    w(torch.randn(4, 12), torch.randn(4, 10), torch.arange(4))
    weights = torch.cat([w.embed_s.linear.weight.detach().flatten(), w.embed_t.linear.weight.detach().flatten()])
    out = [torch.empty_like(weights) for _ in range(2)]
    dist.all_gather(out, weights)
    assert torch.equal(out[0], out[1]), "spectral-normalised weights differ across ranks"
    print("ok", rank)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_spectral_state_is_identical_across_ranks(tmp_path):
    run_script_on_ranks(DDP_SCRIPT, tmp_path)
