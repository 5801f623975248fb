"""VSD/VCD (kl_distill), VML (js_divergence) and the released code's Sinkhorn CML against independent computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence
from vdreid.losses import js_divergence, kl_distill, sinkhorn_distance, vcd_loss_official, vcd_loss_paper, vsd_loss


def _logits(n=6, c=9, scale=2.0, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).requires_grad_(requires_grad)
    return t


# ----------------------------------------------------------------------------------------------- kl_distill, paper
@pytest.mark.parametrize("T", [1.0, 0.5, 4.0])
def test_kl_paper_matches_torch_distributions(T):
    t, s = _logits(seed=1), _logits(seed=2)
    ref = kl_divergence(Categorical(logits=t / T), Categorical(logits=s / T)).mean()
    got = kl_distill(t, s, T=T, form="paper")
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_temperature_changes_value_and_is_applied_to_both():
    t, s = _logits(seed=1), _logits(seed=2)
    assert not torch.isclose(kl_distill(t, s, T=1.0), kl_distill(t, s, T=3.0))
    # T rescales the logits of both: KL at T equals KL of the logits divided by T at T=1
    assert torch.allclose(kl_distill(t, s, T=3.0), kl_distill(t / 3.0, s / 3.0, T=1.0))


def test_kl_zero_for_identical_and_nonnegative():
    t = _logits(seed=3)
    assert kl_distill(t, t.clone()).abs().item() < 1e-12
    for seed in range(5):
        assert kl_distill(_logits(seed=seed), _logits(seed=seed + 10)).item() > 0


def test_kl_peaked_logits_stay_finite_and_match_float64_reference():
    t = _logits(seed=4, scale=80.0).float()
    s = _logits(seed=5, scale=80.0).float()
    got = kl_distill(t, s)
    ref = kl_divergence(Categorical(logits=t.double()), Categorical(logits=s.double())).mean()
    assert torch.isfinite(got)
    assert math.isclose(got.item(), ref.item(), rel_tol=1e-4)


def test_kl_teacher_detached_by_default_and_switchable():
    t, s = _logits(seed=1, requires_grad=True), _logits(seed=2, requires_grad=True)
    kl_distill(t, s).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    t2, s2 = _logits(seed=1, requires_grad=True), _logits(seed=2, requires_grad=True)
    kl_distill(t2, s2, detach_teacher=False).backward()
    assert t2.grad is not None and t2.grad.abs().sum() > 0
    # the student's gradient is the same either way
    assert torch.allclose(s.grad, s2.grad)


def test_kl_student_gradient_is_softmax_difference():
    # d/ds mean_b KL(p_t || softmax(s)) = (softmax(s) - p_t) / N
    t, s = _logits(seed=6), _logits(seed=7, requires_grad=True)
    kl_distill(t, s).backward()
    expect = (F.softmax(s.detach(), 1) - F.softmax(t, 1)) / t.shape[0]
    assert torch.allclose(s.grad, expect, atol=1e-12)


def test_bf16_inputs_computed_in_float32():
    t, s = _logits(seed=1).bfloat16(), _logits(seed=2).bfloat16()
    out = kl_distill(t, s)
    assert out.dtype == torch.float32
    ref = kl_divergence(Categorical(logits=t.double()), Categorical(logits=s.double())).mean()
    assert math.isclose(out.item(), ref.item(), rel_tol=1e-5)


# ----------------------------------------------------------------------------------------------- kl_distill, official
def _released_kl_div(teacher_logits, student_logits, T=1.0):
    """The released code's call, literally: F.kl_div(input=softmax(teacher.detach()/T), target=softmax(student/T))."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return F.kl_div(
            input=F.softmax(teacher_logits.detach() / T, dim=1), target=F.softmax(student_logits / T, dim=1),
            reduction="mean",
        )


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_kl_official_matches_released_formula(T):
    t, s = _logits(seed=8), _logits(seed=9)
    got = kl_distill(t, s, T=T, form="official")
    assert torch.allclose(got, _released_kl_div(t, s, T), rtol=1e-12)
    # and the written-out definition: mean over B x C of q (log q - p)
    p, q = F.softmax(t / T, 1).numpy(), F.softmax(s / T, 1).numpy()
    hand = np.mean([[q[b, c] * (math.log(q[b, c]) - p[b, c]) for c in range(q.shape[1])] for b in range(q.shape[0])])
    assert math.isclose(got.item(), hand, rel_tol=1e-12)


