"""Exact evaluation from features without a dense distance matrix (faiss or torch, CPU or GPU, blockwise).

``evaluate_features`` computes the same numbers as :func:`vdreid.evaluation.evaluate` fed the exact float64
distance matrix, for any gallery size: distances are computed one block at a time (float32 GEMM by faiss or
torch), reduced to per-positive rank counts and a running top-L (see :mod:`vdreid.evaluation.core`), and entries
whose float32 value is too close to a positive's exact distance to decide are recomputed in float64.

Exact distances (the definition every backend reproduces):

* ``'cosine'``: ``-<q/|q|, g/|g|>`` (AGW's ``-(q @ g.T)`` on L2-normalised features, spec section 2.3), with
  ``|x|`` floored at 1e-12 like ``torch.nn.functional.normalize`` (an all-zero feature is at distance 0 to all).
* ``'euclidean'``: ``sum((q - g) ** 2)`` (squared, which ranks like the Euclidean distance).

Both computed in float64 with numpy's pairwise summation. Ties are broken by gallery index.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from vdreid.evaluation.core import DEFAULT_BLOCK_SIZE, RankStats, aggregate, rank_statistics, single_thread
from vdreid.evaluation.metrics import camera_groups, check_common, evaluate, same_camera_removal

METRICS = ("cosine", "euclidean")
BACKENDS = ("auto", "faiss", "torch")
_U32 = 2.0**-24  # unit roundoff of float32
_U64 = 2.0**-53  # unit roundoff of float64
#: torch backend on CUDA: float64 blocks when D >= this and the float64 features fit FLOAT64_MAX_BYTES. The float32
#: error band grows with D, and every entry inside a band costs a D-long float64 re-computation on the CPU; a
#: float64 GEMM on a data-centre GPU avoids those. On the 2-core CPU box float64 blocks were slower at SYSU size
#: (0.31 s vs 0.20 s per trial) and equal at 10k x 10k, so the CPU uses float32 blocks unless FLOAT64_ON_CPU.
FLOAT64_MIN_DIM = 1024
FLOAT64_ON_CPU = False
FLOAT64_MAX_BYTES = 1 << 30
CACHE64_MAX_BYTES = 512 << 20  # float64 copies of the query / gallery features kept for exact() up to this size
RERANK_MAX_ITEMS = 30000  # torchreid's re_ranking builds (Q+G)^2 float32 matrices


def _features(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (num_items, dim) feature array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must hold floating-point features, got dtype {a.dtype}")
    if not a.size:
        return a
    # max/min propagate NaN and see inf without the full-size temporaries of isfinite/abs (4x faster)
    mx, mn = float(a.max()), float(a.min())
    if not (np.isfinite(mx) and np.isfinite(mn)):
        bad = int((~np.isfinite(a).all(1)).sum())
        raise ValueError(f"{name} contains NaN/inf in {bad} rows; check the model outputs before evaluating")
    if max(mx, -mn) > 1e18:
        raise ValueError(f"{name} has values above 1e18, too large for exact float32 blocks; rescale the features")
    return a


def _normalized64(x: np.ndarray, out_dtype=np.float64, chunk: int = 64) -> np.ndarray:
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


class _Features:
    """Query/gallery features prepared for one metric: float32 copies for the blocks, float64 exact pairs."""

    def __init__(self, qf: np.ndarray, gf: np.ndarray, metric: str, chunk: int = 1 << 16) -> None:
        self.metric, self.qsrc, self.gsrc = metric, qf, gf
        self.dim = qf.shape[1]
        self.q64 = None  # cached float64 (normalised for cosine) queries when small enough
        # cached float64 gallery when small enough: exact() then never re-normalises gallery rows (at 10k x 10k,
        # D=2048 the per-call re-normalisation was 2.2 s of 13.6 s)
        self.g64 = None
        cache_g = gf.size * 8 <= CACHE64_MAX_BYTES
        if metric == "cosine":
            q64 = _normalized64(qf)
            self.q32 = q64.astype(np.float32)
            if cache_g:
                self.g64 = _normalized64(gf)
                self.g32 = self.g64.astype(np.float32)
            else:
                self.g32 = _normalized64(gf, np.float32)  # chunked: never a full float64 copy of a big gallery
            self.q2 = self.g2 = None
        else:
            q64 = qf.astype(np.float64)
            self.q32 = np.ascontiguousarray(qf, dtype=np.float32)
            self.g32 = np.ascontiguousarray(gf, dtype=np.float32)
            self.q2 = np.sum(q64**2, axis=1)
            self.g2 = np.concatenate(
                [np.sum(gf[i : i + chunk].astype(np.float64) ** 2, axis=1) for i in range(0, gf.shape[0], chunk)]
            )
        if q64.nbytes <= CACHE64_MAX_BYTES:
            self.q64 = q64
        if cache_g and metric != "cosine":
            self.g64 = gf.astype(np.float64)

    def prepare64(self) -> None:
        """Float64 gallery for float64 blocks (normalised for cosine; the same per-row bits as ``exact``)."""
        if self.g64 is None:
            self.g64 = _normalized64(self.gsrc) if self.metric == "cosine" else self.gsrc.astype(np.float64)

    def band(self, use64: bool = False) -> np.ndarray:
        """Per-query bound on |float32 block entry - exact distance|: the worst-case error of a float32 dot
        product in any summation order, gamma_n sum|a_i b_i| <= gamma_n |a||b| (Higham, Accuracy and Stability
        of Numerical Algorithms, 2nd ed., eq. 3.5) with n = D + 8 covering the rounding of the inputs to float32,
        of the norms and of the final additions; 5% slack. Realistic errors are ~sqrt(D) times smaller, so
        the bound only costs a few extra exact re-computations."""
        n = self.dim + 8
        # float64 blocks: the block and the exact re-computation each err by up to gamma_n (u = 2^-53)
        u = 2.0 * _U64 if use64 else _U32
        if self.metric == "cosine":
            return np.full(self.q32.shape[0], n * u * 1.05)
        qn, gmax = np.sqrt(self.q2), float(np.sqrt(self.g2.max()))
        return n * u * (qn + gmax) ** 2 * 1.05

    def exact(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact float64 distances of the pairs ``(rows[i], cols[i])``. Each feature row is converted (and
        normalised) on its own, so the same row always gives the same bits and duplicated features tie exactly."""
        out = np.empty(rows.size, np.float64)
        cos = self.metric == "cosine"

        def prep(x: np.ndarray) -> np.ndarray:
            return _normalized64(x) if cos else x.astype(np.float64)

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
            out[i : i + step] = -np.sum(q * g, axis=1) if cos else np.sum((q - g) ** 2, axis=1)
        return out


