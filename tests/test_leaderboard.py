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
    from vdreid.data.registry import canonical_protocol

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


# ------------------------------------------------------------------ seeds: one row per setting, mean ± std over seeds

SYSU_ALL = "sysu/ir2vis/all/single-shot/agw/10 trials"


def _seeded(path, seed: int, r1_trials: list[float], map_trials: list[float], protocol: str = SYSU_ALL,
            sampler_seed: int | None = None, root: str = "datasets/synthetic", num_query: int = 284, **prov) -> str:
    """A results JSON as `vdreid train` writes it: per-trial metrics, their mean/std, the config with both seeds."""
    per = [{"R1": a, "R5": a, "R10": a, "R20": a, "mAP": b, "mINP": b / 2, "num_valid_queries": 10}
           for a, b in zip(r1_trials, map_trials)]
    keys = ("R1", "R5", "R10", "R20", "mAP", "mINP")
    d = {
        "protocol": protocol,
        "protocol_info": {"num_query": num_query, "gallery_sizes": [112] * len(per)},
        "num_trials": len(per),
        "per_trial": per,
        "mean": {k: float(np.mean([t[k] for t in per])) for k in keys},
        "std": {k: float(np.std([t[k] for t in per])) for k in keys},
        "rerank": False,
        "git_commit": f"c{seed}" + "0" * 12,
        "model": "agw_resnet18",
        "method": "agw",
        "feature_mode": "bn",
        "synthetic": True,
        "seed": seed,
        "seed_group": "sg1",
        "config_group": f"cg{seed}",
        "selection": "final",
        "config": {"train": {"seed": seed}, "sampler": {"seed": seed if sampler_seed is None else sampler_seed},
                   "data": {"root": root}},
        **prov,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return str(path)


def _pop_std(values: list[float]) -> float:
    """Population standard deviation written out from its definition (independent of numpy)."""
    m = sum(values) / len(values)
    return (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5


def test_three_seeds_make_one_row_mean_of_means_and_seed_std(tmp_path):
    runs = tmp_path / "runs"
    trials = {0: ([40.0, 42.0, 44.0], [50.0, 51.0, 52.0]),
              1: ([34.0, 34.0, 40.0], [45.0, 45.0, 45.0]),
              2: ([50.0, 47.0, 47.0], [60.0, 58.0, 62.0])}
    for seed, (r1, m) in trials.items():
        _seeded(runs / f"agw_seed{seed}" / "results_sysu_mm01.json", seed, r1, m)
    rows = rows_from_results(find_results([str(runs)]))
    assert len(rows) == 1
    (row,) = rows
    run_r1 = [sum(r1) / 3 for r1, _ in trials.values()]
    run_map = [sum(m) / 3 for _, m in trials.values()]  # 51, 45, 60
    assert run_r1 == [42.0, 36.0, 48.0]
    assert row.mean["R1"] == pytest.approx(sum(run_r1) / 3)
    assert row.std["R1"] == pytest.approx(_pop_std(run_r1))  # the spread of the seeds, not of the gallery draws
    assert row.mean["R1"] == 42.0 and row.std["R1"] == pytest.approx(24 ** 0.5)  # by hand: (0 + 36 + 36) / 3 = 24
    assert row.mean["mAP"] == pytest.approx(52.0) and row.std["mAP"] == pytest.approx(_pop_std(run_map))
    assert row.mean["mINP"] == pytest.approx(26.0)
    assert row.seeds == ["0", "1", "2"] and row.trials == "3 seeds (0,1,2) × 3 trials"
    assert row.commit == "c000000000,c100000000,c200000000"
    assert row.source.endswith("runs/{agw_seed0,agw_seed1,agw_seed2}/results_sysu_mm01.json")
    out = tmp_path / "LB.md"
    build_leaderboard([str(runs)], None, str(out), str(tmp_path / "LB.csv"))
    line = next(ln for ln in out.read_text().splitlines() if "ours: agw_resnet18" in ln)
    assert f"{sum(run_r1) / 3:.2f} ± {_pop_std(run_r1):.2f}" in line and "3 seeds (0,1,2)" in line
    (rec,) = list(csv.DictReader(open(tmp_path / "LB.csv")))
    assert rec["seeds"] == "0;1;2" and rec["R1_std"] == f"{_pop_std(run_r1):.2f}"


def test_seed_rows_never_mix_protocols_flip_approximate_or_test_sets(tmp_path):
    from vdreid.tools.leaderboard import FLIP_FLAG as FLIP_TTA

    runs = tmp_path / "runs"
    base = ([40.0, 40.0], [50.0, 50.0])
    for seed in (0, 1):
        _seeded(runs / f"a{seed}" / "r.json", seed, *base)
        # the same setting on the indoor protocol: its own table
        _seeded(runs / f"in{seed}" / "r.json", seed, [90.0, 90.0], [80.0, 80.0],
                protocol="sysu/ir2vis/indoor/single-shot/agw/10 trials")
        # flip test-time augmentation, an approximate index, another synthetic tree, another test-set size
        _seeded(runs / f"f{seed}" / "r.json", seed, [60.0, 60.0], [61.0, 61.0], flip=True)
        _seeded(runs / f"x{seed}" / "r.json", seed, [20.0, 20.0], [21.0, 21.0], approximate=True)
        _seeded(runs / f"t{seed}" / "r.json", seed, [10.0, 10.0], [11.0, 11.0], root="datasets/other_tree")
        _seeded(runs / f"q{seed}" / "r.json", seed, [5.0, 5.0], [6.0, 6.0], num_query=500)
    rows = rows_from_results(find_results([str(runs)]))
    assert len(rows) == 6 and all(r.seeds == ["0", "1"] for r in rows)
    by_r1 = {r.mean["R1"]: r for r in rows}
    assert sorted(by_r1) == [5.0, 10.0, 20.0, 40.0, 60.0, 90.0]  # no row averages two settings
    assert by_r1[90.0].protocol == "sysu/ir2vis/indoor/single-shot/agw/10 trials"
    assert by_r1[60.0].flip is True and FLIP_TTA in by_r1[60.0].flags and FLIP_TTA not in by_r1[40.0].flags
    assert "approx-search" in by_r1[20.0].flags and "approx-search" not in by_r1[40.0].flags
    # synthetic rows name their tree: two trees are two test sets sharing one table title
    assert by_r1[10.0].method == "ours: agw_resnet18 (data: datasets/other_tree)"
    assert by_r1[40.0].method == "ours: agw_resnet18 (data: datasets/synthetic)"


def test_a_single_seed_and_results_without_seed_group_stay_rows_of_their_own(tmp_path):
    runs = tmp_path / "runs"
    _seeded(runs / "one" / "r.json", 3, [40.0, 44.0], [50.0, 50.0])
    # written before seed_group existed: two seeds of one setting are two rows, as before
    for seed in (0, 1):
        p = runs / f"old{seed}" / "r.json"
        _seeded(p, seed, [20.0 + seed, 22.0 + seed], [30.0, 30.0], model="vd_resnet18")
        d = json.loads(p.read_text())
        del d["seed_group"]
        p.write_text(json.dumps(d))
    rows = rows_from_results(find_results([str(runs)]))
    assert len(rows) == 3 and all(r.seeds == [] for r in rows)
    one = next(r for r in rows if r.model == "agw_resnet18")
    assert one.trials == "2 trials" and one.mean["R1"] == 42.0 and one.std["R1"] == pytest.approx(2.0)


def test_a_seed_evaluated_twice_counts_once_newest_file(tmp_path):
    import os

    runs = tmp_path / "runs"
    _seeded(runs / "s0" / "r.json", 0, [40.0], [50.0])
    old = _seeded(runs / "s1_old" / "r.json", 1, [10.0], [10.0])
    new = _seeded(runs / "s1_new" / "r.json", 1, [20.0], [30.0])
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    (row,) = rows_from_results(find_results([str(runs)]))
    assert row.seeds == ["0", "1"] and row.mean["R1"] == pytest.approx(30.0) and row.std["R1"] == pytest.approx(10.0)
    # sampler seed differing from train seed is another seed pair, labelled train/sampler
    _seeded(runs / "s2" / "r.json", 1, [60.0], [60.0], sampler_seed=7)
    (row,) = rows_from_results(find_results([str(runs)]))
    assert row.seeds == ["0", "1", "1/7"] and row.mean["R1"] == pytest.approx(40.0)


def test_regdb_seeds_of_complete_split_sets_average_their_split_means(tmp_path):
    runs = tmp_path / "runs"
    split_r1 = {0: [70.0 + 2 * t for t in range(10)], 1: [60.0 + t for t in range(10)]}
    for seed, r1s in split_r1.items():
        for t, r1 in enumerate(r1s, 1):
            _seeded(runs / f"s{seed}_t{t}" / "results_regdb.json", seed, [r1], [r1 - 5],
                    protocol=f"regdb/vis2ir/trial-{t}", dataset="regdb", trial=t, synthetic=False,
                    model="vd_resnet50", method="vd", recipe="paper")
    # a third seed with split 1 only: a one-split row of its own, never in the 10-split average
    _seeded(runs / "s2_t1" / "results_regdb.json", 2, [1.0], [1.0], protocol="regdb/vis2ir/trial-1", dataset="regdb",
            trial=1, synthetic=False, model="vd_resnet50", method="vd", recipe="paper")
    rows = rows_from_results(find_results([str(runs)]))
    ten = next(r for r in rows if r.protocol == "regdb/vis2ir/10 splits")
    means = [sum(v) / 10 for v in split_r1.values()]  # 79.0, 64.5
    assert ten.mean["R1"] == pytest.approx(sum(means) / 2)
    assert ten.std["R1"] == pytest.approx(_pop_std(means)) and ten.std["R1"] == pytest.approx(7.25)
    assert ten.mean["mAP"] == pytest.approx(sum(means) / 2 - 5)
    assert ten.seeds == ["0", "1"] and ten.trials.startswith("2 seeds (0,1) × 10 splits")
    (single,) = [r for r in rows if r.protocol == "regdb/vis2ir/split 1"]
    assert single.mean["R1"] == 1.0 and single.seeds == []
    assert len(rows) == 2


def test_provenance_seed_group_ignores_only_seeds_and_the_regdb_split():
    from vdreid import builders
    from vdreid.config import get_default_config

    def prov(**changes):
        cfg = get_default_config()
        for key, value in changes.items():
            node = cfg
            *parents, leaf = key.split("__")
            for p in parents:
                node = node[p]
            node[leaf] = value
        return builders.provenance(cfg)

    base = prov()
    seeded = prov(train__seed=7, sampler__seed=9)
    split = prov(data__regdb__trial=4)
    assert seeded["seed_group"] == base["seed_group"] == split["seed_group"]
    assert seeded["config_group"] != base["config_group"] and seeded["config_hash"] != base["config_hash"]
    assert split["config_group"] == base["config_group"]
    assert prov(train__lr=0.5)["seed_group"] != base["seed_group"]
    assert prov(test__flip=True)["seed_group"] != base["seed_group"]


def test_runs_selected_on_the_test_set_are_flagged(tmp_path):
    """The trainer records a test-selected run as selection 'test-selected (...)' and selected_on_test: the
    leaderboard flags it, and a final-epoch run stays unflagged."""
    proto = "sysu/ir2vis/all/single-shot/agw/10 trials"
    _result(tmp_path / "final" / "r.json", proto, 50.0, 40.0, model="m", selection="final")
    _result(tmp_path / "test" / "r.json", proto, 55.0, 45.0, model="m2", selected_on_test=True,
            selection="test-selected (optimistic: chosen on the test set)")
    rows = {r.mean["R1"]: r for r in rows_from_results(find_results([str(tmp_path)]))}
    assert rows[55.0].flags == ["selected-on-test"] and rows[50.0].flags == []


# ------------------------------------------------------------------ synthetic data and published numbers


def test_synthetic_rows_never_share_a_table_with_published_numbers():
    proto = "sysu/ir2vis/all/single-shot/agw/10 trials"
    ours = Row("ours", proto, "ours", {"R1": 90.0}, synthetic=True)
    published = Row("AGW", proto, "published", {"R1": 47.5})
    assert ours.table_key == "synthetic data: " + proto and published.table_key == proto
    with pytest.raises(LeaderboardError, match="different protocols"):
        rank_rows([ours, published])
    # the rule holds even for a row built by hand with a synthetic published number: never ranked beside ours
    odd = Row("X", proto, "published", {"R1": 50.0}, synthetic=True)
    with pytest.raises(LeaderboardError, match="beside published numbers"):
        rank_rows([ours, odd])
    tables = group_by_protocol([ours, published] + load_published(PUBLISHED))
    assert [r.kind for r in tables["synthetic data: " + proto]] == ["ours"]
    assert all(not r.synthetic for t, rows in tables.items() if not t.startswith("synthetic") for r in rows)


def test_results_that_said_real_data_on_a_marked_tree_are_synthetic(tmp_path):
    """Results JSON written before runs read the synthetic marker say synthetic false: the dataset folder they record
    (protocol_info.root, or data.root + the family's folder) decides, flagged synthetic-by-marker."""
    from vdreid.data.synthetic_layout import MARKER
    from vdreid.tools.leaderboard import MARKER_FLAG, OVERRIDE_FLAG, synthetic_status

    proto = "sysu/ir2vis/all/single-shot/agw/10 trials"
    marked, unmarked = tmp_path / "marked", tmp_path / "real"
    for root in (marked, unmarked):
        (root / "SYSU-MM01").mkdir(parents=True)
    (marked / "SYSU-MM01" / MARKER).write_text("{}")
    runs = tmp_path / "runs"
    # protocol_info.root: the evaluator's dataset folder
    _result(runs / "a" / "r.json", proto, 80.0, 70.0, model="m1", synthetic=False,
            protocol_info={"root": str(marked / "SYSU-MM01")})
    # no protocol_info.root: the recorded config's data.root + the target family's folder
    _result(runs / "b" / "r.json", proto, 81.0, 71.0, model="m2", synthetic=False, dataset="sysu_mm01",
            config={"data": {"root": str(marked), "targets": ["sysu_mm01"]}})
    # a real tree: stays real, unflagged
    _result(runs / "c" / "r.json", proto, 40.0, 30.0, model="m3", synthetic=False,
            protocol_info={"root": str(unmarked / "SYSU-MM01")}, config={"data": {"root": str(unmarked)}})
    # an explicit override on a marked tree: real data, flagged, beside the published numbers
    _result(runs / "d" / "r.json", proto, 41.0, 31.0, model="m4", synthetic=False, synthetic_override=True,
            protocol_info={"root": str(marked / "SYSU-MM01")})
    rows = {r.model: r for r in rows_from_results(find_results([str(runs)]))}
    assert rows["m1"].synthetic and rows["m1"].flags == [MARKER_FLAG]
    assert rows["m2"].synthetic and rows["m2"].flags == [MARKER_FLAG]
    assert rows["m2"].method == f"ours: m2 (data: {marked})"
    assert not rows["m3"].synthetic and rows["m3"].flags == []
    assert not rows["m4"].synthetic and rows["m4"].flags == [OVERRIDE_FLAG]
    tables = group_by_protocol(list(rows.values()) + load_published(PUBLISHED))
    assert {r.model for r in tables["synthetic data: " + proto]} == {"m1", "m2"}
    assert {r.model for r in tables[proto] if r.kind == "ours"} == {"m3", "m4"}
    assert synthetic_status({"synthetic": True}) == (True, [])
    assert synthetic_status({"synthetic": False, "protocol_info": {"root": str(tmp_path / "gone")}}) == (False, [])
