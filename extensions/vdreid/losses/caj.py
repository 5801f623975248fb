"""CAJ's objective (Ye et al., "Channel Augmented Joint Learning for Visible-Infrared Recognition", ICCV'21), exactly
as its authors' code computes it (``ICCV21_CAJ/loss.py`` ``TripletLoss_ADP``, ``train_ext.py``; ``docs/baselines.md``).

:func:`adaptive_weighted_triplet` ("enhanced squared difference", the ADP triplet) on a batch of features with
Euclidean distances ``d_ij = sqrt(max(|a_i|^2 + |a_j|^2 - 2 a_i.a_j, 1e-12))``:

* positives (the anchor itself included) and negatives are weighted as in AGW's WRT loss
  (:func:`vdreid.losses.weighted_regularized_triplet`), but the softmax weights are computed on ``alpha * d``:
  ``w_ij = exp(alpha d_ij - m_i) / (sum_P exp(alpha d_ij - m_i) + 1e-6)`` with ``m_i`` the largest ``alpha d`` over
  the positives, and for the negatives on ``-alpha d`` with the "max" over ``-alpha d * is_neg`` of the whole row, which
  is 0; ``fp_i = sum_P w_ij d_ij``, ``cn_i = sum_N w_ij d_ij`` (the weighted sums use ``d``, not ``alpha d``);
* ``square=1`` (the README's setting): ``s_i = min(gamma (fp_i - cn_i)^2, 88)``, ``y_i = -1`` if ``fp_i > cn_i``
  else ``+1``, loss ``mean_i log(1 + exp(-y_i s_i))``; ``square=0``: ``mean_i log(1 + exp(-gamma (cn_i - fp_i)))``.

:class:`CAJCriterion` is ``ce * CE(logits) + adp * ADP(pool)``: cross-entropy without label smoothing on every image
of the batch (CAJ feeds each visible image twice, plainly and channel-exchanged, plus the infrared ones: the batch
the data manager builds with ``data.visible_views``), ADP on the pre-BNNeck pooled feature; CAJ's KL term has weight
0 in every released setting and is not reproduced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdreid.losses._checks import check_features_labels, compute_dtype
from vdreid.losses.baseline import _check_outputs, _check_weights
from vdreid.losses.reid import pairwise_euclidean
from vdreid.losses.wrt import _softmax_weights

#: CAJ's clamp of the squared difference (``torch.clamp_max(diff_pow, max=88)``: exp(88) is near float32's limit)
SQUARE_CLAMP = 88.0


def adaptive_weighted_triplet(feat: Tensor, labels: Tensor, alpha: float = 1, gamma: float = 1,
                              square: int = 1) -> Tensor:
    """CAJ's ``TripletLoss_ADP`` (module docstring) of ``feat`` (N, D) with identity ``labels`` (N,), a 0-dim tensor.
    ``alpha``: the hard-mining magnification of the softmax weights; ``gamma``: the scale of the difference;
    ``square``: 1 for the squared difference, 0 for the plain soft margin. Computed in at least float32."""
    check_features_labels(feat, labels, "vdreid.losses.adaptive_weighted_triplet")
    if square not in (0, 1):
        raise ValueError(f"adaptive_weighted_triplet: square must be 0 or 1, got {square!r}")
    x = feat.to(compute_dtype(feat))
    dist = pairwise_euclidean(x)
    same = labels.view(-1, 1) == labels.view(1, -1)
    is_pos = same.to(dist.dtype)
    is_neg = (~same).to(dist.dtype)
    dist_ap = dist * is_pos
    dist_an = dist * is_neg
    furthest_positive = (dist_ap * _softmax_weights(dist_ap * alpha, is_pos)).sum(dim=1)
    closest_negative = (dist_an * _softmax_weights(-dist_an * alpha, is_neg)).sum(dim=1)
    if square == 0:
        return F.soft_margin_loss(gamma * (closest_negative - furthest_positive), torch.ones_like(furthest_positive))
    diff_pow = ((furthest_positive - closest_negative).pow(2) * gamma).clamp_max(SQUARE_CLAMP)
    y = torch.where(furthest_positive > closest_negative, -1.0, 1.0).to(diff_pow.dtype)
    return F.soft_margin_loss(diff_pow, y)


class CAJCriterion(nn.Module):
    """``ce * CE(logits, pids) + adp * ADP(pool, pids)`` (CAJ ``train_ext.py``: ``loss_id + loss_tri``). Terms ``'ce'``
    and ``'adp'`` (weighted; a term with weight 0 is left out)."""

    def __init__(self, ce: float = 1.0, adp: float = 1.0, alpha: float = 1, gamma: float = 1, square: int = 1) -> None:
        super().__init__()
        _check_weights("CAJCriterion", ce=ce, adp=adp)
        if square not in (0, 1):
            raise ValueError(f"CAJCriterion: square must be 0 or 1, got {square!r}")
        self.ce, self.adp = float(ce), float(adp)
        self.alpha, self.gamma, self.square = float(alpha), float(gamma), int(square)

    def forward(self, outputs, pids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        _check_outputs(outputs, pids, "CAJCriterion")
        terms: dict[str, Tensor] = {}
        if self.ce:
            logits = outputs.logits
            terms["ce"] = self.ce * F.cross_entropy(logits.to(compute_dtype(logits)), pids.long())
        if self.adp:
            terms["adp"] = self.adp * adaptive_weighted_triplet(outputs.pool, pids, self.alpha, self.gamma,
                                                                self.square)
        return sum(terms.values()), terms  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"ce={self.ce}, adp={self.adp}, alpha={self.alpha}, gamma={self.gamma}, square={self.square}"
