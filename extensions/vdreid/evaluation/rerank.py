"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR
2017) on a kNN graph with sparse storage: the computation of torchreid's ``re_ranking`` (``torchreid/utils/
rerank.py``) without its (Q+G)^2 dense matrices.

torchreid's function builds the full (N, N) distance matrix (N = Q + G), sorts every row, and fills dense (N, N)
weight matrices, so memory grows as N^2 (about 5 N^2 float32 plus an int64 argsort: 100k images would need
hundreds of GB). Every quantity it uses is local, though:

* ``original_dist[i, j] = d(i, j)^2 / max_m d(i, m)^2`` with ``d`` the distance torchreid receives (cosine:
  ``1 - cos``; euclidean: the squared Euclidean distance, as vdreid passes it): the nearest neighbours of every item
  and the farthest distance of every item;
* only the first ``k1 + 1`` entries of each sorted row (the k-reciprocal sets, and ``round(k1 / 2) + 1`` for their
  expansion) and the first ``k2`` (query expansion);
* the weight rows ``V`` have a few dozen non-zeros each, and the Jaccard term only involves pairs that share one.

So: the ``k1 + 1`` nearest neighbours of all N items come from one exact kNN search (faiss flat indexes or torch,
:mod:`vdreid.evaluation.knn`), the farthest distance from a second search, ``V`` is a sparse matrix, and the
final distance ``(1 - lambda) * jaccard + lambda * original`` is formed block by block when it is read: the sparse
Jaccard part plus the dense original part from a GEMM. Memory is O(N (k1 + fill)) plus one block.

Arithmetic is float64 with exact distances where torchreid uses float32, so values agree with torchreid to float32
rounding (the equality test states the tolerance). Ties in the neighbour lists are ordered by index (torchreid's
``np.argsort`` leaves them arbitrary).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from vdreid.errors import EvaluationInputError
from vdreid.evaluation.core import single_thread
from vdreid.evaluation.features import METRICS, U64, Features, block_distances, check_features, full_fp32
from vdreid.evaluation.knn import GalleryIndex

logger = logging.getLogger(__name__)

#: metrics k-reciprocal re-ranking accepts (non-negative distances: 1 - cos, squared Euclidean)
RERANK_METRICS = ("cosine", "euclidean")
#: query-gallery pairs expanded at once in the Jaccard accumulation (bounded temporaries)
PAIR_CHUNK = 1 << 23


