"""A run on a tree written by `vdreid make-synthetic` is synthetic without any flag, and the leaderboard never ranks
it beside published numbers; an explicit `data.synthetic false` stays possible and is flagged (end to end through
the command line: make-synthetic -> train -> leaderboard with the shipped published numbers)."""

from __future__ import annotations

import csv
import json
import os.path as osp

import pytest
import yaml
from vdreid.cli import main

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICK = osp.join(REPO, "configs", "quickstart.yaml")
#: the quickstart's protocol: the one published AGW-family numbers (MMN, CAJ, AGW, ...) are reported under
PROTOCOL = "sysu/ir2vis/all/single-shot/agw/10 trials"
#: one epoch with timm's ~0.4M-parameter test ResNet at 32x16 (as tests/test_cli_runs.py); 10 gallery draws kept, so
#: the protocol string is the published one
TINY = ["model.backbone", "test_resnet", "vd.bottleneck_dims", "[32, 32, 16]", "data.height", "32", "data.width", "16",
        "sampler.num_ids", "4", "train.max_epoch", "1", "data.workers", "0", "test.visrank", "false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny tree written by `vdreid make-synthetic`; the quickstart without its `data.synthetic: true` line trained
    on it once as is (``plain``) and once with `data.synthetic false` on the command line (``override``)."""
    tmp = tmp_path_factory.mktemp("synthetic_runs")
    root = str(tmp / "data")
    assert main(["make-synthetic", "--layout", "sysu", "--preset", "tiny", "--out", root]) == 0
    quick = yaml.safe_load(open(QUICK))
    assert quick["data"].pop("synthetic") is True  # the shipped quickstart says so itself; this copy does not
    noflag = tmp / "quickstart_noflag.yaml"
    noflag.write_text(yaml.safe_dump(quick))
    out = {"root": root}
    for name, extra in (("plain", []), ("override", ["data.synthetic", "false"])):
        save = str(tmp / name)
        assert main(["train", "--config-file", str(noflag), "data.root", root, "data.save_dir", save, *TINY,
                     *extra]) == 0
        out[name] = save
    return out


def _results(run: str) -> dict:
    return json.load(open(osp.join(run, "results_sysu_mm01.json")))


def test_a_run_on_a_make_synthetic_tree_is_synthetic_without_a_flag(runs):
    res = _results(runs["plain"])
    assert res["protocol"] == PROTOCOL
    assert res["config"]["data"]["synthetic"] is False  # no flag anywhere in the run's config ...
    assert res["synthetic"] is True and res["synthetic_override"] is False  # ... the tree's marker says it


def test_an_explicit_data_synthetic_false_is_recorded_as_an_override(runs):
    res = _results(runs["override"])
    assert res["synthetic"] is False and res["synthetic_override"] is True


def _tables(md: str) -> dict[str, list[str]]:
    """``{table title: [method cell of each row]}`` of a rendered leaderboard."""
    out: dict[str, list[str]] = {}
    for section in md.split("\n## ")[1:]:
        lines = section.splitlines()
        out[lines[0]] = [ln.split(" | ")[1] for ln in lines if ln.startswith("| ") and not ln.startswith("| #")]
    return out


def test_the_leaderboard_never_ranks_a_synthetic_run_beside_published_numbers(runs, tmp_path):
    out = tmp_path / "LB.md"
    # no --published: the shipped published numbers
    assert main(["leaderboard", "--runs", runs["plain"], runs["override"], "--out", str(out)]) == 0
    tables = _tables(out.read_text())
    synthetic = tables["synthetic data: " + PROTOCOL]
    real = tables[PROTOCOL]
    assert len(synthetic) == 1 and synthetic[0].startswith("**ours: test_resnet")
    assert f"(data: {runs['root']})" in synthetic[0]
    assert {"AGW", "CAJ (ICCV'21)", "MMN (ACM MM'21)"} <= set(real)  # the published rows of that protocol ...
    recs = list(csv.DictReader(open(tmp_path / "LB.csv")))
    ours = [r for r in recs if r["kind"] == "ours"]
    assert len(ours) == 2
    plain = next(r for r in ours if r["synthetic"] == "True")
    override = next(r for r in ours if r["synthetic"] == "False")
    # ... never share a table with the synthetic run; the explicit override sits there, flagged
    assert plain["protocol"] == "synthetic data: " + PROTOCOL and plain["flags"] == ""
    assert override["protocol"] == PROTOCOL and "synthetic-override" in override["flags"].split(";")
    assert all(r["protocol"] != plain["protocol"] for r in recs if r["kind"] == "published")
    assert "synthetic-override" in next(ln for ln in out.read_text().splitlines()
                                        if ln.startswith("| ") and "ours: test_resnet" in ln and "(data:" not in ln)


def test_a_results_json_written_before_the_marker_rule_is_read_as_synthetic(runs, tmp_path):
    """A results JSON that says synthetic false (written before runs read the marker) for a dataset folder that still
    holds the marker: synthetic, flagged synthetic-by-marker, in the synthetic table."""
    old = _results(runs["plain"])
    old["synthetic"] = False
    del old["synthetic_override"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results_sysu_mm01.json").write_text(json.dumps(old))
    out = tmp_path / "LB.md"
    assert main(["leaderboard", "--runs", str(tmp_path / "old"), "--out", str(out)]) == 0
    (rec,) = [r for r in csv.DictReader(open(tmp_path / "LB.csv")) if r["kind"] == "ours"]
    assert rec["synthetic"] == "True" and rec["protocol"] == "synthetic data: " + PROTOCOL
    assert rec["flags"].split(";") == ["synthetic-by-marker"]


def test_provenance_reads_the_marker_and_an_explicit_override(sysu_root, tmp_path):
    from vdreid import builders
    from vdreid.config import load_config

    base = ["data.sources", "[sysu_mm01]", "data.targets", "[sysu_mm01]"]
    marked = load_config(None, [*base, "data.root", sysu_root])
    prov = builders.provenance(marked)
    assert prov["synthetic"] is True and prov["synthetic_override"] is False
    assert builders.synthetic_marked_folders(marked) == [osp.join(sysu_root, "SYSU-MM01")]
    # data.synthetic false written explicitly (a file or an override) on a marked tree: real data, recorded as such
    declared = load_config(None, [*base, "data.root", sysu_root, "data.synthetic", "false"])
    prov = builders.provenance(declared)
    assert prov["synthetic"] is False and prov["synthetic_override"] is True
    # the flag alone still marks any root synthetic; on an unmarked root an explicit false is no override
    (tmp_path / "SYSU-MM01").mkdir()
    flagged = load_config(None, [*base, "data.root", str(tmp_path), "data.synthetic", "true"])
    assert builders.provenance(flagged)["synthetic"] is True
    real = load_config(None, [*base, "data.root", str(tmp_path), "data.synthetic", "false"])
    prov = builders.provenance(real)
    assert prov["synthetic"] is False and prov["synthetic_override"] is False
    assert builders.synthetic_marked_folders(real) == []
