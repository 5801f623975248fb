"""The one blockwise distance function (vdreid.evaluation.features.block_distances) against the definitions computed
independently in float64 with numpy: cosine = -<q/|q|, g/|g|>, euclidean = sum((q - g) ** 2); single rows, empty
galleries, blocks that do not divide the gallery, all-zero features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vdreid.errors import EvaluationInputError
from vdreid.evaluation.features import Features, block_distances, check_features, normalized64


def _reference(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    q, g = q.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return -(qn[:, None, :] * gn[None, :, :]).sum(-1)
    return ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)


def _blocks(feats: Features, metric: str, block: int) -> np.ndarray:
    q = torch.from_numpy(feats.q32)
    out = []
    for c0 in range(0, feats.g32.shape[0], block):
        g = torch.from_numpy(feats.g32[c0 : c0 + block])
        q2 = None if feats.q2 is None else torch.from_numpy(feats.q2.astype(np.float32))
        g2 = None if feats.g2 is None else torch.from_numpy(feats.g2[c0 : c0 + block].astype(np.float32))
        out.append(block_distances(q, g, metric, q2, g2).numpy())
    return np.concatenate(out, 1) if out else np.zeros((q.shape[0], 0))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize(("nq", "ng", "block"), [(1, 7, 3), (5, 13, 4), (9, 9, 9), (4, 1, 2), (3, 11, 100)])
def test_block_distances_equal_the_definition(metric, nq, ng, block):
    rng = np.random.default_rng(nq * 100 + ng)
    qf = rng.normal(size=(nq, 16)).astype(np.float32)
    gf = rng.normal(size=(ng, 16)).astype(np.float32)
    gf[0] = 0.0  # an all-zero feature: distance 0 (cosine) or |q|^2 (euclidean)
    feats = Features(check_features(qf, "qf"), check_features(gf, "gf"), metric)
    got = _blocks(feats, metric, block)
    ref = _reference(qf, gf, metric)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    rows, cols = np.nonzero(np.ones_like(ref, dtype=bool))
    np.testing.assert_allclose(feats.exact(rows, cols), ref[rows, cols], rtol=1e-12, atol=1e-12)  # float64 pairs
    assert np.all(np.abs(got - ref) <= feats.band()[:, None])  # within the error band the ranking relies on


def test_normalized64_is_rowwise_and_chunk_independent():
    x = np.random.default_rng(0).normal(size=(130, 7))
    a, b = normalized64(x, chunk=1), normalized64(x, chunk=64)
    assert np.array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-15)
    assert np.array_equal(normalized64(np.zeros((2, 3))), np.zeros((2, 3)))


def test_check_features_names_the_problem():
    with pytest.raises(EvaluationInputError, match="2-D"):
        check_features(np.zeros(3), "qf")
    with pytest.raises(EvaluationInputError, match="NaN/inf in 1 rows"):
        check_features(np.array([[0.0, np.nan], [1.0, 2.0]]), "gf")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_distances_of_empty_and_single_blocks(metric, dtype):
    """Blocks with no query row or no gallery column have the right empty shape; a 1 x 1 block is the definition."""
    rng = np.random.default_rng(3)
    q = rng.normal(size=(4, 5))
    g = rng.normal(size=(6, 5))
    if metric == "cosine":
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
    qt, gt = torch.from_numpy(q).to(dtype), torch.from_numpy(g).to(dtype)
    q2 = (qt * qt).sum(1) if metric == "euclidean" else None
    g2 = (gt * gt).sum(1) if metric == "euclidean" else None

    def blk(r0, r1, c0, c1):
        return block_distances(qt[r0:r1], gt[c0:c1], metric, None if q2 is None else q2[r0:r1],
                               None if g2 is None else g2[c0:c1])

    assert blk(0, 0, 0, 6).shape == (0, 6) and blk(0, 4, 3, 3).shape == (4, 0) and blk(0, 0, 0, 0).shape == (0, 0)
    one = blk(2, 3, 5, 6)
    assert one.shape == (1, 1) and one.dtype == dtype
    ref = _reference(q[2:3], g[5:6], metric)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(one.numpy(), ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(blk(0, 4, 0, 6).numpy(), _reference(q, g, metric), rtol=tol, atol=tol)


def test_euclidean_block_of_identical_rows_is_zero_not_negative():
    """|q|^2 + |g|^2 - 2 <q, g> can round below 0 for identical rows: the block clamps at 0 like the definition."""
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(50, 33)).astype(np.float32) * 100)
    x2 = (x.double() ** 2).sum(1).float()
    d = block_distances(x, x, "euclidean", x2, x2)
    assert float(d.min()) >= 0.0 and torch.all(d.diagonal() <= 1e-2 * x2)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ranking_and_knn_blocks_use_the_one_distance_function(metric, monkeypatch):
    """The ranking's blocks (gathered query rows, column slices) and the torch search engine return what
    block_distances returns for the same rows, bit for bit."""
    from vdreid.evaluation import knn, ranking

    rng = np.random.default_rng(11)
    qf = rng.normal(size=(7, 12)).astype(np.float32)
    gf = rng.normal(size=(19, 12)).astype(np.float32)
    feats = Features(qf, gf, metric)
    fn = ranking._block_fn(feats, torch.device("cpu"), np.arange(19))
    rows = np.array([5, 1, 6])
    got = fn(rows, 4, 15)
    q = torch.from_numpy(feats.q32[rows])
    g = torch.from_numpy(feats.g32[4:15])
    q2 = None if feats.q2 is None else torch.from_numpy(feats.q2[rows].astype(np.float32))
    g2 = None if feats.g2 is None else torch.from_numpy(feats.g2[4:15].astype(np.float32))
    assert torch.equal(got, block_distances(q, g, metric, q2, g2))
    calls = []
    orig = knn.block_distances
    monkeypatch.setattr(knn, "block_distances", lambda *a: calls.append(a[2]) or orig(*a))
    knn.GalleryIndex(gf, metric, "torch").search(qf, 3)
    assert calls and set(calls) == {metric}
