"""Re-ID terms of L_ReID (Eq. 17): label-smoothed cross-entropy, metric losses and deep mutual learning.

* :func:`label_smooth_ce`: classification loss with label smoothing (Szegedy et al., CVPR'16), eps = 0.1.
* :func:`ranked_list_loss`: ranked list loss (Wang et al., "Ranked List Loss for Deep Metric Learning", CVPR'19),
  the paper's metric constraint (ref. [39]).
* :func:`triplet_loss`: torchreid's batch-hard triplet loss (Hermans et al. 2017), the alternative metric loss.
* :func:`official_rank_loss`: the released VD code's modality-aware ranked-list loss (docs/vd-recipes.md section 2).
* :func:`dml_loss`: deep mutual learning (Zhang et al., CVPR'18), the paper's L_DML (ref. [47]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vdreid import compat
from vdreid.losses._checks import check_features_labels, compute_dtype
from vdreid.losses.distillation import kl_distill

# Defaults of the ranked list loss from the RLL paper (Wang et al., CVPR'19, Sec. 5 "Implementation details" as far as
# could be established offline): boundary alpha = 1.2, margin m = 0.4 (positives pulled within alpha - m = 0.8),
# negative-weighting temperature T_n = 10, lambda = 1, L2-normalised embeddings. The person re-ID port of RLL built on
# the "strong baseline" uses alpha = 2.0, margin 1.3, T_n = 1 instead; both are plain arguments here.
RLL_ALPHA = 1.2
RLL_MARGIN = 0.4
RLL_TN = 10.0

# The released code's Rank_loss defaults (docs/vd-recipes.md section 2): intra-modality alpha1 = 2.2, m1 = 0.9
# (threshold 1.3);
# cross-modality alpha2 = 2.0, m2 = 1.0 (threshold 1.0); temperature 1.
OFFICIAL_RANK = {"alpha_intra": 2.2, "margin_intra": 0.9, "alpha_cross": 2.0, "margin_cross": 1.0, "tval": 1.0}


def label_smooth_ce(logits: Tensor, pids: Tensor, eps: float = 0.1) -> Tensor:
    """Label-smoothed cross-entropy (L_cls of Eq. 17): ``mean_b sum_c -[(1 - eps) y_bc + eps / K] log softmax_bc``.

    This is exactly torchreid's ``CrossEntropyLoss(num_classes, eps, label_smooth=True)`` and the released code's
    ``CrossEntropyLabelSmooth`` (tested against torchreid's). We call ``F.cross_entropy(label_smoothing=eps)`` instead
    of torchreid's module because that one builds the dense target on the CPU and moves it with ``.cuda()`` on every
    call (a host-device copy and a device chosen at construction, wrong under DDP / other devices) and needs the class
    count up front; PyTorch's built-in computes the same formula on the logits' own device.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError("vdreid.losses.label_smooth_ce: `logits` must be a 2-D (N, num_classes) tensor")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"vdreid.losses.label_smooth_ce: `eps` must be in [0, 1), got {eps!r}")
    if pids.dim() != 1 or pids.numel() != logits.shape[0]:
        raise ValueError(
            f"vdreid.losses.label_smooth_ce: `pids` must be 1-D with {logits.shape[0]} labels, got {tuple(pids.shape)}"
        )
    return F.cross_entropy(logits.to(compute_dtype(logits)), pids.long(), label_smoothing=eps)


def pairwise_euclidean(x: Tensor) -> Tensor:
    """``d_ij = sqrt(max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 1e-12))``, the distance every Re-ID code base here uses.

    Kept apart from the evaluation's :func:`vdreid.evaluation.features.block_distances`: the losses differentiate
    through it and reproduce the original codes' clamp at 1e-12 and square root, which the evaluation's in-place,
    no-grad blocks (squared distance clamped at 0) do not."""
    sq = (x * x).sum(dim=1, keepdim=True)
    d2 = sq + sq.t() - 2.0 * (x @ x.t())
    return d2.clamp(min=1e-12).sqrt()


def _prepare(features: Tensor, normalize: bool) -> Tensor:
    x = features.to(compute_dtype(features))
    return F.normalize(x, p=2, dim=1) if normalize else x


