"""Shared pieces of the evaluation tests' independent references: random query/gallery cases with the edge cases
the protocols meet, and the stable top-k order of a distance matrix (ties broken by gallery index), written with
numpy from the definitions, not from vdreid's code."""

from __future__ import annotations

import numpy as np


def make_case(rng, nq, ng, dim, num_ids, ties=False, spread=0.0):
    """Random float32 features, person ids and cameras (queries on cameras 2 and 5, gallery on 0, 1, 3, 4).

    ``spread`` > 0: each feature scaled by 10^u, u uniform in [-spread, spread] (norms over many orders of
    magnitude). ``ties``: exact duplicates in the gallery, an all-zero gallery and query feature (distance 0 to
    everything under cosine), a query equal to a gallery item."""

    def feats(n):
        x = rng.normal(size=(n, dim))
        if spread > 0:
            x = x * 10.0 ** rng.uniform(-spread, spread, (n, 1))
        return x.astype(np.float32)

    qf, gf = feats(nq), feats(ng)
    if ties:
        dup = rng.integers(0, ng, ng // 3)
        gf[dup] = gf[0]
        gf[-1] = 0.0
        qf[0] = gf[0]
        qf[-1] = 0.0
    qp, gp = rng.integers(0, num_ids, nq), rng.integers(0, num_ids, ng)
    qc, gc = rng.choice([2, 5], nq), rng.choice([0, 1, 3, 4], ng)
    return qf, gf, qp, gp, qc, gc


def stable_topk(d, k, allowed=None):
    """(distances, indices) of the ``k`` first items of the stable order of each row of ``d`` (ties by gallery
    index); ``allowed`` (Q, G) bool masks items out; rows with fewer items are padded with inf / -1."""
    D = np.full((d.shape[0], k), np.inf)
    Ix = np.full((d.shape[0], k), -1, np.int64)
    for i in range(d.shape[0]):
        order = np.argsort(d[i], kind="stable")
        if allowed is not None:
            order = order[allowed[i, order]]
        order = order[:k]
        D[i, : order.size], Ix[i, : order.size] = d[i, order], order
    return D, Ix
