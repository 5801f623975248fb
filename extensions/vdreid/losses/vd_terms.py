"""The built-in terms of VD's objective (Eq. 16-17), registered through :func:`vdreid.losses.terms.register_term`
exactly as a plug-in's term is.

Which rows each term compares (``BranchOutput.index`` says which batch positions a branch saw):

* ``ce`` (L_cls) and ``metric`` (L_metric): every branch, on both its observation ``v`` (logits / feature) and its
  representation ``z``, with the labels ``pids[index]``, weighted by the branch weights of (ir, vis, shared_gray,
  shared_x) (the released code's 0.5/0.5/0.25/0.25; the paper gives none, so the paper recipe uses the same). The
  metric uses the post-BNNeck ``v`` (ranked-list losses, L2-normalised inside) or the pre-BNNeck ``v_pre``
  (batch-hard triplet, the BNNeck convention), and ``z``. The official rank loss gets ``sub = is_ir[index]``.
* ``vsd`` (Eq. 8): per modality-specific branch (``ir``, ``vis``), ``KL(sg(P_v) || P_z)`` on that branch's rows,
  summed over the two branches (the released code sums them too).
* ``vcd`` (Eq. 15) and ``vml`` (Eq. 12): the shared branch's two views (``shared_x``, ``shared_gray``) of the same
  images, rows aligned by ``index``.
* ``dml`` (Eq. 17, Zhang et al.): mutual learning between modality-specific observations' predictions ``P_v``. With
  ``routing='official'`` both specific branches saw every image, so it is DML between ``ir`` and ``vis`` on the same
  images. With ``routing='modality'`` they saw disjoint images and cannot be compared image by image; then each
  image's specific branch (``ir`` for infrared images, ``vis`` for visible ones) learns mutually with the shared
  branch on the same image (``shared_x`` rows at that branch's ``index``), and the two parts are averaged weighted by
  their row counts, i.e. the batch mean of a per-image DML term.
* ``cml`` (the released code's stand-in for DML): Sinkhorn distance between ``softmax(ir.v_logits)`` and
  ``softmax(vis.v_logits)`` as two point clouds (uniform marginals, so row order and count need not match; with
  ``routing='modality'`` it compares the infrared images' predictions with the visible images').
* ``ib`` (the conventional IB baseline of Table 3 rows 7-9): ``sum_branches I_JS(v; z)``, see :mod:`vdreid.losses.ib`.

Recipe defaults (``paper``: Eq. 16-17 and section 4.2, alpha = 8 on DML, VSD/VCD/VML 1 inside beta = 2; ``official``:
the released code's ``-CE_loss 1 -Triplet_loss 1 -CML_loss 8 -VSD_loss 2 -VCD_loss 2``, no VML, no DML, i.e. VSD and
VCD 1 inside beta = 2; docs/vd-recipes.md section 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdreid.config import at_least, positive
from vdreid.losses.distillation import (
    KL_FORMS,
    js_divergence,
    kl_distill,
    vcd_loss_cross,
    vcd_loss_official,
    vcd_loss_paper,
)
from vdreid.losses.ib import ConventionalIB
from vdreid.losses.reid import (
    OFFICIAL_RANK,
    RLL_ALPHA,
    RLL_MARGIN,
    RLL_TN,
    dml_loss,
    label_smooth_ce,
    official_rank_loss,
    ranked_list_loss,
    triplet_loss,
)
from vdreid.losses.sinkhorn import sinkhorn_distance
from vdreid.losses.terms import Needs, TermContext, TermOption, register_term
from vdreid.models.outputs import BranchOutput, VDOutput

#: order of the branch weights (``vd.branch_weights``, :attr:`TermContext.branch_weights`)
BRANCH_ORDER = ("ir", "vis", "shared_gray", "shared_x")
#: L_metric kinds (``vd.term_options.metric.kind``); ``none`` switches the term off
METRICS = ("ranked_list", "triplet", "official_rank", "none")
#: VCD forms (``vd.term_options.vcd.form``): Eq. 15 as printed, symmetrised (z <-> z); the cross-view reading in true
#: KL (v of one view -> z of the other); the released code's cross-view ``kl_div`` form (docs/vd-recipes.md)
VCD_FORMS = ("views", "cross", "official")
_SPECIFIC = frozenset({"ir", "vis"})


def _zero(out: VDOutput) -> Tensor:
    return out.is_ir.new_zeros((), dtype=torch.float32)


def align(a: BranchOutput, b: BranchOutput, batch_size: int) -> tuple[Tensor, Tensor]:
    """Rows of ``a`` and of ``b`` holding the same batch positions, in the same order."""
    ar = torch.arange(a.index.numel(), device=a.index.device)
    if a.index.shape == b.index.shape and torch.equal(a.index, b.index):
        return ar, ar
    inv = torch.full((batch_size,), -1, dtype=torch.long, device=b.index.device)
    inv[b.index] = torch.arange(b.index.numel(), device=b.index.device)
    rows_b = inv[a.index]
    keep = rows_b >= 0
    return ar[keep], rows_b[keep]


def shared_views(out: VDOutput, batch_size: int) -> tuple[BranchOutput, BranchOutput, Tensor, Tensor] | None:
    """The shared branch's two views (gray, x) and their aligned rows; None without a shared bottleneck."""
    g, x = out.shared_gray, out.shared_x
    if g is None or x is None or g.z_logits is None or x.z_logits is None:
        return None
    rg, rx = align(g, x, batch_size)
    return (g, x, rg, rx) if rg.numel() else None


