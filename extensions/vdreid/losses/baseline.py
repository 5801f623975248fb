"""Training criteria of the single-embedding baselines (models returning :class:`~vdreid.models.neck.NeckOutput`).

* :class:`AGWCriterion`: AGW's objective (``train.py`` of the authors' code): cross-entropy **without** label
  smoothing on the logits of every image + the weighted regularized triplet loss on the pre-BNNeck pooled feature,
  weights 1 and 1 (``--method base``: batch-hard triplet, margin 0.3, instead of WRT).
* :class:`BNNeckCriterion`: the plain BNNeck baseline (Luo et al., CVPRW'19): label-smoothed cross-entropy
  (eps 0.1) on the BNNeck-feature logits + torchreid's batch-hard triplet loss (margin 0.3) on the pre-BNNeck
  feature, weights 1 and 1.

Both follow vdreid's criterion contract ``criterion(outputs, pids) -> (total, terms)`` with ``terms`` the weighted
0-dim tensors of the active terms and ``total`` their sum.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vdreid.losses._checks import compute_dtype
from vdreid.losses.reid import label_smooth_ce, triplet_loss
from vdreid.losses.wrt import weighted_regularized_triplet


def _check_outputs(outputs: object, pids: Tensor, who: str) -> None:
    for attr in ("pool", "logits"):
        if not isinstance(getattr(outputs, attr, None), Tensor):
            raise TypeError(
                f"{who}: `outputs` must be the model's training output with `pool` and `logits` tensors "
                f"(vdreid.models.NeckOutput), got {type(outputs).__name__}; call the model in train mode"
            )
    n = outputs.logits.shape[0]  # type: ignore[attr-defined]
    if not isinstance(pids, Tensor) or pids.dim() != 1 or pids.numel() != n:
        shape = tuple(pids.shape) if isinstance(pids, Tensor) else type(pids).__name__
        raise ValueError(f"{who}: `pids` must be a 1-D tensor with one label per image ({n}), got {shape}")


def _check_weights(who: str, **weights: float) -> None:
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"{who}: weight `{name}` must be a number >= 0, got {w!r}")
    if not any(weights.values()):
        raise ValueError(f"{who}: every loss weight is 0 ({weights}); nothing would be trained")


AGW_METRICS = ("wrt", "triplet")


class AGWCriterion(nn.Module):
    """``ce * CE(logits, pids) + metric_weight * M(pool, pids)`` (AGW ``train.py``: ``loss_id + loss_tri``).

    ``metric``: 'wrt' (AGW's ``--method agw``: :func:`~vdreid.losses.weighted_regularized_triplet`) or 'triplet'
    (``--method base``: AGW's ``OriTripletLoss``, batch-hard mining with margin ``triplet_margin`` on raw Euclidean
    distances, the same function as torchreid's ``TripletLoss``). The cross-entropy has no label smoothing.
    Terms: ``'ce'`` and the metric's name (weighted; a term with weight 0 is left out).
    """

    def __init__(
        self, ce: float = 1.0, metric_weight: float = 1.0, metric: str = "wrt", triplet_margin: float = 0.3
    ) -> None:
        super().__init__()
        _check_weights("AGWCriterion", ce=ce, metric_weight=metric_weight)
        if metric not in AGW_METRICS:
            raise ValueError(f"AGWCriterion: metric must be one of {AGW_METRICS}, got {metric!r}")
        if triplet_margin < 0:
            raise ValueError(f"AGWCriterion: triplet_margin must be >= 0, got {triplet_margin!r}")
        self.ce, self.metric_weight = float(ce), float(metric_weight)
        self.metric, self.triplet_margin = metric, float(triplet_margin)

    def forward(self, outputs, pids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        _check_outputs(outputs, pids, "AGWCriterion")
        terms: dict[str, Tensor] = {}
        if self.ce:
            logits = outputs.logits
            terms["ce"] = self.ce * F.cross_entropy(logits.to(compute_dtype(logits)), pids.long())
        if self.metric_weight:
            if self.metric == "wrt":
                m = weighted_regularized_triplet(outputs.pool, pids)
            else:
                m = triplet_loss(outputs.pool, pids, margin=self.triplet_margin)
            terms[self.metric] = self.metric_weight * m
        return sum(terms.values()), terms  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"ce={self.ce}, metric={self.metric}, metric_weight={self.metric_weight}"


class BNNeckCriterion(nn.Module):
    """``ce * CE_ls(logits, pids) + triplet * Triplet(pool, pids)`` (label smoothing ``label_smooth``, margin
    ``triplet_margin``). Terms: ``'ce'`` and ``'triplet'`` (weighted; a term with weight 0 is left out)."""

    def __init__(
        self, ce: float = 1.0, triplet: float = 1.0, label_smooth: float = 0.1, triplet_margin: float = 0.3
    ) -> None:
        super().__init__()
        _check_weights("BNNeckCriterion", ce=ce, triplet=triplet)
        if not 0.0 <= label_smooth < 1.0:
            raise ValueError(f"BNNeckCriterion: label_smooth must be in [0, 1), got {label_smooth!r}")
        if triplet_margin < 0:
            raise ValueError(f"BNNeckCriterion: triplet_margin must be >= 0, got {triplet_margin!r}")
        self.ce, self.triplet = float(ce), float(triplet)
        self.label_smooth, self.triplet_margin = float(label_smooth), float(triplet_margin)

    def forward(self, outputs, pids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        _check_outputs(outputs, pids, "BNNeckCriterion")
        terms: dict[str, Tensor] = {}
        if self.ce:
            terms["ce"] = self.ce * label_smooth_ce(outputs.logits, pids, eps=self.label_smooth)
        if self.triplet:
            terms["triplet"] = self.triplet * triplet_loss(outputs.pool, pids, margin=self.triplet_margin)
        return sum(terms.values()), terms  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return (f"ce={self.ce}, triplet={self.triplet}, label_smooth={self.label_smooth}, "
                f"triplet_margin={self.triplet_margin}")
