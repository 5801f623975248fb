"""k-reciprocal re-ranking on a kNN graph (vdreid.evaluation.rerank) against torchreid's dense ``re_ranking``
(through vdreid.compat), which stays the reference: same inputs as vdreid gives it (cosine: 1 - cos of
L2-normalised features, euclidean: squared L2), a few hundred images.

Tolerance: |ours - torchreid| <= 1e-5 on values in [0, 1]. torchreid works in float32: its input distances are
float32, and it sums up to ~150 float32 weights per row (V normalisation, query expansion means, the Jaccard
``temp_min`` accumulated one term at a time), each sum carrying at most n * 2^-24 ~ 1e-5 relative error; ours is
float64 from the exact distances. Observed differences are ~3e-7. The neighbour lists are discrete: on these
random features no two distances sit within float32 rounding of each other at a list boundary, so the lists agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from agw_reference import agw_reference, assert_same
from vdreid import compat
from vdreid.errors import EvaluationInputError
from vdreid.evaluation import evaluate_features, rerank_distances

TOL = 1e-5


def torchreid_inputs(qf, gf, metric):
    def n64(x):
        x = x.astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def dist(a, b):
        if metric == "cosine":
            return (1.0 - n64(a) @ n64(b).T).astype(np.float32)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        return np.maximum((a64**2).sum(1)[:, None] + (b64**2).sum(1)[None] - 2 * a64 @ b64.T, 0).astype(np.float32)

    return dist(qf, gf), dist(qf, qf), dist(gf, gf)


def clustered(rng, nq, ng, dim, ids, noise=0.8):
    pids = rng.integers(0, ids, nq + ng)
    centers = rng.normal(size=(ids, dim))
    x = (centers[pids] + noise * rng.normal(size=(nq + ng, dim))).astype(np.float32)
    return x[:nq], x[nq:], pids[:nq], pids[nq:]


@pytest.mark.parametrize("engine", ["faiss", "torch"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_equals_torchreid_re_ranking(engine, metric):
    rng = np.random.default_rng(10)
    qf, gf, _, _ = clustered(rng, 80, 320, 16, 40)
    ref = compat.re_ranking(*torchreid_inputs(qf, gf, metric))
    rr = rerank_distances(qf, gf, metric, backend=engine)
    ours = rr.dense()
    assert ours.shape == ref.shape == (80, 320)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    assert rr.s.nnz < 80 * 320  # the Jaccard part is sparse


@pytest.mark.parametrize("k1, k2, lam", [(5, 1, 0.3), (12, 3, 0.0), (20, 6, 1.0), (30, 10, 0.6)])
def test_equals_torchreid_for_other_parameters(k1, k2, lam):
    rng = np.random.default_rng(k1)
    qf, gf, _, _ = clustered(rng, 50, 200, 12, 25)
    ref = compat.re_ranking(*torchreid_inputs(qf, gf, "cosine"), k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(rerank_distances(qf, gf, k1=k1, k2=k2, lambda_value=lam).dense(), ref, rtol=0,
                               atol=TOL)


def test_tiny_set_smaller_than_k1():
    rng = np.random.default_rng(1)
    qf, gf, _, _ = clustered(rng, 4, 9, 6, 3)
    ref = compat.re_ranking(*torchreid_inputs(qf, gf, "cosine"))
    np.testing.assert_allclose(rerank_distances(qf, gf).dense(), ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("mode", ["dedup", "standard"])
def test_evaluate_features_rerank_equals_reference_metrics(mode):
    """rerank=True: the exact counting over re-ranked blocks (small blocks: many column blocks, two camera groups)
    gives the AGW metrics of torchreid's dense re-ranked matrix."""
    rng = np.random.default_rng(12)
    qf, gf, qp, gp = clustered(rng, 60, 240, 16, 30, noise=1.0)
    qc, gc = rng.choice([2, 5], 60), rng.choice([0, 1, 3, 4], 240)
    dm = compat.re_ranking(*torchreid_inputs(qf, gf, "cosine")).astype(np.float64)
    ref = agw_reference(dm, qp, gp, qc, gc, 20, mode, ((2, 1),))
    for backend, block in (("faiss", None), ("torch", 700)):
        out = evaluate_features(qf, gf, qp, gp, qc, gc, rerank=True, backend=backend, block_size=block,
                                cmc_mode=mode, exclude_cam_pairs=((2, 1),))
        assert_same(out, ref)
        assert out["backend"] == ("faiss:cpu+torch:cpu" if backend == "faiss" else "torch:cpu")
        assert out["approximate"] is False


def test_blocks_stay_within_the_band_of_the_exact_values():
    rng = np.random.default_rng(13)
    qf, gf, _, _ = clustered(rng, 30, 90, 64, 10)
    rr = rerank_distances(qf, gf, "euclidean")
    cols = np.arange(0, 90, 2)
    fn = rr.block_fn(cols, torch.device("cpu"))
    rows = np.arange(30)
    blk = fn(rows, 3, 40).numpy()
    r, c = np.meshgrid(rows, cols[3:40], indexing="ij")
    exact = rr.exact(r.ravel(), c.ravel()).reshape(blk.shape)
    assert np.all(np.abs(blk - exact) <= rr.band()[:, None])


def test_bad_input():
    q, g = np.ones((2, 4), np.float32), np.eye(5, 4, dtype=np.float32)
    with pytest.raises(EvaluationInputError, match="k1 must be a positive integer"):
        rerank_distances(q, g, k1=0)
    with pytest.raises(EvaluationInputError, match="lambda_value must be in"):
        rerank_distances(q, g, lambda_value=1.5)
    with pytest.raises(EvaluationInputError, match="qf has dimension 3"):
        rerank_distances(q[:, :3], g)
    with pytest.raises(EvaluationInputError, match="metric must be one of"):
        rerank_distances(q, g, metric="l1")
