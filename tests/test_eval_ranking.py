"""vdreid.evaluation.evaluate_features: every backend and block size equals the AGW definitions applied to the
exact float64 distance matrix, computed here from the definition (AGW test.py: -cosine of L2-normalised features).

The reference evaluator is an independent loop restatement of AGW's eval_sysu / eval_regdb (stable ties, CMC
padded with its last value), the distance matrix an explicit broadcast in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from agw_reference import agw_reference, assert_same
from eval_reference import make_case
from vdreid import compat
from vdreid.evaluation import core, evaluate_features, features, ranking

BACKENDS = ["torch", "faiss"]


def reference_distance(qf, gf, metric):
    """Exact distances by the definition: float64, broadcast products summed over the feature axis."""
    q, g = np.asarray(qf, np.float64), np.asarray(gf, np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.sqrt((q * q).sum(1)), 1e-12)[:, None]
        g = g / np.maximum(np.sqrt((g * g).sum(1)), 1e-12)[:, None]
        return -(q[:, None, :] * g[None, :, :]).sum(-1)
    return ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_random_cases_every_backend_and_block_size(backend, metric, monkeypatch):
    if metric == "euclidean":  # the other counting path (cosine runs the automatic choice)
        monkeypatch.setattr(core, "DENSE_MIDDLE_FRACTION", 2.0 if backend == "torch" else -1.0)
    elif backend == "torch":  # float64 blocks (the torch backend's choice on CUDA for D >= 1024)
        monkeypatch.setattr(ranking, "FLOAT64_MIN_DIM", 1)
        monkeypatch.setattr(ranking, "FLOAT64_ON_CPU", True)
    rng = np.random.default_rng(hash((backend, metric)) % 1000)
    n = 0
    for t in range(16):
        nq, ng, dim = int(rng.integers(1, 30)), int(rng.integers(1, 50)), int(rng.integers(1, 48))
        qf, gf, qp, gp, qc, gc = make_case(rng, nq, ng, dim, 6, ties=t % 2 == 0)
        mode = ["dedup", "standard"][t % 2]
        excluded = [(), ((2, 1),)][(t // 2) % 2]
        max_rank = int(rng.integers(1, 25))
        ref = agw_reference(reference_distance(qf, gf, metric), qp, gp, qc, gc, max_rank, mode, excluded)
        for block in (None, int(rng.integers(max(4, ng // 2), 6 * ng + 8))):
            kw = dict(metric=metric, backend=backend, block_size=block, max_rank=max_rank, cmc_mode=mode,
                      exclude_cam_pairs=excluded)
            if ref is None:
                with pytest.raises(ValueError, match="no valid query"):
                    evaluate_features(qf, gf, qp, gp, qc, gc, **kw)
            else:
                assert_same(evaluate_features(qf, gf, qp, gp, qc, gc, **kw), ref)
                n += 1
    assert n > 16


@pytest.mark.parametrize("mode", ["dedup", "standard"])
@pytest.mark.parametrize("counting", ["ragged", "dense"])
def test_blocked_equals_dense_on_a_larger_problem(mode, counting, monkeypatch):
    """Many near-equal distances (low dimension, 2000 items): the float32 blocks cannot order them alone."""
    monkeypatch.setattr(core, "DENSE_MIDDLE_FRACTION", 2.0 if counting == "ragged" else -1.0)
    rng = np.random.default_rng(7)
    qf, gf, qp, gp, qc, gc = make_case(rng, 30, 1200, 3, 50)
    gf[::7] = np.round(gf[::7], 1)  # coarse values: exact ties after normalisation are possible too
    ref = agw_reference(reference_distance(qf, gf, "cosine"), qp, gp, qc, gc, 20, mode, ((2, 1),))
    for backend, blocks in (("torch", (None, 997, 9_000)), ("faiss", (None, 9_000)), ("torch64", (None, 9_000))):
        monkeypatch.setattr(ranking, "FLOAT64_MIN_DIM", 1 if backend == "torch64" else 1024)
        monkeypatch.setattr(ranking, "FLOAT64_ON_CPU", backend == "torch64")
        backend = backend[:5]
        for block in blocks:
            out = evaluate_features(qf, gf, qp, gp, qc, gc, backend=backend, block_size=block, cmc_mode=mode,
                                    exclude_cam_pairs=((2, 1),))
            assert_same(out, ref)


def test_dedup_needs_more_than_the_top_l():
    """A query whose first positive sits behind many items of few identities forces the exact per-row fallback."""
    rng = np.random.default_rng(11)
    dim = 8
    qf = rng.normal(size=(3, dim)).astype(np.float32)
    gf = np.repeat(qf[:1] + 0.01, 300, axis=0) + rng.normal(scale=1e-3, size=(300, dim)).astype(np.float32)
    gf = np.concatenate([gf, rng.normal(size=(40, dim)).astype(np.float32)])
    gp = np.concatenate([rng.integers(100, 103, 300), np.arange(40)])  # 300 near items of 3 identities
    qp = np.array([5, 6, 7])
    qc, gc = np.zeros(3, int), np.ones(340, int)
    ref = agw_reference(reference_distance(qf, gf, "cosine"), qp, gp, qc, gc, 20, "dedup", ())
    for backend in BACKENDS:
        assert_same(evaluate_features(qf, gf, qp, gp, qc, gc, backend=backend, block_size=500), ref)


def test_torch_tensors_and_float64_inputs():
    rng = np.random.default_rng(2)
    qf, gf, qp, gp, qc, gc = make_case(rng, 20, 30, 16, 5)
    ref = agw_reference(reference_distance(qf, gf, "euclidean"), qp, gp, qc, gc, 20, "standard", ())
    out = evaluate_features(torch.from_numpy(qf), torch.from_numpy(gf).double(), qp, gp, qc, gc,
                            metric="euclidean", cmc_mode="standard")
    assert_same(out, ref)


def test_rerank_matches_torchreid_re_ranking():
    rng = np.random.default_rng(4)
    qf, gf, qp, gp, qc, gc = make_case(rng, 15, 25, 8, 4)
    q = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    g = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    d = compat.re_ranking((1 - q @ g.T).astype(np.float32), (1 - q @ q.T).astype(np.float32),
                          (1 - g @ g.T).astype(np.float32))
    ref = agw_reference(d.astype(np.float64), qp, gp, qc, gc, 20, "dedup", ())
    assert_same(evaluate_features(qf, gf, qp, gp, qc, gc, rerank=True), ref)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"qf": np.zeros((2, 3), np.float32)}, "qf has dimension 3"),
        ({"qf": np.full((2, 4), np.nan, np.float32)}, "qf contains NaN"),
        ({"gf": np.array([[np.inf, 0, 0, 0]] * 3, np.float32)}, "gf contains NaN/inf"),
        ({"gf": np.zeros(4, np.float32)}, "gf must be a 2-D"),
        ({"qf": np.zeros((0, 4), np.float32), "q_pids": [], "q_camids": []}, "query set is empty"),
        ({"gf": np.zeros((0, 4), np.float32), "g_pids": [], "g_camids": []}, "gallery set is empty"),
        ({"metric": "l1"}, "metric must be one of"),
        ({"backend": "annoy"}, "backend must be one of"),
        ({"q_pids": [9, 9]}, "no valid query"),
        ({"g_pids": [1, 2]}, "g_pids has 2 entries"),
        ({"block_size": 0}, "block_size"),
        ({"qf": np.zeros((2, 4), np.int64)}, "floating-point"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = {
        "qf": np.ones((2, 4), np.float32), "gf": np.eye(3, 4, dtype=np.float32), "q_pids": [1, 2],
        "g_pids": [1, 2, 3], "q_camids": [2, 2], "g_camids": [0, 1, 3],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_features(**args)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("cache", [True, False])
def test_dense_one_gemm_path_equals_blocked_and_reference(metric, cache, monkeypatch):
    """The one-GEMM dense path (torch, Q x G fits one block) against the blocked path and the reference: ties,
    exclusions, unmatched queries, a gallery shorter than max_rank, contiguous and gathered query rows, with and
    without the cached float64 features used by the exact re-computation."""
    if not cache:
        monkeypatch.setattr(features, "CACHE64_MAX_BYTES", 0)  # the prepared features live in evaluation.features
    calls = []
    orig = ranking._dense_distances
    monkeypatch.setattr(ranking, "_dense_distances", lambda *a: calls.append(1) or orig(*a))
    rng = np.random.default_rng(23)
    for t in range(8):
        nq, ng = int(rng.integers(2, 40)), int(rng.integers(2, 60)) if t % 4 else 7  # 7 < max_rank = 20
        qf, gf, qp, gp, qc, gc = make_case(rng, nq, ng, int(rng.integers(2, 40)), 5, ties=t % 2 == 0)
        qp[0] = 99  # a query without any match
        if t % 3 == 0:
            qc[:] = 2  # one camera group: contiguous query rows
        mode = ["dedup", "standard"][t % 2]
        excluded = [(), ((2, 1),)][(t // 2) % 2]
        ref = agw_reference(reference_distance(qf, gf, metric), qp, gp, qc, gc, 20, mode, excluded)
        if ref is None:
            continue
        for block, dense in ((None, True), (nq * ng, True), (nq * ng - 1, False), (3, False)):
            calls.clear()
            out = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, backend="torch", block_size=block,
                                    cmc_mode=mode, exclude_cam_pairs=excluded)
            assert bool(calls) == dense
            assert_same(out, ref)


def test_faiss_top_l_equals_torch_bit_for_bit_on_ties_exclusions_and_removal():
    """backend='faiss' takes the de-duplicated CMC's top-L from faiss indexes (its order on ties is undefined),
    backend='torch' from the counting blocks: the metrics must be identical, bit for bit, and equal the reference;
    also with the same-identity same-camera removal and lists that must grow past the first L (many ties)."""
    rng = np.random.default_rng(31)
    n = 0
    for t in range(10):
        nq, ng, dim = int(rng.integers(2, 30)), int(rng.integers(30, 200)), int(rng.integers(2, 12))
        qf, gf, qp, gp, qc, gc = make_case(rng, nq, ng, dim, 5, ties=True)
        if t % 2:
            gf[: ng // 2] = gf[0]  # half the gallery one point: ties far beyond the first top-L
        removal = t % 3 == 0
        if removal:  # query and gallery cameras overlap, so some positives are removed
            qc, gc = rng.choice([0, 1], nq), rng.choice([0, 1, 2], ng)
        excluded = () if removal else ((2, 1),)
        kw = dict(cmc_mode="dedup", exclude_cam_pairs=excluded, remove_same_pid_same_cam=removal)
        try:
            a = evaluate_features(qf, gf, qp, gp, qc, gc, backend="faiss", block_size=97, **kw)
        except ValueError as exc:
            assert "no valid query" in str(exc)
            continue
        b = evaluate_features(qf, gf, qp, gp, qc, gc, backend="torch", **kw)
        assert a["backend"] == "faiss:cpu+torch:cpu" and b["backend"] == "torch:cpu"
        assert a["mAP"] == b["mAP"] and a["mINP"] == b["mINP"] and np.array_equal(a["cmc"], b["cmc"])
        if not removal:
            assert_same(a, agw_reference(reference_distance(qf, gf, "cosine"), qp, gp, qc, gc, 20, "dedup", excluded))
        n += 1
    assert n >= 6


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_metrics_are_flagged_and_exact_when_the_index_is_exhaustive(kind):
    rng = np.random.default_rng(17)
    qf, gf, qp, gp, qc, gc = make_case(rng, 25, 300, 16, 20)
    exact = evaluate_features(qf, gf, qp, gp, qc, gc, exclude_cam_pairs=((2, 1),))
    kw = {"approximate": kind, "approximate_k": 300}
    out = evaluate_features(qf, gf, qp, gp, qc, gc, exclude_cam_pairs=((2, 1),), **kw)
    assert out["approximate"] is True and out["backend"] == "faiss:cpu"
    if kind == "ivf":  # nlist is small here and nprobe (32) covers every cell: the exact lists
        assert out["mAP"] == pytest.approx(exact["mAP"], abs=1e-12)
        assert out["mINP"] == pytest.approx(exact["mINP"], abs=1e-12)
        np.testing.assert_allclose(out["cmc"], exact["cmc"], rtol=0, atol=1e-12)
    short = evaluate_features(qf, gf, qp, gp, qc, gc, approximate=kind, approximate_k=20)
    assert short["approximate"] is True and short["mAP"] <= 1.0
    with pytest.raises(ValueError, match="approximate_k must be"):
        evaluate_features(qf, gf, qp, gp, qc, gc, approximate=kind, approximate_k=5)


def test_without_faiss_evaluation_runs_through_torch(monkeypatch):
    import sys

    from vdreid.evaluation import backend

    rng = np.random.default_rng(19)
    qf, gf, qp, gp, qc, gc = make_case(rng, 20, 60, 8, 6, ties=True)
    ref = evaluate_features(qf, gf, qp, gp, qc, gc, backend="faiss")
    monkeypatch.setitem(sys.modules, "faiss", None)
    backend._reset_for_tests()
    try:
        out = evaluate_features(qf, gf, qp, gp, qc, gc)
        assert out["backend"] == "torch:cpu"
        assert out["mAP"] == ref["mAP"] and np.array_equal(out["cmc"], ref["cmc"])
        with pytest.raises(ValueError, match="needs the faiss package"):
            evaluate_features(qf, gf, qp, gp, qc, gc, backend="faiss")
    finally:
        backend._reset_for_tests()


def test_run_protocol_records_engine_and_approximate_flag(sysu_root, tmp_path):
    import json

    from vdreid.data import SYSUMM01
    from vdreid.evaluation import run_protocol

    ds = SYSUMM01(sysu_root)
    rng = np.random.default_rng(0)
    qp = np.array([it[1] for it in ds.query])
    gp = np.array([it[1] for it in ds.gallery])
    qc = np.array([it[2] for it in ds.query])
    gc = np.array([it[2] for it in ds.gallery])
    qf = rng.normal(size=(len(qp), 8)).astype(np.float32)
    gf = rng.normal(size=(len(gp), 8)).astype(np.float32)
    exact = run_protocol(ds.protocol, qf, gf, qp, gp, qc, gc)
    assert exact.backend == "torch:cpu" and exact.approximate is False
    assert "APPROXIMATE" not in exact.table()
    rep = run_protocol(ds.protocol, qf, gf, qp, gp, qc, gc, approximate="ivf")
    assert rep.approximate is True and rep.backend == "faiss:cpu"
    assert "APPROXIMATE" in rep.table()
    d = json.loads(open(rep.to_json(str(tmp_path / "r.json"))).read())
    assert d["approximate"] is True and d["backend"] == "faiss:cpu"
    both = run_protocol(ds.protocol, qf, gf, qp, gp, qc, gc, backend="faiss")
    assert both.backend == "faiss:cpu+torch:cpu" and both.per_trial == exact.per_trial
