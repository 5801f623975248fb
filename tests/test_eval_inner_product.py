"""The 'inner_product' metric (distance -<q, g> on the raw, un-normalised features; DEEN test.py's ranking) against
computations written here from the definition: float64 distances -(q @ g.T), ranked and scored by the shared
restatement of the protocol (tests/agw_reference.py: stable argsort, dedup / standard CMC, AP, INP).

Covers every engine (torch / faiss, blocked / dense, float32 / float64 blocks), ties, all-zero features, features of
very different norms (where cosine and inner product rank differently), exact top-k search (faiss = torch =
reference), the float32 error band (|q| max|g|, not cosine's constant) and its exact re-computation of undecidable
entries, ranked-list pictures, re-ranking (refused), the config key, the DEEN recipes, and DEEN's flipped test
feature ranked exactly as test.py's distmat7.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from agw_reference import agw_reference, assert_same
from eval_reference import make_case as _make_case
from eval_reference import stable_topk as ref_topk
from vdreid.errors import ConfigError, EvaluationInputError
from vdreid.evaluation import GalleryIndex, core, evaluate_features, features, ranking, search

BACKENDS = ["torch", "faiss"]


def ip_distance(qf, gf):
    """-<q, g> in float64, by the definition (broadcast products summed over the feature axis)."""
    q, g = np.asarray(qf, np.float64), np.asarray(gf, np.float64)
    return -(q[:, None, :] * g[None, :, :]).sum(-1)


def cos_distance(qf, gf):
    q, g = np.asarray(qf, np.float64), np.asarray(gf, np.float64)
    q = q / np.maximum(np.sqrt((q * q).sum(1)), 1e-12)[:, None]
    g = g / np.maximum(np.sqrt((g * g).sum(1)), 1e-12)[:, None]
    return -(q[:, None, :] * g[None, :, :]).sum(-1)


def make_case(rng, nq, ng, dim, num_ids, ties=False, spread=3.0):
    """Random cases whose feature norms span 10^-spread .. 10^spread (where cosine and inner product disagree)."""
    return _make_case(rng, nq, ng, dim, num_ids, ties=ties, spread=spread)


# ------------------------------------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", ["auto", "ragged", "float64"])
def test_random_cases_every_backend_and_block_size(backend, path, monkeypatch):
    if path == "ragged":  # the other counting path
        monkeypatch.setattr(core, "DENSE_MIDDLE_FRACTION", 2.0 if backend == "torch" else -1.0)
    elif path == "float64":  # float64 blocks (the torch backend's choice on CUDA for D >= 1024)
        monkeypatch.setattr(ranking, "FLOAT64_MIN_DIM", 1)
        monkeypatch.setattr(ranking, "FLOAT64_ON_CPU", True)
    rng = np.random.default_rng(hash((backend, path)) % 1000)
    n = 0
    for t in range(12):
        nq, ng, dim = int(rng.integers(1, 30)), int(rng.integers(1, 50)), int(rng.integers(1, 48))
        qf, gf, qp, gp, qc, gc = make_case(rng, nq, ng, dim, 6, ties=t % 2 == 0)
        mode = ["dedup", "standard"][t % 2]
        excluded = [(), ((2, 1),)][(t // 2) % 2]
        max_rank = int(rng.integers(1, 25))
        ref = agw_reference(ip_distance(qf, gf), qp, gp, qc, gc, max_rank, mode, excluded)
        for block in (None, int(rng.integers(max(4, ng // 2), 6 * ng + 8))):
            kw = dict(metric="inner_product", backend=backend, block_size=block, max_rank=max_rank, cmc_mode=mode,
                      exclude_cam_pairs=excluded)
            if ref is None:
                with pytest.raises(ValueError, match="no valid query"):
                    evaluate_features(qf, gf, qp, gp, qc, gc, **kw)
            else:
                assert_same(evaluate_features(qf, gf, qp, gp, qc, gc, **kw), ref)
                n += 1
    assert n > 12


def test_norms_decide_the_order_unlike_cosine():
    """Two gallery items in the query's direction: the longer one of the wrong identity comes first by inner
    product, the right one first by cosine (it is closer in angle). The metric must not normalise."""
    q = np.array([[1.0, 0.0, 0.0]], np.float32)
    g = np.array([[0.6, 0.8, 0.0], [1.0, 0.05, 0.0], [0.0, 0.0, 1.0]], np.float32) * np.array([[10.0], [1.0], [1.0]],
                                                                                             np.float32)
    qp, gp, qc, gc = np.array([1]), np.array([2, 1, 3]), np.array([2]), np.array([0, 0, 0])
    ip = evaluate_features(q, g, qp, gp, qc, gc, metric="inner_product", max_rank=3)
    cos = evaluate_features(q, g, qp, gp, qc, gc, metric="cosine", max_rank=3)
    assert_same(ip, agw_reference(ip_distance(q, g), qp, gp, qc, gc, 3))
    assert ip["cmc"][0] == 0.0 and ip["mAP"] == pytest.approx(0.5)
    assert cos["cmc"][0] == 1.0 and cos["mAP"] == pytest.approx(1.0)
    # and on random features of very different norms the two rankings differ for most queries
    rng = np.random.default_rng(4)
    qf, gf, *_ = make_case(rng, 20, 40, 8, 5)
    a = search(qf, gf, 40, metric="inner_product", backend="torch").indices
    b = search(qf, gf, 40, metric="cosine", backend="torch").indices
    assert (a != b).any(1).sum() >= 15


def test_dense_one_gemm_path_and_cache_off(monkeypatch):
    """The one-GEMM dense path against the blocked path and the reference, with and without cached float64 copies."""
    calls = []
    orig = ranking._dense_distances
    monkeypatch.setattr(ranking, "_dense_distances", lambda *a: calls.append(1) or orig(*a))
    rng = np.random.default_rng(23)
    for t in range(6):
        if t == 3:
            monkeypatch.setattr(features, "CACHE64_MAX_BYTES", 0)
        nq, ng = int(rng.integers(2, 40)), int(rng.integers(2, 60))
        qf, gf, qp, gp, qc, gc = make_case(rng, nq, ng, int(rng.integers(2, 40)), 5, ties=t % 2 == 0)
        qp[0] = 99  # a query without any match
        mode = ["dedup", "standard"][t % 2]
        ref = agw_reference(ip_distance(qf, gf), qp, gp, qc, gc, 20, mode)
        if ref is None:
            continue
        for block, dense in ((None, True), (nq * ng - 1, False), (3, False)):
            calls.clear()
            out = evaluate_features(qf, gf, qp, gp, qc, gc, metric="inner_product", backend="torch",
                                    block_size=block, cmc_mode=mode)
            assert bool(calls) == dense
            assert_same(out, ref)


def test_faiss_top_l_equals_torch_bit_for_bit_with_removal():
    rng = np.random.default_rng(31)
    for t in range(6):
        nq, ng, dim = int(rng.integers(2, 30)), int(rng.integers(30, 200)), int(rng.integers(2, 12))
        qf, gf, qp, gp, qc, gc = make_case(rng, nq, ng, dim, 5, ties=True)
        if t % 2:
            gf[: ng // 2] = gf[0]  # ties far beyond the first top-L
        removal = t % 3 == 0
        if removal:
            qc, gc = rng.choice([0, 1], nq), rng.choice([0, 1, 2], ng)
        kw = dict(metric="inner_product", cmc_mode="dedup", remove_same_pid_same_cam=removal)
        a = evaluate_features(qf, gf, qp, gp, qc, gc, backend="faiss", **kw)
        b = evaluate_features(qf, gf, qp, gp, qc, gc, backend="torch", **kw)
        assert a["backend"].startswith("faiss")
        np.testing.assert_array_equal(a["cmc"], b["cmc"])
        assert a["mAP"] == b["mAP"] and a["mINP"] == b["mINP"]


# ------------------------------------------------------------------------------------------------ kNN search
@pytest.mark.parametrize("engine", BACKENDS)
def test_exact_top_k_with_ties_zeros_and_norms_every_engine(engine, monkeypatch):
    rng = np.random.default_rng(3)
    for t in range(8):
        if t == 4:  # faiss: many flat indexes merged by ResultHeap; torch: many GEMM blocks
            monkeypatch.setattr(features, "CACHE64_MAX_BYTES", 0)
            monkeypatch.setattr("vdreid.evaluation.knn.GALLERY_BLOCK_BYTES", 4 * 8 * 7)
            monkeypatch.setattr("vdreid.evaluation.knn.TORCH_BLOCK", 50)
        nq, ng, dim = int(rng.integers(2, 25)), int(rng.integers(2, 120)), int(rng.integers(1, 8))
        qf, gf, *_ = make_case(rng, nq, ng, dim, 5, ties=True)
        k = int(rng.integers(1, ng + 3))  # also k > G: padded with -1 / inf
        res = search(qf, gf, k, metric="inner_product", backend=engine)
        D, Ix = ref_topk(ip_distance(qf, gf), k)
        np.testing.assert_array_equal(res.indices, Ix)
        np.testing.assert_allclose(res.distances, D, rtol=1e-12, atol=0)
        assert res.backend == f"{engine}:cpu"


def test_faiss_index_is_inner_product_on_raw_features():
    import faiss

    rng = np.random.default_rng(2)
    gf = (rng.normal(size=(30, 6)) * 10.0 ** rng.uniform(-2, 2, (30, 1))).astype(np.float32)
    idx = GalleryIndex(gf, "inner_product", "faiss")
    (flat, _), = idx._blocks
    assert isinstance(flat, faiss.IndexFlatIP)
    np.testing.assert_array_equal(flat.reconstruct_n(0, 30), gf)  # stored as given, not normalised


def test_farthest_and_camera_exclusions():
    rng = np.random.default_rng(9)
    qf, gf, qp, gp, qc, gc = make_case(rng, 20, 60, 5, 5, ties=True)
    d = ip_distance(qf, gf)
    for engine in BACKENDS:
        np.testing.assert_allclose(GalleryIndex(gf, "inner_product", engine).farthest(qf), d.max(1), rtol=1e-12,
                                   atol=0)
        res = search(qf, gf, 10, metric="inner_product", backend=engine, q_camids=qc, g_camids=gc,
                     exclude_cam_pairs=((2, 1),))
        allowed = ~((qc[:, None] == 2) & (gc[None, :] == 1))
        np.testing.assert_array_equal(res.indices, ref_topk(d, 10, allowed)[1])


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_use_the_inner_product(kind):
    """An exhaustive approximate index (IVF scanning every list, HNSW with a beam over the whole small gallery)
    gives the exact inner-product lists; flagged as approximate."""
    rng = np.random.default_rng(5)
    qf, gf, *_ = make_case(rng, 10, 60, 6, 5, spread=1.0)
    kw = {"nlist": 2, "nprobe": 2} if kind == "ivf" else {"ef_search": 512, "hnsw_m": 32}
    res = search(qf, gf, 8, metric="inner_product", backend="faiss", approximate=kind, **kw)
    assert res.approximate
    np.testing.assert_array_equal(res.indices, ref_topk(ip_distance(qf, gf), 8)[1])


# ------------------------------------------------------------------------------------------------ float32 band
def test_band_bounds_the_float32_error_and_scales_with_the_norms():
    """|float32 block - exact| <= band for features without cancellation (all positive: the errors add up) at
    several scales, and the band scales as |q| max|g| (x s^2 for features x s), not as cosine's constant."""
    rng = np.random.default_rng(11)
    for scale in (1e-3, 1.0, 1e4):
        q = (rng.uniform(0.5, 1.5, (16, 300)) * scale).astype(np.float32)
        g = (rng.uniform(0.5, 1.5, (50, 300)) * scale).astype(np.float32)
        f = features.Features(q, g, "inner_product")
        blk = features.block_distances(torch.from_numpy(f.q32), torch.from_numpy(f.g32), "inner_product").numpy()
        err = np.abs(blk.astype(np.float64) - ip_distance(q, g))
        assert (err <= f.band()[:, None]).all()
        expect = (300 + 8) * 2.0**-24 * np.linalg.norm(q.astype(np.float64), axis=1) \
            * np.linalg.norm(g.astype(np.float64), axis=1).max()
        np.testing.assert_allclose(f.band(), expect * 1.05, rtol=1e-12)
        f2 = features.Features(q * np.float32(4), g * np.float32(4), "inner_product")
        np.testing.assert_allclose(f2.band(), 16 * f.band(), rtol=1e-12)
    cos = features.Features(q, g, "cosine").band()
    assert (features.Features(q, g, "inner_product").band() > 1e6 * cos).all()


