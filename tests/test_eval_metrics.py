"""vdreid.evaluation.evaluate against an independent restatement of AGW's eval_sysu / eval_regdb (spec 3.1, 3.2).

The reference below is written from the spec, loop by loop, with a stable sort (our documented tie order) and
the CMC padded with its last value when the ranked list is shorter than max_rank (AGW would crash there).
It shares no code with vdreid.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from agw_reference import agw_reference, assert_same
from llcm_reference import eval_llcm_reference
from vdreid.evaluation import core, evaluate


def test_hand_computed_example():
    # one query (pid 1, cam 2) against 6 gallery items; distances give the order g0 g1 g2 g3 g4 g5
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    g_pids = np.array([5, 5, 1, 7, 1, 1])
    g_cams = np.array([0, 1, 0, 1, 3, 0])
    # standard, no exclusion: hits at ranks 3, 5, 6 -> AP = (1/3 + 2/5 + 3/6) / 3, INP = 3/6, first hit at rank 3
    out = evaluate(dist, [1], g_pids, [2], g_cams, max_rank=4, cmc_mode="standard")
    np.testing.assert_allclose(out["cmc"], [0, 0, 1, 1])
    assert out["mAP"] == pytest.approx((1 / 3 + 2 / 5 + 3 / 6) / 3)
    assert out["mINP"] == pytest.approx(0.5)
    # dedup: identity list 5, 1, 7 -> the query identity is 2nd
    out = evaluate(dist, [1], g_pids, [2], g_cams, max_rank=4, cmc_mode="dedup")
    np.testing.assert_allclose(out["cmc"], [0, 1, 1, 1])
    # SYSU exclusion (query cam 2 never sees gallery cam 1): kept g0 g2 g4 g5 -> hits at 2, 3, 4
    out = evaluate(dist, [1], g_pids, [2], g_cams, max_rank=4, cmc_mode="standard", exclude_cam_pairs=((2, 1),))
    np.testing.assert_allclose(out["cmc"], [0, 1, 1, 1])
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)
    assert out["mINP"] == pytest.approx(3 / 4)


def test_ties_are_stable_by_gallery_index():
    dist = np.zeros((1, 4))  # all tied: order is the gallery order
    out = evaluate(dist, [3], [1, 3, 2, 3], [0], [1, 1, 1, 1], max_rank=3, cmc_mode="standard")
    np.testing.assert_allclose(out["cmc"], [0, 1, 1])
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert out["mINP"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("mode", ["dedup", "standard"])
@pytest.mark.parametrize("dtype, counting", [(np.float64, "ragged"), (np.float32, "dense"), (np.float32, "ragged")])
def test_random_cases_match_reference(mode, dtype, counting, monkeypatch):
    # both counting paths of the engine: ragged middle entries only, or a batched search over the whole block
    monkeypatch.setattr(core, "DENSE_MIDDLE_FRACTION", 2.0 if counting == "ragged" else -1.0)
    rng = np.random.default_rng(0 if mode == "dedup" else 1)
    checked = 0
    for t in range(60):
        nq, ng = int(rng.integers(1, 25)), int(rng.integers(1, 40))
        if t % 2:  # many exact ties
            dist = rng.integers(0, 4, (nq, ng)).astype(dtype)
        else:
            dist = rng.normal(size=(nq, ng)).astype(dtype)
        qp, gp = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
        qc, gc = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
        excluded = [(), ((2, 1),), ((2, 1), (0, 0), (0, 3))][t % 3]
        max_rank = int(rng.integers(1, 30))  # often larger than the gallery
        ref = agw_reference(dist.astype(np.float64), qp, gp, qc, gc, max_rank, mode, excluded)
        block = int(rng.integers(1, 120))
        if ref is None:
            with pytest.raises(ValueError, match="no valid query"):
                evaluate(dist, qp, gp, qc, gc, max_rank, mode, excluded, block_size=block)
            continue
        assert_same(evaluate(dist, qp, gp, qc, gc, max_rank, mode, excluded, block_size=block), ref)
        assert_same(evaluate(dist, qp, gp, qc, gc, max_rank, mode, excluded), ref)
        checked += 1
    assert checked > 35


def test_agw_one_based_rule_equals_zero_based_pair():
    """AGW removes (q_cam == 3) & (g_cam == 2) with 1-based cameras; ours is ((2, 1),) with 0-based ids."""
    rng = np.random.default_rng(5)
    nq, ng = 60, 80
    dist = rng.normal(size=(nq, ng))
    qp, gp = rng.integers(0, 10, nq), rng.integers(0, 10, ng)
    qc1, gc1 = rng.choice([3, 6], nq), rng.choice([1, 2, 4, 5], ng)  # 1-based SYSU cameras
    ref = agw_reference(dist, qp, gp, qc1, gc1, 20, "dedup", excluded=((3, 2),))
    assert_same(evaluate(dist, qp, gp, qc1 - 1, gc1 - 1, 20, "dedup", ((2, 1),)), ref)


def test_unmatched_queries_count_nowhere():
    dist = np.array([[0.1, 0.2], [0.3, 0.1], [0.5, 0.4]])
    # query 1 (pid 9) has no match; queries 0 and 2 do
    out = evaluate(dist, [1, 9, 2], [1, 2], [0, 0, 0], [1, 1], max_rank=3, cmc_mode="standard")
    assert out["num_valid_queries"] == 2
    # q0: pid 1 at rank 1; q2: pid 2 at rank 1 (0.4 < 0.5)
    np.testing.assert_allclose(out["cmc"], [1, 1, 1])
    # a query whose only match is excluded is unmatched too
    out = evaluate(dist, [1, 9, 2], [1, 2], [0, 0, 2], [1, 1], 3, "standard", ((2, 1),))
    assert out["num_valid_queries"] == 1


def test_gallery_smaller_than_max_rank_pads_with_last_value():
    dist = np.array([[0.3, 0.1]])
    out = evaluate(dist, [4], [4, 8], [0], [1, 1], max_rank=20, cmc_mode="dedup")
    assert out["cmc"].shape == (20,)
    np.testing.assert_allclose(out["cmc"], [0] + [1] * 19)


def test_torch_input_and_blocks_agree():
    rng = np.random.default_rng(3)
    dist = rng.normal(size=(50, 70)).astype(np.float32)
    qp, gp = rng.integers(0, 8, 50), rng.integers(0, 8, 70)
    qc, gc = rng.integers(0, 3, 50), rng.integers(0, 3, 70)
    a = evaluate(torch.from_numpy(dist), qp, gp, qc, gc)
    b = evaluate(dist, qp, gp, qc, gc, block_size=7)
    np.testing.assert_array_equal(a["cmc"], b["cmc"])
    assert a["mAP"] == b["mAP"] and a["mINP"] == b["mINP"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"distmat": np.zeros(3)}, "distmat must be a 2-D"),
        ({"q_pids": [1, 2, 3]}, "q_pids has 3 entries"),
        ({"g_camids": [0]}, "g_camids has 1 entries"),
        ({"distmat": np.array([[0.0, np.nan]])}, "NaN/inf"),
        ({"distmat": np.array([[0.0, np.inf]])}, "NaN/inf"),
        ({"distmat": np.zeros((0, 2)), "q_pids": [], "q_camids": []}, "query set is empty"),
        ({"distmat": np.zeros((1, 0)), "g_pids": [], "g_camids": []}, "gallery set is empty"),
        ({"cmc_mode": "sysu"}, "cmc_mode"),
        ({"max_rank": 0}, "max_rank"),
        ({"q_pids": [7]}, "no valid query"),
        ({"q_pids": np.array([0.5])}, "q_pids must hold integers"),
        ({"exclude_cam_pairs": (3,)}, "exclude_cam_pairs"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = {"distmat": np.array([[0.1, 0.2]]), "q_pids": [1], "g_pids": [1, 2], "q_camids": [0], "g_camids": [1, 1]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate(**args)


# ------------------------------------------------------------------ LLCM: same identity and same camera removed


def test_llcm_removal_hand_computed():
    # query pid 1 seen by camera 4; order g0..g5. g1 (pid 1, cam 4) is removed, g3 (pid 1, cam 2) and g5 stay.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    g_pids = np.array([5, 1, 7, 1, 5, 1])
    g_cams = np.array([0, 4, 1, 2, 4, 4])
    out = evaluate(dist, [1], g_pids, [4], g_cams, max_rank=4, cmc_mode="dedup", remove_same_pid_same_cam=True)
    # kept list g0 g2 g3 g4: identities 5, 7, 1 -> the query identity is 3rd; g5 (pid 1, cam 4) is removed too
    np.testing.assert_allclose(out["cmc"], [0, 0, 1, 1])
    assert out["mAP"] == pytest.approx(1 / 3) and out["mINP"] == pytest.approx(1 / 3)
    # without the rule: identities 5, 1 -> 2nd; positives at ranks 2, 4, 6
    out = evaluate(dist, [1], g_pids, [4], g_cams, max_rank=4, cmc_mode="dedup")
    np.testing.assert_allclose(out["cmc"], [0, 1, 1, 1])
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 6) / 3)
    # the only positive removed: the query is not valid
    with pytest.raises(ValueError, match="no valid query"):
        evaluate(dist[:, :2], [1], g_pids[:2], [4], g_cams[:2], remove_same_pid_same_cam=True)


def test_llcm_removal_physical_camera_map():
    """Near-infrared camids offset by 9 (so modality can be read from the camid) still count as the same camera as
    the visible camid k through ``physical_camera``; without the map the rule never fires."""
    rng = np.random.default_rng(3)
    nq, ng = 40, 60
    dist = rng.normal(size=(nq, ng))
    qp, gp = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    qcam, gcam = rng.integers(0, 4, nq), rng.integers(0, 4, ng)  # the physical cameras
    ref = eval_llcm_reference(dist, qp, gp, qcam, gcam, 20)
    phys = {9 + k: k for k in range(9)}
    out = evaluate(dist, qp, gp, qcam + 9, gcam, remove_same_pid_same_cam=True, physical_camera=phys)
    assert_same(out, ref)
    plain = evaluate(dist, qp, gp, qcam + 9, gcam, remove_same_pid_same_cam=True)
    assert_same(plain, agw_reference(dist, qp, gp, qcam + 9, gcam, 20, "dedup"))


@pytest.mark.parametrize("mode", ["dedup", "standard"])
@pytest.mark.parametrize("counting", ["ragged", "dense"])
def test_llcm_removal_random_cases_match_reference(mode, counting, monkeypatch):
    """Ties, unmatched queries, every positive removed, galleries shorter than max_rank, any block size."""
    monkeypatch.setattr(core, "DENSE_MIDDLE_FRACTION", 2.0 if counting == "ragged" else -1.0)
    rng = np.random.default_rng(11 if mode == "dedup" else 12)
    checked = 0
    for t in range(50):
        nq, ng = int(rng.integers(1, 25)), int(rng.integers(1, 45))
        dist = rng.integers(0, 4, (nq, ng)).astype(np.float64) if t % 2 else rng.normal(size=(nq, ng))
        qp, gp = rng.integers(0, 5, nq), rng.integers(0, 5, ng)
        qc, gc = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
        max_rank = int(rng.integers(1, 30))
        if mode == "dedup":
            ref = eval_llcm_reference(dist, qp, gp, qc, gc, max_rank)
        else:  # the standard CMC on the same kept lists: first kept positive within k
            ref = _standard_reference(dist, qp, gp, qc, gc, max_rank)
        for block in (None, int(rng.integers(1, 90))):
            kw = dict(max_rank=max_rank, cmc_mode=mode, block_size=block, remove_same_pid_same_cam=True)
            if ref is None:
                with pytest.raises(ValueError, match="no valid query"):
                    evaluate(dist, qp, gp, qc, gc, **kw)
                continue
            assert_same(evaluate(dist, qp, gp, qc, gc, **kw), ref)
            assert_same(evaluate(dist.astype(np.float32), qp, gp, qc, gc, **kw), ref)
            checked += 1
    assert checked > 60


def _standard_reference(dist, qp, gp, qc, gc, max_rank):
    """eval_llcm_reference with the standard CMC (first kept positive within k), same removal."""
    rows, aps, inps = [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((gp[order] == qp[i]) & (gc[order] == qc[i]))
        hit = gp[order][keep] == qp[i]
        if not hit.any():
            continue
        row = list(np.minimum(np.cumsum(hit), 1)[:max_rank])
        rows.append(row + [row[-1]] * (max_rank - len(row)))
        pos = np.nonzero(hit)[0]
        aps.append(sum((j + 1) / (p + 1) for j, p in enumerate(pos)) / len(pos))
        inps.append(len(pos) / (pos[-1] + 1))
    if not rows:
        return None
    return np.sum(rows, axis=0) / len(rows), float(np.mean(aps)), float(np.mean(inps)), len(rows)


def test_llcm_removal_dedup_beyond_the_top_l():
    """Many removed positives ahead of the first kept one fill the engine's top-L; the exact fallback must skip
    them when counting identities."""
    ng = 400
    g_pids = np.concatenate([np.zeros(200, np.int64), np.arange(1, 200), [0]])
    g_cams = np.concatenate([np.zeros(200, np.int64), np.zeros(199, np.int64), [1]])
    dist = np.arange(ng, dtype=np.float64)[None, :]  # the 200 removed positives come first
    ref = eval_llcm_reference(dist, np.array([0]), g_pids, np.array([0]), g_cams, 20)
    out = evaluate(dist, [0], g_pids, [0], g_cams, remove_same_pid_same_cam=True, block_size=64)
    assert_same(out, ref)
    assert out["cmc"][-1] == 0.0  # 199 other identities come first


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_llcm_removal_from_features_every_backend(backend, monkeypatch):
    from vdreid.evaluation import evaluate_features, ranking

    if backend == "torch":  # float64 blocks too (the torch backend's choice on CUDA)
        monkeypatch.setattr(ranking, "FLOAT64_MIN_DIM", 1)
        monkeypatch.setattr(ranking, "FLOAT64_ON_CPU", True)
    rng = np.random.default_rng(21)
    n = 0
    for t in range(12):
        nq, ng, dim = int(rng.integers(1, 30)), int(rng.integers(1, 50)), int(rng.integers(1, 24))
        qf, gf = rng.normal(size=(nq, dim)).astype(np.float32), rng.normal(size=(ng, dim)).astype(np.float32)
        if t % 2 == 0:  # exact ties: duplicated gallery features, a query equal to a gallery item
            gf[rng.integers(0, ng, ng // 3)] = gf[0]
            qf[0] = gf[0]
        qp, gp = rng.integers(0, 5, nq), rng.integers(0, 5, ng)
        qc, gc = rng.integers(0, 3, nq) + 9, rng.integers(0, 3, ng)
        q64 = qf.astype(np.float64) / np.linalg.norm(qf.astype(np.float64), axis=1, keepdims=True)
        g64 = gf.astype(np.float64) / np.linalg.norm(gf.astype(np.float64), axis=1, keepdims=True)
        dist = -(q64[:, None, :] * g64[None, :, :]).sum(-1)
        ref = eval_llcm_reference(dist, qp, gp, qc - 9, gc, 20)
        for block in (None, int(rng.integers(4, 4 * ng + 8))):
            kw = dict(backend=backend, block_size=block, remove_same_pid_same_cam=True,
                      physical_camera={9: 0, 10: 1, 11: 2})
            if ref is None:
                with pytest.raises(ValueError, match="no valid query"):
                    evaluate_features(qf, gf, qp, gp, qc, gc, **kw)
                continue
            assert_same(evaluate_features(qf, gf, qp, gp, qc, gc, **kw), ref)
            n += 1
    assert n > 10


@pytest.mark.parametrize(
    "kwargs, match",
    [({"remove_same_pid_same_cam": "yes"}, "remove_same_pid_same_cam"), ({"physical_camera": [1, 2]}, "mapping"),
     ({"physical_camera": {"a": 1}}, "integer camids")],
)
def test_llcm_removal_bad_input(kwargs, match):
    args = {"distmat": np.array([[0.1, 0.2]]), "q_pids": [1], "g_pids": [1, 2], "q_camids": [0], "g_camids": [1, 1],
            "remove_same_pid_same_cam": True}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate(**args)
