"""L_ReID terms (Eq. 17) against loop-based restatements written from their definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence
from vdreid import compat
from vdreid.losses import dml_loss, label_smooth_ce, official_rank_loss, ranked_list_loss, triplet_loss


def _batch(ids=3, k=2, dim=5, seed=0, scale=1.0):
    """ids x (k visible + k infrared), pids and IR flags like the cross-modal sampler's batches."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(ids).repeat_interleave(2 * k)
    sub = torch.tensor([0] * k + [1] * k).repeat(ids)
    x = torch.randn(len(pids), dim, generator=g, dtype=torch.float64) * scale
    return x, pids, sub


def _dist_loops(x, normalize):
    rows = x.tolist()
    if normalize:
        rows = [[a / max(math.sqrt(sum(b * b for b in r)), 1e-12) for a in r] for r in rows]
    n = len(rows)
    return [[math.sqrt(sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))) for j in range(n)] for i in range(n)]


# ----------------------------------------------------------------------------------------------- label-smoothed CE
@pytest.mark.parametrize("eps", [0.1, 0.0, 0.3])
def test_label_smooth_ce_matches_torchreid_and_hand_formula(eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g)
    pids = torch.tensor([0, 3, 6, 1, 1, 2])
    got = label_smooth_ce(logits, pids, eps=eps)
    ref_tr = compat.CrossEntropyLoss(num_classes=7, eps=eps, use_gpu=False, label_smooth=True)(logits, pids)
    assert torch.allclose(got, ref_tr, atol=1e-6)
    logp = F.log_softmax(logits.double(), 1).tolist()
    hand = -sum(
        sum(((1 - eps) * (c == y) + eps / 7) * logp[b][c] for c in range(7)) for b, y in enumerate(pids.tolist())
    ) / 6
    assert math.isclose(got.item(), hand, rel_tol=1e-5)


# ----------------------------------------------------------------------------------------------- ranked list loss
def _rll_loops(x, pids, alpha, margin, t_n, lam=1.0, normalize=True):
    d = _dist_loops(x, normalize)
    p = pids.tolist()
    n = len(p)
    total = 0.0
    for i in range(n):
        pos = [d[i][j] - (alpha - margin) for j in range(n) if j != i and p[j] == p[i] and d[i][j] > alpha - margin]
        lp = sum(pos) / len(pos) if pos else 0.0
        negs = [d[i][j] for j in range(n) if p[j] != p[i] and d[i][j] < alpha]
        ws = [math.exp(t_n * (alpha - dij)) for dij in negs]
        ln = sum(w * (alpha - dij) for w, dij in zip(ws, negs)) / sum(ws) if negs else 0.0
        total += lp + lam * ln
    return total / n


@pytest.mark.parametrize(
    "alpha, margin, t_n, normalize, scale",
    [(1.2, 0.4, 10.0, True, 1.0), (2.0, 1.3, 1.0, True, 1.0), (3.0, 1.0, 2.0, False, 1.5), (1.2, 0.4, 0.0, True, 1.0)],
)
def test_ranked_list_loss_matches_loops(alpha, margin, t_n, normalize, scale):
    x, pids, _ = _batch(ids=3, k=2, seed=1, scale=scale)
    got = ranked_list_loss(x, pids, alpha=alpha, margin=margin, t_n=t_n, normalize=normalize)
    ref = _rll_loops(x, pids, alpha, margin, t_n, normalize=normalize)
    assert math.isclose(got.item(), ref, rel_tol=1e-9, abs_tol=1e-12)


def test_ranked_list_loss_zero_when_constraints_hold():
    # identities on orthogonal axes with tiny jitter: positives within alpha - m, negatives at sqrt(2) > alpha = 1.2
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.eye(3).repeat_interleave(2, dim=0).double() + 1e-3 * torch.arange(6).double().view(-1, 1)
    assert ranked_list_loss(x, pids).item() == pytest.approx(0.0, abs=1e-12)


def test_ranked_list_weights_detached_or_not():
    x, pids, _ = _batch(ids=3, k=2, seed=2)
    x1 = x.clone().requires_grad_(True)
    ranked_list_loss(x1, pids, t_n=5.0, detach_weights=True).backward()
    x2 = x.clone().requires_grad_(True)
    ranked_list_loss(x2, pids, t_n=5.0, detach_weights=False).backward()
    assert x1.grad.abs().sum() > 0
    assert not torch.allclose(x1.grad, x2.grad)
    x3 = x.clone().requires_grad_(True)
    # detach only changes gradients, never the value
    assert torch.isclose(ranked_list_loss(x3, pids, detach_weights=False), ranked_list_loss(x, pids))