# ---------------------------------------------------------------------------------------------------- L_ReID
def ce_term(out: VDOutput, pids: Tensor, ctx: TermContext) -> Tensor:
    """L_cls of Eq. (17): label-smoothed CE on every branch's v and z classifiers, branch-weighted."""
    eps = ctx.options["label_smooth"]
    total = pids.new_zeros((), dtype=torch.float32)
    present = out.branches()
    for name, w in zip(BRANCH_ORDER, ctx.branch_weights):
        b = present.get(name)
        if b is None or w == 0 or b.index.numel() == 0:
            continue
        y = pids[b.index]
        term = label_smooth_ce(b.v_logits, y, eps)
        if b.z_logits is not None:
            term = term + label_smooth_ce(b.z_logits, y, eps)
        total = total + w * term
    return total


def _metric_one(feat: Tensor, y: Tensor, sub: Tensor, o: Mapping[str, Any]) -> Tensor | None:
    if feat.shape[0] < 2:
        return None
    if o["kind"] == "ranked_list":
        return ranked_list_loss(feat, y, alpha=o["rll_alpha"], margin=o["rll_margin"], t_n=o["rll_tn"])
    if o["kind"] == "official_rank":
        return official_rank_loss(
            feat, y, sub, alpha_intra=o["rank_alpha_intra"], margin_intra=o["rank_margin_intra"],
            alpha_cross=o["rank_alpha_cross"], margin_cross=o["rank_margin_cross"],
        )
    if torch.unique(y).numel() < 2:  # batch-hard triplet needs a negative for every anchor
        return None
    return triplet_loss(feat, y, margin=o["triplet_margin"])


def metric_term(out: VDOutput, pids: Tensor, ctx: TermContext) -> Tensor:
    """L_metric of Eq. (17) on every branch's v (or v_pre) and z features, branch-weighted."""
    o = ctx.options
    total = pids.new_zeros((), dtype=torch.float32)
    present = out.branches()
    for name, w in zip(BRANCH_ORDER, ctx.branch_weights):
        b = present.get(name)
        if b is None or w == 0:
            continue
        y, sub = pids[b.index], out.is_ir[b.index]
        v_feat = b.v_pre if o["kind"] == "triplet" else b.v
        for feat in (v_feat, b.z):
            if feat is None:
                continue
            term = _metric_one(feat, y, sub, o)
            if term is not None:
                total = total + w * term
    return total


def metric_active(options: Mapping[str, Any]) -> bool:
    return options["kind"] != "none"