def ranked_list_loss(
    features: Tensor,
    pids: Tensor,
    alpha: float = RLL_ALPHA,
    margin: float = RLL_MARGIN,
    t_n: float = RLL_TN,
    lam: float = 1.0,
    normalize: bool = True,
    detach_weights: bool = True,
) -> Tensor:
    """Ranked list loss (Wang et al., CVPR'19), the paper's metric constraint L_metric (Eq. 17, ref. [39]).

    Every image ``i`` is a query and the rest of the batch its gallery. With ``d_ij`` the Euclidean distance of
    (L2-normalised) features and the pairwise constraint ``L_m = (1 - y_ij)[alpha - d_ij]_+ + y_ij[d_ij - (alpha -
    m)]_+``:

    * positives (same id, ``j != i``) that violate ``d_ij <= alpha - m`` are pulled in:
      ``L_P = 1/|P*| sum_{P*} (d_ij - (alpha - m))`` (0 when ``P*`` is empty);
    * negatives with ``d_ij < alpha`` are pushed beyond ``alpha`` with weights ``w_ij = exp(t_n (alpha - d_ij))``:
      ``L_N = sum_{N*} w_ij (alpha - d_ij) / sum_{N*} w_ij`` (0 when empty);
    * ``L = mean_i (L_P + lam L_N)``.

    ``detach_weights``: the RLL paper treats ``w_ij`` as constant weights of the gradient (its Eq. for the
    negatives' weighting); ``False`` lets autograd differentiate through them as the re-ID ports do.
    """
    check_features_labels(features, pids, "vdreid.losses.ranked_list_loss")
    x = _prepare(features, normalize)
    n = x.shape[0]
    d = pairwise_euclidean(x)
    same = pids.view(-1, 1) == pids.view(1, -1)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    pos_viol = same & ~eye & (d > alpha - margin)
    neg_viol = ~same & (d < alpha)
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    pos_sum = torch.where(pos_viol, d - (alpha - margin), zero).sum(dim=1)
    pos_cnt = pos_viol.sum(dim=1)
    l_p = torch.where(pos_cnt > 0, pos_sum / pos_cnt.clamp(min=1), zero)
    w = torch.where(neg_viol, torch.exp(t_n * (alpha - d)), zero)
    if detach_weights:
        w = w.detach()
    w_sum = w.sum(dim=1)
    neg_sum = (w * torch.where(neg_viol, alpha - d, zero)).sum(dim=1)
    l_n = torch.where(neg_viol.any(dim=1), neg_sum / torch.where(w_sum > 0, w_sum, torch.ones_like(w_sum)), zero)
    # Masks built from NaN/inf distances are all False, which would hide a diverged network: the 0 * sum(d) term
    # (exactly 0 otherwise, no host sync) carries any NaN/inf through to the loss so the engine can name it.
    return (l_p + lam * l_n).mean() + 0.0 * d.sum()


def official_rank_loss(
    features: Tensor,
    pids: Tensor,
    sub: Tensor,
    alpha_intra: float = OFFICIAL_RANK["alpha_intra"],
    margin_intra: float = OFFICIAL_RANK["margin_intra"],
    alpha_cross: float = OFFICIAL_RANK["alpha_cross"],
    margin_cross: float = OFFICIAL_RANK["margin_cross"],
    tval: float = OFFICIAL_RANK["tval"],
    normalize: bool = True,
) -> Tensor:
    """The released code's modality-aware ranked-list loss ``Rank_loss`` (docs/vd-recipes.md section 2), vectorised.

    Features are L2-normalised and ``d`` is the Euclidean distance matrix. For each anchor ``i`` the other samples
    split into {positive, negative} x {intra-, cross-modality} by ``sub`` (True/1 = infrared); with
    ``(alpha, m) = (alpha_intra, margin_intra)`` for intra and ``(alpha_cross, margin_cross)`` for cross pairs:

    * ``pos = sum_{P} max(0, d - (alpha - m)) / (|P| + 1e-5)`` over *all* positives of that kind (self excluded);
    * ``neg = sum_{N, d < alpha} w (alpha - d) / (sum w + 1e-5)``, ``w = exp(tval (alpha - d))`` (not detached);
    * ``loss = mean_i (pos_intra + pos_cross + neg_intra + neg_cross)``.
    """
    where = "vdreid.losses.official_rank_loss"
    check_features_labels(features, pids, where, sub=sub)
    x = _prepare(features, normalize)
    n = x.shape[0]
    d = pairwise_euclidean(x)
    sub = sub.to(torch.bool)
    same = pids.view(-1, 1) == pids.view(1, -1)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    intra = sub.view(-1, 1) == sub.view(1, -1)
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    total = torch.zeros(n, dtype=d.dtype, device=d.device)
    for mod_mask, alpha, margin in ((intra, alpha_intra, margin_intra), (~intra, alpha_cross, margin_cross)):
        pos = same & ~eye & mod_mask
        pos_cnt = pos.sum(dim=1).to(d.dtype)  # a float count: int + 1e-5 would silently become float32
        pos_term = torch.where(pos, (d - (alpha - margin)).clamp(min=0.0), zero).sum(dim=1) / (pos_cnt + 1e-5)
        neg = ~same & mod_mask & (d < alpha)
        w = torch.where(neg, torch.exp(tval * (alpha - d)), zero)
        neg_term = (w * (alpha - d)).sum(dim=1) / (w.sum(dim=1) + 1e-5)
        total = total + pos_term + neg_term
    return total.mean() + 0.0 * d.sum()  # carries NaN/inf distances through (see ranked_list_loss)


def triplet_loss(features: Tensor, pids: Tensor, margin: float = 0.3) -> Tensor:
    """torchreid's batch-hard triplet loss (``compat.TripletLoss``; Hermans et al. 2017): for each anchor the
    hardest positive and negative on raw (unnormalised) Euclidean distances, ``mean max(0, d_ap - d_an + margin)``.
    Needs at least two identities in ``pids``."""
    check_features_labels(features, pids, "vdreid.losses.triplet_loss")
    if torch.unique(pids).numel() < 2:
        raise ValueError("vdreid.losses.triplet_loss: needs at least two identities in `pids` (no negatives otherwise)")
    return compat.TripletLoss(margin=margin)(features.to(compute_dtype(features)), pids)


def dml_loss(logits_a: Tensor, logits_b: Tensor, T: float = 1.0) -> Tensor:
    """Deep mutual learning (Zhang et al., CVPR'18), L_DML of Eq. (17), for two cohort predictions of the same images:
    ``KL(sg(P_b) || P_a) + KL(sg(P_a) || P_b)``, each the batch-mean KL (log-softmax).

    Each network learns from the other's current prediction held fixed (the DML update of each network has the
    other's distribution as its target); joint training with the two stop-gradients gives the same gradients.
    """
    return kl_distill(logits_b, logits_a, T=T, form="paper", detach_teacher=True) + kl_distill(
        logits_a, logits_b, T=T, form="paper", detach_teacher=True
    )
