"""VDLoss (Eq. 16-17): recipes, term names and weights, row routing, gradient stops, NaN naming."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from vdreid.losses import VDLoss, VDLossConfig, sinkhorn_distance, term_names
from vdreid.models.outputs import BranchOutput, VDOutput

C, DV, DZ = 7, 6, 5


def _branch(index, g, dtype=torch.float64):
    n = len(index)

    def t(d, s=1.0):
        return (torch.randn(n, d, generator=g, dtype=dtype) * s).requires_grad_(True)

    return BranchOutput(v=t(DV), v_pre=t(DV), v_logits=t(C, 2.0), z=t(DZ), z_logits=t(C, 2.0),
                        index=torch.as_tensor(index, dtype=torch.long))


def make_out(routing="official", ids=3, k=2, seed=0, dtype=torch.float64):
    """ids x (k visible + k infrared) images; pids 0..ids-1."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(ids).repeat_interleave(2 * k)
    is_ir = torch.tensor([False] * k + [True] * k).repeat(ids)
    B = len(pids)
    everything = list(range(B))
    if routing == "official":
        ir_idx, vis_idx = everything, everything
    else:
        ir_idx = torch.nonzero(is_ir).flatten().tolist()
        vis_idx = torch.nonzero(~is_ir).flatten().tolist()
    out = VDOutput(ir=_branch(ir_idx, g, dtype), vis=_branch(vis_idx, g, dtype), shared_x=_branch(everything, g, dtype),
                   shared_gray=_branch(everything, g, dtype), is_ir=is_ir, routing=routing)
    return out, pids


# ------------------------------------------------------------------------------------------ independent references
def _ce_hand(logits, y, eps=0.1):
    logp = F.log_softmax(logits.detach().double(), 1)
    tgt = torch.full_like(logp, eps / logp.shape[1])
    tgt[torch.arange(len(y)), y] += 1 - eps
    return -(tgt * logp).sum(1).mean().item()


def _kl_batchmean(p_logits, q_logits, T=1.0):
    p, q = F.softmax(p_logits.detach().double() / T, 1), F.softmax(q_logits.detach().double() / T, 1)
    return (p * (p.log() - q.log())).sum(1).mean().item()


def _kl_released(teacher, student):
    p, q = F.softmax(teacher.detach().double(), 1), F.softmax(student.detach().double(), 1)
    return (q * (q.log() - p)).mean().item()


def _js(a, b):
    p, q = F.softmax(a.detach().double(), 1), F.softmax(b.detach().double(), 1)
    m = (p + q) / 2
    return (0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)).mean().item()


# ------------------------------------------------------------------------------------------ config
def test_recipe_defaults_and_effective_weights():
    paper = VDLossConfig.paper()
    assert VDLossConfig() == paper
    assert paper.effective_weights() == dict(ce=1.0, metric=1.0, dml=8.0, cml=0.0, vsd=2.0, vcd=2.0, vml=2.0, ib=0.0)
    assert paper.options["metric"]["kind"] == "ranked_list" and paper.options["vsd"]["form"] == "paper"
    assert paper.options["ce"]["label_smooth"] == 0.1
    off = VDLossConfig.official()
    assert off.effective_weights() == dict(ce=1.0, metric=1.0, dml=0.0, cml=8.0, vsd=2.0, vcd=2.0, vml=0.0, ib=0.0)
    assert off.options["metric"]["kind"] == "official_rank" and off.options["vsd"]["form"] == "official"
    assert off.options["vcd"]["form"] == "official" and off.detach_teacher
    assert off.branch_weights == (0.5, 0.5, 0.25, 0.25) and off.beta == 2.0 and off.temperature == 1.0
    # explicit values win over recipe defaults
    assert VDLossConfig.official(weights={"vml": 1.0}).weights["vml"] == 1.0
    assert VDLossConfig(recipe="official", weights={"cml": 3.0}).weights["cml"] == 3.0


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(recipe="mine"), "recipe"),
        (dict(options={"metric": {"kind": "arcface"}}), "metric"),
        (dict(weights={"vsd": -1.0}), "vsd"),
        (dict(branch_weights=(1.0, 1.0)), "branch_weights"),
        (dict(temperature=0.0), "temperature"),
        (dict(weights=dict(ce=0, dml=0, vsd=0, vcd=0, vml=0), options={"metric": {"kind": "none"}}),
         "every loss weight is 0"),
    ],
)
def test_config_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        VDLossConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    assert VDLossConfig.from_dict({"recipe": "official", "weights": {"cml": 4.0}}).weights["cml"] == 4.0
    with pytest.raises(ValueError, match="unknown field"):
        VDLossConfig.from_dict({"recipe": "paper", "vsd_weight": 2.0})