@contextlib.contextmanager
def _full_fp32():
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


def resolve_backend(backend: str) -> tuple[str, torch.device]:
    """'auto' -> torch on CUDA if available, else faiss on GPU if faiss sees one, else torch on CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    cuda = torch.cuda.is_available()
    if backend == "torch" or (backend == "auto" and cuda):
        return "torch", torch.device("cuda" if cuda else "cpu")
    try:
        import faiss  # noqa: F401
    except ImportError as exc:
        if backend == "faiss":
            raise ValueError("backend='faiss' needs the faiss package: pip install faiss-cpu (or faiss-gpu)") from exc
        return "torch", torch.device("cpu")
    if backend == "auto" and faiss.get_num_gpus() == 0:
        return "torch", torch.device("cpu")
    return "faiss", torch.device("cpu")


def _block_fn(feats: _Features, backend: str, device: torch.device, cols: np.ndarray, use64: bool = False):
    """Block distance function over the allowed gallery ``cols`` for one backend (float64 blocks: torch only)."""
    full = cols.size == feats.g32.shape[0]
    g32 = feats.g32 if full else feats.g32[cols]
    fdt = np.float64 if use64 else np.float32
    g2 = None if feats.g2 is None else (feats.g2 if full else feats.g2[cols]).astype(fdt)
    q2 = None if feats.q2 is None else feats.q2.astype(fdt)
    if backend == "torch":
        if use64:
            g64 = feats.g64 if full else feats.g64[cols]
            gt = torch.from_numpy(g64).to(device)
            qt = torch.from_numpy(feats.q64).to(device)
        else:
            gt = torch.from_numpy(g32).to(device)
            qt = torch.from_numpy(feats.q32).to(device)
        g2t = None if g2 is None else torch.from_numpy(g2).to(device)
        q2t = None if q2 is None else torch.from_numpy(q2).to(device)

        def fn(r: np.ndarray, c0: int, c1: int) -> torch.Tensor:
            rt = torch.as_tensor(r, device=device)
            ip = qt.index_select(0, rt) @ gt[c0:c1].T
            with single_thread(device):
                if feats.metric == "cosine":
                    return ip.neg_()
                return (q2t.index_select(0, rt)[:, None] + g2t[None, c0:c1]).sub_(ip, alpha=2.0).clamp_min_(0.0)

        return fn
    import faiss

    gpu_res = faiss.StandardGpuResources() if faiss.get_num_gpus() > 0 else None
    mt = faiss.METRIC_INNER_PRODUCT if feats.metric == "cosine" else faiss.METRIC_L2

    def fn_faiss(r: np.ndarray, c0: int, c1: int) -> torch.Tensor:
        xq = np.ascontiguousarray(feats.q32[r])
        xb = g32[c0:c1]
        if gpu_res is not None:
            d = faiss.pairwise_distance_gpu(gpu_res, xq, xb, metric=mt)
        elif xq.shape[0] * xb.shape[0] < (1 << 20):
            # small blocks: faiss's OpenMP start-up costs ~ms per call (24 ms on a loaded 2-core box); 1 thread
            nthr = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                d = faiss.pairwise_distances(xq, xb, mt)
            finally:
                faiss.omp_set_num_threads(nthr)
        else:
            d = faiss.pairwise_distances(xq, xb, mt)
        t = torch.from_numpy(d)
        with single_thread(torch.device("cpu")):
            return t.neg_() if feats.metric == "cosine" else t

    return fn_faiss


def _dense_distances(feats: _Features, device: torch.device, use64: bool) -> torch.Tensor:
    """All Q x G block-dtype distances in one (multi-threaded) GEMM, for problems that fit one block: the
    camera groups then slice it instead of each gathering its query rows and running its own GEMM (at SYSU
    size the row gathers cost ~10 % of the evaluation). Same formulas as ``_block_fn``'s torch path."""
    qt = torch.from_numpy(feats.q64 if use64 else feats.q32).to(device)
    gt = torch.from_numpy(feats.g64 if use64 else feats.g32).to(device)
    ip = qt @ gt.T
    with single_thread(device):
        if feats.metric == "cosine":
            return ip.neg_()
        fdt = np.float64 if use64 else np.float32
        q2t = torch.from_numpy(feats.q2.astype(fdt)).to(device)
        g2t = torch.from_numpy(feats.g2.astype(fdt)).to(device)
        return (q2t[:, None] + g2t[None, :]).sub_(ip, alpha=2.0).clamp_min_(0.0)


