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