# ------------------------------------------------------------------------------------------ term names and values
def test_paper_terms_names_and_values():
    out, pids = make_out("official", seed=1)
    crit = VDLoss(VDLossConfig.paper(), num_classes=C)
    total, terms = crit(out, pids)
    assert tuple(terms) == ("ce", "metric", "dml", "vsd", "vcd", "vml")
    assert all(t.dim() == 0 for t in terms.values())
    assert torch.allclose(total, sum(terms.values()))
    w = dict(ir=0.5, vis=0.5, shared_gray=0.25, shared_x=0.25)
    ce = sum(w[n] * (_ce_hand(b.v_logits, pids[b.index]) + _ce_hand(b.z_logits, pids[b.index]))
             for n, b in out.branches().items())
    assert math.isclose(terms["ce"].item(), ce, rel_tol=1e-9)
    vsd = sum(_kl_batchmean(b.v_logits, b.z_logits) for b in (out.ir, out.vis))
    assert math.isclose(terms["vsd"].item(), 2.0 * vsd, rel_tol=1e-9)
    x, g = out.shared_x, out.shared_gray
    vcd = 0.5 * (_kl_batchmean(x.z_logits, g.z_logits) + _kl_batchmean(g.z_logits, x.z_logits))
    assert math.isclose(terms["vcd"].item(), 2.0 * vcd, rel_tol=1e-9)
    assert math.isclose(terms["vml"].item(), 2.0 * _js(x.z_logits, g.z_logits), rel_tol=1e-9)
    dml = _kl_batchmean(out.vis.v_logits, out.ir.v_logits) + _kl_batchmean(out.ir.v_logits, out.vis.v_logits)
    assert math.isclose(terms["dml"].item(), 8.0 * dml, rel_tol=1e-9)


def test_official_terms_against_released_formulas():
    out, pids = make_out("official", seed=2)
    total, terms = VDLoss(VDLossConfig.official(), num_classes=C)(out, pids)
    assert tuple(terms) == ("ce", "metric", "cml", "vsd", "vcd")
    vsd = _kl_released(out.ir.v_logits, out.ir.z_logits) + _kl_released(out.vis.v_logits, out.vis.z_logits)
    assert math.isclose(terms["vsd"].item(), 2.0 * vsd, rel_tol=1e-9)
    # code: 0.5 kl_div(softmax(v_ms_obs.detach()), softmax(i_ms_rep)) + 0.5 kl_div(softmax(i_ms_obs.detach()),
    # softmax(v_ms_rep)); v_ms = shared branch on x, i_ms = shared branch on gray(x)
    x, g = out.shared_x, out.shared_gray
    vcd = 0.5 * _kl_released(x.v_logits, g.z_logits) + 0.5 * _kl_released(g.v_logits, x.z_logits)
    assert math.isclose(terms["vcd"].item(), 2.0 * vcd, rel_tol=1e-9)
    p_ir = F.softmax(out.ir.v_logits.detach().float(), 1)
    cml = sinkhorn_distance(p_ir, F.softmax(out.vis.v_logits.detach().float(), 1))
    assert math.isclose(terms["cml"].item(), 8.0 * cml.item(), rel_tol=1e-5)
    assert torch.allclose(total, sum(terms.values()))


