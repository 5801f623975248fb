"""Approximate-index settings (vdreid.evaluation.approximate): config keys -> ApproximateSearch -> the faiss index
actually built; IVF lists sized to small galleries without faiss's stderr warning; the settings recorded in the
results' provenance."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from vdreid.errors import EvaluationInputError
from vdreid.evaluation import ApproximateSearch, GalleryIndex, evaluate_features, search
from vdreid.evaluation import approximate as A

pytest.importorskip("faiss")


@pytest.fixture(autouse=True)
def _fresh_notes():
    A._noted.clear()
    yield
    A._noted.clear()


def _feats(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("n", [1, 2, 38, 39, 77, 78, 301, 1000, 10_000, 1_000_000])
def test_auto_nlist_is_the_documented_rule(n):
    expected = max(1, min(n // 39, int(4 * math.sqrt(n))))  # >= 39 training points per list, ~4 sqrt(N) lists
    assert A.auto_nlist(n) == expected
    assert n < 39 or n // A.auto_nlist(n) >= 39


def test_settings_from_every_spelling():
    assert ApproximateSearch.of(None) is None and ApproximateSearch.of("") is None
    assert ApproximateSearch.of("", nlist=5) is None  # exact search: the index settings are not read
    a = ApproximateSearch.of("ivf", nlist=7, nprobe=None)
    assert a == ApproximateSearch("ivf", nlist=7, nprobe=32, hnsw_m=32, ef_search=256)
    assert ApproximateSearch.of({"kind": "hnsw", "ef_search": 64}) == ApproximateSearch("hnsw", ef_search=64)
    assert ApproximateSearch.of(a) is a
    assert ApproximateSearch.of(a, nprobe=3) == ApproximateSearch("ivf", nlist=7, nprobe=3)
    assert hash(a) == hash(ApproximateSearch("ivf", nlist=7))  # frozen: an option of a frozen dataclass
    assert a.settings() == {"kind": "ivf", "nlist": 7, "nprobe": 32}
    assert ApproximateSearch("ivf").settings() == {"kind": "ivf", "nlist": "auto", "nprobe": 32}
    assert ApproximateSearch("hnsw", hnsw_m=8).settings() == {"kind": "hnsw", "hnsw_m": 8, "ef_search": 256}


@pytest.mark.parametrize(("value", "kw", "match"), [
    ("lsh", {}, "approximate must be"),
    ("ivf", {"nprobe": 0}, "nprobe must be an integer >= 1"),
    ("ivf", {"nlist": -1}, "nlist must be an integer >= 0"),
    ("hnsw", {"hnsw_m": 1}, "hnsw_m must be an integer >= 2"),
    ("hnsw", {"ef_search": 2.5}, "ef_search must be an integer"),
    ("ivf", {"probes": 3}, "unknown approximate index settings"),
    ({"kind": "ivf", "lists": 3}, {}, "unknown approximate index settings"),
    (3, {}, "approximate must be None"),
])
def test_bad_settings_are_named(value, kw, match):
    with pytest.raises(EvaluationInputError, match=match):
        ApproximateSearch.of(value, **kw)


def test_the_index_is_built_with_the_settings():
    gf = _feats(600)
    ivf = GalleryIndex(gf, "euclidean", "faiss", ApproximateSearch("ivf", nlist=6, nprobe=2))
    faiss_index = ivf._blocks[0][0]
    assert (faiss_index.nlist, faiss_index.nprobe) == (6, 2)
    assert ivf.params == {"kind": "ivf", "gallery": 600, "nlist": 6, "nprobe": 2}
    auto = GalleryIndex(gf, "cosine", "faiss", "ivf")
    assert auto._blocks[0][0].nlist == 600 // 39 and auto.params["nprobe"] == 600 // 39  # nprobe <= nlist
    hnsw = GalleryIndex(gf, "cosine", "faiss", "hnsw", hnsw_m=5, ef_search=17)
    assert hnsw._blocks[0][0].hnsw.efSearch == 17 and hnsw._blocks[0][0].hnsw.nb_neighbors(1) == 5
    assert hnsw.params == {"kind": "hnsw", "gallery": 600, "hnsw_m": 5, "ef_search": 17}
    res = hnsw.search(_feats(3, seed=1), 4)
    assert res.approximate and res.indexes == (hnsw.params,)
    exact = GalleryIndex(gf, "cosine", "faiss")
    assert exact.params == {} and exact.search(_feats(3, seed=1), 4).indexes == ()


def test_few_probes_of_many_lists_are_approximate_and_all_probes_exact():
    """The settings change the lists: one probe of many lists misses neighbours that every probe finds."""
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(20, 16)) * 4
    gf = (centres[rng.integers(0, 20, 2000)] + rng.normal(size=(2000, 16))).astype(np.float32)
    qf = rng.normal(size=(40, 16)).astype(np.float32) * 3
    ref = search(qf, gf, 20, backend="torch")
    full = search(qf, gf, 20, approximate=ApproximateSearch("ivf", nlist=40, nprobe=40))
    assert np.array_equal(full.indices, ref.indices)
    one = search(qf, gf, 20, approximate=ApproximateSearch("ivf", nlist=40, nprobe=1))
    assert not np.array_equal(one.indices, ref.indices)


def test_small_ivf_galleries_log_once_and_faiss_prints_nothing(capfd, caplog):
    gf = _feats(301)
    with caplog.at_level(logging.INFO, logger="vdreid.evaluation.approximate"):
        for seed in range(3):  # one index per trial / camera group: one log line in all
            GalleryIndex(_feats(20, seed=seed), "cosine", "faiss", "ivf")
        big = GalleryIndex(gf, "cosine", "faiss", "ivf", nlist=50)
        GalleryIndex(gf[:200], "cosine", "faiss", "ivf", nlist=50)
        capped = GalleryIndex(gf[:30], "euclidean", "faiss", "ivf", nlist=50)
    err = capfd.readouterr().err
    assert "WARNING clustering" not in err and "training points" not in err  # faiss's own warning is not printed
    msgs = [r.getMessage() for r in caplog.records]
    levels = {r.getMessage()[:20]: r.levelno for r in caplog.records}
    assert sum("fewer than 39 gallery items: one list" in m for m in msgs) == 1
    assert levels["IVF index over fewer"] == logging.INFO and levels["IVF nlist 50 wants g"] == logging.WARNING
    assert sum("IVF nlist 50 wants galleries of at least 1950 items" in m for m in msgs) == 1
    assert sum("more than the 30 items" in m for m in msgs) == 1
    assert big.params["nlist"] == 50 and capped.params == {"kind": "ivf", "gallery": 30, "nlist": 30, "nprobe": 30}
    # a 20-item gallery has one list: every query scans it, the exact lists
    qf = _feats(5, seed=9)
    small = _feats(20, seed=8)
    assert np.array_equal(search(qf, small, 20, approximate="ivf").indices,
                          search(qf, small, 20, backend="torch").indices)


def test_evaluation_records_the_settings_and_what_was_built():
    rng = np.random.default_rng(6)
    qp, gp = rng.integers(0, 10, 30), rng.integers(0, 10, 200)
    qc, gc = np.full(30, 2), rng.integers(0, 3, 200)
    qf, gf = _feats(30, seed=1), _feats(200, seed=2)
    out = evaluate_features(qf, gf, qp, gp, qc, gc, exclude_cam_pairs=((2, 1),),
                            approximate={"kind": "ivf", "nprobe": 2}, approximate_k=50)
    n = int((gc != 1).sum())
    assert out["approximate"] is True
    assert out["approximate_index"] == {"kind": "ivf", "nlist": "auto", "nprobe": 2,
                                        "built": {"indexes": 1, "gallery": [n, n], "nlist": [n // 39] * 2,
                                                  "nprobe": [2, 2]}}
    assert "approximate_index" not in evaluate_features(qf, gf, qp, gp, qc, gc)


def test_merge_widens_ranges_over_trials():
    one = A.summarize({"kind": "ivf", "nlist": "auto", "nprobe": 32},
                      [{"kind": "ivf", "gallery": 290, "nlist": 7, "nprobe": 7}])
    two = A.summarize({"kind": "ivf", "nlist": "auto", "nprobe": 32},
                      [{"kind": "ivf", "gallery": 312, "nlist": 8, "nprobe": 8},
                       {"kind": "ivf", "gallery": 300, "nlist": 7, "nprobe": 7}])
    assert A.merge([one, two, None]) == {"kind": "ivf", "nlist": "auto", "nprobe": 32,
                                         "built": {"indexes": 3, "gallery": [290, 312], "nlist": [7, 8],
                                                   "nprobe": [7, 8]}}
    assert A.merge([None, None]) is None and A.summarize(None, []) is None


def test_run_protocol_report_and_json_carry_the_settings(sysu_root, tmp_path):
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
    rep = run_protocol(ds.protocol, qf, gf, qp, gp, qc, gc, approximate=ApproximateSearch("hnsw", ef_search=40))
    ai = rep.approximate_index
    assert ai["kind"] == "hnsw" and ai["hnsw_m"] == 32 and ai["ef_search"] == 40
    assert ai["built"]["indexes"] >= ds.protocol.num_trials and ai["built"]["ef_search"] == [40, 40]
    assert "APPROXIMATE" in rep.table() and "ef_search 40" in rep.table()
    d = json.loads(open(rep.to_json(str(tmp_path / "r.json"))).read())
    assert d["approximate"] is True and d["approximate_index"] == json.loads(json.dumps(ai))
    exact = run_protocol(ds.protocol, qf, gf, qp, gp, qc, gc)
    assert exact.approximate_index is None and exact.to_dict()["approximate_index"] is None


def test_config_keys_reach_the_evaluation_options():
    from vdreid import builders
    from vdreid.config import load_config

    cfg = load_config(None, ["test.approximate", "ivf", "test.ivf_nlist", "9", "test.ivf_nprobe", "4",
                             "test.hnsw_m", "12", "test.hnsw_ef_search", "80"])
    approx = builders.engine_kwargs(cfg, training=False)["evaluation"].approximate
    assert approx == ApproximateSearch("ivf", nlist=9, nprobe=4, hnsw_m=12, ef_search=80)
    assert approx.settings() == {"kind": "ivf", "nlist": 9, "nprobe": 4}
    assert builders.engine_kwargs(load_config(None, []), training=False)["evaluation"].approximate is None
    from vdreid.errors import ConfigError

    with pytest.raises(ConfigError, match="test.ivf_nprobe"):
        load_config(None, ["test.ivf_nprobe", "0"])


def test_cli_records_the_index_settings_in_the_results(sysu_root, tmp_path):
    """test.approximate + test.ivf_* on the command line reach the evaluation of a run: the results JSON says
    approximate and holds the settings and the indexes built."""
    import os.path as osp

    from vdreid.cli import main

    quick = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs", "quickstart.yaml")
    common = ["--config-file", quick, "data.root", sysu_root, "model.backbone", "test_resnet", "vd.bottleneck_dims",
              "[32, 32, 16]", "data.height", "32", "data.width", "16", "sampler.num_ids", "4", "data.workers", "0",
              "test.visrank", "false", "data.sysu.num_trials", "2", "train.max_epoch", "1"]
    run = str(tmp_path / "run")
    assert main(["train", *common, "data.save_dir", run, "test.approximate", "ivf", "test.ivf_nlist", "2",
                 "test.ivf_nprobe", "1"]) == 0
    res = json.load(open(osp.join(run, "results_sysu_mm01.json")))
    assert res["approximate"] is True
    ai = res["approximate_index"]
    assert (ai["kind"], ai["nlist"], ai["nprobe"]) == ("ivf", 2, 1)
    assert ai["built"]["indexes"] >= 2 and ai["built"]["nlist"][1] <= 2 and ai["built"]["nprobe"] == [1, 1]
