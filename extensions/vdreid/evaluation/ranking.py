"""Exact evaluation from features without a dense distance matrix (faiss or torch, CPU or GPU, blockwise).

``evaluate_features`` computes the same numbers as :func:`vdreid.evaluation.evaluate` fed the exact float64
distance matrix, for any gallery size: distances are computed one block at a time (float32 GEMM by faiss or
torch), reduced to per-positive rank counts and a running top-L (see :mod:`vdreid.evaluation.core`), and entries
whose float32 value is too close to a positive's exact distance to decide are recomputed in float64.

The exact distances are defined in :mod:`vdreid.evaluation.features` (cosine: ``-<q/|q|, g/|g|>``; euclidean:
``sum((q - g) ** 2)``; inner_product: ``-<q, g>`` on the raw features), computed in float64 with numpy's pairwise
summation. Ties are broken by gallery index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vdreid.errors import EvaluationInputError
from vdreid.evaluation.approximate import ApproximateSearch, summarize
from vdreid.evaluation.backend import resolve
from vdreid.evaluation.core import _INT_SENTINEL, DEFAULT_BLOCK_SIZE, RankStats, aggregate, rank_statistics
from vdreid.evaluation.features import METRICS, NEGATED_IP, Features, block_distances, check_features, full_fp32
from vdreid.evaluation.knn import GalleryIndex, search
from vdreid.evaluation.metrics import camera_groups, check_common, same_camera_removal
from vdreid.evaluation.rerank import rerank_distances

BACKENDS = ("auto", "faiss", "torch")
#: torch backend on CUDA: float64 blocks when D >= this and the float64 features fit FLOAT64_MAX_BYTES. The float32
#: error band grows with D, and every entry inside a band costs a D-long float64 re-computation on the CPU; a
#: float64 GEMM on a data-centre GPU avoids those. On the 2-core CPU box float64 blocks were slower at SYSU size
#: (0.31 s vs 0.20 s per trial) and equal at 10k x 10k, so the CPU uses float32 blocks unless FLOAT64_ON_CPU.
FLOAT64_MIN_DIM = 1024
FLOAT64_ON_CPU = False
FLOAT64_MAX_BYTES = 1 << 30


def resolve_backend(backend: str, path: str = "rank") -> tuple[str, torch.device]:
    """The engine and device of one path ('rank': the exact counting and its top-L; 'search': top-k lists) for
    ``backend`` ('auto' | 'faiss' | 'torch'); the choices are explained in :mod:`vdreid.evaluation.backend`."""
    be = resolve(backend, path)
    return be.name, be.torch_device


def _block_fn(feats: Features, device: torch.device, cols: np.ndarray, use64: bool = False):
    """Distance blocks over the allowed gallery ``cols``: torch GEMMs on ``device`` (float64 blocks when
    ``use64``). Every backend counts on these blocks; faiss supplies top-k lists (see :mod:`.backend`)."""
    full = cols.size == feats.g32.shape[0]
    fdt = np.float64 if use64 else np.float32
    g2 = None if feats.g2 is None else (feats.g2 if full else feats.g2[cols]).astype(fdt)
    q2 = None if feats.q2 is None else feats.q2.astype(fdt)
    if use64:
        g64 = feats.g64 if full else feats.g64[cols]
        gt = torch.from_numpy(g64).to(device)
        qt = torch.from_numpy(feats.q64).to(device)
    else:
        gt = torch.from_numpy(feats.g32 if full else feats.g32[cols]).to(device)
        qt = torch.from_numpy(feats.q32).to(device)
    g2t = None if g2 is None else torch.from_numpy(g2).to(device)
    q2t = None if q2 is None else torch.from_numpy(q2).to(device)

    def fn(r: np.ndarray, c0: int, c1: int) -> torch.Tensor:
        rt = torch.as_tensor(r, device=device)
        q2r = None if q2t is None else q2t.index_select(0, rt)
        return block_distances(qt.index_select(0, rt), gt[c0:c1], feats.metric, q2r,
                               None if g2t is None else g2t[c0:c1])

    return fn


def _dense_distances(feats: Features, device: torch.device, use64: bool) -> torch.Tensor:
    """All Q x G block-dtype distances in one (multi-threaded) GEMM, for problems that fit one block: the
    camera groups then slice it instead of each gathering its query rows and running its own GEMM (at SYSU
    size the row gathers cost ~10 % of the evaluation). Same formulas as ``_block_fn``'s torch path."""
    qt = torch.from_numpy(feats.q64 if use64 else feats.q32).to(device)
    gt = torch.from_numpy(feats.g64 if use64 else feats.g32).to(device)
    if feats.metric in NEGATED_IP:
        return block_distances(qt, gt, feats.metric)
    fdt = np.float64 if use64 else np.float32
    q2t = torch.from_numpy(feats.q2.astype(fdt)).to(device)
    g2t = torch.from_numpy(feats.g2.astype(fdt)).to(device)
    return block_distances(qt, gt, "euclidean", q2t, g2t)


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
    approximate: str | ApproximateSearch | Mapping[str, Any] | None = None,
    approximate_k: int = 100,
    rerank_k1: int = 20,
    rerank_k2: int = 6,
    rerank_lambda: float = 0.3,
) -> dict:
    """Exact CMC / mAP / mINP from query features ``qf`` (Q, D) and gallery features ``gf`` (G, D).

    Same definitions and return value as :func:`vdreid.evaluation.evaluate` (fractions), computed blockwise
    with at most ``block_size`` distance entries per block (default ``2**23``); a problem that fits in one
    block is the dense path. ``backend``: ``'torch'`` (CUDA when available), ``'faiss'`` (the de-duplicated
    CMC's top-L from a faiss index, GPU when faiss sees one) or ``'auto'`` (see :mod:`vdreid.evaluation.backend`).
    Every backend and block size gives the same result, bit for bit. ``rerank=True`` evaluates the k-reciprocal
    re-ranked distances (``rerank_k1``, ``rerank_k2``, ``rerank_lambda``: torchreid's ``k1``, ``k2``,
    ``lambda_value``) computed on a kNN graph (:mod:`vdreid.evaluation.rerank`), at any size.

    ``approximate='hnsw'|'ivf'`` (faiss; or an :class:`~vdreid.evaluation.approximate.ApproximateSearch`, or a
    mapping of its fields, with the index settings) computes the metrics from each query's ``approximate_k`` first
    items of an approximate index instead (million-image galleries): positives outside that list are placed at the
    end of the query's list (a worst case), so mAP/mINP are approximate and the result says ``approximate: True``
    and, under ``approximate_index``, the settings and what the indexes were built with
    (:func:`vdreid.evaluation.approximate.summarize`).

    Besides the metrics the result holds ``backend`` (what ran: ``'torch:cpu'``, ``'faiss:cuda'``, or
    ``'<top-L engine>+<counting engine>'`` when they differ) and ``approximate``.
    """
    if metric not in METRICS:
        raise EvaluationInputError(f"metric must be one of {METRICS}, got {metric!r}")
    _, device = resolve_backend("torch")  # the counting blocks: torch GEMMs, on CUDA when available
    topl_name, topl_dev = resolve_backend(backend, "rank")
    q = check_features(qf, "qf")
    g = check_features(gf, "gf")
    if q.shape[0] and g.shape[0] and q.shape[1] != g.shape[1]:
        raise EvaluationInputError(
            f"qf has dimension {q.shape[1]} but gf has {g.shape[1]}; both must come from one model"
        )
    qp, gp, qc, gc, pairs = check_common(
        q.shape[0], g.shape[0], q_pids, g_pids, q_camids, g_camids, max_rank, cmc_mode, exclude_cam_pairs
    )
    if block_size is not None and (not isinstance(block_size, (int, np.integer)) or block_size < 1):
        raise EvaluationInputError(
            f"block_size must be a positive integer (distance entries per block), got {block_size!r}"
        )
    removal = same_camera_removal(qc, gc, remove_same_pid_same_cam, physical_camera)  # the LLCM rule
    settings = ApproximateSearch.of(approximate)
    if settings is not None:
        if rerank:
            raise EvaluationInputError("approximate search and rerank=True cannot be combined")
        return _approximate_metrics(q, g, qp, gp, qc, gc, pairs, removal, metric, backend, max_rank, cmc_mode,
                                    settings, approximate_k)
    use_faiss_topl = topl_name == "faiss" and cmc_mode == "dedup" and not rerank
    if rerank:
        rr = rerank_distances(q, g, metric, rerank_k1, rerank_k2, rerank_lambda, backend)
        band = rr.band()
        stats = []
        with torch.no_grad():
            for rows, cols in camera_groups(qc, gc, pairs):
                stats.append(rank_statistics(
                    rows, cols, qp, gp, rr.block_fn(cols, device), rr.exact, band[rows], torch.float64, device,
                    max_rank, cmc_mode == "dedup", block_size or DEFAULT_BLOCK_SIZE, progress="ranking (re-ranked)",
                    removal=removal,
                ))
        out = aggregate(stats, q.shape[0], max_rank, cmc_mode)
        out.update(backend=_backend_label(rr.backend, f"torch:{device.type}"), approximate=False)
        return out
    feats = Features(q, g, metric)
    use64 = (
        (device.type == "cuda" or FLOAT64_ON_CPU)
        and q.shape[1] >= FLOAT64_MIN_DIM and feats.q64 is not None
        and (q.shape[0] + g.shape[0]) * q.shape[1] * 8 <= FLOAT64_MAX_BYTES
    )
    if use64:
        feats.prepare64()
    band = feats.band(use64)
    stats: list[RankStats] = []
    block = block_size or DEFAULT_BLOCK_SIZE
    with full_fp32(), torch.no_grad():
        # dense path: the whole Q x G matrix fits one block: one GEMM, the camera groups slice it
        dense = _dense_distances(feats, device, use64) if q.size and q.shape[0] * g.shape[0] <= block else None
        for rows, cols in camera_groups(qc, gc, pairs):
            fn = _block_fn(feats, device, cols, use64) if dense is None else _dense_block_fn(dense, cols)
            st = rank_statistics(
                rows, cols, qp, gp, fn, feats.exact, band[rows], torch.float64 if use64 else torch.float32,
                device, max_rank,
                cmc_mode == "dedup" and not use_faiss_topl, block, progress=f"ranking ({device.type})",
                removal=removal,
            )
            if use_faiss_topl:
                st.dedup_rank = _dedup_ranks_by_search(q, g, st.rows, cols, qp, gp, max_rank, metric, backend,
                                                       _removed_lists(st.rows, cols, qp, gp, removal))
            stats.append(st)
    out = aggregate(stats, q.shape[0], max_rank, cmc_mode)
    counting = f"torch:{device.type}"
    out.update(backend=_backend_label(f"{topl_name}:{topl_dev.type}" if use_faiss_topl
                                      else counting, counting), approximate=False)
    return out