@pytest.mark.parametrize("recipe", ["paper", "official"])
@pytest.mark.parametrize("name", term_names()[:7])
def test_zero_weight_removes_exactly_that_term(recipe, name):
    out, pids = make_out("official", seed=3)
    cfg = VDLossConfig(recipe=recipe)
    _, full = VDLoss(cfg, num_classes=C)(out, pids)
    _, terms = VDLoss(VDLossConfig(recipe=recipe, weights={name: 0.0}), num_classes=C)(out, pids)
    assert name not in terms
    assert set(terms) == set(full) - {name}
    for k in terms:
        assert torch.allclose(terms[k], full[k])


def test_beta_scales_only_the_distillation_terms():
    out, pids = make_out("official", seed=4)
    _, t2 = VDLoss(VDLossConfig.paper(), num_classes=C)(out, pids)
    _, t5 = VDLoss(VDLossConfig.paper(beta=5.0), num_classes=C)(out, pids)
    for k in ("vsd", "vcd", "vml"):
        assert torch.allclose(t5[k], t2[k] * 2.5)
    for k in ("ce", "metric", "dml"):
        assert torch.allclose(t5[k], t2[k])


def test_metric_choices():
    out, pids = make_out("official", seed=5)
    vals = {}
    for metric in ("ranked_list", "triplet", "official_rank"):
        _, terms = VDLoss(VDLossConfig.paper(options={"metric": {"kind": metric}}), num_classes=C)(out, pids)
        vals[metric] = terms["metric"].item()
    assert len(set(vals.values())) == 3
    _, terms = VDLoss(VDLossConfig.paper(options={"metric": {"kind": "none"}}), num_classes=C)(out, pids)
    assert "metric" not in terms


# ------------------------------------------------------------------------------------------ routing
def test_modality_routing_uses_each_branch_rows():
    out, pids = make_out("modality", seed=6)
    assert out.ir.index.tolist() == [2, 3, 6, 7, 10, 11]
    _, terms = VDLoss(VDLossConfig.paper(), num_classes=C)(out, pids)
    # CE on the ir branch must use pids[ir.index]
    w = dict(ir=0.5, vis=0.5, shared_gray=0.25, shared_x=0.25)
    ce = sum(w[n] * (_ce_hand(b.v_logits, pids[b.index]) + _ce_hand(b.z_logits, pids[b.index]))
             for n, b in out.branches().items())
    assert math.isclose(terms["ce"].item(), ce, rel_tol=1e-9)
    # DML: each specific branch with the shared branch (raw view) on the same images, weighted by row counts
    x = out.shared_x
    parts = []
    for b in (out.ir, out.vis):
        xs = x.v_logits[b.index]
        parts.append((_kl_batchmean(xs, b.v_logits) + _kl_batchmean(b.v_logits, xs), len(b.index)))
    dml = sum(p * n for p, n in parts) / sum(n for _, n in parts)
    assert math.isclose(terms["dml"].item(), 8.0 * dml, rel_tol=1e-9)
    vsd = sum(_kl_batchmean(b.v_logits, b.z_logits) for b in (out.ir, out.vis))
    assert math.isclose(terms["vsd"].item(), 2.0 * vsd, rel_tol=1e-9)


def test_modality_routing_official_recipe_and_empty_modality():
    out, pids = make_out("modality", seed=7)
    _, terms = VDLoss(VDLossConfig.official(), num_classes=C)(out, pids)
    assert all(torch.isfinite(t) for t in terms.values())
    # a batch with no infrared image: the ir branch saw nothing; its terms are skipped, not NaN
    g = torch.Generator().manual_seed(0)
    B = 6
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    out = VDOutput(ir=_branch([], g), vis=_branch(list(range(B)), g), shared_x=_branch(list(range(B)), g),
                   shared_gray=_branch(list(range(B)), g), is_ir=torch.zeros(B, dtype=torch.bool), routing="modality")
    for cfg in (VDLossConfig.paper(), VDLossConfig.official()):
        _, terms = VDLoss(cfg, num_classes=C)(out, pids)
        assert all(torch.isfinite(t) for t in terms.values()), terms


