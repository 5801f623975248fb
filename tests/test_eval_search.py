"""vdreid.evaluation.search / GalleryIndex: exact top-k through faiss flat indexes or torch blocks.

The reference is written here from the definition: float64 distances by broadcasting (cosine: -<q/|q|, g/|g|>,
euclidean: squared L2), a stable argsort (ties by gallery index), excluded items removed. Every engine (faiss
CPU flat indexes, one or many gallery blocks; torch blocks) must return exactly that list, also when faiss's own
order on ties differs (duplicated features) and when an engine proposes the worst tie-breaking it may.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import numpy as np
import pytest
import torch
import vdreid.evaluation.backend as backend
from eval_reference import stable_topk
from vdreid.errors import EvaluationInputError
from vdreid.evaluation import GalleryIndex, search

knn = importlib.import_module("vdreid.evaluation.knn")
ENGINES = ["faiss", "torch"]


def ref_distance(qf, gf, metric):
    q, g = np.asarray(qf, np.float64), np.asarray(gf, np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.sqrt((q * q).sum(1)), 1e-12)[:, None]
        g = g / np.maximum(np.sqrt((g * g).sum(1)), 1e-12)[:, None]
        return -(q[:, None, :] * g[None, :, :]).sum(-1)
    return ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)


def ref_topk(qf, gf, k, metric, allowed=None):
    """(distances, indices) of the k first items of the stable order; ``allowed`` (Q, G) bool masks items out."""
    return stable_topk(ref_distance(qf, gf, metric), k, allowed)


def with_ties(rng, nq, ng, dim):
    """Duplicated gallery features (exact ties), an all-zero feature, queries equal to gallery items."""
    qf = rng.normal(size=(nq, dim)).astype(np.float32)
    gf = rng.normal(size=(ng, dim)).astype(np.float32)
    gf[rng.integers(0, ng, ng // 3)] = gf[1]
    gf[-1] = 0.0
    qf[0] = gf[1]
    qf[1] = gf[5]
    qf[-1] = 0.0
    return qf, gf


def assert_lists(res, ref):
    D, Ix = ref
    np.testing.assert_array_equal(res.indices, Ix)
    np.testing.assert_allclose(res.distances, D, rtol=0, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_top_k_with_ties_every_engine(engine, metric):
    rng = np.random.default_rng(3)
    for _ in range(6):
        nq, ng, dim = int(rng.integers(1, 25)), int(rng.integers(2, 120)), int(rng.integers(1, 20))
        qf, gf = with_ties(rng, max(nq, 2), ng, dim)
        k = int(rng.integers(1, ng + 3))  # also k > G: padded with -1 / inf
        res = search(qf, gf, k, metric=metric, backend=engine)
        assert res.backend == f"{engine}:cpu" and not res.approximate
        assert_lists(res, ref_topk(qf, gf, k, metric))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_many_gallery_blocks_and_small_torch_blocks(metric, monkeypatch):
    """faiss: one flat index per gallery block merged by faiss.ResultHeap; torch: many GEMM blocks."""
    monkeypatch.setattr(knn, "GALLERY_BLOCK_BYTES", 4 * 8 * 37)  # 37 rows per faiss index
    monkeypatch.setattr(knn, "TORCH_BLOCK", 300)
    rng = np.random.default_rng(5)
    qf, gf = with_ties(rng, 40, 400, 8)
    idx = GalleryIndex(gf, metric, "faiss")
    assert len(idx._blocks) == 11
    for engine in ENGINES:
        res = search(qf, gf, 25, metric=metric, backend=engine)
        assert_lists(res, ref_topk(qf, gf, 25, metric))


def test_adversarial_tie_order_is_refined(monkeypatch):
    """An engine free to choose which of many equal items it returns (faiss does not define it) picks the
    highest indices: the certification rejects the list and the longer search gives the exact one."""
    rng = np.random.default_rng(8)
    qf, gf = with_ties(rng, 12, 300, 6)
    calls = []

    def worst(self, feats, rows, kk):
        calls.append(kk)
        x = -(feats.q32[rows].astype(np.float32) @ self._host_gallery().T)  # float32 block values
        out_v, out_i = [], []
        for row in x:
            order = np.lexsort((-np.arange(row.size), row))[:kk]  # ties: highest index first
            out_v.append(row[order].astype(np.float64))
            out_i.append(order)
        return np.array(out_v), np.array(out_i, np.int64)

    monkeypatch.setattr(knn.GalleryIndex, "_candidates_faiss_cpu", worst)
    res = search(qf, gf, 5, backend="faiss")
    assert_lists(res, ref_topk(qf, gf, 5, "cosine"))
    assert len(set(calls)) > 1  # the tied queries were searched again with longer lists


def test_camera_exclusions_and_per_query_exclude():
    rng = np.random.default_rng(9)
    qf, gf = with_ties(rng, 30, 150, 10)
    qc, gc = rng.choice([2, 5], 30), rng.choice([0, 1, 3, 4], 150)
    exclude = [rng.choice(150, int(rng.integers(0, 20)), replace=False) for _ in range(30)]
    allowed = np.ones((30, 150), bool)
    for i in range(30):
        if qc[i] == 2:
            allowed[i, gc == 1] = False
        allowed[i, exclude[i]] = False
    for engine in ENGINES:
        res = search(qf, gf, 12, backend=engine, q_camids=qc, g_camids=gc, exclude_cam_pairs=((2, 1),),
                     exclude=exclude)
        assert_lists(res, ref_topk(qf, gf, 12, "cosine", allowed))
    with pytest.raises(EvaluationInputError, match="needs q_camids"):
        search(qf, gf, 3, exclude_cam_pairs=((2, 1),))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_farthest_is_the_exact_maximum(metric):
    rng = np.random.default_rng(4)
    qf, gf = with_ties(rng, 20, 90, 5)
    ref = ref_distance(qf, gf, metric).max(1)
    for engine in ENGINES:
        np.testing.assert_allclose(GalleryIndex(gf, metric, engine).farthest(qf), ref, rtol=0, atol=1e-12)


def test_gallery_index_reused_and_tensors_accepted():
    rng = np.random.default_rng(1)
    gf = rng.normal(size=(64, 7)).astype(np.float32)
    idx = GalleryIndex(torch.from_numpy(gf), "euclidean", "faiss")
    for n in (1, 9):
        qf = rng.normal(size=(n, 7)).astype(np.float32)
        assert_lists(idx.search(torch.from_numpy(qf).double(), 4), ref_topk(qf, gf, 4, "euclidean"))
    assert "GalleryIndex(64 x 7, euclidean, faiss:cpu, exact)" == repr(idx)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_is_flagged_and_exhaustive_settings_are_exact(kind):
    rng = np.random.default_rng(2)
    qf = rng.normal(size=(15, 12)).astype(np.float32)
    gf = rng.normal(size=(400, 12)).astype(np.float32)
    kw = {"nlist": 4, "nprobe": 4} if kind == "ivf" else {"ef_search": 400}
    res = search(qf, gf, 10, approximate=kind, **kw)
    assert res.approximate and res.backend == "faiss:cpu"
    assert_lists(res, ref_topk(qf, gf, 10, "cosine"))  # every cell probed / a huge beam: the exact lists
    with pytest.raises(EvaluationInputError, match="needs faiss"):
        search(qf, gf, 3, backend="torch", approximate=kind)
    with pytest.raises(EvaluationInputError, match="approximate must be"):
        search(qf, gf, 3, approximate="lsh")


def test_reduced_precision_engine_is_refused(monkeypatch):
    """A GEMM in TF32/half precision would break the error band; its candidates reveal it."""
    orig = knn.GalleryIndex._candidates_torch

    def sloppy(self, feats, rows, kk, negate=False):
        v, i = orig(self, feats, rows, kk, negate)
        return v + 1e-3, i

    monkeypatch.setattr(knn.GalleryIndex, "_candidates_torch", sloppy)
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError, match="full float32"):
        search(rng.normal(size=(3, 4)), rng.normal(size=(10, 4)), 2, backend="torch")


def test_without_faiss_everything_runs_through_torch_and_warns_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    backend._reset_for_tests()
    try:
        rng = np.random.default_rng(6)
        qf, gf = with_ties(rng, 10, 50, 4)
        with caplog.at_level(logging.WARNING, logger="vdreid.evaluation.backend"):
            a = search(qf, gf, 5)
            b = search(qf, gf, 5, backend="auto")
        assert a.backend == b.backend == "torch:cpu"
        assert_lists(a, ref_topk(qf, gf, 5, "cosine"))
        warnings = [r for r in caplog.records if "faiss is not installed" in r.getMessage()]
        assert len(warnings) == 1
        with pytest.raises(EvaluationInputError, match="needs the faiss package"):
            search(qf, gf, 5, backend="faiss")
    finally:
        backend._reset_for_tests()


def test_auto_resolution_per_path(monkeypatch):
    backend._reset_for_tests()
    assert str(backend.resolve("auto", "search")) == "faiss:cpu"
    assert str(backend.resolve("auto", "rank")) == "torch:cpu"
    assert str(backend.resolve("faiss", "rank")) == "faiss:cpu"
    assert str(backend.resolve("torch", "search")) == "torch:cpu"
    # CUDA torch next to a CPU-only faiss: the GPU is the faster device for top-k
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert str(backend.resolve("auto", "search")) == "torch:cuda"
    # faiss sees a GPU: its GPU kNN
    monkeypatch.setattr(backend, "faiss_gpus", lambda f: 1)
    assert str(backend.resolve("auto", "search")) == "faiss:cuda"
    with pytest.raises(EvaluationInputError, match="backend must be one of"):
        backend.resolve("annoy")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda q, g: search(q, g, 0), "k must be a positive integer"),
        (lambda q, g: search(q[:, :3], g, 2), "qf has dimension 3"),
        (lambda q, g: search(q, g[:0], 2), "gallery set is empty"),
        (lambda q, g: search(q, g, 2, metric="l1"), "metric must be one of"),
        (lambda q, g: search(q, g, 2, exclude=[[0]]), "exclude has 1 entries"),
        (lambda q, g: search(q, g, 2, exclude=[[0], [99]]), "outside 0..5"),
        (lambda q, g: search(np.full_like(q, np.nan), g, 2), "qf contains NaN"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    q, g = np.ones((2, 4), np.float32), np.eye(6, 4, dtype=np.float32)
    with pytest.raises(EvaluationInputError, match=match):
        call(q, g)


def test_empty_query_set():
    res = search(np.zeros((0, 3), np.float32), np.eye(3, dtype=np.float32), 2)
    assert res.indices.shape == (0, 2)


def test_gpu_check_without_gpu_says_so_and_exits_0(monkeypatch, capsys):
    import os.path as osp

    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "benchmarks", "gpu_check.py")
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main([]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