def _backend_label(topl: str, counting: str) -> str:
    """'torch:cpu' when one engine did everything, else '<top-L engine>+<counting engine>'."""
    return topl if topl == counting else f"{topl}+{counting}"


def _removed_lists(rows: np.ndarray, cols: np.ndarray, qp: np.ndarray, gp: np.ndarray,
                   removal: tuple[np.ndarray, np.ndarray] | None) -> list[np.ndarray] | None:
    """Per query row, positions in ``cols`` of the items the same-identity same-camera rule removes."""
    if removal is None:
        return None
    q_cam, g_cam = removal
    out = []
    for r in rows:
        out.append(np.nonzero((gp[cols] == qp[r]) & (g_cam[cols] == q_cam[r]))[0])
    return out


def _dedup_ranks_by_search(
    q: np.ndarray, g: np.ndarray, rows: np.ndarray, cols: np.ndarray, qp: np.ndarray, gp: np.ndarray,
    max_rank: int, metric: str, backend: str, removed: list[np.ndarray] | None,
) -> np.ndarray:
    """De-duplicated CMC rank (capped at ``max_rank``) of each query in ``rows`` from exact top-L lists of a
    gallery index over ``cols``: the number of distinct identities before the first (kept) positive. Rows whose
    list ends before deciding it are searched again with a 4x longer list."""
    out = np.full(rows.size, -1, np.int64)
    if rows.size == 0:
        return out
    index = GalleryIndex(g[cols], metric, backend)
    L = min(cols.size, max(4 * max_rank, 32))
    todo = np.arange(rows.size)
    while todo.size:
        ex = None if removed is None else [removed[i] for i in todo]
        res = index.search(q[rows[todo]], L, exclude=ex)
        ids = np.where(res.indices >= 0, gp[cols[np.maximum(res.indices, 0)]], _INT_SENTINEL)
        hit = ids == qp[rows[todo]][:, None]
        found = hit.any(1)
        p = np.where(found, hit.argmax(1), L)
        before = np.arange(L)[None, :] < p[:, None]
        pids = np.where(before, ids, _INT_SENTINEL)
        pids.sort(axis=1)
        distinct = (pids[:, :1] != _INT_SENTINEL).sum(1) + (
            (pids[:, 1:] != pids[:, :-1]) & (pids[:, 1:] != _INT_SENTINEL)).sum(1)
        decided = found | (distinct >= max_rank) | (L >= cols.size)
        out[todo[decided]] = np.minimum(distinct[decided], max_rank)
        todo = todo[~decided]
        L = min(cols.size, 4 * L)
    return out