def _dense_block_fn(dense: torch.Tensor, cols: np.ndarray):
    """Block function reading the precomputed ``dense`` (Q, G) matrix over the allowed gallery ``cols``."""
    full = cols.size == dense.shape[1]
    ct = torch.as_tensor(cols, device=dense.device)

    def fn(r: np.ndarray, c0: int, c1: int) -> torch.Tensor:
        if r.size and r[-1] - r[0] + 1 == r.size:  # contiguous rows (all queries in one group): a view
            x = dense[int(r[0]) : int(r[-1]) + 1]
        else:
            x = dense.index_select(0, torch.as_tensor(r, device=dense.device))
        return x[:, c0:c1] if full else x.index_select(1, ct[c0:c1])

    return fn


def _rerank_distmat(qf: np.ndarray, gf: np.ndarray, metric: str) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al. 2017) through torchreid's ``re_ranking`` on the torchreid-style
    distances (cosine: 1 - cos; euclidean: squared)."""
    from vdreid import compat

    n = qf.shape[0] + gf.shape[0]
    if n > RERANK_MAX_ITEMS:
        raise ValueError(
            f"rerank=True needs (Q+G)^2 memory; Q+G = {n} > {RERANK_MAX_ITEMS}. Use rerank=False for large sets."
        )

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if metric == "cosine":
            a, b = _normalized64(a), _normalized64(b)
            return (1.0 - a @ b.T).astype(np.float32)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        d = (a64**2).sum(1)[:, None] + (b64**2).sum(1)[None, :] - 2 * a64 @ b64.T
        return np.maximum(d, 0).astype(np.float32)

    return compat.re_ranking(dist(qf, gf), dist(qf, qf), dist(gf, gf))


def evaluate_features(
    qf,
    gf,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metric: str = "cosine",
    backend: str = "auto",
    block_size: int | None = None,
    max_rank: int = 20,
    cmc_mode: str = "dedup",
    exclude_cam_pairs: Sequence[Sequence[int]] = (),
    rerank: bool = False,
    remove_same_pid_same_cam: bool = False,
    physical_camera: Mapping[int, int] | None = None,
) -> dict:
    """Exact CMC / mAP / mINP from query features ``qf`` (Q, D) and gallery features ``gf`` (G, D).

    Same definitions and return value as :func:`vdreid.evaluation.evaluate` (fractions), computed blockwise
    with at most ``block_size`` distance entries per block (default ``2**23``); a problem that fits in one
    block is the dense path. ``backend``: ``'torch'`` (CUDA when available), ``'faiss'`` (GPU when faiss sees
    one) or ``'auto'``. Every backend and block size gives the same result. ``rerank=True`` applies
    torchreid's k-reciprocal re-ranking on a dense matrix (small sets only) and evaluates that.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    backend_name, device = resolve_backend(backend)
    q = _features(qf, "qf")
    g = _features(gf, "gf")
    if q.shape[0] and g.shape[0] and q.shape[1] != g.shape[1]:
        raise ValueError(f"qf has dimension {q.shape[1]} but gf has {g.shape[1]}; both must come from one model")
    qp, gp, qc, gc, pairs = check_common(
        q.shape[0], g.shape[0], q_pids, g_pids, q_camids, g_camids, max_rank, cmc_mode, exclude_cam_pairs
    )
    if block_size is not None and (not isinstance(block_size, (int, np.integer)) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer (distance entries per block), got {block_size!r}")
    removal = same_camera_removal(qc, gc, remove_same_pid_same_cam, physical_camera)  # the LLCM rule
    if rerank:
        dm = _rerank_distmat(q, g, metric)
        return evaluate(dm, qp, gp, qc, gc, max_rank, cmc_mode, pairs, block_size,
                        remove_same_pid_same_cam=remove_same_pid_same_cam, physical_camera=physical_camera)
    feats = _Features(q, g, metric)
    use64 = (
        backend_name == "torch" and (device.type == "cuda" or FLOAT64_ON_CPU)
        and q.shape[1] >= FLOAT64_MIN_DIM and feats.q64 is not None
        and (q.shape[0] + g.shape[0]) * q.shape[1] * 8 <= FLOAT64_MAX_BYTES
    )
    if use64:
        feats.prepare64()
    band = feats.band(use64)
    stats: list[RankStats] = []
    block = block_size or DEFAULT_BLOCK_SIZE
    with _full_fp32(), torch.no_grad():
        # dense path: the whole Q x G matrix fits one block (torch backend; faiss keeps its own blocks)
        dense = _dense_distances(feats, device, use64) if backend_name == "torch" and q.size and (
            q.shape[0] * g.shape[0] <= block) else None
        for rows, cols in camera_groups(qc, gc, pairs):
            fn = _block_fn(feats, backend_name, device, cols, use64) if dense is None else _dense_block_fn(dense, cols)
            stats.append(
                rank_statistics(
                    rows, cols, qp, gp, fn, feats.exact, band[rows], torch.float64 if use64 else torch.float32,
                    device, max_rank,
                    cmc_mode == "dedup", block, progress=f"ranking ({backend_name})", removal=removal,
                )
            )
    return aggregate(stats, q.shape[0], max_rank, cmc_mode)