# ----------------------------------------------------------------------------------------------- official rank loss
def _official_rank_loops(x, pids, sub, a1=2.2, m1=0.9, a2=2.0, m2=1.0, tval=1.0, normalize=True):
    """Spec 5.3 restated: per anchor, {pos, neg} x {intra, cross}; pos = sum max(0, d - (a - m)) / (|P| + 1e-5);
    neg = sum_{d < a} w (a - d) / (sum w + 1e-5), w = exp(tval (a - d)); mean over anchors of the four terms."""
    d = _dist_loops(x, normalize)
    p, s = pids.tolist(), sub.tolist()
    n = len(p)
    total = 0.0
    for i in range(n):
        for intra, a, m in ((True, a1, m1), (False, a2, m2)):
            kind = [j for j in range(n) if (s[j] == s[i]) == intra]
            pos = [d[i][j] for j in kind if p[j] == p[i] and j != i]
            total += sum(max(0.0, dij - (a - m)) for dij in pos) / (len(pos) + 1e-5)
            neg = [d[i][j] for j in kind if p[j] != p[i] and d[i][j] < a]
            ws = [math.exp(tval * (a - dij)) for dij in neg]
            total += sum(w * (a - dij) for w, dij in zip(ws, neg)) / (sum(ws) + 1e-5)
    return total / n


@pytest.mark.parametrize("normalize, scale, seed", [(True, 1.0, 3), (False, 1.2, 4), (True, 1.0, 5)])
def test_official_rank_loss_matches_released_formula(normalize, scale, seed):
    x, pids, sub = _batch(ids=4, k=2, seed=seed, scale=scale)
    got = official_rank_loss(x, pids, sub, normalize=normalize)
    ref = _official_rank_loops(x, pids, sub, normalize=normalize)
    assert math.isclose(got.item(), ref, rel_tol=1e-9)


def test_official_rank_loss_thresholds_and_missing_kinds():
    # unnormalised features far apart: some negatives beyond alpha (excluded); one id seen only in infrared so its
    # anchors have no cross-modality positives (the 1e-5 denominators make that term 0)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64) * 2.0
    pids = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    sub = torch.tensor([0, 0, 1, 1, 1, 1, 0])
    got = official_rank_loss(x, pids, sub, normalize=False)
    assert math.isclose(got.item(), _official_rank_loops(x, pids, sub, normalize=False), rel_tol=1e-9)
    # non-default margins and thresholds are honoured
    got2 = official_rank_loss(x, pids, sub, alpha_intra=3.0, margin_intra=0.5, alpha_cross=2.5, margin_cross=0.7,
                              tval=2.0, normalize=False)
    ref2 = _official_rank_loops(x, pids, sub, 3.0, 0.5, 2.5, 0.7, 2.0, normalize=False)
    assert math.isclose(got2.item(), ref2, rel_tol=1e-9)


def test_official_rank_loss_gradient_flows_through_weights():
    x, pids, sub = _batch(ids=3, k=2, seed=7)
    x = x.requires_grad_(True)
    official_rank_loss(x, pids, sub).backward()
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------------------------- triplet
def test_triplet_is_torchreid_batch_hard():
    x, pids, _ = _batch(ids=3, k=2, seed=8)
    got = triplet_loss(x, pids, margin=0.3)
    d = _dist_loops(x, normalize=False)
    p = pids.tolist()
    hand = sum(
        max(0.0, max(d[i][j] for j in range(len(p)) if p[j] == p[i]) - min(d[i][j] for j in range(len(p))
                                                                           if p[j] != p[i]) + 0.3)
        for i in range(len(p))
    ) / len(p)
    assert math.isclose(got.item(), hand, rel_tol=1e-6)
    assert torch.allclose(got, compat.TripletLoss(margin=0.3)(x, pids))


def test_triplet_needs_two_identities():
    with pytest.raises(ValueError, match="two identities"):
        triplet_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------------------------- DML
def test_dml_is_two_way_kl_with_stop_gradients():
    g = torch.Generator().manual_seed(9)
    a = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    out = dml_loss(a, b)
    ref = kl_divergence(Categorical(logits=b), Categorical(logits=a)).mean() + kl_divergence(
        Categorical(logits=a), Categorical(logits=b)
    ).mean()
    assert torch.allclose(out, ref)
    out.backward()
    # a's gradient is that of KL(sg(P_b) || P_a) alone: (softmax(a) - softmax(b)) / N
    assert torch.allclose(a.grad, (F.softmax(a.detach(), 1) - F.softmax(b.detach(), 1)) / 5)
    assert torch.allclose(b.grad, (F.softmax(b.detach(), 1) - F.softmax(a.detach(), 1)) / 5)


def test_dml_temperature():
    a, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(dml_loss(a, b, T=2.0), dml_loss(a / 2, b / 2))


# ----------------------------------------------------------------------------------------------- errors, NaN
def test_metric_losses_surface_nan():
    x, pids, sub = _batch(ids=3, k=2, seed=10)
    x[1, 0] = float("nan")
    assert torch.isnan(ranked_list_loss(x, pids))
    assert torch.isnan(official_rank_loss(x, pids, sub))
    assert torch.isnan(label_smooth_ce(x, pids))


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda: ranked_list_loss(torch.randn(4, 3), torch.zeros(5, dtype=torch.long)), "one label per feature"),
        (lambda: ranked_list_loss(torch.randn(4), torch.zeros(4, dtype=torch.long)), "2-D"),
        (lambda: ranked_list_loss(torch.randn(4, 3), torch.zeros(4)), "integer"),
        (lambda: official_rank_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(3)), "sub"),
        (lambda: label_smooth_ce(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), eps=1.0), "eps"),
    ],
)
def test_bad_inputs(call, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        call()