def test_views_aligned_by_index_not_by_row_order():
    out, pids = make_out("official", seed=8)
    _, ref = VDLoss(VDLossConfig.paper(), num_classes=C)(out, pids)
    perm = torch.randperm(len(pids), generator=torch.Generator().manual_seed(1))
    g = out.shared_gray
    out.shared_gray = BranchOutput(v=g.v[perm], v_pre=g.v_pre[perm], v_logits=g.v_logits[perm], z=g.z[perm],
                                   z_logits=g.z_logits[perm], index=g.index[perm])
    _, got = VDLoss(VDLossConfig.paper(), num_classes=C)(out, pids)
    for k in ("vcd", "vml", "ce", "metric"):
        assert torch.allclose(got[k], ref[k]), k


# ------------------------------------------------------------------------------------------ gradients
def test_teacher_detached_in_vsd_and_switchable():
    for detach in (True, False):
        out, pids = make_out("official", seed=9)
        cfg = VDLossConfig.paper(weights=dict(ce=0, dml=0, vcd=0, vml=0), options={"metric": {"kind": "none"}},
                                 detach_teacher=detach)
        total, terms = VDLoss(cfg, num_classes=C)(out, pids)
        assert tuple(terms) == ("vsd",)
        total.backward()
        assert out.ir.z_logits.grad.abs().sum() > 0
        teacher_grad = out.ir.v_logits.grad
        assert (teacher_grad is None) == detach
        assert out.shared_x.z_logits.grad is None  # VSD touches only the specific branches


def test_vml_gradients_reach_both_views_and_official_vcd_only_students():
    out, pids = make_out("official", seed=10)
    cfg = VDLossConfig.paper(weights=dict(ce=0, dml=0, vsd=0, vcd=0), options={"metric": {"kind": "none"}})
    VDLoss(cfg, num_classes=C)(out, pids)[0].backward()
    assert out.shared_x.z_logits.grad.abs().sum() > 0 and out.shared_gray.z_logits.grad.abs().sum() > 0
    out, pids = make_out("official", seed=10)
    cfg = VDLossConfig.official(weights=dict(ce=0, metric=0, cml=0, vsd=0))
    VDLoss(cfg, num_classes=C)(out, pids)[0].backward()
    assert out.shared_x.v_logits.grad is None and out.shared_gray.v_logits.grad is None
    assert out.shared_x.z_logits.grad.abs().sum() > 0 and out.shared_gray.z_logits.grad.abs().sum() > 0


def test_temperature_reaches_paper_terms():
    out, pids = make_out("official", seed=11)
    _, t1 = VDLoss(VDLossConfig.paper(), num_classes=C)(out, pids)
    _, t4 = VDLoss(VDLossConfig.paper(temperature=4.0), num_classes=C)(out, pids)
    vsd4 = sum(_kl_batchmean(b.v_logits, b.z_logits, T=4.0) for b in (out.ir, out.vis))
    assert math.isclose(t4["vsd"].item(), 2.0 * vsd4, rel_tol=1e-9)
    for k in ("vsd", "vcd", "vml", "dml"):
        assert not torch.isclose(t1[k], t4[k])
    assert torch.allclose(t1["ce"], t4["ce"])


# ------------------------------------------------------------------------------------------ NaN naming, IB, errors
def test_nan_input_gives_a_nan_term_that_can_be_named():
    out, pids = make_out("official", seed=12)
    with torch.no_grad():
        out.shared_x.z_logits[0, 0] = float("nan")
    total, terms = VDLoss(VDLossConfig.paper(), num_classes=C)(out, pids)
    bad = sorted(k for k, t in terms.items() if not torch.isfinite(t))
    assert torch.isnan(total)
    assert bad == ["ce", "vcd", "vml"]  # metric uses z features, not logits; vsd/dml use the specific branches
    out, pids = make_out("official", seed=12)
    with torch.no_grad():
        out.ir.v[1, 2] = float("nan")
    _, terms = VDLoss(VDLossConfig.official(), num_classes=C)(out, pids)
    assert sorted(k for k, t in terms.items() if not torch.isfinite(t)) == ["metric"]


