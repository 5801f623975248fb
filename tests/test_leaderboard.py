"""Leaderboard: one table per protocol, never ranking different protocols together; RegDB split averaging;
published.yaml holds the spec's numbers."""

from __future__ import annotations

import csv
import json
import os.path as osp

import numpy as np
import pytest
import yaml
from vdreid.tools.leaderboard import (
    LeaderboardError,
    Row,
    build_leaderboard,
    find_results,
    group_by_protocol,
    load_published,
    rank_rows,
    rows_from_results,
)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PUBLISHED = osp.join(REPO, "benchmarks", "published.yaml")


def _result(path, protocol: str, r1: float, mAP: float, **prov) -> str:
    d = {
        "protocol": protocol,
        "protocol_info": {},
        "num_trials": 1,
        "per_trial": [{"R1": r1, "R5": r1, "R10": r1, "R20": r1, "mAP": mAP, "mINP": mAP / 2,
                       "num_valid_queries": 10}],
        "mean": {"R1": r1, "R5": r1, "R10": r1, "R20": r1, "mAP": mAP, "mINP": mAP / 2},
        "std": {"R1": 0.0, "R5": 0.0, "R10": 0.0, "R20": 0.0, "mAP": 0.0, "mINP": 0.0},
        "cmc_mean": [r1] * 20,
        "metric": "cosine",
        "rerank": False,
        "git_commit": "abc123",
        **prov,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return str(path)


def test_rank_rows_refuses_mixed_protocols():
    a = Row("a", "sysu/ir2vis/all/single-shot/agw/10 trials", "ours", {"R1": 50.0})
    b = Row("b", "sysu/ir2vis/all/single-shot/official/10 trials", "published", {"R1": 60.0})
    with pytest.raises(LeaderboardError, match="different protocols"):
        rank_rows([a, b])
    # synthetic data never shares a table with real data, even with the same protocol string
    c = Row("c", a.protocol, "ours", {"R1": 10.0}, synthetic=True)
    with pytest.raises(LeaderboardError):
        rank_rows([a, c])
    assert [r.method for r in rank_rows([a, Row("d", a.protocol, "ours", {"R1": 70.0})])] == ["d", "a"]


def test_markdown_keeps_protocols_in_separate_tables(tmp_path):
    runs = tmp_path / "runs"
    _result(runs / "a" / "results_sysu_mm01.json", "sysu/ir2vis/all/single-shot/agw/10 trials", 55.0, 50.0,
            model="vd_resnet50", recipe="paper", feature_mode="obs_concat")
    _result(runs / "b" / "results_sysu_mm01.json", "sysu/ir2vis/indoor/single-shot/agw/10 trials", 99.0, 90.0,
            model="vd_resnet50", recipe="paper")
    _result(runs / "c" / "results_sysu_mm01.json", "sysu/ir2vis/all/single-shot/agw/10 trials", 33.0, 30.0,
            model="vd_resnet18", recipe="paper", synthetic=True)
    (runs / "a" / "other.json").write_text(json.dumps({"not": "a result"}))  # ignored
    out = tmp_path / "LB.md"
    rows = build_leaderboard([str(runs)], PUBLISHED, str(out), str(tmp_path / "LB.csv"))
    text = out.read_text()
    sections = text.split("\n## ")[1:]
    by_title = {s.splitlines()[0]: s for s in sections}
    all_agw = by_title["sysu/ir2vis/all/single-shot/agw/10 trials"]
    # our 55.0 run sits with the AGW-family published numbers, below CAJ and MMN, and nowhere else
    lines = [ln for ln in all_agw.splitlines() if ln.startswith("| ") and not ln.startswith("| #")]
    methods = [ln.split(" | ")[1] for ln in lines]
    assert methods.index("**ours: vd_resnet50 paper**") == methods.index("LbA (ICCV'21)") + 1
    assert "VD (paper / official code)" not in all_agw  # official-kit draws: another protocol, another table
    assert "VD (paper / official code)" in by_title["sysu/ir2vis/all/single-shot/official/10 trials"]
    assert "ours" not in by_title["sysu/ir2vis/all/single-shot/official/10 trials"]
    assert "synthetic data: sysu/ir2vis/all/single-shot/agw/10 trials" in by_title
    assert "99.00" in by_title["sysu/ir2vis/indoor/single-shot/agw/10 trials"] and "99.00" not in all_agw
    # every table is ranked within itself only
    for table in group_by_protocol(rows).values():
        assert len({r.table_key for r in table}) == 1
    with open(tmp_path / "LB.csv") as f:
        recs = list(csv.DictReader(f))
    ours = [r for r in recs if r["kind"] == "ours" and r["method"].endswith("vd_resnet50 paper")]
    assert {r["protocol"] for r in ours} == {"sysu/ir2vis/all/single-shot/agw/10 trials",
                                             "sysu/ir2vis/indoor/single-shot/agw/10 trials"}


def test_regdb_splits_average_into_one_row(tmp_path):
    r1s = [70.0, 72.0, 74.0, 76.0, 78.0, 80.0, 82.0, 84.0, 86.0, 88.0]
    for t, r1 in enumerate(r1s, 1):
        _result(tmp_path / f"trial{t}" / "results_regdb.json", f"regdb/vis2ir/trial-{t}", r1, r1 - 5,
                model="vd_resnet50", recipe="paper", dataset="regdb", trial=t, config_group="g1",
                config_hash=f"h{t}")
    # another setting's split 1 must not join the average
    _result(tmp_path / "other" / "results_regdb.json", "regdb/vis2ir/trial-1", 10.0, 5.0, model="vd_resnet50",
            recipe="official", dataset="regdb", trial=1, config_group="g2")
    rows = rows_from_results(find_results([str(tmp_path)]))
    (row,) = [r for r in rows if r.recipe == "paper"]
    assert row.protocol == "regdb/vis2ir/10 splits" and row.trials.startswith("10 splits")
    assert row.mean["R1"] == pytest.approx(sum(r1s) / 10)
    assert row.std["R1"] == pytest.approx(float(np.sqrt(np.mean((np.array(r1s) - np.mean(r1s)) ** 2))))
    assert row.mean["mAP"] == pytest.approx(sum(r1s) / 10 - 5)
    (other,) = [r for r in rows if r.recipe == "official"]
    assert other.protocol == "regdb/vis2ir/split 1"
    # the paper-recipe 10-split row shares the table with AGW/CAJ's 10-split numbers, not VD's splits 2..9
    tables = group_by_protocol(rows + load_published(PUBLISHED))
    assert {r.method for r in tables["regdb/vis2ir/10 splits"]} >= {"AGW", "CAJ (ICCV'21)", "ours: vd_resnet50 paper"}
    assert {r.method for r in tables["regdb/vis2ir/splits 2-9"]} == {"VD (paper / official code)"}


def test_bad_results_are_named(tmp_path):
    p = _result(tmp_path / "r.json", "sysu/ir2vis/all/single-shot/agw/10 trials", 150.0, 50.0)
    with pytest.raises(LeaderboardError, match=r"r.json.*R1=150"):
        rows_from_results(find_results([p]))


def test_published_yaml_has_the_spec_numbers():
    data = yaml.safe_load(open(PUBLISHED))
    rows = load_published(PUBLISHED)
    got = {(r.method, r.protocol): r for r in rows}
    vd_all = got[("VD (paper / official code)", "sysu/ir2vis/all/single-shot/official/10 trials")]
    assert vd_all.mean == {"R1": 60.02, "R10": 94.18, "R20": 98.14, "mAP": 58.80}
    vd_in = got[("VD (paper / official code)", "sysu/ir2vis/indoor/single-shot/official/10 trials")]
    assert vd_in.mean == {"R1": 66.05, "R10": 96.59, "R20": 99.38, "mAP": 72.98}
    assert got[("VD (paper / official code)", "regdb/vis2ir/splits 2-9")].mean == {"R1": 73.2, "mAP": 71.6}
    assert got[("VD (paper / official code)", "regdb/ir2vis/splits 2-9")].mean == {"R1": 71.8, "mAP": 70.1}
    assert "regdb-trials-2-9-only" in got[("VD (paper / official code)", "regdb/vis2ir/splits 2-9")].flags
    caj = got[("CAJ (ICCV'21)", "sysu/ir2vis/all/single-shot/agw/10 trials")]
    assert "flip-tta" in caj.flags and caj.mean["R1"] == 69.88
    assert "input-384x192" in got[("MMN (ACM MM'21)", "sysu/ir2vis/all/single-shot/agw/10 trials")].flags
    assert got[("AGW", "sysu/ir2vis/all/single-shot/agw/10 trials")].mean == {"R1": 47.50, "mAP": 47.65, "mINP": 35.30}
    assert got[("DDAG (ECCV'20)", "sysu/ir2vis/indoor/single-shot/agw/10 trials")].mean["mINP"] == 62.61
    assert all(r.source for r in rows)
    t3 = data["ablation_table3"]["rows"]
    assert len(t3) == 12 and t3[12]["v"] == {"R1": 60.02, "mAP": 58.80} and t3[1]["z"] is None


# ------------------------------------------------------------------ directions, LLCM variants, flip-tta


def test_old_protocol_strings_read_as_their_direction_names(tmp_path):
    """Results written before the direction joined the protocol string land in the same tables as new ones."""
    from vdreid.tools.leaderboard import canonical_protocol

    assert canonical_protocol("sysu/all/single-shot/agw/10 trials") == "sysu/ir2vis/all/single-shot/agw/10 trials"
    old_val = "sysu-val/indoor/multi-shot/agw/3 trials"
    assert canonical_protocol(old_val) == "sysu-val/ir2vis/indoor/multi-shot/agw/3 trials"
    assert canonical_protocol("regdb/t2v/trial-3") == "regdb/ir2vis/trial-3"
    for same in ("sysu/vis2ir/all/single-shot/agw/10 trials", "llcm/vis2ir_swapped/deen/10 trials",
                 "regdb/direction-not-stated/10 splits"):
        assert canonical_protocol(same) == same
    _result(tmp_path / "old" / "r.json", "sysu/all/single-shot/agw/10 trials", 40.0, 30.0, model="m")
    _result(tmp_path / "new" / "r.json", "sysu/ir2vis/all/single-shot/agw/10 trials", 41.0, 31.0, model="n")
    rows = rows_from_results(find_results([str(tmp_path)]))
    assert {r.protocol for r in rows} == {"sysu/ir2vis/all/single-shot/agw/10 trials"}
    assert len(rank_rows(rows)) == 2


def test_llcm_tables_directions_and_the_swapped_variant(tmp_path):
    runs = tmp_path / "runs"
    _result(runs / "a" / "r.json", "llcm/ir2vis/deen/10 trials", 50.0, 55.0, model="agw", recipe="agw")
    _result(runs / "b" / "r.json", "llcm/vis2ir/deen/10 trials", 60.0, 61.0, model="agw", recipe="agw")
    _result(runs / "c" / "r.json", "llcm/vis2ir_swapped/deen/10 trials", 64.0, 47.0, model="agw", recipe="agw")
    rows = build_leaderboard([str(runs)], PUBLISHED, str(tmp_path / "LB.md"), str(tmp_path / "LB.csv"))
    tables = group_by_protocol(rows)
    swapped, natural = tables["llcm/vis2ir_swapped/deen/10 trials"], tables["llcm/vis2ir/deen/10 trials"]
    assert {r.method for r in swapped} >= {"AGW", "DEEN (CVPR'23)", "ours: agw agw"}
    assert "AGW" not in {r.method for r in natural} and "DEEN (CVPR'23), paper" in {r.method for r in natural}
    with pytest.raises(LeaderboardError, match="different protocols"):
        rank_rows(swapped + natural)
    ir2vis = {r.method: r for r in tables["llcm/ir2vis/deen/10 trials"]}
    assert ir2vis["AGW"].mean == {"R1": 49.13, "R10": 79.06, "R20": 85.89, "mAP": 55.80}
    assert ir2vis["DEEN (CVPR'23)"].mean == {"R1": 55.52, "R10": 83.88, "R20": 89.98, "mAP": 62.07}
    assert {r.method: r for r in swapped}["AGW"].mean == {"R1": 63.72, "R10": 88.66, "R20": 92.83, "mAP": 47.21}
    assert ir2vis["AGW"].flip is False and ir2vis["DEEN (CVPR'23)"].flip is True
    assert "flip-tta" in ir2vis["DEEN (CVPR'23)"].flags and "selected-on-test" in ir2vis["AGW"].flags
    assert len(tables["llcm/ir2vis/deen/10 trials"]) == 10  # 8 README methods, DEEN's paper number, ours


def test_flip_tta_column_and_flag(tmp_path):
    _result(tmp_path / "plain" / "r.json", "sysu/ir2vis/all/single-shot/agw/10 trials", 50.0, 40.0, model="m")
    _result(tmp_path / "flip" / "r.json", "sysu/ir2vis/all/single-shot/agw/10 trials", 52.0, 41.0, model="m",
            flip=True)
    out = tmp_path / "LB.md"
    rows = build_leaderboard([str(tmp_path)], PUBLISHED, str(out), str(tmp_path / "LB.csv"))
    ours = sorted((r for r in rows if r.kind == "ours"), key=lambda r: r.mean["R1"])
    assert [r.flip for r in ours] == [False, True] and ours[1].flags == ["flip-tta"] and ours[0].flags == []
    text = out.read_text()
    header = next(ln for ln in text.splitlines() if ln.startswith("| # |"))
    col = header.split(" | ").index("flip-tta")
    cells = {ln.split(" | ")[2].split(" ")[0]: ln.split(" | ")[col] for ln in text.splitlines()
             if ln.startswith("| ") and "ours" in ln}
    assert cells == {"52.00": "yes", "50.00": "no"}
    published = [ln.split(" | ")[col] for ln in text.splitlines() if ln.startswith("| ") and "ICCV21_CAJ/README" in ln]
    assert published and set(published) == {"yes"}
    recs = list(csv.DictReader(open(tmp_path / "LB.csv")))
    assert {r["R1_mean"]: r["flip_tta"] for r in recs if r["kind"] == "ours"} == {"52.00": "True", "50.00": "False"}
    # RegDB splits with and without flip are never averaged together
    for t in (1, 2):
        _result(tmp_path / "rg" / f"p{t}.json", f"regdb/vis2ir/trial-{t}", 60.0, 50.0, dataset="regdb", trial=t,
                config_group="g")
        _result(tmp_path / "rg" / f"f{t}.json", f"regdb/vis2ir/trial-{t}", 70.0, 60.0, dataset="regdb", trial=t,
                config_group="g", flip=True)
    regdb = [r for r in rows_from_results(find_results([str(tmp_path / "rg")]))]
    assert sorted((r.flip, r.mean["R1"]) for r in regdb) == [(False, 60.0), (True, 70.0)]


def test_published_flip_contradiction_is_an_error(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"entries": [{"method": "X", "source": "s", "protocol": "llcm/ir2vis/deen/10 trials",
                                                "metrics": {"R1": 1.0}, "flags": ["flip-tta"], "flip": False}]}))
    with pytest.raises(LeaderboardError, match="contradicts"):
        load_published(str(bad))
