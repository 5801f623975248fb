"""Protocol runner, report/JSON, feature extraction, ranked-list pictures and CMC plot.

Per-trial metrics are checked against the spec's AGW restatement (section 3.1) with 1-based SYSU cameras and
the literal rule ``(q_cam == 3) & (g_cam == 2)``, on a synthetic SYSU-MM01 tree (conftest ``sysu_root``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from vdreid import compat
from vdreid.data import SYSUMM01
from vdreid.data.protocol import Protocol
from vdreid.evaluation import (
    EvalReport,
    evaluate_model,
    extract_features,
    plot_cmc,
    provenance_defaults,
    run_protocol,
    save_ranked_lists,
    save_ranked_lists_for_protocol,
)


def eval_sysu_spec(dist, qp, gp, qc, gc, max_rank=20):
    """Spec 3.1 (AGW eval_sysu) with 1-based cameras, stable sort, CMC padded with its last value."""
    rows, aps, inps = [], [], []
    for i in range(len(qp)):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((qc[i] == 3) & (gc[order] == 2))
        ranked = gp[order][keep]
        seen: set = set()
        dedup = [p for p in ranked.tolist() if not (p in seen or seen.add(p))]
        row = list(np.cumsum(np.array(dedup) == qp[i])[:max_rank])
        row += [row[-1]] * (max_rank - len(row))
        hit = ranked == qp[i]
        if not hit.any():
            continue
        rows.append(row)
        pos = np.nonzero(hit)[0]
        aps.append(np.mean((np.arange(len(pos)) + 1) / (pos + 1)))
        inps.append(len(pos) / (pos[-1] + 1))
    return np.sum(rows, 0) / len(rows), np.mean(aps), np.mean(inps)


def neg_cosine(q, g):
    q = q.astype(np.float64) / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    g = g.astype(np.float64) / np.linalg.norm(g.astype(np.float64), axis=1, keepdims=True)
    return -(q[:, None, :] * g[None, :, :]).sum(-1)


@pytest.fixture(scope="module")
def sysu(sysu_root):
    ds = SYSUMM01(sysu_root)
    rng = np.random.default_rng(0)
    qp = np.array([it[1] for it in ds.query])
    gp = np.array([it[1] for it in ds.gallery])
    centers = rng.normal(size=(int(max(qp.max(), gp.max())) + 1, 16))
    qf = (centers[qp] + 1.5 * rng.normal(size=(len(qp), 16))).astype(np.float32)
    gf = (centers[gp] + 1.5 * rng.normal(size=(len(gp), 16))).astype(np.float32)
    qc = np.array([it[2] for it in ds.query])
    gc = np.array([it[2] for it in ds.gallery])
    return ds, qf, gf, qp, gp, qc, gc


def test_run_protocol_per_trial_matches_agw(sysu):
    ds, qf, gf, qp, gp, qc, gc = sysu
    proto = ds.protocol
    rep = run_protocol(proto, qf, gf, qp, gp, qc, gc, backend="torch")
    assert rep.num_trials == proto.num_trials == len(rep.per_trial)
    q = proto.query
    expected = []
    for t, g in enumerate(proto.gallery_trials):
        cmc, mAP, mINP = eval_sysu_spec(neg_cosine(qf[q], gf[g]), qp[q], gp[g], qc[q] + 1, gc[g] + 1)
        got = rep.per_trial[t]
        exp = {"R1": cmc[0], "R5": cmc[4], "R10": cmc[9], "R20": cmc[19], "mAP": mAP, "mINP": mINP}
        for k, v in exp.items():
            assert got[k] == pytest.approx(100 * v, abs=1e-4), (t, k)
        expected.append(exp)
    for k in ("R1", "mAP", "mINP"):
        vals = [100 * e[k] for e in expected]
        assert rep.mean[k] == pytest.approx(np.mean(vals), abs=1e-4)
        assert rep.std[k] == pytest.approx(np.std(vals), abs=1e-4)
    assert rep.rank1 == pytest.approx(rep.mean["R1"])
    assert rep.cmc_mean.shape == (20,) and rep.cmc_mean[0] == pytest.approx(rep.mean["R1"])
    # faiss gives the same report
    rep2 = run_protocol(proto, qf, gf, qp, gp, qc, gc, backend="faiss")
    assert rep2.per_trial == rep.per_trial


def test_report_table_and_atomic_json(sysu, tmp_path):
    ds, qf, gf, qp, gp, qc, gc = sysu
    rep = run_protocol(ds.protocol, qf, gf, qp, gp, qc, gc)
    table = rep.table()
    assert ds.protocol.name in table and "mean" in table and "std" in table
    assert f"{rep.mean['mAP']:.2f}" in table
    path = tmp_path / "out" / "results.json"
    rep.to_json(str(path), feature_mode="cat", seed=3, config_hash="abc", synthetic=True)
    d = json.loads(path.read_text())
    for key in ("protocol", "protocol_info", "num_trials", "per_trial", "mean", "std", "cmc_mean", "metric", "rerank",
                "backend", "version", "git_commit", "machine", "wall_time_s", "feature_mode", "seed", "config_hash"):
        assert key in d, key
    assert d["protocol"] == ds.protocol.name and d["num_trials"] == 10 and d["seed"] == 3
    assert d["protocol_info"]["exclude_cam_pairs"] == [[2, 1]]
    assert set(d["per_trial"][0]) == {"R1", "R5", "R10", "R20", "mAP", "mINP", "num_valid_queries"}
    assert d["mean"]["R1"] == pytest.approx(rep.mean["R1"])
    assert len(d["cmc_mean"]) == 20
    assert os.listdir(path.parent) == ["results.json"]  # no temporary file left behind
    prov = provenance_defaults()
    assert {"version", "git_commit", "machine"} <= set(prov) and prov["machine"]["cpu_count"] >= 1


def test_run_protocol_bad_indices(sysu):
    ds, qf, gf, qp, gp, qc, gc = sysu
    bad = Protocol("x", np.array([0, 1]), [np.array([0, len(gf)])], ((2, 1),), "dedup")
    with pytest.raises(ValueError, match="gallery trial 0 indexes outside"):
        run_protocol(bad, qf, gf, qp, gp, qc, gc)
    with pytest.raises(ValueError, match="g_pids has shape"):
        run_protocol(ds.protocol, qf, gf, qp, gp[:-1], qc, gc)


class _ModalityNet(torch.nn.Module):
    """Adds 100 to the features of infrared images, so the test can see which flag each image received."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 4)

    def forward(self, x, modality=None):
        f = self.lin(x.flatten(1)[:, :6])
        return f + 100.0 * modality.float()[:, None]