def test_ib_baseline_owns_critics_and_needs_dims():
    with pytest.raises(ValueError, match="feat_dim_v"):
        VDLoss(VDLossConfig.paper(weights={"ib": 0.1}), num_classes=C)
    cfg = VDLossConfig.paper(weights=dict(ib=0.1, vsd=0, vcd=0, vml=0, dml=0), options={"ib": {"hidden": 16}})
    crit = VDLoss(cfg, num_classes=C, feat_dim_v=DV, feat_dim_z=DZ).double()
    assert len(list(crit.parameters())) > 0
    assert len(list(VDLoss(VDLossConfig.paper(), num_classes=C).parameters())) == 0
    out, pids = make_out("official", seed=13)
    total, terms = crit(out, pids)
    assert tuple(terms) == ("ce", "metric", "ib")
    assert math.isfinite(terms["ib"].item()) and terms["ib"].item() <= 0.0  # each JS bound is <= 0
    total.backward()
    assert all(p.grad is not None for p in crit.parameters())
    assert out.ir.z.grad is not None


def test_bf16_outputs_give_float32_terms():
    out, pids = make_out("official", seed=14, dtype=torch.bfloat16)
    for cfg in (VDLossConfig.paper(), VDLossConfig.official()):
        total, terms = VDLoss(cfg, num_classes=C)(out, pids)
        assert total.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())


@pytest.mark.parametrize(
    "mutate, msg",
    [
        (lambda out, pids: (out, pids[:-1]), "one label per batch image"),
        (lambda out, pids: (out, pids.float()), "integer"),
        (lambda out, pids: (setattr(out, "routing", "other") or out, pids), "routing"),
        (lambda out, pids: (setattr(out.vis, "index", out.vis.index + 100) or out, pids), "index"),
        (lambda out, pids: (setattr(out.ir, "z_logits", out.ir.z_logits[:, :3]) or out, pids), "num_classes"),
        (lambda out, pids: (setattr(out.ir, "z", out.ir.z[:2]) or out, pids), "VDOutput.ir.z"),
        (lambda out, pids: ("not an output", pids), "VDOutput"),
    ],
)
def test_bad_outputs_raise_clear_errors(mutate, msg):
    out, pids = make_out("official", seed=15)
    out, pids = mutate(out, pids)
    with pytest.raises((ValueError, TypeError), match=msg):
        VDLoss(VDLossConfig.paper(), num_classes=C)(out, pids)


def test_vcd_cross_form_is_view_to_other_view_distillation():
    """vd.term_options.vcd.form cross: each view's observation teaches the other view's representation,
    KL(sg P_v2 || P_z1) and KL(sg P_v1 || P_z2) averaged (restated with the batch-mean KL); only the students get
    gradients."""
    out, pids = make_out("official", seed=3)
    for b in out.branches().values():
        for f in ("v_logits", "z_logits"):
            getattr(b, f).requires_grad_(True)
    cfg = VDLossConfig.paper(weights=dict(ce=0, dml=0, vsd=0, vml=0), options={"metric": {"kind": "none"},
                                                                               "vcd": {"form": "cross"}})
    _, terms = VDLoss(cfg, num_classes=C)(out, pids)
    x, g = out.shared_x, out.shared_gray
    ref = 0.5 * (_kl_batchmean(g.v_logits, x.z_logits) + _kl_batchmean(x.v_logits, g.z_logits))
    assert math.isclose(terms["vcd"].item(), 2.0 * ref, rel_tol=1e-9)
    terms["vcd"].backward()
    assert x.z_logits.grad.abs().sum() > 0 and g.z_logits.grad.abs().sum() > 0
    assert x.v_logits.grad is None or not x.v_logits.grad.any()
    with pytest.raises(ValueError, match=r"'vcd'\]\['form'\]"):
        VDLossConfig.paper(options={"vcd": {"form": "z"}})
