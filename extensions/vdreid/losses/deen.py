"""DEEN's training objective (Zhang & Wang, CVPR'23, Eq. 9; ZYK100/LLCM ``DEEN/train.py`` and ``model.py``), exactly
as the authors' code computes it.

For a batch of ``N`` images the network returns ``3N`` rows (the input embedding and the two DEE embeddings of every
image, :class:`~vdreid.models.deen.DEENOutput`). With ``y`` the labels of those rows:

``loss = ce * CE(logits, y) + triplet * TRI(pool, y) + cpm * [CPM(cat(f0, f1)) + CPM(cat(f0, f2))] + ort * ORT``

* CE: cross-entropy without label smoothing over all ``3N`` rows;
* TRI: batch-hard triplet loss (margin 0.3, the code's ``OriTripletLoss``, the same function as torchreid's
  ``TripletLoss``) on the pooled features of all ``3N`` rows;
* CPM: :func:`~vdreid.losses.cpm.cross_modal_prototype_loss` between the input embedding ``f0`` and each DEE
  embedding ``f1``, ``f2`` (pooled features), in the code's layout;
* ORT (:func:`orthogonal_loss`): ``sum_k <f1_k, f2_k> / (3N)`` over the pooled features of the two DEE embeddings;
* weights ``ce = triplet = 1``, ``cpm = 0.8`` (the code's ``lambda_1``), ``ort = 0.01`` (``lambda_2``).

Row order: vdreid's sampler yields ``P`` identities x (``K`` visible + ``K`` infrared) images in its own order. The
network already puts each block's visible rows before its infrared ones; the criterion groups the rows of each
modality by identity (in order of first appearance, the same identity order for both modalities) before the CPM loss,
which is the only term that depends on the order. CE, TRI and ORT are sums or means over rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdreid.losses._checks import compute_dtype
from vdreid.losses.cpm import CPM_MARGIN, cross_modal_prototype_loss
from vdreid.losses.reid import triplet_loss

EMBEDDINGS = 3
_WHO = "DEENCriterion"


def orthogonal_loss(pool: Tensor) -> Tensor:
    """DEEN's orthogonal loss of the ``(3N, D)`` pooled features: ``sum_k <pool[N + k], pool[2N + k]> / (3N)`` (the
    code's ``triu(bmm(...), 1).sum() / xp.size(0)``: the inner product of each image's two DEE embeddings)."""
    if not isinstance(pool, Tensor) or pool.dim() != 2 or pool.shape[0] % EMBEDDINGS:
        shape = tuple(pool.shape) if isinstance(pool, Tensor) else type(pool).__name__
        raise ValueError(f"vdreid.losses.orthogonal_loss: a (3N, D) tensor of pooled features expected, got {shape}")
    n = pool.shape[0] // EMBEDDINGS
    x = pool.to(compute_dtype(pool))
    return (x[n : 2 * n] * x[2 * n :]).sum() / pool.shape[0]


def prototype_order(labels: Tensor, is_ir: Tensor) -> Tensor:
    """Row indices that arrange one block (visible rows first, then infrared ones) into the CPM layout: each
    modality's rows grouped by identity, identities in order of first appearance among the visible rows, the same
    order for the infrared rows. A ValueError says what a batch lacks (the same identities, ``K`` images each, in
    both modalities)."""
    lab, ir = labels.detach().cpu(), is_ir.detach().cpu().bool()
    n_vis = int((~ir).sum())
    if bool(ir[:n_vis].any()) or n_vis * 2 != lab.numel():
        raise ValueError(
            f"{_WHO}: DEEN's prototype loss needs K visible and K infrared images of every identity in a batch "
            f"(vdreid's sampler: sampler.num_ids identities x (num_instances + num_instances)); got {n_vis} visible "
            f"and {lab.numel() - n_vis} infrared rows"
        )
    vis, inf = lab[:n_vis], lab[n_vis:]
    ids, inverse = torch.unique(vis, return_inverse=True)
    first = torch.full((ids.numel(),), n_vis, dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(n_vis), reduce="amin")
    rank = torch.argsort(torch.argsort(first))  # identity -> its place by first appearance
    pos = torch.searchsorted(ids, inf).clamp(max=ids.numel() - 1)
    counts_vis = torch.bincount(inverse, minlength=ids.numel())
    if not bool((ids[pos] == inf).all()) or not torch.equal(torch.bincount(pos, minlength=ids.numel()), counts_vis) \
            or bool((counts_vis != counts_vis[0]).any()):
        raise ValueError(
            f"{_WHO}: DEEN's prototype loss needs the same identities with the same number K of images in both "
            f"modalities (vdreid's sampler gives that); visible labels {vis.tolist()}, infrared {inf.tolist()}"
        )
    order_vis = torch.argsort(rank[inverse], stable=True)
    order_ir = torch.argsort(rank[pos], stable=True) + n_vis
    return torch.cat([order_vis, order_ir]).to(labels.device)


class DEENCriterion(nn.Module):
    """DEEN's objective (module docstring); ``criterion(outputs, pids) -> (total, terms)`` with ``outputs`` a
    :class:`~vdreid.models.deen.DEENOutput` and ``pids`` the batch's labels in the input order. Terms ``'ce'``,
    ``'triplet'``, ``'cpm'``, ``'ort'`` (weighted; a term with weight 0 is left out)."""

    def __init__(self, ce: float = 1.0, triplet: float = 1.0, triplet_margin: float = 0.3, cpm: float = 0.8,
                 cpm_margin: float = CPM_MARGIN, ort: float = 0.01) -> None:
        super().__init__()
        weights = {"ce": ce, "triplet": triplet, "cpm": cpm, "ort": ort}
        for name, w in {**weights, "triplet_margin": triplet_margin, "cpm_margin": cpm_margin}.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                raise ValueError(f"{_WHO}: `{name}` must be a number >= 0, got {w!r}")
        if not any(weights.values()):
            raise ValueError(f"{_WHO}: every loss weight is 0 ({weights}); nothing would be trained")
        self.ce, self.triplet, self.cpm, self.ort = float(ce), float(triplet), float(cpm), float(ort)
        self.triplet_margin, self.cpm_margin = float(triplet_margin), float(cpm_margin)

    @staticmethod
    def _check(outputs: object, pids: Tensor) -> int:
        for attr in ("pool", "logits", "order", "modality"):
            if not isinstance(getattr(outputs, attr, None), Tensor):
                raise TypeError(
                    f"{_WHO}: `outputs` must be DEEN's training output with `pool`, `logits`, `order` and `modality` "
                    f"(vdreid.models.deen.DEENOutput), got {type(outputs).__name__}; call the model in train mode"
                )
        n = outputs.order.numel()  # type: ignore[attr-defined]
        if outputs.pool.shape[0] != EMBEDDINGS * n or outputs.logits.shape[0] != EMBEDDINGS * n:  # type: ignore
            raise ValueError(f"{_WHO}: `outputs` must hold 3 rows per image ({EMBEDDINGS * n}), got "
                             f"{outputs.pool.shape[0]}")  # type: ignore[attr-defined]
        if not isinstance(pids, Tensor) or pids.dim() != 1 or pids.numel() != n:
            shape = tuple(pids.shape) if isinstance(pids, Tensor) else type(pids).__name__
            raise ValueError(f"{_WHO}: `pids` must be a 1-D tensor with one label per image ({n}), got {shape}")
        return n

    def forward(self, outputs, pids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        n = self._check(outputs, pids)
        lab = pids.long()[outputs.order]  # labels of one block, in the network's row order
        labels = lab.repeat(EMBEDDINGS)  # the code's cat(l_vis, l_ir, l_vis, l_ir, l_vis, l_ir)
        pool = outputs.pool
        terms: dict[str, Tensor] = {}
        if self.ce:
            logits = outputs.logits
            terms["ce"] = self.ce * F.cross_entropy(logits.to(compute_dtype(logits)), labels)
        if self.triplet:
            terms["triplet"] = self.triplet * triplet_loss(pool, labels, margin=self.triplet_margin)
        if self.cpm:
            arrange = prototype_order(lab, outputs.modality)
            f0, f1, f2 = (pool[k * n : (k + 1) * n][arrange] for k in range(EMBEDDINGS))
            labs = lab[arrange].repeat(2)
            cpm = (cross_modal_prototype_loss(torch.cat((f0, f1)), labs, self.cpm_margin)
                   + cross_modal_prototype_loss(torch.cat((f0, f2)), labs, self.cpm_margin))
            terms["cpm"] = self.cpm * cpm
        if self.ort:
            terms["ort"] = self.ort * orthogonal_loss(pool)
        return sum(terms.values()), terms  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return (f"ce={self.ce}, triplet={self.triplet}, triplet_margin={self.triplet_margin}, cpm={self.cpm}, "
                f"cpm_margin={self.cpm_margin}, ort={self.ort}")