def test_kl_official_gradient_matches_released_and_stops_at_teacher():
    t, s = _logits(seed=8, requires_grad=True), _logits(seed=9, requires_grad=True)
    kl_distill(t, s, form="official").backward()
    s_ref = s.detach().clone().requires_grad_(True)
    _released_kl_div(t.detach(), s_ref).backward()
    assert t.grad is None
    assert torch.allclose(s.grad, s_ref.grad, rtol=1e-10)


def test_kl_official_is_not_the_paper_kl():
    t, s = _logits(seed=10), _logits(seed=11)
    assert not torch.isclose(kl_distill(t, s, form="official"), kl_distill(t, s, form="paper"))


def test_vsd_and_vcd_helpers():
    v, z = _logits(seed=1), _logits(seed=2)
    assert torch.allclose(vsd_loss(v, z), kl_divergence(Categorical(logits=v), Categorical(logits=z)).mean())
    z1, z2 = _logits(seed=3), _logits(seed=4)
    kl12 = kl_divergence(Categorical(logits=z1), Categorical(logits=z2)).mean()
    kl21 = kl_divergence(Categorical(logits=z2), Categorical(logits=z1)).mean()
    assert torch.allclose(vcd_loss_paper(z1, z2), 0.5 * (kl12 + kl21))
    v1, v2 = _logits(seed=5), _logits(seed=6)
    ref = 0.5 * _released_kl_div(v2, z1) + 0.5 * _released_kl_div(v1, z2)
    assert torch.allclose(vcd_loss_official(v1, z1, v2, z2), ref)


# ----------------------------------------------------------------------------------------------- js_divergence (VML)
def _js_hand(a, b, T=1.0):
    pa, pb = F.softmax(a / T, 1).tolist(), F.softmax(b / T, 1).tolist()
    rows = []
    for ra, rb in zip(pa, pb):
        m = [(x + y) / 2 for x, y in zip(ra, rb)]
        kl_am = sum(x * math.log(x / mm) for x, mm in zip(ra, m) if x > 0)
        kl_bm = sum(y * math.log(y / mm) for y, mm in zip(rb, m) if y > 0)
        rows.append(0.5 * kl_am + 0.5 * kl_bm)
    return sum(rows) / len(rows)


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_js_matches_hand_written(T):
    a, b = _logits(seed=12), _logits(seed=13)
    assert math.isclose(js_divergence(a, b, T=T).item(), _js_hand(a, b, T), rel_tol=1e-10)


def test_js_symmetric_bounded_zero_on_equal():
    a, b = _logits(seed=14, scale=50.0), _logits(seed=15, scale=50.0)
    assert torch.allclose(js_divergence(a, b), js_divergence(b, a))
    assert 0 <= js_divergence(a, b).item() <= math.log(2) + 1e-12
    assert js_divergence(a, a.clone()).abs().item() < 1e-12


