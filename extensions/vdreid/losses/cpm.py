"""DEEN's cross-modality prototype (CPM) loss (Zhang & Wang, CVPR'23, Sec. 3.3; ZYK100/LLCM ``DEEN/loss.py``
``CPMLoss``), computed exactly as the authors' code does, gradients included.

Input layout (the code's): ``feat`` is four equal blocks ``[v; r; v'; r']`` stacked on the rows: visible and
infrared features of one embedding, then visible and infrared features of another embedding of the same images.
Inside every block the rows of one identity are contiguous, every identity has the same number of rows, and the four
blocks list the identities in the same order; ``labels`` is ``cat(l_vis, l_ir, l_vis, l_ir)``.

Each block is reduced to one centre per identity (the mean of its rows): ``c1`` (v), ``c2`` (r), ``c3`` (v'),
``c4`` (r'). With ``d`` the Euclidean distance (``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12))``), for identity i:

* ``loss_123``: anchor ``ap = d(c2_i, c3_i)`` (the infrared centre against the other embedding's visible centre),
  pushed below ``d(c1_i, c3_i)`` (the two visible centres; **no gradient**, the code detaches it) and, with half
  weight, below ``min_{j != i} d(c3_i, c3_j)`` and ``min_{j != i} d(c1_i, c1_j)`` (nearest other identity, with
  gradient);
* ``loss_124``: ``ap = d(c1_i, c4_i)``, pushed below ``d(c2_i, c4_i)`` (detached), ``min_{j != i} d(c4_i, c4_j)``
  and ``min_{j != i} d(c2_i, c2_j)``;

each push a hinge ``mean_i max(0, ap - an + margin)`` (``MarginRankingLoss``), and
``loss = (loss_123 + loss_124) / 2`` with ``loss_1k = hinge(an_1k) + (hinge(an_kk) + hinge(an_jj)) / 2``.

The code's ``CPMLoss(margin)`` ignores its argument and always uses 0.2; here ``margin`` is honoured and defaults to
0.2. The code selects the matching centre with a label mask built from the *sorted* unique labels, which is the
identity matrix whatever the identities' order, so centre i of every block is compared with centre i of the others:
that is why the blocks must list the identities in the same order, which this function checks (the code does not).
Ties in the minima share the gradient evenly, as the code's ``min()`` over the selected entries does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vdreid.losses._checks import check_features_labels, compute_dtype

CPM_MARGIN = 0.2
_WHERE = "vdreid.losses.cross_modal_prototype_loss"


def _pdist(a: Tensor, b: Tensor) -> Tensor:
    """The code's ``pdist_torch``: ``sqrt(clamp(|a|^2 + |b|^2 - 2 a b^T, 1e-12))``, the same operations in order.

    Not :func:`vdreid.evaluation.features.block_distances` (the evaluation's one distance function): a loss needs
    gradients through the distance and the authors' operation order (``addmm``, clamp at 1e-12, square root), while
    that function works in place on prepared no-grad blocks and clamps the squared distance at 0."""
    sq = (a * a).sum(dim=1, keepdim=True) + (b * b).sum(dim=1, keepdim=True).t()
    return sq.addmm(a, b.t(), beta=1, alpha=-2).clamp(min=1e-12).sqrt()


def _nearest_other(d: Tensor) -> Tensor:
    """Row-wise minimum over the off-diagonal entries (ties share the gradient, like the code's ``min()``)."""
    eye = torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
    return d.masked_fill(eye, float("inf")).amin(dim=1)


def _hinge(an: Tensor, ap: Tensor, margin: float) -> Tensor:
    return F.margin_ranking_loss(an, ap, torch.ones_like(an), margin=margin)


def prototype_layout(labels: Tensor) -> tuple[int, int]:
    """``(identities, rows per identity)`` of the CPM input layout (module docstring); a ValueError says what breaks
    it."""
    n_rows = labels.numel()
    if n_rows == 0 or n_rows % 4:
        raise ValueError(f"{_WHERE}: the rows must form four equal blocks [vis; ir; vis'; ir'], got {n_rows} rows")
    blocks = labels.reshape(4, -1)
    ids, counts = torch.unique_consecutive(blocks[0], return_counts=True)
    if torch.unique(ids).numel() != ids.numel():
        raise ValueError(f"{_WHERE}: the rows of each identity must be contiguous inside a block; block 0 has labels "
                         f"{blocks[0].tolist()}")
    if bool((counts != counts[0]).any()):
        raise ValueError(f"{_WHERE}: every identity needs the same number of rows per block (the code splits a block "
                         f"into equal chunks), got counts {counts.tolist()} for identities {ids.tolist()}")
    if not bool((blocks == blocks[0]).all()):
        raise ValueError(f"{_WHERE}: the four blocks must list the same identities in the same order (labels "
                         "cat(l_vis, l_ir, l_vis, l_ir)); got differing blocks")
    if ids.numel() < 2:
        raise ValueError(f"{_WHERE}: needs at least two identities (the loss pushes each centre away from the nearest "
                         "other identity); the authors' code fails on such a batch")
    return int(ids.numel()), int(counts[0])


def cross_modal_prototype_loss(feat: Tensor, labels: Tensor, margin: float = CPM_MARGIN) -> Tensor:
    """DEEN's CPM loss of ``feat`` (4 blocks ``[v; r; v'; r']`` of ``N`` rows each) with ``labels`` =
    ``cat(l_vis, l_ir, l_vis, l_ir)`` (module docstring). Computed in at least float32."""
    check_features_labels(feat, labels, _WHERE)
    if margin < 0:
        raise ValueError(f"{_WHERE}: margin must be >= 0, got {margin!r}")
    n_ids, per_id = prototype_layout(labels)
    x = feat.to(compute_dtype(feat))
    c1, c2, c3, c4 = x.reshape(4, n_ids, per_id, x.shape[1]).mean(dim=2)
    ap_123 = _pdist(c2, c3).diagonal()
    an_123 = _pdist(c1, c3).diagonal().detach()
    an_33, an_11 = _nearest_other(_pdist(c3, c3)), _nearest_other(_pdist(c1, c1))
    ap_124 = _pdist(c1, c4).diagonal()
    an_124 = _pdist(c2, c4).diagonal().detach()
    an_44, an_22 = _nearest_other(_pdist(c4, c4)), _nearest_other(_pdist(c2, c2))
    loss_123 = _hinge(an_123, ap_123, margin) + (_hinge(an_33, ap_123, margin) + _hinge(an_11, ap_123, margin)) * 0.5
    loss_124 = _hinge(an_124, ap_124, margin) + (_hinge(an_44, ap_124, margin) + _hinge(an_22, ap_124, margin)) * 0.5
    return (loss_123 + loss_124) / 2
