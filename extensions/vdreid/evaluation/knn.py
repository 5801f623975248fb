"""Top-k gallery search through faiss indexes (or torch), exact, ties broken by gallery index.

``search(qf, gf, k)`` returns, for every query, the ``k`` gallery items of smallest exact distance in the order
``(distance, gallery index)``: the same definitions as the evaluation (``'cosine'``: ``-<q/|q|, g/|g|>``;
``'euclidean'``: the squared Euclidean distance; ``'inner_product'``: ``-<q, g>`` on the raw features; all exact in
float64, see :mod:`vdreid.evaluation.features`).

How: a float32 engine proposes ``k'`` >= ``k`` candidates per query (faiss ``IndexFlatIP`` (cosine: on the
L2-normalised features; inner product: on the raw ones) / ``IndexFlatL2`` per gallery block on the CPU, faiss's
brute-force GPU kNN, or torch GEMM blocks with a running ``topk``). The
candidates' exact float64 distances are sorted by ``(distance, index)``. The float32 error of every distance is
bounded by a band ``b`` (Higham's dot-product bound, ``Features.band`` in :mod:`.features`), so every item that
was not proposed has exact distance >= ``t - b``, where ``t`` is the largest float32 value among the proposed.
When the k-th exact distance is below ``t - b`` the list is certainly the exact top-k; otherwise (many near-equal
or duplicated features, whose order faiss does not define) the query is searched again with ``4 k'`` candidates,
up to the whole gallery. So faiss, torch, CPU and GPU give the same lists.

Approximate search (``approximate='hnsw'`` or ``'ivf'``, or an
:class:`~vdreid.evaluation.approximate.ApproximateSearch` with the index settings; faiss only) is for galleries too
large for exact search: the candidates of an HNSW / IVF index are re-scored exactly and sorted, but items the index
missed are not recovered; the result says ``approximate=True`` and ``indexes`` holds what each index was built
with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vdreid.errors import EvaluationInputError
from vdreid.evaluation import backend as _backend
from vdreid.evaluation.approximate import ApproximateSearch
from vdreid.evaluation.core import single_thread
from vdreid.evaluation.features import (
    METRICS,
    NEGATED_IP,
    Features,
    block_distances,
    check_features,
    full_fp32,
    normalized64,
)
from vdreid.evaluation.metrics import camera_groups

logger = logging.getLogger(__name__)

#: the largest k faiss's GPU k-selection supports (faiss/gpu/utils/DeviceDefs.cuh, GPU_MAX_SELECTION_K)
GPU_MAX_K = 2048
#: gallery rows per faiss CPU flat index: bounded temporaries while the normalised float32 copy is built
GALLERY_BLOCK_BYTES = 256 << 20
#: faiss GPU kNN tiles the host gallery / queries into chunks of at most this size (gallery larger than the GPU)
GPU_MEMORY_LIMIT = 2 << 30
#: distance entries per torch block (GEMM + running top-k) and query rows per block: wide GEMMs
TORCH_BLOCK = 1 << 24
TORCH_ROWS = 2048


@dataclass
class SearchResult:
    """Top-k lists. ``indices`` (Q, k) int64 gallery indices, -1 where a query has fewer than k allowed items;
    ``distances`` (Q, k) float64 exact distances (inf in padding); ``backend`` e.g. ``'faiss:cpu'``;
    ``approximate``: True when an HNSW/IVF index proposed the candidates (lists may miss items); ``indexes``: the
    settings each approximate index was built with (``GalleryIndex.params``), empty for exact search."""

    distances: np.ndarray
    indices: np.ndarray
    backend: str
    approximate: bool = False
    indexes: tuple[dict, ...] = ()


class GalleryIndex:
    """A gallery prepared once for many exact top-k searches.

    ``backend``: 'auto' | 'faiss' | 'torch' (see :mod:`vdreid.evaluation.backend`). ``approximate``: None (exact),
    'hnsw' (``hnsw_m`` links, ``ef_search``), 'ivf' (``nlist`` lists, 0 or None: sized to the gallery; ``nprobe``
    probed) or an :class:`~vdreid.evaluation.approximate.ApproximateSearch` (the keywords, when given, replace its
    settings); faiss only. ``approximate`` is then the kind and ``params`` what the index was built with.
    """

    def __init__(
        self,
        gf,
        metric: str = "cosine",
        backend: str = "auto",
        approximate: str | ApproximateSearch | None = None,
        nprobe: int | None = None,
        nlist: int | None = None,
        ef_search: int | None = None,
        hnsw_m: int | None = None,
    ) -> None:
        if metric not in METRICS:
            raise EvaluationInputError(f"metric must be one of {METRICS}, got {metric!r}")
        settings = ApproximateSearch.of(approximate, nprobe=nprobe, nlist=nlist, ef_search=ef_search, hnsw_m=hnsw_m)
        g = check_features(gf, "gf")
        if g.shape[0] == 0:
            raise EvaluationInputError("gallery set is empty (0 gallery items): nothing to search")
        self.metric = metric
        self.settings = settings
        self.approximate = None if settings is None else settings.kind
        self.params: dict = {}
        self.backend = _backend.resolve(backend, "search")
        if settings is not None and self.backend.name != "faiss":
            raise EvaluationInputError(
                f"approximate={settings.kind!r} needs faiss (backend 'faiss' or 'auto' with faiss installed); "
                f"the backend here is {self.backend}"
            )
        self.size = g.shape[0]
        self.dim = g.shape[1]
        # no float64 copy of the gallery: only a few candidates per query need exact distances
        self._feats = Features(g[:0], g, metric, cache_gallery=False)
        self._faiss = _backend.import_faiss() if self.backend.name == "faiss" else None
        self._blocks: list[tuple[object, int]] = []
        self._gpu_res = None
        self._gt: torch.Tensor | None = None
        if settings is not None:
            self._build_approximate(settings)
        elif self.backend.name == "faiss" and self.backend.device == "cuda":
            self._gpu_res = _backend.gpu_resources()
        elif self.backend.name == "faiss":
            self._build_flat()
        else:
            dev = self.backend.torch_device
            g32 = torch.from_numpy(self._feats.g32)
            # a CUDA gallery that does not fit stays on the host and moves block by block
            fits = dev.type == "cpu" or g32.numel() * 4 < torch.cuda.mem_get_info(dev)[0] // 2
            self._gt = g32.to(dev) if fits else g32
            self._g2t = None if self._feats.g2 is None else torch.from_numpy(self._feats.g2.astype(np.float32))

    def __repr__(self) -> str:
        kind = self.approximate or "exact"
        return f"GalleryIndex({self.size} x {self.dim}, {self.metric}, {self.backend}, {kind})"

    # ------------------------------------------------------------------------------------------------ building
    def _metric_type(self):
        f = self._faiss
        return f.METRIC_INNER_PRODUCT if self.metric in NEGATED_IP else f.METRIC_L2

    def _build_flat(self) -> None:
        """One exact flat index per gallery block (``IndexFlatIP`` on the L2-normalised features for cosine and on
        the raw features for the inner product, ``IndexFlatL2`` for the squared Euclidean distance); the float32
        copy lives in the indexes only."""
        f = self._faiss
        rows = max(1, GALLERY_BLOCK_BYTES // (4 * self.dim))
        g32 = self._feats.g32
        for c0 in range(0, self.size, rows):
            idx = f.IndexFlatIP(self.dim) if self.metric in NEGATED_IP else f.IndexFlatL2(self.dim)
            idx.add(np.ascontiguousarray(g32[c0 : c0 + rows]))
            self._blocks.append((idx, c0))
        self._feats.g32 = None  # the indexes hold the float32 gallery; exact distances use the source features

    def _build_approximate(self, settings: ApproximateSearch) -> None:
        """An HNSW or IVF index over the gallery; IVF's lists sized to it (``ApproximateSearch.ivf_lists``)."""
        f = self._faiss
        mt = self._metric_type()
        g32 = np.ascontiguousarray(self._feats.g32)
        if settings.kind == "hnsw":
            idx = f.IndexHNSWFlat(self.dim, settings.hnsw_m, mt)
            idx.hnsw.efSearch = settings.ef_search
            idx.add(g32)
            self.params = {"kind": "hnsw", "gallery": self.size, "hnsw_m": settings.hnsw_m,
                           "ef_search": settings.ef_search}
        else:
            nlist, nprobe = settings.ivf_lists(self.size)
            quant = f.IndexFlatIP(self.dim) if self.metric in NEGATED_IP else f.IndexFlatL2(self.dim)
            idx = f.IndexIVFFlat(quant, self.dim, nlist, mt)
            # a gallery smaller than faiss's 39 training points per list was explained once by ivf_lists; keep
            # faiss's k-means from printing its own warning to stderr for every index
            idx.cp.min_points_per_centroid = max(1, min(idx.cp.min_points_per_centroid, self.size // nlist))
            idx.train(g32)
            idx.add(g32)
            idx.nprobe = nprobe
            self._quantizer = quant  # keep the quantizer alive as long as the index (SWIG ownership)
            self.params = {"kind": "ivf", "gallery": self.size, "nlist": nlist, "nprobe": nprobe}
        self._blocks = [(idx, 0)]
        self._feats.g32 = None

    # ------------------------------------------------------------------------------------------------ candidates
    def _candidates(self, feats: Features, rows: np.ndarray, kk: int, use_gpu: bool) -> tuple[np.ndarray, np.ndarray]:
        """(R, kk) block-precision distances (ascending) and gallery indices (-1 padding) of the ``kk`` best."""
        if self._faiss is not None and use_gpu:
            return self._candidates_faiss_gpu(feats, rows, kk)
        if self._faiss is not None:
            return self._candidates_faiss_cpu(feats, rows, kk)
        return self._candidates_torch(feats, rows, kk)

    def _to_distance(self, d: np.ndarray) -> np.ndarray:
        d = d.astype(np.float64)
        return -d if self.metric in NEGATED_IP else d

    def _candidates_faiss_cpu(self, feats: Features, rows: np.ndarray, kk: int):
        f = self._faiss
        xq = np.ascontiguousarray(feats.q32[rows])
        heap = None
        if len(self._blocks) > 1:
            heap = f.ResultHeap(xq.shape[0], kk, keep_max=self.metric in NEGATED_IP)
        out = None
        for idx, c0 in self._blocks:
            kb = min(kk, idx.ntotal)
            small = xq.shape[0] * idx.ntotal < (1 << 20)
            nthr = f.omp_get_max_threads()
            if small:  # OpenMP start-up costs more than a small search (ms per call on a loaded 2-core box)
                f.omp_set_num_threads(1)
            try:
                D, Ix = idx.search(xq, kb)
            finally:
                if small:
                    f.omp_set_num_threads(nthr)
            Ix = np.where(Ix >= 0, Ix + c0, -1)
            if heap is None:
                out = (D, Ix)
            else:
                if kb < kk:  # ResultHeap wants kk columns
                    pad = np.full((D.shape[0], kk - kb), -np.inf if self.metric in NEGATED_IP else np.inf, np.float32)
                    D = np.concatenate([D, pad], 1)
                    Ix = np.concatenate([Ix, np.full(pad.shape, -1, np.int64)], 1)
                heap.add_result(np.ascontiguousarray(D, dtype=np.float32), np.ascontiguousarray(Ix, dtype=np.int64))
        if heap is not None:
            heap.finalize()
            out = (heap.D, heap.I)
        D, Ix = out
        return self._to_distance(D), Ix.astype(np.int64)

    def _candidates_faiss_gpu(self, feats: Features, rows: np.ndarray, kk: int):
        f = self._faiss
        xq = np.ascontiguousarray(feats.q32[rows])
        xb = self._feats.g32
        big = xb.nbytes > GPU_MEMORY_LIMIT or xq.nbytes > GPU_MEMORY_LIMIT
        lim = GPU_MEMORY_LIMIT if big else 0
        D, Ix = f.knn_gpu(self._gpu_res, xq, xb, kk, metric=self._metric_type(),
                          vectorsMemoryLimit=lim, queriesMemoryLimit=lim)
        return self._to_distance(D), Ix.astype(np.int64)

    def _candidates_torch(self, feats: Features, rows: np.ndarray, kk: int, negate: bool = False):
        dev = torch.device("cuda" if self.backend.device == "cuda" and torch.cuda.is_available() else "cpu")
        gt = self._gt
        G = gt.shape[0]
        rb = max(1, min(rows.size, TORCH_ROWS, TORCH_BLOCK))
        cb = max(1, min(G, max(kk, TORCH_BLOCK // rb)))
        outv = np.empty((rows.size, kk), np.float64)
        outi = np.empty((rows.size, kk), np.int64)
        qall = torch.from_numpy(feats.q32)
        q2all = None if feats.q2 is None else torch.from_numpy(feats.q2.astype(np.float32))
        with full_fp32(), torch.no_grad():
            for r0 in range(0, rows.size, rb):
                rt = torch.as_tensor(rows[r0 : r0 + rb])
                q = qall.index_select(0, rt).to(dev)
                q2 = None if q2all is None else q2all.index_select(0, rt).to(dev)
                best_v = best_i = None
                for c0 in range(0, G, cb):
                    g = gt[c0 : c0 + cb].to(dev)
                    g2 = None if self._g2t is None else self._g2t[c0 : c0 + cb].to(dev)
                    x = block_distances(q, g, self.metric, q2, g2)
                    with single_thread(dev):
                        if negate:
                            x = x.neg_()
                        v, i = torch.topk(x, min(kk, x.shape[1]), dim=1, largest=False, sorted=False)
                        i = i + c0
                        if best_v is not None:
                            v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                            if v.shape[1] > kk:
                                v, j = torch.topk(v, kk, dim=1, largest=False, sorted=False)
                                i = i.gather(1, j)
                        best_v, best_i = v, i
                n = best_v.shape[1]
                outv[r0 : r0 + rb, :n] = best_v.double().cpu().numpy()
                outi[r0 : r0 + rb, :n] = best_i.cpu().numpy()
                outv[r0 : r0 + rb, n:] = np.inf
                outi[r0 : r0 + rb, n:] = -1
        return outv, outi

    # ------------------------------------------------------------------------------------------------ search
    def search(
        self,
        qf,
        k: int,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> SearchResult:
        """The exact top-``k`` of every query row of ``qf`` (Q, D).

        ``exclude``: optional, one sequence of gallery indices per query that must not appear in its list
        (e.g. items removed by an evaluation rule)."""
        q = check_features(qf, "qf")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise EvaluationInputError(f"k must be a positive integer, got {k!r}")
        if q.shape[0] and q.shape[1] != self.dim:
            raise EvaluationInputError(
                f"qf has dimension {q.shape[1]} but the gallery has {self.dim}; both must come from one model"
            )
        Q = q.shape[0]
        ex = _exclusions(exclude, Q, self.size)
        k = int(k)
        D = np.full((Q, k), np.inf)
        Ix = np.full((Q, k), -1, np.int64)
        indexes = (dict(self.params),) if self.params else ()
        if Q == 0:
            return SearchResult(D, Ix, str(self.backend), self.approximate is not None, indexes)
        feats = self._feats.with_queries(q)
        use_gpu = self.backend.device == "cuda" and self._faiss is not None and self.approximate is None

        def engine(sel: np.ndarray, kval: int) -> tuple[np.ndarray, np.ndarray]:
            if use_gpu and kval > GPU_MAX_K:  # beyond faiss's GPU k-selection: these rows on the host
                return self._cpu_fallback(feats, sel, kval)
            return self._candidates(feats, sel, kval, use_gpu)

        D, Ix = self._refine(feats, feats.exact, engine, k, ex)
        return SearchResult(D, Ix, str(self.backend), self.approximate is not None, indexes)

    def _refine(self, feats: Features, exact_fn, engine, k: int, ex) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k from an engine's candidates, escalating the candidate count until certified."""
        Q = feats.q32.shape[0]
        D = np.full((Q, k), np.inf)
        Ix = np.full((Q, k), -1, np.int64)
        band = feats.band()
        n_ex = np.diff(ex[0]) if ex is not None else np.zeros(Q, np.int64)
        kk = np.minimum(k + n_ex + max(8, k // 4), self.size)
        todo = np.arange(Q)
        while todo.size:
            again = []
            for kval in np.unique(kk[todo]):  # one engine call per candidate count
                kval = int(kval)
                sel = todo[kk[todo] == kval]
                v, idx = engine(sel, kval)
                d, sidx = _exact_sorted(exact_fn, sel, v, idx, band, ex, self.size)
                if self.approximate is not None or kval >= self.size:
                    done = np.ones(sel.size, bool)  # approximate: one pass; kval = G: every item was a candidate
                else:
                    done = _certified(v, idx, d, k, band[sel])
                n = min(k, d.shape[1])
                D[sel[done], :n] = d[done, :n]
                Ix[sel[done], :n] = sidx[done, :n]
                kk[sel[~done]] = min(4 * kval, self.size)
                again.append(sel[~done])
            todo = np.concatenate(again)
        return D, Ix

    def farthest(self, qf) -> np.ndarray:
        """Exact largest distance from every query to the gallery (float64, (Q,)).

        Cosine and inner product: the nearest item to ``-q`` is the farthest from ``q`` (``d(-q, g) = -d(q, g)``
        bit for bit), so the same index answers. Squared Euclidean: torch GEMM blocks with a largest-k selection,
        refined and certified like the nearest search (on negated distances)."""
        q = check_features(qf, "qf")
        if q.shape[0] == 0:
            return np.zeros(0)
        if self.metric in NEGATED_IP and self.approximate is None:
            return -self.search(-q, 1).distances[:, 0]
        feats = self._feats.with_queries(q)
        if self._gt is None:
            self._gt = torch.from_numpy(self._feats.g32 if self._feats.g32 is not None else self._host_gallery())
            self._g2t = None if self._feats.g2 is None else torch.from_numpy(self._feats.g2.astype(np.float32))

        def engine(sel: np.ndarray, kval: int) -> tuple[np.ndarray, np.ndarray]:
            v, idx = self._candidates_torch(feats, sel, kval, negate=True)
            return v, idx

        saved, self.approximate = self.approximate, None
        try:
            D, _ = self._refine(feats, lambda r, c: -feats.exact(r, c), engine, 1, None)
        finally:
            self.approximate = saved
        return -D[:, 0]

    def exact_pairs(self, qf) -> Features:
        """The exact distance function between the queries ``qf`` and this gallery (``.exact(rows, cols)``)."""
        return self._feats.with_queries(check_features(qf, "qf"))

    def _host_gallery(self) -> np.ndarray:
        """The float32 (normalised) gallery rebuilt from the source features (flat faiss indexes own theirs)."""
        g = self._feats.gsrc
        return normalized64(g, np.float32) if self.metric == "cosine" else np.ascontiguousarray(g, np.float32)

    def _cpu_fallback(self, feats: Features, rows: np.ndarray, kk: int):
        """Candidates for a k beyond the GPU k-selection: torch GEMM blocks on the host."""
        if self._gt is None:
            self._gt = torch.from_numpy(self._feats.g32 if self._feats.g32 is not None else self._host_gallery())
            self._g2t = None if self._feats.g2 is None else torch.from_numpy(self._feats.g2.astype(np.float32))
        saved = self.backend
        self.backend = _backend.Backend("torch", "cpu")
        try:
            return self._candidates_torch(feats, rows, kk)
        finally:
            self.backend = saved


def _certified(v: np.ndarray, idx: np.ndarray, d: np.ndarray, k: int, band: np.ndarray) -> np.ndarray:
    """Rows whose k-th exact distance is below every distance the engine did not propose.

    ``v``/``idx``: the engine's candidates (block precision, any order); ``d``: their exact distances sorted, with
    excluded items at inf. An item that was not proposed has block value >= t (the largest proposed value), so
    exact distance >= t - band."""
    t = np.where(idx >= 0, v, -np.inf).max(1)
    kth = d[:, k - 1] if d.shape[1] >= k else np.full(d.shape[0], np.inf)
    return kth < t - band


def _exclusions(exclude, Q: int, G: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-query excluded gallery indices as CSR (indptr (Q+1,), sorted keys row * G + col)."""
    if exclude is None:
        return None
    if len(exclude) != Q:
        raise EvaluationInputError(f"exclude has {len(exclude)} entries but there are {Q} queries; give one per query")
    lens = np.array([len(e) for e in exclude], np.int64)
    cols = np.concatenate([np.asarray(e, np.int64).reshape(-1) for e in exclude]) if lens.sum() else np.zeros(0, int)
    if cols.size and (cols.min() < 0 or cols.max() >= G):
        raise EvaluationInputError(f"exclude holds gallery indices outside 0..{G - 1}")
    keys = np.repeat(np.arange(Q, dtype=np.int64), lens) * G + cols
    return np.concatenate([[0], np.cumsum(lens)]), np.sort(keys)


def _exact_sorted(exact_fn, rows: np.ndarray, v: np.ndarray, idx: np.ndarray, band: np.ndarray,
                  ex: tuple[np.ndarray, np.ndarray] | None, G: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact distances of the candidates, excluded ones dropped (inf, -1), sorted by (distance, gallery index)."""
    valid = idx >= 0
    pr, pc = np.nonzero(valid)
    d = np.full(idx.shape, np.inf)
    d[pr, pc] = exact_fn(rows[pr], idx[pr, pc])
    # a reduced-precision engine (TF32 / fp16 GEMM) breaks the band; its candidates show it
    err = np.abs(v[pr, pc] - d[pr, pc])
    if err.size and np.any(err > band[rows[pr]]):
        raise RuntimeError(
            f"the search engine returned distances off by up to {err.max():.3g} from the exact ones (allowed "
            f"{band.max():.3g}): it does not compute in full float32 (TF32 or half precision?). Use backend='torch'."
        )
    idx = idx.copy()
    if ex is not None and ex[1].size:
        hit = np.isin(rows[pr] * G + idx[pr, pc], ex[1])
        d[pr[hit], pc[hit]] = np.inf
        idx[pr[hit], pc[hit]] = -1
    key = np.where(idx >= 0, idx, np.iinfo(np.int64).max)
    order = np.lexsort((key, d), axis=-1)
    return np.take_along_axis(d, order, 1), np.take_along_axis(idx, order, 1)


def search(
    qf,
    gf,
    k: int,
    metric: str = "cosine",
    backend: str = "auto",
    q_camids=None,
    g_camids=None,
    exclude_cam_pairs: Sequence[Sequence[int]] = (),
    exclude: Sequence[Sequence[int]] | None = None,
    approximate: str | ApproximateSearch | None = None,
    **index_kwargs,
) -> SearchResult:
    """The ``k`` nearest gallery items of every query: exact distances and gallery indices (see the module doc).

    ``qf`` (Q, D), ``gf`` (G, D): numpy arrays or torch tensors. ``metric``: 'cosine' | 'euclidean' | 'inner_product'.
    ``backend``: 'auto' (faiss when installed) | 'faiss' | 'torch'. Camera exclusions as in the evaluation:
    with ``q_camids`` / ``g_camids`` (0-based) and ``exclude_cam_pairs`` = ((query_camid, gallery_camid), ...), a
    query never sees gallery items of an excluded camera. ``exclude``: per-query gallery indices to leave out.
    ``approximate``: None (exact) | 'hnsw' | 'ivf' | an :class:`~vdreid.evaluation.approximate.ApproximateSearch`
    (faiss; ``index_kwargs``: ``nprobe``, ``nlist``, ``ef_search``, ``hnsw_m``). For repeated searches of one
    gallery build a :class:`GalleryIndex` once.
    """
    settings = ApproximateSearch.of(approximate, **index_kwargs)
    g = check_features(gf, "gf")
    q = check_features(qf, "qf")
    pairs = tuple((int(a), int(b)) for a, b in exclude_cam_pairs)
    if not pairs:
        return GalleryIndex(g, metric, backend, settings).search(q, k, exclude)
    if q_camids is None or g_camids is None:
        raise EvaluationInputError("exclude_cam_pairs needs q_camids and g_camids (one camera id per item)")
    qc, gc = np.asarray(q_camids, np.int64), np.asarray(g_camids, np.int64)
    if qc.shape != (q.shape[0],) or gc.shape != (g.shape[0],):
        raise EvaluationInputError(
            f"q_camids / g_camids have shapes {qc.shape} / {gc.shape}, expected ({q.shape[0]},) / ({g.shape[0]},)"
        )
    ex = None if exclude is None else list(exclude)
    if ex is not None and len(ex) != q.shape[0]:
        raise EvaluationInputError(f"exclude has {len(ex)} entries but there are {q.shape[0]} queries")
    D = np.full((q.shape[0], int(k)), np.inf)
    Ix = np.full((q.shape[0], int(k)), -1, np.int64)
    name, indexes = None, []
    for rows, cols in camera_groups(qc, gc, pairs):
        if cols.size == 0:
            continue
        pos = {int(c): i for i, c in enumerate(cols)} if ex is not None else None
        sub_ex = None if ex is None else [[pos[int(c)] for c in ex[r] if int(c) in pos] for r in rows]
        res = GalleryIndex(g[cols], metric, backend, settings).search(q[rows], k, sub_ex)
        D[rows] = res.distances
        Ix[rows] = np.where(res.indices >= 0, cols[np.maximum(res.indices, 0)], -1)
        name = res.backend
        indexes.extend(res.indexes)
    return SearchResult(D, Ix, name or str(_backend.resolve(backend, "search")), settings is not None,
                        tuple(indexes))