def test_js_gradients_reach_both():
    a, b = _logits(seed=12, requires_grad=True), _logits(seed=13, requires_grad=True)
    js_divergence(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda: kl_distill(torch.zeros(3, 4), torch.zeros(3, 5)), "same shape"),
        (lambda: kl_distill(torch.zeros(4), torch.zeros(4)), "2-D"),
        (lambda: kl_distill(torch.zeros(3, 4), torch.zeros(3, 4), form="other"), "form"),
        (lambda: kl_distill(torch.zeros(3, 4), torch.zeros(3, 4), T=0.0), "temperature"),
        (lambda: js_divergence(torch.zeros(3, 4), torch.zeros(2, 4)), "logits_b"),
        (lambda: sinkhorn_distance(torch.zeros(3, 4), torch.zeros(3, 5)), "columns"),
        (lambda: sinkhorn_distance(torch.zeros(0, 4), torch.zeros(3, 4)), "non-empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        call()


def test_nan_propagates():
    t, s = _logits(seed=1), _logits(seed=2)
    s[0, 0] = float("nan")
    assert torch.isnan(kl_distill(t, s))
    assert torch.isnan(kl_distill(t, s, form="official"))
    assert torch.isnan(js_divergence(t, s))
    assert torch.isnan(sinkhorn_distance(F.softmax(t, 1), F.softmax(s, 1)))


# ----------------------------------------------------------------------------------------------- Sinkhorn (CML)
def _sinkhorn_reference(p, q, eps=0.01, max_iter=100):
    """Plain loop written from spec 5.3, in float32 numpy: cost = squared Euclidean; marginals log(1/B + 1e-8);
    "lse" = log(sum_j exp(A_ij) + 1e-6); u update then v update with M = (-C + u_i + v_j)/eps recomputed;
    stop after the first iteration with sum_i |u - u_prev| < 0.1; result sum pi*C with pi = exp(M)."""
    f = np.float32
    p, q = np.asarray(p, dtype=f), np.asarray(q, dtype=f)
    n, m = p.shape[0], q.shape[0]
    C = np.zeros((n, m), dtype=f)
    for i in range(n):
        for j in range(m):
            C[i, j] = np.sum((p[i] - q[j]) ** 2, dtype=f)
    log_mu = np.log(f(1.0 / n) + f(1e-8))
    log_nu = np.log(f(1.0 / m) + f(1e-8))
    u, v = np.zeros(n, dtype=f), np.zeros(m, dtype=f)
    eps = f(eps)

    def Mij(i, j):
        return (-C[i, j] + u[i] + v[j]) / eps

    iters = 0
    for _ in range(max_iter):
        iters += 1
        u_prev = u.copy()
        new_u = np.zeros(n, dtype=f)
        for i in range(n):
            s = np.sum(np.exp(np.array([Mij(i, j) for j in range(m)], dtype=f)), dtype=f)
            new_u[i] = eps * (log_mu - np.log(s + f(1e-6))) + u[i]
        u = new_u
        new_v = np.zeros(m, dtype=f)
        for j in range(m):
            s = np.sum(np.exp(np.array([Mij(i, j) for i in range(n)], dtype=f)), dtype=f)
            new_v[j] = eps * (log_nu - np.log(s + f(1e-6))) + v[j]
        v = new_v
        if np.sum(np.abs(u - u_prev)) < 0.1:
            break
    total = sum(float(np.exp(Mij(i, j))) * float(C[i, j]) for i in range(n) for j in range(m))
    return total, iters


def _probs(n, c, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return F.softmax(torch.randn(n, c, generator=g) * scale, dim=1)


@pytest.mark.parametrize("n, m, c, scale", [(8, 8, 6, 1.0), (8, 8, 6, 4.0), (6, 9, 5, 3.0), (5, 5, 20, 0.3)])
def test_sinkhorn_matches_reference_loop(n, m, c, scale):
    p, q = _probs(n, c, scale, seed=n + c), _probs(m, c, scale, seed=m + 100)
    ref, _ = _sinkhorn_reference(p.numpy(), q.numpy())
    got = sinkhorn_distance(p, q)
    assert math.isclose(got.item(), ref, rel_tol=2e-4, abs_tol=1e-7)


def test_sinkhorn_iteration_cap_matches_reference():
    p, q = _probs(7, 6, 4.0, seed=1), _probs(7, 6, 4.0, seed=2)
    for k in (1, 2, 3):
        ref, iters = _sinkhorn_reference(p.numpy(), q.numpy(), max_iter=k)
        assert iters == k
        assert math.isclose(sinkhorn_distance(p, q, max_iter=k).item(), ref, rel_tol=2e-4, abs_tol=1e-7)


def test_sinkhorn_quirks_change_the_value_on_peaked_predictions():
    # peaked softmax rows: exp(-C/eps) underflows, the 1e-6 floor dominates and the "distance" departs from the
    # entropic-OT cost that the stabilised variant computes (trap 14: a correct Sinkhorn gives different numbers)
    p, q = _probs(8, 6, 6.0, seed=3), _probs(8, 6, 6.0, seed=4)
    quirk = sinkhorn_distance(p, q).item()
    stable = sinkhorn_distance(p, q, stabilised=True, max_iter=5000, tol=1e-7).item()
    ref, _ = _sinkhorn_reference(p.numpy(), q.numpy())
    assert math.isclose(quirk, ref, rel_tol=2e-4, abs_tol=1e-7)
    assert abs(quirk - stable) > 0.05 * stable


def _sinkhorn_kernel_float64(p, q, eps, iters=20000):
    """Textbook Sinkhorn-Knopp in the kernel domain (float64): K = exp(-C/eps), a = mu / (K b), b = nu / (K^T a)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    C = ((p[:, None, :] - q[None, :, :]) ** 2).sum(-1)
    K = np.exp(-C / eps)
    mu, nu = np.full(len(p), 1 / len(p)), np.full(len(q), 1 / len(q))
    b = np.ones(len(q))
    for _ in range(iters):
        a = mu / (K @ b)
        b = nu / (K.T @ a)
    pi = a[:, None] * K * b[None, :]
    return float((pi * C).sum()), pi


def test_sinkhorn_stabilised_matches_textbook_sinkhorn():
    p, q = _probs(6, 5, 2.0, seed=5).double(), _probs(7, 5, 2.0, seed=6).double()
    ref, pi = _sinkhorn_kernel_float64(p, q, eps=0.05)
    assert np.allclose(pi.sum(1), 1 / 6) and np.allclose(pi.sum(0), 1 / 7)
    got = sinkhorn_distance(p, q, eps=0.05, stabilised=True, max_iter=20000, tol=1e-12)
    assert math.isclose(got.item(), ref, rel_tol=1e-6)


def test_sinkhorn_gradients_flow_to_both_and_dtype():
    p = _probs(6, 5, 2.0, seed=7).requires_grad_(True)
    q = _probs(6, 5, 2.0, seed=8).requires_grad_(True)
    out = sinkhorn_distance(p, q)
    assert out.dtype == torch.float32 and out.dim() == 0
    out.backward()
    assert p.grad.abs().sum() > 0 and q.grad.abs().sum() > 0
    assert sinkhorn_distance(p.detach().bfloat16(), q.detach().bfloat16()).dtype == torch.float32


def test_sinkhorn_cost_gradient_matches_autograd_of_the_broadcast_form():
    from vdreid.losses.sinkhorn import _cost_matrix

    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    (_cost_matrix(x, y) * w).sum().backward()
    x2, y2 = x.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(True)
    (((x2[:, None, :] - y2[None, :, :]) ** 2).sum(-1) * w).sum().backward()
    assert torch.allclose(x.grad, x2.grad) and torch.allclose(y.grad, y2.grad)
    # bit-identical to the released expression torch.sum(torch.abs(x_col - y_lin) ** 2, -1) (float32)
    xf, yf = torch.rand(9, 395, generator=g), torch.rand(11, 395, generator=g)
    assert torch.equal(_cost_matrix(xf, yf), torch.sum(torch.abs(xf.unsqueeze(-2) - yf.unsqueeze(-3)) ** 2, -1))
    assert torch.autograd.gradcheck(_cost_matrix, (x.detach().requires_grad_(True), y.detach().requires_grad_(True)))