def _near_ties(rng, n_pairs=6, width=10):
    """Query i and gallery pair i (a, b) live on their own block of ``width`` dimensions (inner product 0 with the
    other queries); b = a except one entry one float32 ulp larger: their inner products with the (positive) query
    differ by ~0.2 in ~2e7, below float32's resolution there, but exactly ordered in float64 (b first). a comes first
    in the gallery and belongs to another identity, so a float32-only ranking with ties by gallery index puts the
    wrong identity first."""
    dim = n_pairs * width
    q = np.zeros((n_pairs, dim), np.float32)
    g, gp = [], []
    for i in range(n_pairs):
        blk = slice(i * width, (i + 1) * width)
        q[i, blk] = rng.uniform(1e3, 2e3, width)
        a = np.zeros(dim, np.float32)
        a[blk] = rng.uniform(1e3, 2e3, width)
        b = a.copy()
        b[i * width] = np.nextafter(a[i * width], np.float32(np.inf))
        g += [a, b]
        gp += [100 + i, i]
    return q, np.stack(g), np.arange(n_pairs), np.array(gp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_entries_within_the_band_are_recomputed_exactly(backend, monkeypatch):
    rng = np.random.default_rng(12)
    q, g, qp, gp = _near_ties(rng)
    d = ip_distance(q, g)
    assert (d[np.arange(6), 2 * np.arange(6) + 1] < d[np.arange(6), 2 * np.arange(6)]).all()  # b before a, exactly
    blk = -(q @ g.T)  # float32 cannot tell a from b for most pairs
    assert (blk[np.arange(6), 2 * np.arange(6) + 1] == blk[np.arange(6), 2 * np.arange(6)]).sum() >= 2
    calls = []
    orig = features.Features.exact
    monkeypatch.setattr(features.Features, "exact", lambda self, r, c: calls.append(r.size) or orig(self, r, c))
    qc, gc = np.full(6, 2), np.zeros(12, np.int64)
    out = evaluate_features(q, g, qp, gp, qc, gc, metric="inner_product", backend=backend, max_rank=5)
    ref = agw_reference(d, qp, gp, qc, gc, 5)
    assert_same(out, ref)
    assert out["cmc"][0] == 1.0 and sum(calls) > 0  # right identity first, thanks to the exact re-computation
    res = search(q, g, 2, metric="inner_product", backend=backend)
    np.testing.assert_array_equal(res.indices, ref_topk(d, 2)[1])
    np.testing.assert_array_equal(res.indices[:, 0], 2 * np.arange(6) + 1)


# ------------------------------------------------------------------------------------------------ other uses
def test_ranked_list_pictures_use_the_inner_product(monkeypatch):
    from vdreid.evaluation import visualize

    rng = np.random.default_rng(13)
    qf, gf, qp, gp, qc, gc = make_case(rng, 5, 30, 4, 4)

    class Protocol:
        name, num_trials = "toy", 1
        query = np.arange(5)
        gallery_trials = [np.arange(30)]

        def eval_kwargs(self):
            return {"exclude_cam_pairs": ()}

    q_items = [(f"q{i}.jpg", int(qp[i]), int(qc[i])) for i in range(5)]
    g_items = [(f"g{i}.jpg", int(gp[i]), int(gc[i])) for i in range(30)]
    seen = {}

    def draw(ranks, *args):
        seen["ranks"] = ranks
        return ["picture"]

    monkeypatch.setattr(visualize, "_draw", draw)
    visualize.save_ranked_lists_for_protocol(Protocol(), qf, gf, q_items, g_items, "unused", topk=6,
                                             metric="inner_product")
    d = ip_distance(qf, gf)
    for i in range(5):
        order = np.argsort(d[i], kind="stable")[:6]
        np.testing.assert_array_equal(np.argsort(seen["ranks"][i], kind="stable")[:6], order)
    with pytest.raises(EvaluationInputError, match="metric must be one of"):
        visualize.save_ranked_lists_for_protocol(Protocol(), qf, gf, q_items, g_items, "unused", metric="l1")


def test_rerank_is_refused_with_the_config_keys():
    from vdreid.config import load_config
    from vdreid.evaluation.rerank import rerank_distances

    rng = np.random.default_rng(14)
    qf, gf, qp, gp, qc, gc = make_case(rng, 6, 20, 4, 3)
    with pytest.raises(EvaluationInputError, match=r"test\.dist_metric.*test\.rerank"):
        evaluate_features(qf, gf, qp, gp, qc, gc, metric="inner_product", rerank=True)
    with pytest.raises(EvaluationInputError, match="not 'inner_product'"):
        rerank_distances(qf, gf, "inner_product")
    with pytest.raises(ConfigError, match=r"'test\.rerank' and 'test\.dist_metric'"):
        load_config(opts=["test.dist_metric", "inner_product", "test.rerank", "true"])
    assert load_config(opts=["test.dist_metric", "inner_product"]).test.dist_metric == "inner_product"


def test_engine_options_accept_the_metric():
    from vdreid.engine import EvalOptions

    assert EvalOptions(metric="inner_product").metric == "inner_product"
    with pytest.raises(ConfigError, match="test.dist_metric"):
        EvalOptions(metric="dot")


@pytest.mark.parametrize("recipe", ["methods/deen_sysu", "methods/deen_regdb", "llcm_deen"])
def test_deen_recipes_rank_flipped_features_by_inner_product(recipe):
    from vdreid.config import load_config

    cfg = load_config(recipe)
    assert cfg.test.flip and cfg.test.dist_metric == "inner_product"


# ------------------------------------------------------------------------------------------------ DEEN test.py
def test_deen_flip_feature_ranked_by_inner_product_is_test_py_distmat7():
    """A small random DEEN network (SYSU-MM01 / LLCM layout): vdreid's flip feature (extract_features(flip=True) of
    feature_mode 'all') ranked with metric 'inner_product' gives the order of test.py's flipped distmat7 (restated
    in tests/deen_reference.py), ranked by -distmat7, and the same CMC / mAP / mINP; the sums' norms differ, and cosine
    ranks them otherwise."""
    from deen_reference import deen_distmats, embed_net
    from original_reference import randomize_
    from vdreid.evaluation.extract import extract_features
    from vdreid.models import from_original
    from vdreid.models.deen import build_deen

    torch.manual_seed(0)
    ref = randomize_(embed_net(5, "sysu", arch="resnet18"), seed=1).double().eval()
    net = build_deen("resnet18", num_classes=5, dee_stage=3)
    net.load_state_dict(from_original("deen", {"net": ref.state_dict()}), strict=True)
    net = net.double().eval()
    net.feature_mode = "all"
    gen = torch.Generator().manual_seed(70)
    q = torch.randn(6, 3, 32, 16, generator=gen, dtype=torch.float64)
    g = torch.randn(10, 3, 32, 16, generator=gen, dtype=torch.float64)
    qp, gp = np.array([0, 1, 2, 3, 4, 0]), np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    qc, gc = np.full(6, 2), np.zeros(10, np.int64)  # infrared queries (camera 2), visible gallery

    def loader(x, pids, cams):
        batches = []
        for i in range(0, len(pids), 4):
            j = min(i + 4, len(pids))
            batches.append({"img": x[i:j], "pid": torch.as_tensor(pids[i:j]), "camid": torch.as_tensor(cams[i:j]),
                            "impath": [f"{k}.jpg" for k in range(i, j)]})
        return batches

    fq, *_ = extract_features(net, loader(q, qp, qc), ir_camids={2}, flip=True)
    fg, *_ = extract_features(net, loader(g, gp, gc), ir_camids={2}, flip=True)
    d7, *_ = deen_distmats(ref, q, g, q_modal=2, g_modal=1, flip=True)
    dist = -d7  # test.py ranks by argsort(-distmat7)
    gaps = np.diff(np.sort(dist, axis=1), axis=1)
    assert gaps.min() > 1e-5 * np.abs(dist).max()  # no near-ties: the float32 features keep the order
    norms = np.concatenate([fq.norm(dim=1).numpy(), fg.norm(dim=1).numpy()])
    assert norms.max() - norms.min() > 1e-4  # the flip sums differ in norm
    order = np.argsort(dist, axis=1, kind="stable")
    for engine in BACKENDS:
        np.testing.assert_array_equal(search(fq, fg, 10, metric="inner_product", backend=engine).indices, order)
    # re-normalising the sums (cosine) changes test.py's order here: this test tells the two apart
    assert (search(fq, fg, 10, metric="cosine", backend="torch").indices != order).any()
    for mode in ("dedup", "standard"):
        out = evaluate_features(fq, fg, qp, gp, qc, gc, metric="inner_product", max_rank=10, cmc_mode=mode)
        assert_same(out, agw_reference(dist, qp, gp, qc, gc, 10, mode))


def test_leaderboard_keeps_the_metric_apart_and_flags_it(tmp_path):
    """Runs ranked by inner product and by cosine never average into one row; the inner-product row is flagged."""
    from test_leaderboard import _seeded
    from vdreid.tools.leaderboard import find_results, rows_from_results

    for seed in (0, 1):
        _seeded(tmp_path / f"c{seed}" / "r.json", seed, [40.0, 40.0], [50.0, 50.0])
        _seeded(tmp_path / f"ip{seed}" / "r.json", seed, [45.0, 45.0], [52.0, 52.0], metric="inner_product")
    rows = {r.mean["R1"]: r for r in rows_from_results(find_results([str(tmp_path)]))}
    assert sorted(rows) == [40.0, 45.0] and all(r.seeds == ["0", "1"] for r in rows.values())
    assert "dist-inner_product" in rows[45.0].flags and not any(f.startswith("dist-") for f in rows[40.0].flags)