class _PlainNet(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :5] * 2.0


def _batches(n, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 3, 4, 2, generator=g)
    cams = torch.tensor([i % 6 for i in range(n)])
    out = []
    for i in range(0, n, bs):
        sl = slice(i, i + bs)
        out.append({"img": imgs[sl], "pid": torch.arange(n)[sl], "camid": cams[sl],
                    "impath": [f"p{j}.jpg" for j in range(i, min(n, i + bs))]})
    return imgs, cams, out


def test_extract_features_modality_and_order():
    imgs, cams, loader = _batches(10)
    net = _ModalityNet()
    net.train()
    f, pids, camids, paths = extract_features(net, loader, ir_camids={2, 5})
    assert net.training  # restored
    with torch.no_grad():
        expected = net.lin(imgs.flatten(1)[:, :6]) + 100.0 * torch.isin(cams, torch.tensor([2, 5]))[:, None].float()
    torch.testing.assert_close(f, expected)
    assert f.dtype == torch.float32 and pids.tolist() == list(range(10)) and camids.tolist() == cams.tolist()
    assert paths == [f"p{j}.jpg" for j in range(10)]
    f2, *_ = extract_features(_PlainNet(), loader)
    torch.testing.assert_close(f2, imgs.flatten(1)[:, :5] * 2.0)
    with pytest.raises(ValueError, match="no batches"):
        extract_features(_PlainNet(), [])