def dml_term(out: VDOutput, pids: Tensor, ctx: TermContext) -> Tensor:
    """L_DML of Eq. (17) (Zhang et al.); pairing by routing as the module docstring describes."""
    T, B = ctx.temperature, ctx.batch_size
    if out.routing == "official":
        if out.ir is None or out.vis is None:
            return _zero(out)
        ra, rb = align(out.ir, out.vis, B)
        if ra.numel() == 0:
            return out.ir.v_logits.new_zeros((), dtype=torch.float32)
        return dml_loss(out.ir.v_logits[ra], out.vis.v_logits[rb], T=T)
    parts, counts = [], []
    if out.shared_x is None:
        return _zero(out)
    for b in (out.ir, out.vis):
        if b is None:
            continue
        rs, rx = align(b, out.shared_x, B)
        if rs.numel():
            parts.append(dml_loss(b.v_logits[rs], out.shared_x.v_logits[rx], T=T))
            counts.append(rs.numel())
    if not parts:
        return out.shared_x.v_logits.new_zeros((), dtype=torch.float32)
    n = float(sum(counts))
    return sum(p * (c / n) for p, c in zip(parts, counts))  # type: ignore[return-value]


def cml_term(out: VDOutput, pids: Tensor, ctx: TermContext) -> Tensor:
    """The released code's CML (docs/vd-recipes.md section 2): Sinkhorn distance between the specific observations'
    softmaxes."""
    if out.ir is None or out.vis is None or out.ir.v_logits.shape[0] == 0 or out.vis.v_logits.shape[0] == 0:
        return _zero(out)
    p = F.softmax(out.ir.v_logits.float(), dim=1)
    q = F.softmax(out.vis.v_logits.float(), dim=1)
    o = ctx.options
    return sinkhorn_distance(p, q, eps=o["eps"], max_iter=o["max_iter"], stabilised=o["stabilised"])


# ---------------------------------------------------------------------------------------------------- VSD, VCD, VML
def vsd_term(out: VDOutput, pids: Tensor, ctx: TermContext) -> Tensor:
    """VSD, Eq. (8), summed over the modality-specific branches."""
    total = _zero(out)
    for b in (out.ir, out.vis):
        if b is not None and b.z_logits is not None and b.index.numel():
            total = total + kl_distill(b.v_logits, b.z_logits, T=ctx.temperature, form=ctx.options["form"],
                                       detach_teacher=ctx.detach_teacher)
    return total


def vcd_term(out: VDOutput, pids: Tensor, ctx: TermContext) -> Tensor:
    """VCD, Eq. (15), between the shared branch's two views, in the form ``ctx.options['form']``."""
    views = shared_views(out, ctx.batch_size)
    if views is None:
        return _zero(out)
    g, x, rg, rx = views
    form, detach = ctx.options["form"], ctx.detach_teacher
    if form == "official":
        # view 1 = gray (the code's i_ms), view 2 = raw (v_ms): other view's observation -> this view's z
        return vcd_loss_official(g.v_logits[rg], g.z_logits[rg], x.v_logits[rx], x.z_logits[rx],
                                 detach_teacher=detach)
    if form == "cross":  # the gray view's observation teaches the raw view's representation and back
        return vcd_loss_cross(g.v_logits[rg], g.z_logits[rg], x.v_logits[rx], x.z_logits[rx], T=ctx.temperature,
                              detach_teacher=detach)
    return vcd_loss_paper(x.z_logits[rx], g.z_logits[rg], T=ctx.temperature, detach_teacher=detach)


def vml_term(out: VDOutput, pids: Tensor, ctx: TermContext) -> Tensor:
    """VML, Eq. (12): Jensen-Shannon between the shared branch's two views' P_z."""
    views = shared_views(out, ctx.batch_size)
    if views is None:
        return _zero(out)
    g, x, rg, rx = views
    return js_divergence(x.z_logits[rx], g.z_logits[rg], T=ctx.temperature)


# ---------------------------------------------------------------------------------------------------- conventional IB
def ib_term(out: VDOutput, pids: Tensor, ctx: TermContext) -> Tensor:
    """Conventional IB baseline: sum over branches of the JS estimate of I(v; z) (ablation, Table 3 rows 7-9)."""
    assert isinstance(ctx.module, ConventionalIB)
    pairs = {name: (b.v, b.z) for name, b in out.branches().items() if b.z is not None and b.index.numel() >= 2}
    return ctx.module(pairs)


def ib_critics(options: Mapping[str, Any], dims: Mapping[str, int]) -> nn.Module:
    return ConventionalIB(int(dims["v"]), int(dims["z"]), hidden=int(options["hidden"]))


# ---------------------------------------------------------------------------------------------------- the table
_KL_FORM = TermOption(default={"paper": "paper", "official": "official"}, choices=KL_FORMS,
                      doc="paper: batch-mean KL(sg P_teacher || P_student); official: the released F.kl_div form")