class RerankedDistances:
    """The re-ranked (Q, G) distance, stored sparsely: ``final = lambda * original + (1 - lambda) - s`` where
    ``s = (1 - lambda) * t / (2 - t)`` is non-zero only for pairs whose weight rows overlap (``t`` = the sum of
    minima of the two rows, torchreid's ``temp_min``), and ``original = d'^2 / rowmax`` is computed on demand.

    ``exact(rows, cols)`` gives float64 values; ``block_fn`` float64 blocks from float32 GEMMs within ``band()``
    of them (for the exact counting of :mod:`vdreid.evaluation.core`); ``dense()`` the whole matrix (small sets).
    """

    def __init__(self, feats: Features, rowmax: np.ndarray, s: sp.csr_matrix, lambda_value: float, metric: str,
                 backend: str) -> None:
        self.feats, self.rowmax, self.s, self.lam, self.metric = feats, rowmax, s, float(lambda_value), metric
        self.backend = backend
        self.inv = np.where(rowmax > 0, 1.0 / np.where(rowmax > 0, rowmax, 1.0), 0.0)
        self.shape = s.shape

    def _shift(self) -> float:
        return 1.0 if self.metric == "cosine" else 0.0  # d' = 1 - cos = 1 + (our cosine distance)

    def exact(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Float64 re-ranked distances of the pairs ``(rows[i], cols[i])``."""
        dp = self.feats.exact(rows, cols) + self._shift()
        s = np.asarray(self.s[rows, cols]).reshape(-1) if rows.size else np.zeros(0)
        return self.lam * (dp * dp) * self.inv[rows] + (1.0 - self.lam) - s

    def band(self) -> np.ndarray:
        """Per query: bound on |block value - exact value| (the float32 GEMM's band pushed through d'^2 / rowmax,
        plus float64 rounding of values below 2)."""
        b = self.feats.band()
        return self.lam * (2.0 * np.sqrt(self.rowmax) + b) * b * self.inv * 1.05 + 64 * U64

    def block_fn(self, cols: np.ndarray, device: torch.device) -> Callable[[np.ndarray, int, int], torch.Tensor]:
        """Block function over the allowed gallery ``cols`` (ascending) for :func:`core.rank_statistics`."""
        f = self.feats
        g32 = torch.from_numpy(f.g32[cols] if cols.size != f.g32.shape[0] else f.g32).to(device)
        q32 = torch.from_numpy(f.q32).to(device)
        g2 = None if f.g2 is None else torch.from_numpy(f.g2[cols].astype(np.float32)).to(device)
        q2 = None if f.q2 is None else torch.from_numpy(f.q2.astype(np.float32)).to(device)
        inv = torch.from_numpy(self.inv).to(device)
        s_cols = self.s[:, cols].tocsr() if cols.size != self.shape[1] else self.s
        shift, lam = self._shift(), self.lam

        def fn(r: np.ndarray, c0: int, c1: int) -> torch.Tensor:
            rt = torch.as_tensor(r, device=device)
            with full_fp32():
                x = block_distances(q32.index_select(0, rt), g32[c0:c1], "cosine" if q2 is None else "euclidean",
                                    None if q2 is None else q2.index_select(0, rt),
                                    None if g2 is None else g2[c0:c1])
            with single_thread(device):
                dp = x.double().add_(shift)
                out = dp.mul_(dp).mul_(lam * inv.index_select(0, rt)[:, None]).add_(1.0 - lam)
                blk = s_cols[r][:, c0:c1].tocoo()
                if blk.nnz:
                    ii = torch.as_tensor(blk.row, device=device, dtype=torch.int64)
                    jj = torch.as_tensor(blk.col, device=device, dtype=torch.int64)
                    out.index_put_((ii, jj), -torch.as_tensor(blk.data, device=device), accumulate=True)
            return out

        return fn

    def dense(self) -> np.ndarray:
        """The whole (Q, G) re-ranked matrix in float64 (exact values; Q x G memory)."""
        Q, G = self.shape
        rows = np.repeat(np.arange(Q), G)
        cols = np.tile(np.arange(G), Q)
        return self.exact(rows, cols).reshape(Q, G)


def _reciprocal(nn: np.ndarray, k: int) -> np.ndarray:
    """(N, k+1) neighbour ids where ``i`` is also among the ``k + 1`` nearest of that neighbour, else -1
    (torchreid's ``k_reciprocal_index``: forward neighbours whose backward lists contain ``i``)."""
    f = nn[:, : k + 1]
    n = f.shape[0]
    out = np.full(f.shape, -1, np.int64)
    for i0 in range(0, n, 8192):
        fc = f[i0 : i0 + 8192]
        valid = fc >= 0
        back = f[np.maximum(fc, 0)]  # (c, k+1, k+1)
        me = np.arange(i0, i0 + fc.shape[0])[:, None, None]
        hit = (back == me).any(-1) & valid
        out[i0 : i0 + 8192] = np.where(hit, fc, -1)
    return out


def _expansion_sets(nn: np.ndarray, k1: int) -> np.ndarray:
    """Per item, the k-reciprocal set plus the half-k reciprocal sets of its members that overlap it by more than
    2/3 (torchreid's ``k_reciprocal_expansion_index`` before ``np.unique``): (N, W) ids, -1 padding, unique per row."""
    R = _reciprocal(nn, k1)
    Rh = _reciprocal(nn, int(np.around(k1 / 2.0)))
    n, K1 = R.shape
    K2 = Rh.shape[1]
    out = np.full((n, K1 + K1 * K2), -1, np.int64)
    step = max(1, (1 << 24) // (K1 * K2 * K1))
    for i0 in range(0, n, step):
        r = R[i0 : i0 + step]  # (c, K1)
        cand = Rh[np.maximum(r, 0)]  # (c, K1, K2): reciprocal half-sets of every member
        cand = np.where((r >= 0)[:, :, None], cand, -1)
        member = (cand[..., None] == r[:, None, None, :]).any(-1) & (cand >= 0)
        size = (cand >= 0).sum(-1)
        accept = (r >= 0) & (member.sum(-1) > 2.0 / 3 * size)  # torchreid's float comparison, literally
        add = np.where(accept[:, :, None], cand, -1).reshape(r.shape[0], -1)
        out[i0 : i0 + step] = np.concatenate([r, add], 1)
    out.sort(1)
    dup = np.zeros(out.shape, bool)
    dup[:, 1:] = out[:, 1:] == out[:, :-1]
    out[dup] = -1
    return out


def _weights(allfeats: Features, sets: np.ndarray, rowmax: np.ndarray, inv: np.ndarray, shift: float) -> sp.csr_matrix:
    """Sparse ``V``: row i holds exp(-original[i, j]) / sum over its expansion set (torchreid's ``V``)."""
    n = sets.shape[0]
    r, c = np.nonzero(sets >= 0)
    j = sets[r, c]
    dp = allfeats.exact(r, j) + shift
    od = dp * dp * inv[r]
    w = np.exp(-od)
    tot = np.bincount(r, weights=w, minlength=n)
    return sp.csr_matrix((w / tot[r], (r, j)), shape=(n, n))


def _query_expansion(V: sp.csr_matrix, nn: np.ndarray, k2: int) -> sp.csr_matrix:
    """Mean of the weight rows of each item's ``k2`` nearest neighbours (torchreid's ``V_qe``)."""
    n = V.shape[0]
    k = min(k2, nn.shape[1])
    cols = nn[:, :k]
    r = np.repeat(np.arange(n), k)
    c = cols.reshape(-1)
    ok = c >= 0
    cnt = np.maximum((cols >= 0).sum(1), 1)
    A = sp.csr_matrix((1.0 / cnt[r[ok]], (r[ok], c[ok])), shape=(n, n))
    return (A @ V).tocsr()


def _jaccard_overlap(W: sp.csr_matrix, Q: int, lam: float) -> sp.csr_matrix:
    """(Q, G) sparse ``(1 - lambda) * t / (2 - t)`` with ``t[i, j] = sum_l min(W[i, l], W[Q + j, l])`` over the
    shared support (torchreid's ``temp_min`` through its inverted index ``invIndex``)."""
    n = W.shape[0]
    G = n - Q
    Wg = W[Q:].tocsc()  # column l -> gallery rows holding l
    colcnt = np.diff(Wg.indptr)
    Wq = W[:Q].tocsr()
    parts = []
    i0 = 0
    rowlen = np.diff(Wq.indptr)
    # pairs per query row, to size the chunks
    per_row = np.add.reduceat(colcnt[Wq.indices], Wq.indptr[:-1]) if Wq.nnz else np.zeros(Q, np.int64)
    per_row = np.where(rowlen > 0, per_row, 0)
    csum = np.cumsum(per_row)
    while i0 < Q:
        base = csum[i0 - 1] if i0 else 0
        i1 = max(i0 + 1, int(np.searchsorted(csum, base + PAIR_CHUNK, side="right")))
        i1 = min(i1, Q)
        sub = Wq[i0:i1].tocoo()
        lens = colcnt[sub.col]
        tot = int(lens.sum())
        if tot:
            rep = np.repeat(np.arange(sub.nnz), lens)
            start = Wg.indptr[sub.col][rep]
            off = np.arange(tot) - np.repeat(np.cumsum(lens) - lens, lens)
            pos = start + off
            vals = np.minimum(sub.data[rep], Wg.data[pos])
            t = sp.coo_matrix((vals, (sub.row[rep], Wg.indices[pos])), shape=(i1 - i0, G)).tocsr()
            t.sum_duplicates()
            t.data = (1.0 - lam) * t.data / (2.0 - t.data)
        else:
            t = sp.csr_matrix((i1 - i0, G))
        parts.append(t)
        i0 = i1
    return sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, G))


def rerank_distances(
    qf,
    gf,
    metric: str = "cosine",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    backend: str = "auto",
) -> RerankedDistances:
    """k-reciprocal re-ranked distances of queries ``qf`` (Q, D) to gallery ``gf`` (G, D), torchreid's
    ``re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)`` fed ``1 - cos`` (cosine) or the squared Euclidean
    distance (euclidean), computed on a kNN graph (``backend`` picks faiss or torch for the searches)."""
    if metric not in METRICS:
        raise EvaluationInputError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric not in RERANK_METRICS:
        # torchreid's re-ranking squares the distances and divides by each row's largest square: it needs
        # distances >= 0 that grow with dissimilarity. -<q, g> on raw features is negative for similar pairs, so
        # squaring would reverse their order; no constant shift makes it non-negative for features of any norm
        # (1 - cos works for cosine only because |cos| <= 1).
        raise EvaluationInputError(
            f"re-ranking is defined for the metrics {RERANK_METRICS}, not {metric!r}: set test.dist_metric to "
            f"'cosine' or 'euclidean', or test.rerank false"
        )
    for name, v in (("k1", k1), ("k2", k2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise EvaluationInputError(f"{name} must be a positive integer, got {v!r}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise EvaluationInputError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
    q, g = check_features(qf, "qf"), check_features(gf, "gf")
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise EvaluationInputError("re-ranking needs at least one query and one gallery item")
    if q.shape[1] != g.shape[1]:
        raise EvaluationInputError(f"qf has dimension {q.shape[1]} but gf has {g.shape[1]}")
    Q = q.shape[0]
    allf = np.concatenate([q, g]).astype(np.promote_types(q.dtype, g.dtype), copy=False)
    n = allf.shape[0]
    shift = 1.0 if metric == "cosine" else 0.0
    index = GalleryIndex(allf, metric, backend)
    knn = index.search(allf, min(k1 + 1, n))
    nn = knn.indices
    far = index.farthest(allf)
    rowmax = (far + shift) ** 2
    inv = np.where(rowmax > 0, 1.0 / np.where(rowmax > 0, rowmax, 1.0), 0.0)
    allfeats = index.exact_pairs(allf)
    sets = _expansion_sets(nn, k1)
    V = _weights(allfeats, sets, rowmax, inv, shift)
    del sets
    if k2 != 1:
        V = _query_expansion(V, nn, k2)
    s = _jaccard_overlap(V, Q, float(lambda_value))
    feats = Features(q, g, metric)
    logger.debug("re-ranking: %d x %d, %d overlapping pairs, %s", Q, g.shape[0], s.nnz, index.backend)
    return RerankedDistances(feats, rowmax[:Q], s, lambda_value, metric, str(index.backend))
