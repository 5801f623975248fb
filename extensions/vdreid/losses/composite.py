"""The training objective: ``L_train = L_ReID + beta (VSD + VCD + VML)`` (Eq. 16), ``L_ReID = L_cls + L_metric +
alpha L_DML`` (Eq. 17), in the paper's form or as the released code computes it (docs/vd-recipes.md).

:class:`VDLoss` maps a :class:`~vdreid.models.outputs.VDOutput` and the batch's identity labels to the total loss and
a dict of every *weighted* term under stable names (``ce``, ``metric``, ``dml``, ``cml``, ``vsd``, ``vcd``, ``vml``,
``ib``); a term whose weight is 0 is left out of the dict (and not computed). The total is the sum of the dict.

Which rows each term compares (``BranchOutput.index`` says which batch positions a branch saw):

* ``ce`` and ``metric``: every branch, on both its observation ``v`` (logits / feature) and representation ``z``, with
  the labels ``pids[index]``, weighted by ``branch_weights`` for (ir, vis, shared_gray, shared_x) (the released
  code's 0.5/0.5/0.25/0.25; the paper gives no weights, so the paper recipe uses the same). The metric uses the post-
  BNNeck ``v`` (ranked-list losses, L2-normalised inside) or the pre-BNNeck ``v_pre`` (batch-hard triplet, the BNNeck
  convention), and ``z``. The official rank loss gets ``sub = is_ir[index]``.
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
* ``cml`` (released code's stand-in for DML): Sinkhorn distance between ``softmax(ir.v_logits)`` and
  ``softmax(vis.v_logits)`` as two point clouds (uniform marginals, so row order and count need not match; with
  ``routing='modality'`` it compares the infrared images' predictions with the visible images').
* ``ib`` (conventional IB baseline, ablation only): ``sum_branches I_JS(v; z)``, see :mod:`vdreid.losses.ib`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from vdreid.models.outputs import BranchOutput, VDOutput

RECIPES = ("paper", "official")
METRICS = ("ranked_list", "triplet", "official_rank", "none")
BRANCH_ORDER = ("ir", "vis", "shared_gray", "shared_x")  # order of VDLossConfig.branch_weights
TERM_NAMES = ("ce", "metric", "dml", "cml", "vsd", "vcd", "vml", "ib")
VCD_FORMS = ("views", "cross")

# Recipe defaults for the fields left as None. paper: Eq. (16)-(17) and section 4.2 (alpha = 8 on DML, beta = 2).
# official: `-CE_loss 1 -Triplet_loss 1 -CML_loss 8 -VSD_loss 2 -VCD_loss 2`, no VML, no DML (docs/vd-recipes.md
# section 2); the
# effective VSD/VCD weight is beta * vsd = 2 * 1.
_RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": dict(ce=1.0, metric="ranked_list", metric_weight=1.0, dml=8.0, cml=0.0, vsd=1.0, vcd=1.0, vml=1.0,
                  kl_form="paper"),
    "official": dict(ce=1.0, metric="official_rank", metric_weight=1.0, dml=0.0, cml=8.0, vsd=1.0, vcd=1.0, vml=0.0,
                     kl_form="official"),
}


@dataclass
class VDLossConfig:
    """Weights and options of the VD objective. Fields left ``None`` take the recipe's default (see
    :meth:`paper` / :meth:`official`); anything passed explicitly wins. A weight of 0 switches a term off.

    Effective weights: ``ce``, ``metric_weight``, ``dml`` (alpha of Eq. 17), ``cml``, ``ib_baseline`` as given;
    ``vsd``, ``vcd``, ``vml`` are multiplied by ``beta`` (Eq. 16).
    """

    recipe: str = "paper"
    ce: float | None = None
    label_smooth: float = 0.1
    metric: str | None = None
    metric_weight: float | None = None
    triplet_margin: float = 0.3
    rll_alpha: float = RLL_ALPHA
    rll_margin: float = RLL_MARGIN
    rll_tn: float = RLL_TN
    rank_alpha_intra: float = OFFICIAL_RANK["alpha_intra"]
    rank_margin_intra: float = OFFICIAL_RANK["margin_intra"]
    rank_alpha_cross: float = OFFICIAL_RANK["alpha_cross"]
    rank_margin_cross: float = OFFICIAL_RANK["margin_cross"]
    dml: float | None = None
    cml: float | None = None
    sinkhorn_eps: float = 0.01
    sinkhorn_max_iter: int = 100
    sinkhorn_stabilised: bool = False
    beta: float = 2.0
    vsd: float | None = None
    vcd: float | None = None
    vml: float | None = None
    temperature: float = 1.0
    detach_teacher: bool = True
    kl_form: str | None = None
    vcd_form: str = "views"  # paper form of VCD: views (Eq. 15 as printed, symmetrised z <-> z) | cross (v -> other z)
    branch_weights: tuple[float, float, float, float] = field(default=(0.5, 0.5, 0.25, 0.25))
    ib_baseline: float = 0.0
    ib_hidden: int = 512

    def __post_init__(self) -> None:
        where = "VDLossConfig"
        if self.recipe not in RECIPES:
            raise ValueError(f"{where}.recipe must be one of {RECIPES}, got {self.recipe!r}")
        for k, val in _RECIPE_DEFAULTS[self.recipe].items():
            if getattr(self, k) is None:
                setattr(self, k, val)
        if self.metric not in METRICS:
            raise ValueError(f"{where}.metric must be one of {METRICS}, got {self.metric!r}")
        if self.kl_form not in KL_FORMS:
            raise ValueError(f"{where}.kl_form must be one of {KL_FORMS}, got {self.kl_form!r}")
        if self.vcd_form not in VCD_FORMS:
            raise ValueError(f"{where}.vcd_form must be one of {VCD_FORMS}, got {self.vcd_form!r}")
        for k in ("ce", "metric_weight", "dml", "cml", "beta", "vsd", "vcd", "vml", "ib_baseline"):
            val = getattr(self, k)
            if not (isinstance(val, (int, float)) and val >= 0):
                raise ValueError(f"{where}.{k} is a loss weight and must be a number >= 0 (0 = off), got {val!r}")
            setattr(self, k, float(val))
        if not 0.0 <= self.label_smooth < 1.0:
            raise ValueError(f"{where}.label_smooth must be in [0, 1), got {self.label_smooth!r}")
        if not self.temperature > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature!r}")
        bw = tuple(float(w) for w in self.branch_weights)
        if len(bw) != 4 or any(w < 0 for w in bw):
            raise ValueError(
                f"{where}.branch_weights must be 4 numbers >= 0 for {BRANCH_ORDER}, got {self.branch_weights!r}"
            )
        self.branch_weights = bw  # type: ignore[assignment]
        if self.sinkhorn_eps <= 0 or int(self.sinkhorn_max_iter) < 1:
            raise ValueError(f"{where}: sinkhorn_eps must be > 0 and sinkhorn_max_iter >= 1")
        if all(w == 0 for w in self.effective_weights().values()):
            raise ValueError(f"{where}: every loss weight is 0; nothing to train")

    @classmethod
    def paper(cls, **overrides: Any) -> VDLossConfig:
        """The paper's objective (Eq. 16-17, section 4.2): CE + ranked list loss + 8 DML + 2 (VSD + VCD + VML),
        true KL / JS divergences."""
        return cls(recipe="paper", **overrides)

    @classmethod
    def official(cls, **overrides: Any) -> VDLossConfig:
        """The released code's objective (docs/vd-recipes.md section 2): CE 1 + modality-aware rank loss 1 + 8
        Sinkhorn CML + 2 VSD +
        2 VCD in the ``F.kl_div`` misuse form, no VML, no DML, teacher detached."""
        return cls(recipe="official", **overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VDLossConfig:
        """Build from a mapping (e.g. a yacs node); unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"VDLossConfig: unknown field(s) {unknown}; valid fields are {sorted(names)}")
        return cls(**dict(d))

    def effective_weights(self) -> dict[str, float]:
        """The multiplier of each term in the total (0 = switched off)."""
        return {
            "ce": self.ce,
            "metric": 0.0 if self.metric == "none" else self.metric_weight,
            "dml": self.dml,
            "cml": self.cml,
            "vsd": self.beta * self.vsd,
            "vcd": self.beta * self.vcd,
            "vml": self.beta * self.vml,
            "ib": self.ib_baseline,
        }  # type: ignore[dict-item]