def test_evaluate_model_equals_run_protocol():
    _, _, qloader = _batches(12, seed=1)
    _, _, gloader = _batches(9, seed=2)
    for b in gloader:  # gallery ids 0..8 on visible cameras, queries on 2 / 5
        b["camid"] = b["camid"] % 2
    for b in qloader:
        b["pid"] = b["pid"] % 9
        b["camid"] = torch.where(b["pid"] % 2 == 0, 2, 5)
    proto = Protocol("toy", np.arange(12), [np.arange(9), np.array([0, 2, 4, 6, 8, 1])], ((2, 1),), "dedup")
    net = _PlainNet()
    rep = evaluate_model(net, qloader, gloader, proto, ir_camids={2, 5})
    qf, qp, qc, _ = extract_features(net, qloader)
    gf, gp, gc, _ = extract_features(net, gloader)
    rep2 = run_protocol(proto, qf, gf, qp, gp, qc, gc)
    assert isinstance(rep, EvalReport) and rep.per_trial == rep2.per_trial
    assert rep.wall_time_s > 0


def test_save_ranked_lists_unique_names_and_exclusion(sysu, tmp_path, monkeypatch):
    ds, qf, gf, qp, gp, qc, gc = sysu
    names = [os.path.basename(it[0]) for it in ds.query]
    assert len(set(names)) < len(names)  # SYSU file names repeat across camera folders
    g = ds.protocol.gallery_trials[0]
    gallery = [ds.gallery[i] for i in g]
    dist = neg_cosine(qf, gf[g])
    seen = {}
    original = compat.visualize_ranked_results

    def spy(distmat, dataset, *a, **kw):
        seen["distmat"] = distmat.copy()
        return original(distmat, dataset, *a, **kw)

    monkeypatch.setattr(compat, "visualize_ranked_results", spy)
    out = save_ranked_lists(dist, ds.query, gallery, str(tmp_path / "ranks"), topk=5,
                            exclude_cam_pairs=((2, 1),))
    files = sorted(os.listdir(tmp_path / "ranks"))
    assert len(files) == len(ds.query) == len(out) and all(os.path.isfile(p) for p in out)
    shown = seen["distmat"]
    gcam = np.array([it[2] for it in gallery])
    for i, it in enumerate(ds.query):
        if it[2] == 2:  # cam3 query: every cam2 gallery item pushed past the end
            assert np.all(np.isinf(shown[i, gcam == 1]))
        finite = np.isfinite(shown[i])
        # the visible order is the stable order of the real distances
        assert list(np.argsort(shown[i][finite])) == list(np.argsort(dist[i][finite], kind="stable"))
    with pytest.raises(ValueError, match="distmat has shape"):
        save_ranked_lists(dist[:, :3], ds.query, gallery, str(tmp_path / "x"))


def test_ranked_lists_for_protocol_trial0(sysu, tmp_path):
    ds, qf, gf, *_ = sysu
    out = save_ranked_lists_for_protocol(ds.protocol, qf, gf, ds.query, ds.gallery, str(tmp_path / "r"), topk=3,
                                         max_queries=7)
    assert len(out) == 7 and len(os.listdir(tmp_path / "r")) == 7
    with pytest.raises(ValueError, match="trial must be"):
        save_ranked_lists_for_protocol(ds.protocol, qf, gf, ds.query, ds.gallery, str(tmp_path / "r"), trial=10)