def _approximate_metrics(q, g, qp, gp, qc, gc, pairs, removal, metric: str, backend: str, max_rank: int,
                         cmc_mode: str, settings: ApproximateSearch, k: int) -> dict:
    """Metrics from approximate top-k lists: ranks of the positives found in the list; the others are put at the
    end of the query's kept list, in index order (a worst case); the de-duplicated / standard CMC from the list."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < max_rank:
        raise EvaluationInputError(f"approximate_k must be an integer >= max_rank ({max_rank}), got {k!r}")
    stats = []
    name = None
    built: list[dict] = []
    for rows, cols in camera_groups(qc, gc, pairs):
        removed = _removed_lists(rows, cols, qp, gp, removal)
        kk = min(int(k), cols.size)
        res = search(q[rows], g[cols], kk, metric, backend, exclude=removed, approximate=settings)
        name = res.backend
        built.extend(res.indexes)
        ids = np.where(res.indices >= 0, gp[cols[np.maximum(res.indices, 0)]], -1)
        n_pos_all = np.array([np.count_nonzero(gp[cols] == qp[r]) for r in rows])
        n_rem = np.zeros(rows.size, np.int64) if removed is None else np.array([len(x) for x in removed])
        npos = n_pos_all - n_rem
        n_kept = cols.size - n_rem
        valid = npos > 0
        hit = ids == qp[rows][:, None]
        kmax = max(int(npos[valid].max()) if valid.any() else 1, 1)
        pos_rank = np.full((rows.size, kmax), -1, np.int64)
        dedup_rank = np.full(rows.size, max_rank, np.int64)
        for i in np.nonzero(valid)[0]:
            found = np.nonzero(hit[i])[0]
            miss = npos[i] - found.size
            tail = n_kept[i] - miss + np.arange(miss)  # missing positives last
            pos_rank[i, : npos[i]] = np.concatenate([found, tail])
            p = found[0] if found.size else ids.shape[1]
            dedup_rank[i] = min(np.unique(ids[i, :p][ids[i, :p] >= 0]).size, max_rank)
        stats.append(RankStats(rows[valid], pos_rank[valid], npos[valid], dedup_rank[valid]))
    out = aggregate(stats, q.shape[0], max_rank, cmc_mode)
    out.update(backend=name or backend, approximate=True, approximate_index=summarize(settings.settings(), built))
    return out
