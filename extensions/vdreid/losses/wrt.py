"""Weighted regularized triplet (WRT) loss of AGW (Ye et al., TPAMI'21), exactly as ``TripletLoss_WRT`` in the
authors' ``loss.py`` computes it (details users need: ``docs/baselines.md``).

For a batch of features with Euclidean distances ``d_ij = sqrt(max(|a_i|^2 + |a_j|^2 - 2 a_i.a_j, 1e-12))``:

* every anchor's positives are the images with its label, **the anchor itself included** (its distance to
  itself is sqrt(1e-12) = 1e-6);
* positive weights: ``w_ij = exp(d_ij - m_i) / (sum_{j in P} exp(d_ij - m_i) + 1e-6)`` with ``m_i`` the largest
  positive distance; ``furthest_positive_i = sum_{j in P} w_ij d_ij``;
* negative weights: the same formula on ``-d`` where the "max" is taken over ``-d * is_neg`` of the whole row,
  which is **0** (positive entries contribute 0, negative ones are < 0), so ``w_ij = exp(-d_ij) / (sum_{j in N}
  exp(-d_ij) + 1e-6)``; ``closest_negative_i = sum_{j in N} w_ij d_ij``;
* ``loss = mean_i log(1 + exp(-(closest_negative_i - furthest_positive_i)))`` (SoftMarginLoss with target 1).

The 1e-6 and the zero "max" are AGW's: when all of an anchor's negatives are far (beyond about 14), ``exp(-d)``
falls below 1e-6 and ``closest_negative`` collapses towards 0 instead of the nearest negative distance. A textbook
softmax gives a different loss; this function reproduces AGW's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vdreid.losses._checks import check_features_labels, compute_dtype
from vdreid.losses.reid import pairwise_euclidean


def _softmax_weights(dist: Tensor, mask: Tensor) -> Tensor:
    """AGW's ``softmax_weights``: ``exp(D - max_j(D * M)) * M / (sum_j exp(D - max) * M + 1e-6)``."""
    max_v = (dist * mask).amax(dim=1, keepdim=True)
    e = torch.exp(dist - max_v) * mask
    return e / (e.sum(dim=1, keepdim=True) + 1e-6)


def weighted_regularized_triplet(features: Tensor, labels: Tensor, normalize_feature: bool = False) -> Tensor:
    """AGW's WRT loss (module docstring) of ``features`` (N, D) with identity ``labels`` (N,), a 0-dim tensor.

    ``normalize_feature``: L2-normalise the rows first as AGW does (``x / (|x| + 1e-12)``); AGW trains with False
    on the pre-BNNeck pooled feature. Computed in at least float32.
    """
    check_features_labels(features, labels, "vdreid.losses.weighted_regularized_triplet")
    x = features.to(compute_dtype(features))
    if normalize_feature:
        x = x / (x.norm(p=2, dim=1, keepdim=True) + 1e-12)
    dist = pairwise_euclidean(x)
    same = labels.view(-1, 1) == labels.view(1, -1)
    is_pos = same.to(dist.dtype)
    is_neg = (~same).to(dist.dtype)
    dist_ap = dist * is_pos
    dist_an = dist * is_neg
    furthest_positive = (dist_ap * _softmax_weights(dist_ap, is_pos)).sum(dim=1)
    closest_negative = (dist_an * _softmax_weights(-dist_an, is_neg)).sum(dim=1)
    return F.soft_margin_loss(closest_negative - furthest_positive, torch.ones_like(furthest_positive))