def _align(a: BranchOutput, b: BranchOutput, batch_size: int) -> tuple[Tensor, Tensor]:
    """Rows of ``a`` and of ``b`` holding the same batch positions, in the same order."""
    ar = torch.arange(a.index.numel(), device=a.index.device)
    if a.index.shape == b.index.shape and torch.equal(a.index, b.index):
        return ar, ar
    inv = torch.full((batch_size,), -1, dtype=torch.long, device=b.index.device)
    inv[b.index] = torch.arange(b.index.numel(), device=b.index.device)
    rows_b = inv[a.index]
    keep = rows_b >= 0
    return ar[keep], rows_b[keep]


class VDLoss(nn.Module):
    """Composite VD loss (Eq. 16-17); see the module docstring for which rows each term compares.

    Args:
        cfg: the weights and forms.
        num_classes: number of training identities (every classifier's output size; checked).
        feat_dim_v, feat_dim_z: sizes of ``v`` and ``z``; needed only for the conventional-IB baseline
            (``cfg.ib_baseline > 0``), whose critic networks are parameters of this module (add
            ``criterion.parameters()`` to the optimiser).
    """

    def __init__(
        self, cfg: VDLossConfig, num_classes: int, feat_dim_v: int | None = None, feat_dim_z: int | None = None
    ) -> None:
        super().__init__()
        if not isinstance(cfg, VDLossConfig):
            raise TypeError(f"VDLoss: `cfg` must be a VDLossConfig, got {type(cfg).__name__}")
        if not (isinstance(num_classes, int) and num_classes > 0):
            raise ValueError(f"VDLoss: `num_classes` must be a positive int, got {num_classes!r}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.weights = cfg.effective_weights()
        self.ib: ConventionalIB | None = None
        if self.weights["ib"] > 0:
            if not feat_dim_v or not feat_dim_z:
                raise ValueError(
                    "VDLoss: cfg.ib_baseline > 0 needs the MI estimator's input sizes: pass feat_dim_v (size of the "
                    "observation v) and feat_dim_z (size of the representation z)"
                )
            self.ib = ConventionalIB(int(feat_dim_v), int(feat_dim_z), hidden=cfg.ib_hidden)

    def active_terms(self) -> tuple[str, ...]:
        """Names of the terms this loss computes (weight > 0), in the order they appear in the dict."""
        return tuple(k for k in TERM_NAMES if self.weights[k] > 0)

    # ---------------------------------------------------------------------------------------------- checks
    def _check(self, out: VDOutput, pids: Tensor) -> int:
        if not isinstance(out, VDOutput):
            raise TypeError(f"VDLoss: `out` must be a vdreid.models.outputs.VDOutput, got {type(out).__name__}")
        B = out.is_ir.numel()
        if not isinstance(pids, Tensor) or pids.dim() != 1 or pids.numel() != B:
            shape = tuple(pids.shape) if isinstance(pids, Tensor) else type(pids).__name__
            raise ValueError(f"VDLoss: `pids` must be 1-D with one label per batch image ({B}), got {shape}")
        if pids.is_floating_point():
            raise TypeError(f"VDLoss: `pids` must be integer identity labels 0..num_classes-1, got {pids.dtype}")
        if out.routing not in ("official", "modality"):
            raise ValueError(f"VDLoss: VDOutput.routing must be 'official' or 'modality', got {out.routing!r}")
        if not out.branches():
            raise ValueError("VDLoss: VDOutput has no branch outputs")
        for name, b in out.branches().items():
            n = b.index.numel()
            if (b.z is None) != (b.z_logits is None):
                raise ValueError(f"VDLoss: VDOutput.{name} must have both z and z_logits, or neither (no bottleneck)")
            for f in ("v", "v_pre", "v_logits", "z", "z_logits"):
                t = getattr(b, f)
                if t is None:
                    continue
                if t.dim() != 2 or t.shape[0] != n:
                    raise ValueError(
                        f"VDLoss: VDOutput.{name}.{f} must be 2-D with one row per entry of {name}.index ({n}), "
                        f"got {tuple(t.shape)}"
                    )
            for f in ("v_logits", "z_logits"):
                if getattr(b, f) is not None and getattr(b, f).shape[1] != self.num_classes:
                    raise ValueError(
                        f"VDLoss: VDOutput.{name}.{f} has {getattr(b, f).shape[1]} classes but VDLoss was built with "
                        f"num_classes={self.num_classes}"
                    )
            if n and (int(b.index.min()) < 0 or int(b.index.max()) >= B):
                raise ValueError(f"VDLoss: VDOutput.{name}.index must hold batch positions in [0, {B})")
        return B

    # ---------------------------------------------------------------------------------------------- terms
    def _ce(self, out: VDOutput, pids: Tensor) -> Tensor:
        """L_cls of Eq. (17): label-smoothed CE on every branch's v and z classifiers, branch-weighted."""
        eps = self.cfg.label_smooth
        total = pids.new_zeros((), dtype=torch.float32)
        present = out.branches()
        for name, w in zip(BRANCH_ORDER, self.cfg.branch_weights):
            b = present.get(name)
            if b is None or w == 0 or b.index.numel() == 0:
                continue
            y = pids[b.index]
            term = label_smooth_ce(b.v_logits, y, eps)
            if b.z_logits is not None:
                term = term + label_smooth_ce(b.z_logits, y, eps)
            total = total + w * term
        return total

    def _metric_one(self, feat: Tensor, y: Tensor, sub: Tensor) -> Tensor | None:
        cfg = self.cfg
        if feat.shape[0] < 2:
            return None
        if cfg.metric == "ranked_list":
            return ranked_list_loss(feat, y, alpha=cfg.rll_alpha, margin=cfg.rll_margin, t_n=cfg.rll_tn)
        if cfg.metric == "official_rank":
            return official_rank_loss(
                feat, y, sub, alpha_intra=cfg.rank_alpha_intra, margin_intra=cfg.rank_margin_intra,
                alpha_cross=cfg.rank_alpha_cross, margin_cross=cfg.rank_margin_cross,
            )
        if torch.unique(y).numel() < 2:  # batch-hard triplet needs a negative for every anchor
            return None
        return triplet_loss(feat, y, margin=cfg.triplet_margin)

    def _metric(self, out: VDOutput, pids: Tensor) -> Tensor:
        """L_metric of Eq. (17) on every branch's v (or v_pre) and z features, branch-weighted."""
        total = pids.new_zeros((), dtype=torch.float32)
        present = out.branches()
        for name, w in zip(BRANCH_ORDER, self.cfg.branch_weights):
            b = present.get(name)
            if b is None or w == 0:
                continue
            y, sub = pids[b.index], out.is_ir[b.index]
            v_feat = b.v_pre if self.cfg.metric == "triplet" else b.v
            for feat in (v_feat, b.z):
                if feat is None:
                    continue
                term = self._metric_one(feat, y, sub)
                if term is not None:
                    total = total + w * term
        return total

    def _dml(self, out: VDOutput, B: int) -> Tensor:
        """L_DML of Eq. (17) (Zhang et al.); pairing by routing as the module docstring describes."""
        T = self.cfg.temperature
        zero = out.is_ir.new_zeros((), dtype=torch.float32)
        if out.routing == "official":
            if out.ir is None or out.vis is None:
                return zero
            ra, rb = _align(out.ir, out.vis, B)
            if ra.numel() == 0:
                return out.ir.v_logits.new_zeros((), dtype=torch.float32)
            return dml_loss(out.ir.v_logits[ra], out.vis.v_logits[rb], T=T)
        parts, counts = [], []
        if out.shared_x is None:
            return zero
        for b in (out.ir, out.vis):
            if b is None:
                continue
            rs, rx = _align(b, out.shared_x, B)
            if rs.numel():
                parts.append(dml_loss(b.v_logits[rs], out.shared_x.v_logits[rx], T=T))
                counts.append(rs.numel())
        if not parts:
            return out.shared_x.v_logits.new_zeros((), dtype=torch.float32)
        n = float(sum(counts))
        return sum(p * (c / n) for p, c in zip(parts, counts))  # type: ignore[return-value]

    def _cml(self, out: VDOutput) -> Tensor:
        """The released code's CML (docs/vd-recipes.md section 2): Sinkhorn distance between the specific
        observations' softmaxes."""
        if out.ir is None or out.vis is None or out.ir.v_logits.shape[0] == 0 or out.vis.v_logits.shape[0] == 0:
            return out.is_ir.new_zeros((), dtype=torch.float32)
        p = F.softmax(out.ir.v_logits.float(), dim=1)
        q = F.softmax(out.vis.v_logits.float(), dim=1)
        return sinkhorn_distance(
            p, q, eps=self.cfg.sinkhorn_eps, max_iter=self.cfg.sinkhorn_max_iter,
            stabilised=self.cfg.sinkhorn_stabilised,
        )

    def _vsd(self, out: VDOutput) -> Tensor:
        """VSD, Eq. (8), summed over the modality-specific branches."""
        cfg = self.cfg
        total = out.is_ir.new_zeros((), dtype=torch.float32)
        for b in (out.ir, out.vis):
            if b is not None and b.z_logits is not None and b.index.numel():
                total = total + kl_distill(
                    b.v_logits, b.z_logits, T=cfg.temperature, form=cfg.kl_form, detach_teacher=cfg.detach_teacher
                )
        return total

    def _views(self, out: VDOutput, B: int) -> tuple[BranchOutput, BranchOutput, Tensor, Tensor] | None:
        """The shared branch's two views and their aligned rows; None when there is no shared bottleneck."""
        g, x = out.shared_gray, out.shared_x
        if g is None or x is None or g.z_logits is None or x.z_logits is None:
            return None
        rg, rx = _align(g, x, B)
        return (g, x, rg, rx) if rg.numel() else None

    def _vcd(self, out: VDOutput, B: int) -> Tensor:
        """VCD, Eq. (15), between the shared branch's two views (paper or official form)."""
        views = self._views(out, B)
        if views is None:
            return out.is_ir.new_zeros((), dtype=torch.float32)
        g, x, rg, rx = views
        cfg = self.cfg
        if cfg.kl_form == "official":
            # view 1 = gray (the code's i_ms), view 2 = raw (v_ms): other view's observation -> this view's z
            return vcd_loss_official(
                g.v_logits[rg], g.z_logits[rg], x.v_logits[rx], x.z_logits[rx], detach_teacher=cfg.detach_teacher
            )
        if cfg.vcd_form == "cross":  # the gray view's observation teaches the raw view's representation and back
            return vcd_loss_cross(g.v_logits[rg], g.z_logits[rg], x.v_logits[rx], x.z_logits[rx], T=cfg.temperature,
                                  detach_teacher=cfg.detach_teacher)
        return vcd_loss_paper(x.z_logits[rx], g.z_logits[rg], T=cfg.temperature, detach_teacher=cfg.detach_teacher)

    def _vml(self, out: VDOutput, B: int) -> Tensor:
        """VML, Eq. (12): Jensen-Shannon between the shared branch's two views' P_z."""
        views = self._views(out, B)
        if views is None:
            return out.is_ir.new_zeros((), dtype=torch.float32)
        g, x, rg, rx = views
        return js_divergence(x.z_logits[rx], g.z_logits[rg], T=self.cfg.temperature)

    def _ib(self, out: VDOutput) -> Tensor:
        """Conventional IB baseline: sum over branches of the JS estimate of I(v; z) (ablation, Table 3)."""
        assert self.ib is not None
        pairs = {name: (b.v, b.z) for name, b in out.branches().items() if b.z is not None and b.index.numel() >= 2}
        return self.ib(pairs)

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, out: VDOutput, pids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns ``(total, terms)``: ``terms`` maps each active term name to its weighted 0-dim value."""
        B = self._check(out, pids)
        pids = pids.long()
        compute = {
            "ce": lambda: self._ce(out, pids),
            "metric": lambda: self._metric(out, pids),
            "dml": lambda: self._dml(out, B),
            "cml": lambda: self._cml(out),
            "vsd": lambda: self._vsd(out),
            "vcd": lambda: self._vcd(out, B),
            "vml": lambda: self._vml(out, B),
            "ib": lambda: self._ib(out),
        }
        terms: dict[str, Tensor] = {}
        for name in self.active_terms():
            terms[name] = self.weights[name] * compute[name]()
        total = sum(terms.values())
        return total, terms  # type: ignore[return-value]
