"""The training objective: ``L_train = L_ReID + beta (VSD + VCD + VML)`` (Eq. 16), ``L_ReID = L_cls + L_metric +
alpha L_DML`` (Eq. 17), in the paper's form or as the released code computes it (docs/vd-recipes.md), over the term
table of :mod:`vdreid.losses.terms`.

:class:`VDLossConfig` holds the recipe, each registered term's weight and options (resolved from the recipe's
defaults by :func:`~vdreid.losses.terms.resolve_objective`) and the settings the terms share. :class:`VDLoss` maps a
:class:`~vdreid.models.outputs.VDOutput` and the batch's identity labels to the total loss and a dict of every
*weighted* term under its registered name (``ce``, ``metric``, ``dml``, ``cml``, ``vsd``, ``vcd``, ``vml``, ``ib``
and any plug-in's); a term whose weight is 0 is left out of the dict (and not computed). The total is the sum of the
dict. Which rows each built-in term compares: :mod:`vdreid.losses.vd_terms`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from vdreid.losses import vd_terms
from vdreid.losses.terms import PARTS, RECIPES, LossTerm, TermContext, get_term, resolve_objective, term_names
from vdreid.models.outputs import VDOutput

BRANCH_ORDER = vd_terms.BRANCH_ORDER  # order of VDLossConfig.branch_weights


def _field_key(term: str, option: str | None) -> str:
    return f"VDLossConfig.weights[{term!r}]" if option is None else f"VDLossConfig.options[{term!r}][{option!r}]"


@dataclass
class VDLossConfig:
    """Weights and options of the VD objective.

    Attributes:
        recipe: ``'paper'`` or ``'official'``: the defaults of every weight and option left out.
        weights: term name -> weight (before ``beta``; 0 switches the term off; ``'recipe'`` = the recipe's default).
            After construction it holds every registered term's resolved weight.
        options: term name -> {option: value}; after construction every registered term's resolved options.
        beta: ``beta`` of Eq. 16, multiplying the terms registered with ``beta=True`` (VSD, VCD, VML).
        temperature: ``T`` of every predictive distribution the distillation terms and DML compare.
        detach_teacher: stop the gradient through distillation teachers (``sg`` of Eq. 8).
        branch_weights: L_cls/L_metric weights of (ir, vis, shared_gray, shared_x) (:data:`BRANCH_ORDER`).
        encoders, bottlenecks: the parts the network builds (Table 3; branch names ``'ir'``, ``'vis'``,
            ``'shared'``): a term that needs a missing part is switched off, and a branch without an encoder gets
            branch weight 0. ``encoders=None``: every encoder; ``bottlenecks=None``: one per built encoder.
    """

    recipe: str = "paper"
    weights: dict[str, Any] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    beta: float = 2.0
    temperature: float = 1.0
    detach_teacher: bool = True
    branch_weights: tuple[float, float, float, float] = field(default=(0.5, 0.5, 0.25, 0.25))
    encoders: tuple[str, ...] | None = None
    bottlenecks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        where = "VDLossConfig"
        if self.recipe not in RECIPES:
            raise ValueError(f"{where}.recipe must be one of {RECIPES}, got {self.recipe!r}")
        if not (isinstance(self.beta, (int, float)) and not isinstance(self.beta, bool) and self.beta >= 0):
            raise ValueError(f"{where}.beta is a loss weight and must be a number >= 0 (0 = off), got {self.beta!r}")
        self.beta = float(self.beta)
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature!r}")
        bw = tuple(float(w) for w in self.branch_weights)
        if len(bw) != 4 or any(w < 0 for w in bw):
            raise ValueError(
                f"{where}.branch_weights must be 4 numbers >= 0 for {BRANCH_ORDER}, got {self.branch_weights!r}"
            )
        if self.encoders is not None or self.bottlenecks is not None:
            self.encoders = tuple(PARTS if self.encoders is None else self.encoders)
            self.bottlenecks = tuple(self.encoders if self.bottlenecks is None else self.bottlenecks)
            bw = tuple(w if ("shared" if n.startswith("shared") else n) in self.encoders else 0.0
                       for n, w in zip(BRANCH_ORDER, bw))
        self.branch_weights = bw  # type: ignore[assignment]
        objective = resolve_objective(self.recipe, self.weights, self.options, self.encoders, self.bottlenecks,
                                      key=_field_key)
        self.weights, self.options = objective.weights, objective.options
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
        Sinkhorn CML + 2 VSD + 2 VCD in the ``F.kl_div`` misuse form, no VML, no DML, teacher detached."""
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
        """The multiplier of each registered term in the total (``beta`` applied; 0 = switched off), in the
        table's order."""
        out = {}
        for name, w in self.weights.items():
            term = get_term(name)
            on = term.is_active(self.options[name])
            out[name] = (w * self.beta if term.beta else w) if on else 0.0
        return out

    def active_terms(self) -> tuple[str, ...]:
        """Names of the terms with a weight > 0, in the table's order."""
        return tuple(k for k, w in self.effective_weights().items() if w > 0)


class VDLoss(nn.Module):
    """Composite VD loss (Eq. 16-17) over the term table.

    Args:
        cfg: the weights and options.
        num_classes: number of training identities (every classifier's output size; checked).
        feat_dim_v, feat_dim_z: sizes of ``v`` and ``z``; needed only by a term that owns parameters sized by the
            network (the conventional-IB baseline's critics, ``ib``), which become parameters of this module (add
            ``criterion.parameters()`` to the optimiser). A term's module is the submodule named after the term.
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
        self._terms: dict[str, LossTerm] = {name: get_term(name) for name in cfg.active_terms()}
        for name, term in self._terms.items():
            if term.module is None:
                continue
            if not feat_dim_v or not feat_dim_z:
                raise ValueError(
                    f"VDLoss: the term '{name}' owns parameters sized by the network: pass feat_dim_v (size of the "
                    "observation v) and feat_dim_z (size of the representation z)"
                )
            if hasattr(self, name):
                raise ValueError(f"VDLoss: the term name '{name}' clashes with an attribute of VDLoss; rename it")
            self.add_module(name, term.module(cfg.options[name], {"v": int(feat_dim_v), "z": int(feat_dim_z)}))

    def active_terms(self) -> tuple[str, ...]:
        """Names of the terms this loss computes (weight > 0), in the order they appear in the dict."""
        return tuple(self._terms)

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

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, out: VDOutput, pids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns ``(total, terms)``: ``terms`` maps each active term name to its weighted 0-dim value."""
        B = self._check(out, pids)
        pids = pids.long()
        cfg = self.cfg
        terms: dict[str, Tensor] = {}
        for name, term in self._terms.items():
            ctx = TermContext(options=cfg.options[name], recipe=cfg.recipe, temperature=cfg.temperature,
                              detach_teacher=cfg.detach_teacher, branch_weights=cfg.branch_weights, batch_size=B,
                              module=self._modules.get(name))
            terms[name] = self.weights[name] * term.fn(out, pids, ctx)
        total = sum(terms.values())
        return total, terms  # type: ignore[return-value]


__all__ = ["BRANCH_ORDER", "VDLoss", "VDLossConfig", "term_names"]