def test_plot_cmc(tmp_path):
    path = plot_cmc({"a": np.linspace(0.2, 0.9, 20), "b": np.linspace(30, 80, 20)}, str(tmp_path / "p" / "cmc.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="NaN"):
        plot_cmc({"a": np.array([0.1, np.nan])}, str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="at least one curve"):
        plot_cmc({}, str(tmp_path / "bad.png"))


def test_cmc_percent_is_the_one_conversion(tmp_path, monkeypatch):
    """Fractions are scaled once, percent curves never (even a poor one whose values are all <= 1 percent); the
    report's curve is percent, and EvalReport.plot_cmc / tools.plot_cmc_runs draw through evaluation.plot_cmc."""
    from vdreid.evaluation import evaluator, visualize
    from vdreid.tools import plots

    np.testing.assert_array_equal(visualize.cmc_percent([0.25, 0.5]), [25.0, 50.0])  # guessed: fractions
    np.testing.assert_array_equal(visualize.cmc_percent([25.0, 50.0]), [25.0, 50.0])
    np.testing.assert_array_equal(visualize.cmc_percent([0.25, 0.5], percent=True), [0.25, 0.5])
    np.testing.assert_array_equal(visualize.cmc_percent([0.25, 0.5], percent=False), [25.0, 50.0])
    with pytest.raises(ValueError, match="empty"):
        visualize.cmc_percent([])
    drawn = []

    def spy(curves, path, title="CMC", percent=None):
        drawn.append({k: visualize.cmc_percent(v, percent) for k, v in curves.items()})
        return path

    monkeypatch.setattr(evaluator, "plot_cmc", spy)
    monkeypatch.setattr(plots, "plot_cmc", spy)
    per_trial = [{"R1": 0.1, "R5": 0.3, "R10": 0.5, "R20": 0.9, "mAP": 0.2, "mINP": 0.1, "num_valid_queries": 5}]
    rep = EvalReport("p", {}, per_trial, [np.linspace(0.001, 0.009, 20)])  # fractions: 0.1 .. 0.9 percent
    rep.plot_cmc(str(tmp_path / "a.png"))
    np.testing.assert_allclose(drawn[-1]["p"], np.linspace(0.1, 0.9, 20))  # not scaled a second time
    plots.plot_cmc_runs({"run": list(rep.cmc_mean)}, str(tmp_path / "b.png"), percent=True)
    np.testing.assert_allclose(drawn[-1]["run"], np.linspace(0.1, 0.9, 20))


# ------------------------------------------------------------------ flip test-time augmentation, protocol eval_kwargs


class _AsymNet(torch.nn.Module):
    """A linear map of the whole image: its features change when the image is mirrored."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3 * 4 * 2, 5)

    def forward(self, x, modality=None):
        f = self.lin(x.flatten(1))
        return f if modality is None else f + 3.0 * modality.float()[:, None]


def test_extract_features_flip_sums_the_normalised_views():
    imgs, cams, loader = _batches(10)
    net = _AsymNet()
    f, *_ = extract_features(net, loader, ir_camids={2, 5}, flip=True)
    x = imgs.numpy()
    w, b = net.lin.weight.detach().numpy().astype(np.float64), net.lin.bias.detach().numpy().astype(np.float64)
    ir = np.isin(cams.numpy(), [2, 5])[:, None] * 3.0
    f1 = x.reshape(10, -1) @ w.T + b + ir
    f2 = x[:, :, :, ::-1].reshape(10, -1) @ w.T + b + ir  # mirrored along the width
    expected = f1 / np.linalg.norm(f1, axis=1, keepdims=True) + f2 / np.linalg.norm(f2, axis=1, keepdims=True)
    np.testing.assert_allclose(f.numpy(), expected, rtol=1e-5, atol=1e-6)
    plain, *_ = extract_features(net, loader, ir_camids={2, 5})
    np.testing.assert_allclose(plain.numpy(), f1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_flip_sum_and_mean_rank_identically(metric):
    """Sum and mean of the normalised views differ by a factor 1/2 for every image: the same rankings; under the
    cosine metric CAJ's re-normalised mean is the same computation too."""
    from vdreid.evaluation import evaluate_features

    rng = np.random.default_rng(2)
    qp, gp = rng.integers(0, 6, 30), rng.integers(0, 6, 40)

    def tta(n):
        a, b = rng.normal(size=(n, 12)), rng.normal(size=(n, 12))
        return a / np.linalg.norm(a, axis=1, keepdims=True) + b / np.linalg.norm(b, axis=1, keepdims=True)

    qs, gs = tta(30), tta(40)
    kw = dict(metric=metric, backend="torch")
    res_sum = evaluate_features(qs, gs, qp, gp, np.zeros(30, int), np.ones(40, int), **kw)
    res_mean = evaluate_features(qs / 2, gs / 2, qp, gp, np.zeros(30, int), np.ones(40, int), **kw)
    np.testing.assert_array_equal(res_sum["cmc"], res_mean["cmc"])
    assert res_sum["mAP"] == pytest.approx(res_mean["mAP"], abs=1e-12)
    if metric == "cosine":
        caj_q = qs / np.linalg.norm(qs, axis=1, keepdims=True)
        caj_g = gs / np.linalg.norm(gs, axis=1, keepdims=True)
        res_caj = evaluate_features(caj_q, caj_g, qp, gp, np.zeros(30, int), np.ones(40, int), **kw)
        np.testing.assert_array_equal(res_sum["cmc"], res_caj["cmc"])
        assert res_sum["mAP"] == pytest.approx(res_caj["mAP"], abs=1e-12)


def test_flip_is_recorded_in_report_table_and_json(tmp_path):
    _, _, qloader = _batches(12, seed=1)
    _, _, gloader = _batches(9, seed=2)
    for b in qloader:
        b["pid"] = b["pid"] % 9
    proto = Protocol("toy/ir2vis", np.arange(12), [np.arange(9)], (), "dedup")
    net = _AsymNet()
    rep = evaluate_model(net, qloader, gloader, proto, flip=True)
    assert rep.flip and "flip=True" in rep.table()
    d = json.load(open(rep.to_json(str(tmp_path / "r.json"))))
    assert d["flip"] is True
    qf, qp, qc, _ = extract_features(net, qloader, flip=True)
    gf, gp, gc, _ = extract_features(net, gloader, flip=True)
    assert run_protocol(proto, qf, gf, qp, gp, qc, gc, flip=True).per_trial == rep.per_trial
    plain = evaluate_model(net, qloader, gloader, proto)
    assert plain.flip is False and plain.to_dict()["flip"] is False


def test_run_protocol_takes_the_protocol_eval_kwargs_and_per_trial_queries():
    """The runner passes protocol.eval_kwargs() (here the LLCM rule with a camera map) and the per-trial queries."""
    from llcm_reference import eval_llcm_reference

    rng = np.random.default_rng(8)
    nq, ng = 40, 30
    qf, gf = rng.normal(size=(nq, 6)), rng.normal(size=(ng, 6))
    qp, gp = rng.integers(0, 5, nq), rng.integers(0, 5, ng)
    qc, gc = rng.integers(0, 3, nq) + 9, rng.integers(0, 3, ng)  # queries on camids 9..11 = cameras 0..2
    qtrials = [np.sort(rng.choice(nq, 15, replace=False)) for _ in range(3)]
    proto = Protocol("toy/vis2ir-swapped", np.unique(np.concatenate(qtrials)), [np.arange(ng)] * 3, (), "dedup",
                     remove_same_pid_same_cam=True, physical_camera={9: 0, 10: 1, 11: 2}, query_trials=qtrials)
    assert proto.eval_kwargs() == {"cmc_mode": "dedup", "exclude_cam_pairs": (), "remove_same_pid_same_cam": True,
                                   "physical_camera": {9: 0, 10: 1, 11: 2}}
    rep = run_protocol(proto, qf, gf, qp, gp, qc, gc)
    assert rep.protocol_info["remove_same_pid_same_cam"] and rep.protocol_info["query_sizes"] == [15, 15, 15]
    for t, q in enumerate(qtrials):
        dist = neg_cosine(qf[q], gf)
        cmc, mAP, mINP, nvalid = eval_llcm_reference(dist, qp[q], gp, qc[q] - 9, gc, 20)
        assert rep.per_trial[t]["R1"] == pytest.approx(100 * cmc[0], abs=1e-9)
        assert rep.per_trial[t]["mAP"] == pytest.approx(100 * mAP, abs=1e-9)
        assert rep.per_trial[t]["mINP"] == pytest.approx(100 * mINP, abs=1e-9)
        assert rep.per_trial[t]["num_valid_queries"] == nvalid
    with pytest.raises(ValueError, match="query trials"):
        Protocol("x", np.arange(3), [np.arange(3)], query_trials=[np.arange(2), np.arange(1)])
    with pytest.raises(ValueError, match="every index of query_trials"):
        Protocol("x", np.arange(3), [np.arange(3)], query_trials=[np.arange(5)])
