"""Query/gallery features prepared for ranking, k-nearest-neighbour search and re-ranking, and the one blockwise
distance function they all use.

Exact distances (the definition every backend reproduces):

* ``'cosine'``: ``-<q/|q|, g/|g|>`` (AGW ``test.py``'s ``-(q @ g.T)`` on L2-normalised features), with ``|x|``
  floored at 1e-12 like ``torch.nn.functional.normalize`` (an all-zero feature is at distance 0 to all).
* ``'euclidean'``: ``sum((q - g) ** 2)`` (squared, which ranks like the Euclidean distance).
* ``'inner_product'``: ``-<q, g>`` on the raw (un-normalised) features (DEEN ``test.py``'s ``distmat = q @ g.T``
  ranked by ``-distmat``): features of larger norm come first, so this ranks differently from cosine whenever the
  norms differ (an all-zero feature is at distance 0 to all).

:func:`block_distances` computes a block of them from prepared float32 (or float64) features with one GEMM
(``|q|^2 + |g|^2 - 2 <q, g>`` for Euclidean); :meth:`Features.exact` recomputes chosen pairs in float64.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from vdreid.errors import EvaluationInputError
from vdreid.evaluation.core import single_thread

METRICS = ("cosine", "euclidean", "inner_product")
#: metrics whose distance is the negated inner product of the prepared rows (L2-normalised for cosine, raw for
#: inner_product): one GEMM, a max-inner-product faiss index
NEGATED_IP = ("cosine", "inner_product")
U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53  # unit roundoff of float64
CACHE64_MAX_BYTES = 512 << 20  # float64 copies of the query / gallery features kept for exact() up to this size


def check_features(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise EvaluationInputError(f"{name} must be a 2-D (num_items, dim) feature array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise EvaluationInputError(f"{name} must hold floating-point features, got dtype {a.dtype}")
    if not a.size:
        return a
    # max/min propagate NaN and see inf without the full-size temporaries of isfinite/abs (4x faster)
    mx, mn = float(a.max()), float(a.min())
    if not (np.isfinite(mx) and np.isfinite(mn)):
        bad = int((~np.isfinite(a).all(1)).sum())
        raise EvaluationInputError(f"{name} contains NaN/inf in {bad} rows; check the model outputs before evaluating")
    if max(mx, -mn) > 1e18:
        raise EvaluationInputError(
            f"{name} has values above 1e18, too large for exact float32 blocks; rescale the features"
        )
    return a


def normalized64(x: np.ndarray, out_dtype=np.float64, chunk: int = 64) -> np.ndarray:
    """Row-wise L2 normalisation in float64 (deterministic per row: the same row gives the same bits), cast to
    ``out_dtype``. Done ``chunk`` rows at a time so the float64 temporaries stay in cache (~10x faster than
    whole-array temporaries at 3803 x 2048 on the dev box); each row's bits do not depend on the chunking
    (the norm is numpy's pairwise sum over that row alone)."""
    out = np.empty(x.shape, out_dtype)
    for i in range(0, x.shape[0], chunk):
        xi = x[i : i + chunk].astype(np.float64)
        n = np.sqrt(np.sum(xi * xi, axis=1))
        xi /= np.maximum(n, 1e-12)[:, None]
        out[i : i + chunk] = xi
    return out


class Features:
    """Query/gallery features prepared for one metric: float32 copies for the blocks, float64 exact pairs.

    The gallery side is prepared once; :meth:`with_queries` pairs it with another query set (a gallery index
    searched many times)."""

    def __init__(self, qf: np.ndarray, gf: np.ndarray, metric: str, chunk: int = 1 << 16,
                 cache_gallery: bool = True) -> None:
        self.metric = metric
        self.dim = gf.shape[1]
        self._prepare_gallery(gf, chunk, cache_gallery)
        self._prepare_queries(qf)

    def _prepare_gallery(self, gf: np.ndarray, chunk: int, cache_gallery: bool) -> None:
        self.gsrc = gf
        # cached float64 gallery when small enough: exact() then never re-normalises gallery rows (at 10k x 10k,
        # D=2048 the per-call re-normalisation was 2.2 s of 13.6 s)
        self.g64 = None
        cache_g = cache_gallery and gf.size * 8 <= CACHE64_MAX_BYTES
        if self.metric == "cosine":
            if cache_g:
                self.g64 = normalized64(gf)
                self.g32 = self.g64.astype(np.float32)
            else:
                self.g32 = normalized64(gf, np.float32)  # chunked: never a full float64 copy of a big gallery
            self.g2 = None
        elif self.metric == "inner_product":
            self.g32 = np.ascontiguousarray(gf, dtype=np.float32)
            self.g2 = None  # no norm term in the distance; the band needs only the largest gallery norm
            self.gnorm_max = max((float(np.sqrt(np.sum(gf[i : i + chunk].astype(np.float64) ** 2, axis=1)).max())
                                  for i in range(0, gf.shape[0], chunk)), default=0.0)
            if cache_g:
                self.g64 = gf.astype(np.float64)
        else:
            self.g32 = np.ascontiguousarray(gf, dtype=np.float32)
            self.g2 = np.concatenate(
                [np.sum(gf[i : i + chunk].astype(np.float64) ** 2, axis=1) for i in range(0, gf.shape[0], chunk)]
            ) if gf.shape[0] else np.zeros(0)
            if cache_g:
                self.g64 = gf.astype(np.float64)

    def _prepare_queries(self, qf: np.ndarray) -> None:
        self.qsrc = qf
        self.q64 = None  # cached float64 (normalised for cosine) queries when small enough
        if self.metric == "cosine":
            q64 = normalized64(qf)
            self.q32 = q64.astype(np.float32)
            self.q2 = None
        elif self.metric == "inner_product":
            q64 = qf.astype(np.float64)
            self.q32 = np.ascontiguousarray(qf, dtype=np.float32)
            self.q2 = None
            self.qnorm = np.sqrt(np.sum(q64**2, axis=1))
        else:
            q64 = qf.astype(np.float64)
            self.q32 = np.ascontiguousarray(qf, dtype=np.float32)
            self.q2 = np.sum(q64**2, axis=1)
        if q64.nbytes <= CACHE64_MAX_BYTES:
            self.q64 = q64

    def with_queries(self, qf: np.ndarray) -> Features:
        """The same prepared gallery paired with the queries ``qf``."""
        new = copy.copy(self)
        new._prepare_queries(qf)
        return new

    def prepare64(self) -> None:
        """Float64 gallery for float64 blocks (normalised for cosine; the same per-row bits as ``exact``)."""
        if self.g64 is None:
            self.g64 = normalized64(self.gsrc) if self.metric == "cosine" else self.gsrc.astype(np.float64)

    def band(self, use64: bool = False) -> np.ndarray:
        """Per-query bound on |float32 block entry - exact distance|: the worst-case error of a float32 dot
        product in any summation order, gamma_n sum|a_i b_i| <= gamma_n |a||b| (Higham, Accuracy and Stability
        of Numerical Algorithms, 2nd ed., eq. 3.5) with n = D + 8 covering the rounding of the inputs to float32,
        of the norms and of the final additions; 5% slack. Realistic errors are ~sqrt(D) times smaller, so
        the bound only costs a few extra exact re-computations. Cosine: unit rows, ``|q||g| <= 1``; inner product:
        ``|q| max|g|`` per query; squared Euclidean (``|q|^2 + |g|^2 - 2 <q, g>``): ``(|q| + max|g|)^2``."""
        n = self.dim + 8
        # float64 blocks: the block and the exact re-computation each err by up to gamma_n (u = 2^-53)
        u = 2.0 * U64 if use64 else U32
        if self.metric == "cosine":
            return np.full(self.q32.shape[0], n * u * 1.05)
        if self.metric == "inner_product":
            return n * u * self.qnorm * self.gnorm_max * 1.05
        qn, gmax = np.sqrt(self.q2), float(np.sqrt(self.g2.max()))
        return n * u * (qn + gmax) ** 2 * 1.05

    def exact(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact float64 distances of the pairs ``(rows[i], cols[i])``. Each feature row is converted (and
        normalised) on its own, so the same row always gives the same bits and duplicated features tie exactly."""
        out = np.empty(rows.size, np.float64)
        cos = self.metric == "cosine"

        def prep(x: np.ndarray) -> np.ndarray:
            return normalized64(x) if cos else x.astype(np.float64)

        if self.g64 is not None:
            g_all, ic = self.g64, cols
        else:
            uc, ic = np.unique(cols, return_inverse=True)
            g_all = prep(self.gsrc[uc]) if uc.size * self.dim <= (32 << 20) else None  # <= 256 MiB
        step = max(1, (1 << 18) // max(1, self.dim))  # 2 MiB float64 temporaries: stay in cache
        for i in range(0, rows.size, step):
            r = rows[i : i + step]
            if g_all is not None:
                g = g_all[ic[i : i + step]]
            else:
                u2, i2 = np.unique(cols[i : i + step], return_inverse=True)
                g = prep(self.gsrc[u2])[i2]
            if self.q64 is not None:
                q = self.q64[r]
            else:
                ur, ir = np.unique(r, return_inverse=True)
                q = prep(self.qsrc[ur])[ir]
            out[i : i + step] = np.sum((q - g) ** 2, axis=1) if self.metric == "euclidean" else -np.sum(q * g, axis=1)
        return out


@contextlib.contextmanager
def full_fp32():
    """Exact float32 GEMMs: no TF32 / reduced precision, whatever the caller set globally."""
    prev = torch.get_float32_matmul_precision()
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32


def block_distances(q: torch.Tensor, g: torch.Tensor, metric: str, q2: torch.Tensor | None = None,
                    g2: torch.Tensor | None = None) -> torch.Tensor:
    """Distances between the prepared query rows ``q`` (B, D) and gallery rows ``g`` (C, D): ``-<q, g>`` for
    ``'cosine'`` (rows already L2-normalised) and ``'inner_product'`` (raw rows), ``|q|^2 + |g|^2 - 2 <q, g>``
    clamped at 0 for ``'euclidean'`` (``q2``, ``g2``: the rows' squared norms). One GEMM; the element-wise part
    runs on one thread on the CPU (it is memory bound and competes with the GEMM's threads otherwise)."""
    ip = q @ g.T
    with single_thread(ip.device):
        if metric in NEGATED_IP:
            return ip.neg_()
        return (q2[:, None] + g2[None, :]).sub_(ip, alpha=2.0).clamp_min_(0.0)


__all__ = ["METRICS", "NEGATED_IP", "U32", "U64", "Features", "block_distances", "check_features", "full_fp32",
           "normalized64"]