_NUMBER = at_least(0)

register_term("ce", ce_term, {"paper": 1.0, "official": 1.0},
              options={"label_smooth": TermOption(0.1, rule=((lambda v: 0 <= v < 1), "a number in [0, 1)"),
                                                  doc="label smoothing of the identity cross-entropy")},
              doc="L_cls of Eq. 17: label-smoothed identity cross-entropy on every branch's v and z")
register_term("metric", metric_term, {"paper": 1.0, "official": 1.0},
              options={
                  "kind": TermOption({"paper": "ranked_list", "official": "official_rank"}, choices=METRICS,
                                     doc="ranked_list (Wang et al.) | official_rank (released code) | triplet | none"),
                  "triplet_margin": TermOption(0.3, rule=_NUMBER, doc="margin of the batch-hard triplet loss"),
                  "rll_alpha": TermOption(RLL_ALPHA, rule=positive(), doc="ranked list loss: negatives' boundary"),
                  "rll_margin": TermOption(RLL_MARGIN, rule=_NUMBER, doc="ranked list loss: margin"),
                  "rll_tn": TermOption(RLL_TN, rule=positive(), doc="ranked list loss: temperature of the "
                                                                    "negatives' weights"),
                  "rank_alpha_intra": TermOption(OFFICIAL_RANK["alpha_intra"], rule=positive(),
                                                 doc="official rank loss: intra-modality alpha"),
                  "rank_margin_intra": TermOption(OFFICIAL_RANK["margin_intra"], rule=_NUMBER,
                                                  doc="official rank loss: intra-modality margin"),
                  "rank_alpha_cross": TermOption(OFFICIAL_RANK["alpha_cross"], rule=positive(),
                                                 doc="official rank loss: cross-modality alpha"),
                  "rank_margin_cross": TermOption(OFFICIAL_RANK["margin_cross"], rule=_NUMBER,
                                                  doc="official rank loss: cross-modality margin"),
              },
              active=metric_active,
              doc="L_metric of Eq. 17 on every branch's v and z features")
register_term("dml", dml_term, {"paper": 8.0, "official": 0.0}, needs=Needs(encoders=_SPECIFIC),
              doc="alpha L_DML of Eq. 17: deep mutual learning of the specific observations' P_v")
register_term("cml", cml_term, {"paper": 0.0, "official": 8.0}, needs=Needs(encoders=_SPECIFIC),
              options={"eps": TermOption(0.01, rule=positive(), doc="Sinkhorn entropic regularisation"),
                       "max_iter": TermOption(100, rule=at_least(1, "an integer"), doc="Sinkhorn iterations at most"),
                       "stabilised": TermOption(False, doc="log-domain Sinkhorn instead of the released code's")},
              doc="the released code's Sinkhorn distance between the specific observations' P_v (stands in for DML)")
register_term("vsd", vsd_term, {"paper": 1.0, "official": 1.0}, beta=True,
              needs=Needs(one_bottleneck_of=_SPECIFIC), options={"form": _KL_FORM},
              doc="VSD, Eq. 8: each specific branch's observation teaches its representation")
register_term("vcd", vcd_term, {"paper": 1.0, "official": 1.0}, beta=True, needs=Needs(bottlenecks={"shared"}),
              options={"form": TermOption({"paper": "views", "official": "official"}, choices=VCD_FORMS,
                                          doc="views: Eq. 15 as printed, symmetrised | cross: v of one view -> z of "
                                              "the other (true KL) | official: the released code's form")},
              doc="VCD, Eq. 15, between the shared branch's two views")
register_term("vml", vml_term, {"paper": 1.0, "official": 0.0}, beta=True, needs=Needs(bottlenecks={"shared"}),
              doc="VML, Eq. 12: Jensen-Shannon between the shared branch's two views' P_z")
register_term("ib", ib_term, 0.0, needs=Needs(one_bottleneck_of={"ir", "vis", "shared"}), module=ib_critics,
              options={"hidden": TermOption(512, rule=at_least(1, "an integer"), doc="critic networks' width")},
              doc="conventional IB (Table 3 rows 7-9): Jensen-Shannon estimate of I(v; z) per branch")
