"""The term table of VD's objective (vdreid.losses.terms): every shipped recipe trains exactly the objective it
trained before the table existed; stored configs of older versions load; Table 3's switches follow each term's
declared needs; one place resolves the recipes' defaults; and a term from outside the package
(tests/plugins/example_term.py, the hetero-centre loss) registers itself, appears in the default config, is switched
on by a config weight, changes the loss and trains (docs/adding-a-loss.md)."""

from __future__ import annotations

import glob
import json
import math
import os
import os.path as osp
import re
import runpy
import subprocess
import sys

import pytest
import torch
import yaml
from test_losses_composite import DV, DZ, C, make_out
from vdreid.config import ConfigError, get_default_config, load_config, merge_dict
from vdreid.losses import (
    Needs,
    TermOption,
    VDLoss,
    VDLossConfig,
    get_term,
    register_term,
    resolve_objective,
    term_names,
    unregister_term,
)
from vdreid.methods import get as get_method

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
EXAMPLE_TERM = osp.join(ROOT, "tests", "plugins", "example_term.py")
BUILTIN = ("ce", "metric", "dml", "cml", "vsd", "vcd", "vml", "ib")

# ------------------------------------------------------------------------------------------------ shipped recipes
# What every shipped VD recipe trained with before the term table, read from the code of commit 75a3b3d (its
# VD.loss_config and VDLoss, run over configs/**/*.yaml at that commit): per recipe file, its routing; its forms
# ("paper": metric ranked_list, VSD in true-KL form, VCD Eq. 15 as printed ('views'); "official": metric
# official_rank and the released code's kl_div form of VSD and VCD); the effective weights (beta applied) of
# (ce, metric, dml, cml, vsd, vcd, vml, ib); the CE/metric branch weights of (ir, vis, shared_gray, shared_x); and
# the weighted terms that commit's VDLoss computed on make_out(routing, seed=21) of tests/test_losses_composite.py
# (float64; torch.manual_seed(0) before building the criterion, which draws the IB critics' weights, and 1 before
# calling it, which draws the IB's marginal permutations). Every recipe shares label smoothing 0.1, triplet margin 0.3,
# ranked-list alpha 1.2 / margin 0.4 / T_n 10, official rank alphas 2.2 / 2.0 and margins 0.9 / 1.0, Sinkhorn eps
# 0.01 with at most 100 plain iterations, IB critics 512 wide, beta 2, T 1, detached teachers.
SHIPPED = {
    "ablation/_base.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524}),
    "ablation/row01_es.yaml": (
        "modality", "paper", (1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.25, 0.25),
        {"ce": 3.3318032203367114, "metric": 1.0225240459677456}),
    "ablation/row02_ei_ev.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.0, 0.0),
        {"ce": 5.784711766709651, "metric": 1.475575560374954, "dml": 28.592118317456524}),
    "ablation/row03_es_ei_ev.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524}),
    "ablation/row04_es_bs.yaml": (
        "modality", "paper", (1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.25, 0.25),
        {"ce": 3.3318032203367114, "metric": 1.0225240459677456}),
    "ablation/row05_ei_ev_bi_bv.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.0, 0.0),
        {"ce": 5.784711766709651, "metric": 1.475575560374954, "dml": 28.592118317456524}),
    "ablation/row06_all_bottlenecks.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524}),
    "ablation/row07_es_bs_cibs.yaml": (
        "modality", "paper", (1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1), (0.0, 0.0, 0.25, 0.25),
        {"ce": 3.3318032203367114, "metric": 1.0225240459677456, "ib": -0.5549693548869955}),
    "ablation/row08_ei_ev_bi_bv_cibs.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.1), (0.5, 0.5, 0.0, 0.0),
        {"ce": 5.784711766709651, "metric": 1.475575560374954, "dml": 28.592118317456524,
         "ib": -0.5549693548869955}),
    "ablation/row09_all_cibs.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.1), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524,
         "ib": -0.5549693548869955}),
    "ablation/row10_es_bs_vcd_vml.yaml": (
        "modality", "paper", (1.0, 1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.0), (0.0, 0.0, 0.25, 0.25),
        {"ce": 3.3318032203367114, "metric": 1.0225240459677456, "vcd": 4.068782784169124,
         "vml": 0.6795047595959763}),
    "ablation/row11_ei_ev_bi_bv_vsd.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 2.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.0, 0.0),
        {"ce": 5.784711766709651, "metric": 1.475575560374954, "dml": 28.592118317456524,
         "vsd": 8.711124706544005}),
    "ablation/row12_full_vd.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 2.0, 2.0, 2.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524,
         "vsd": 8.711124706544005, "vcd": 4.068782784169124, "vml": 0.6795047595959763}),
    "llcm_vd.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 2.0, 2.0, 2.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524,
         "vsd": 8.711124706544005, "vcd": 4.068782784169124, "vml": 0.6795047595959763}),
    "methods/_agw_schedule.yaml": (
        "official", "paper", (1.0, 1.0, 8.0, 0.0, 2.0, 2.0, 2.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.24100088902718, "metric": 3.093456535205602, "dml": 35.12373128856126,
         "vsd": 8.70205628166347, "vcd": 4.164694639730782, "vml": 0.6705177693137209}),
    "official/regdb_t2v.yaml": (
        "official", "official", (1.0, 1.0, 0.0, 8.0, 2.0, 2.0, 0.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.24100088902718, "metric": 6.996736482422031, "cml": 1.7780154943466187,
         "vsd": -0.7223825726343782, "vcd": -0.35607510020871846}),
    "official/regdb_v2t.yaml": (
        "official", "official", (1.0, 1.0, 0.0, 8.0, 2.0, 2.0, 0.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.24100088902718, "metric": 6.996736482422031, "cml": 1.7780154943466187,
         "vsd": -0.7223825726343782, "vcd": -0.35607510020871846}),
    "official/sysu_all.yaml": (
        "official", "official", (1.0, 1.0, 0.0, 8.0, 2.0, 2.0, 0.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.24100088902718, "metric": 6.996736482422031, "cml": 1.7780154943466187,
         "vsd": -0.7223825726343782, "vcd": -0.35607510020871846}),
    "official/sysu_indoor.yaml": (
        "official", "official", (1.0, 1.0, 0.0, 8.0, 2.0, 2.0, 0.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.24100088902718, "metric": 6.996736482422031, "cml": 1.7780154943466187,
         "vsd": -0.7223825726343782, "vcd": -0.35607510020871846}),
    "quickstart.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 2.0, 2.0, 2.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524,
         "vsd": 8.711124706544005, "vcd": 4.068782784169124, "vml": 0.6795047595959763}),
    "regdb_t2v.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 2.0, 2.0, 2.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524,
         "vsd": 8.711124706544005, "vcd": 4.068782784169124, "vml": 0.6795047595959763}),
    "regdb_v2t.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 2.0, 2.0, 2.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524,
         "vsd": 8.711124706544005, "vcd": 4.068782784169124, "vml": 0.6795047595959763}),
    "sysu_all.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 2.0, 2.0, 2.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524,
         "vsd": 8.711124706544005, "vcd": 4.068782784169124, "vml": 0.6795047595959763}),
    "sysu_indoor.yaml": (
        "modality", "paper", (1.0, 1.0, 8.0, 0.0, 2.0, 2.0, 2.0, 0.0), (0.5, 0.5, 0.25, 0.25),
        {"ce": 9.116514987046363, "metric": 2.4980996063426995, "dml": 28.592118317456524,
         "vsd": 8.711124706544005, "vcd": 4.068782784169124, "vml": 0.6795047595959763}),
}
FORMS = {"paper": {"metric": "ranked_list", "vsd": "paper", "vcd": "views"},
         "official": {"metric": "official_rank", "vsd": "official", "vcd": "official"}}
SHARED_OPTIONS = {
    "ce": {"label_smooth": 0.1},
    "metric": {"triplet_margin": 0.3, "rll_alpha": 1.2, "rll_margin": 0.4, "rll_tn": 10.0, "rank_alpha_intra": 2.2,
               "rank_margin_intra": 0.9, "rank_alpha_cross": 2.0, "rank_margin_cross": 1.0},
    "cml": {"eps": 0.01, "max_iter": 100, "stabilised": False},
    "ib": {"hidden": 512},
}


def _vd_recipes() -> list[str]:
    return [osp.relpath(p, osp.join(ROOT, "configs")) for p in CONFIGS if load_config(p).model.method == "vd"]


def test_the_table_covers_every_shipped_vd_recipe():
    assert sorted(_vd_recipes()) == sorted(SHIPPED), "a new VD recipe: add the objective it trains to SHIPPED"


@pytest.mark.parametrize("rel", sorted(SHIPPED))
def test_shipped_recipe_trains_the_objective_it_trained_before(rel):
    cfg = load_config(osp.join(ROOT, "configs", rel))
    routing, forms, weights, branch_weights, values = SHIPPED[rel]
    lc = get_method("vd").loss_config(cfg)
    assert cfg.vd.routing == routing
    assert {k: lc.effective_weights()[k] for k in BUILTIN} == dict(zip(BUILTIN, weights))
    assert lc.branch_weights == branch_weights
    assert (lc.beta, lc.temperature, lc.detach_teacher) == (2.0, 1.0, True)
    assert lc.options["metric"]["kind"] == FORMS[forms]["metric"]
    assert lc.options["vsd"]["form"] == FORMS[forms]["vsd"] and lc.options["vcd"]["form"] == FORMS[forms]["vcd"]
    for term, opts in SHARED_OPTIONS.items():
        assert {k: lc.options[term][k] for k in opts} == opts, term
    out, pids = make_out(routing, seed=21)
    torch.manual_seed(0)
    crit = VDLoss(lc, num_classes=C, feat_dim_v=DV, feat_dim_z=DZ).double()
    torch.manual_seed(1)
    total, terms = crit(out, pids)
    assert list(terms) == list(values)
    for k, v in values.items():
        assert math.isclose(terms[k].item(), v, rel_tol=1e-9, abs_tol=1e-12), (k, terms[k].item(), v)
    assert math.isclose(total.item(), sum(values.values()), rel_tol=1e-9)


# ------------------------------------------------------------------------------------------------ stored configs
def _old_effective(old: dict) -> dict[str, float]:
    """The effective weights of a config in the keys before the term table, restated from that code's rules: -1 =
    the recipe's default (paper: dml 8, cml 0, vsd/vcd/vml 1; official: dml 0, cml 8, vsd/vcd 1, vml 0), beta
    multiplies vsd/vcd/vml, metric 'none' means weight 0; every part built here."""
    vd, loss = old["vd"], old.get("loss", {})
    rec = {"paper": dict(dml=8.0, cml=0.0, vsd=1.0, vcd=1.0, vml=1.0),
           "official": dict(dml=0.0, cml=8.0, vsd=1.0, vcd=1.0, vml=0.0)}[vd.get("recipe", "paper")]
    w = {k: rec[k] if vd.get(k, -1.0) < 0 else float(vd[k]) for k in rec}
    beta = vd.get("beta", 2.0)
    metric = 0.0 if loss.get("metric") == "none" else loss.get("metric_weight", 1.0)
    return {"ce": loss.get("ce", 1.0), "metric": metric,
            "dml": w["dml"], "cml": w["cml"], "vsd": beta * w["vsd"], "vcd": beta * w["vcd"], "vml": beta * w["vml"],
            "ib": vd.get("ib_baseline", 0.0)}


OLD_PAPER = {"model": {"method": "vd"},
             "loss": {"ce": 0.9, "label_smooth": 0.2, "metric": "triplet", "metric_weight": 0.7, "triplet_margin": 0.4},
             "vd": {"recipe": "paper", "beta": 3.0, "vsd": 0.5, "vcd": -1.0, "vcd_form": "cross", "vml": 0.0,
                    "dml": -1.0, "cml": 2.0, "ib_baseline": 0.1, "temperature": 1.0}}
OLD_OFFICIAL = {"model": {"method": "vd"},
                "loss": {"ce": 1.0, "label_smooth": 0.1, "metric": "", "metric_weight": 1.0, "triplet_margin": 0.3},
                "vd": {"recipe": "official", "beta": 2.0, "vsd": -1.0, "vcd": -1.0, "vcd_form": "views", "vml": -1.0,
                       "dml": -1.0, "cml": -1.0, "ib_baseline": 0.0}}


@pytest.mark.parametrize("old, kind, vsd_form, vcd_form, smooth, margin", [
    (OLD_PAPER, "triplet", "paper", "cross", 0.2, 0.4),
    (OLD_OFFICIAL, "official_rank", "official", "official", 0.1, 0.3),
])
def test_configs_stored_before_the_term_table_resolve_as_they_did(old, kind, vsd_form, vcd_form, smooth, margin):
    from vdreid.builders import config_from_stored

    snapshot = json.dumps(old, sort_keys=True)
    up = get_method("vd").upgrade_config(old)
    assert json.dumps(old, sort_keys=True) == snapshot  # the stored dict is left as it was
    assert "loss" not in up and not {"vsd", "vcd", "vml", "dml", "cml", "ib_baseline", "vcd_form"} & set(up["vd"])
    assert get_method("vd").upgrade_config(up) == up  # today's keys pass unchanged
    cfg = config_from_stored(old)
    lc = get_method("vd").loss_config(cfg)
    assert {k: lc.effective_weights()[k] for k in BUILTIN} == pytest.approx(_old_effective(old), abs=0)
    assert lc.options["metric"]["kind"] == kind and lc.options["metric"]["triplet_margin"] == margin
    assert lc.options["ce"]["label_smooth"] == smooth
    assert (lc.options["vsd"]["form"], lc.options["vcd"]["form"]) == (vsd_form, vcd_form)


@pytest.mark.parametrize("method", ["vd", "agw", "bnneck"])
def test_tracked_runs_of_an_older_version_load(method):
    """Run folders written before the term table (tests/data/stored_configs: the config.yaml files of the method
    comparison's tracked runs at commit e878136, kept here because benchmarks/runs is rewritten by reruns); every
    stored tree has a ``vd`` and a ``loss`` section whatever its method, so the stored config of an AGW or BNNeck run
    needs VD's upgrade too (vdreid.builders.config_from_stored asks every method)."""
    from vdreid.builders import config_from_stored

    stored = yaml.safe_load(open(osp.join(ROOT, "tests", "data", "stored_configs", f"{method}_before_term_table.yaml")))
    assert stored["vd"]["vsd"] == -1.0 and "loss" in stored  # old keys
    up = get_method("vd").upgrade_config(stored)
    merge_dict(get_default_config(), up, "stored")
    cfg = config_from_stored(stored)
    assert cfg.model.method == method
    if method == "vd":  # the paper recipe with every default: the paper's objective
        w = get_method("vd").loss_config(cfg).effective_weights()
        assert {k: w[k] for k in BUILTIN} == dict(ce=1.0, metric=1.0, dml=8.0, cml=0.0, vsd=2.0, vcd=2.0, vml=2.0,
                                                  ib=0.0)


def test_a_stored_config_weighting_an_unknown_term_asks_for_its_plugin():
    stored = {"model": {"method": "vd"}, "vd": {"weights": {"hc": 0.5}}}
    with pytest.raises(ConfigError, match=r"\['hc'\].*--plugin"):
        get_method("vd").upgrade_config(stored)


# ------------------------------------------------------------------------------------------------ the table
def test_builtin_terms_declare_table3_needs():
    """Which parts each built-in term compares (docs/vd-recipes.md section 5): DML/CML both specific encoders, VSD a
    specific branch with its bottleneck, VCD/VML the shared bottleneck, IB any bottleneck."""
    everything = ("ir", "vis", "shared")
    cases = {  # (encoders, bottlenecks) -> terms whose needs are met
        (("shared",), ()): {"ce", "metric"},
        (("ir", "vis"), ()): {"ce", "metric", "dml", "cml"},
        (("shared",), ("shared",)): {"ce", "metric", "vcd", "vml", "ib"},
        (("ir", "vis"), ("ir",)): {"ce", "metric", "dml", "cml", "vsd", "ib"},
        (("ir", "shared"), ("ir", "shared")): {"ce", "metric", "vsd", "vcd", "vml", "ib"},
        (everything, everything): set(BUILTIN),
        (everything, ("vis", "nowhere")): {"ce", "metric", "dml", "cml", "vsd", "ib"},
    }
    for (enc, bott), met in cases.items():
        assert {t for t in BUILTIN if get_term(t).needs.met(enc, bott)} == met, (enc, bott)
    assert not Needs(bottlenecks={"shared"}).met(("ir",), ("shared",))  # a bottleneck counts only with its encoder
    with pytest.raises(ValueError, match="unknown branch names"):
        Needs(encoders={"thermal"})


def test_recipe_defaults_are_resolved_in_one_place():
    for marker in ("recipe", "", None, " Recipe "):
        obj = resolve_objective("official", {"cml": marker, "vsd": "0.25"}, {"metric": {"kind": marker}})
        assert obj.weights["cml"] == 8.0 and obj.weights["vsd"] == 0.25
        assert obj.options["metric"]["kind"] == "official_rank" and obj.options["vcd"]["form"] == "official"
    obj = resolve_objective("paper", {"dml": 3}, encoders=("shared",), bottlenecks=("shared",))
    assert obj.weights["dml"] == obj.weights["vsd"] == 0.0 and obj.weights["vml"] == 1.0
    # the terms with a weight whose parts the network lacks, and why (cml, weight 0 in the paper recipe, is not one)
    assert obj.switched_off == {"dml": "encoders ir, vis", "vsd": "a bottleneck of ir or vis"}


@pytest.mark.parametrize("weights, options, msg", [
    ({"vsd": -1}, {}, r"config key 'vd.weights.vsd': expected a number >= 0 .*'recipe'.*got -1"),
    ({"vsd": "lots"}, {}, r"'vd.weights.vsd'.*got 'lots'"),
    ({"vsd": float("nan")}, {}, r"'vd.weights.vsd'.*got nan"),
    ({"nope": 1.0}, {}, r"'vd.weights.nope': unknown VD loss term 'nope'.*--plugin"),
    ({}, {"vcd": {"form": "z"}}, r"'vd.term_options.vcd.form': 'z' is not one of \['views', 'cross', 'official'\]"),
    ({}, {"vcd": {"shape": 1}}, r"'vd.term_options.vcd.shape': term 'vcd' has no option 'shape'"),
    ({}, {"cml": {"max_iter": 0}}, r"'vd.term_options.cml.max_iter': expected an integer >= 1, got 0"),
    ({}, {"cml": {"max_iter": 2.5}}, r"'vd.term_options.cml.max_iter': expected an integer, got 2.5"),
    ({}, {"cml": {"stabilised": "yes"}}, r"'vd.term_options.cml.stabilised': expected true or false"),
])
def test_bad_weights_and_options_name_their_key(weights, options, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_objective("paper", weights, options)


def test_config_weights_and_options_are_checked_on_load():
    with pytest.raises(ConfigError, match=r"'vd.weights.vml': expected a number >= 0"):
        load_config(None, ["vd.weights.vml", "-0.5"])
    with pytest.raises(ConfigError, match=r"'vd.term_options.metric.kind': 'arcface' is not one of"):
        load_config(None, ["vd.term_options.metric.kind", "arcface"])
    with pytest.raises(ConfigError, match=r"every loss term is off"):
        load_config(None, ["vd.weights.ce", "0", "vd.weights.metric", "0", "vd.weights.dml", "0", "vd.beta", "0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'vd.vsd'.*did you mean 'vd.weights.vsd'"):
        load_config(None, ["vd.vsd", "1"])
    cfg = load_config(None, ["vd.weights.vsd", "0.5", "vd.recipe", "official"])
    assert get_method("vd").loss_config(cfg).effective_weights()["vsd"] == 1.0  # 2 x 0.5: an explicit weight wins


def test_register_term_refuses_bad_declarations():
    def fn(out, pids, ctx):
        return pids.new_zeros((), dtype=torch.float32)

    with pytest.raises(ValueError, match="lowercase identifier"):
        register_term("Hetero-Centre", fn)
    with pytest.raises(ValueError, match="taken by"):
        register_term("vsd", fn)
    with pytest.raises(ValueError, match="unknown recipe 'mine'"):
        register_term("tmp_term", fn, {"mine": 1.0})
    with pytest.raises(ValueError, match="must be a number >= 0"):
        register_term("tmp_term", fn, {"paper": -1.0})
    with pytest.raises(ValueError, match="one per recipe"):
        register_term("tmp_term", fn, options={"k": TermOption({"paper": 1.0})})
    with pytest.raises(ValueError, match="option 'k' is not valid"):
        register_term("tmp_term", fn, options={"k": TermOption("a", choices=("b", "c"))})
    assert "tmp_term" not in term_names()


# ------------------------------------------------------------------------------------------------ a plug-in term
@pytest.fixture()
def example_term():
    """tests/plugins/example_term.py registered for one test (it registers itself when run), then removed."""
    assert "hc" not in term_names()
    module = runpy.run_path(EXAMPLE_TERM, run_name="vdreid_example_term")
    try:
        yield module
    finally:
        unregister_term("hc")
    assert "hc" not in term_names() and "hc" not in get_default_config().vd.weights


def _hetero_center_reference(feat, pids, is_ir, normalize=True):
    """Restated from the definition (Zhu et al. 2020): per identity with both modalities, ||mean_ir - mean_vis||^2,
    averaged over those identities."""
    feat = feat.detach().double()
    if normalize:
        feat = feat / feat.norm(dim=1, keepdim=True)
    per_id = []
    for pid in sorted(set(pids.tolist())):
        rows_ir = [i for i in range(len(pids)) if pids[i] == pid and is_ir[i]]
        rows_vis = [i for i in range(len(pids)) if pids[i] == pid and not is_ir[i]]
        if rows_ir and rows_vis:
            d = feat[rows_ir].mean(0) - feat[rows_vis].mean(0)
            per_id.append(float((d * d).sum()))
    return sum(per_id) / len(per_id)


def test_example_term_registers_itself_into_the_config(example_term):
    assert term_names()[-1] == "hc" and term_names()[: len(BUILTIN)] == BUILTIN
    cfg = get_default_config()
    assert cfg.vd.weights.hc == "recipe" and dict(cfg.vd.term_options.hc) == {"feature": "z", "normalize": True}
    lc = get_method("vd").loss_config(load_config(None, []))
    assert lc.weights["hc"] == 0.0 and "hc" not in lc.active_terms()  # off until a config weights it
    with pytest.raises(ConfigError, match=r"'vd.term_options.hc.feature': 'w' is not one of \['z', 'v'\]"):
        load_config(None, ["vd.weights.hc", "1", "vd.term_options.hc.feature", "w"])
    cfg = load_config(None, ["vd.weights.hc", "0.5", "vd.branches", "[ir, vis]", "vd.bottleneck_branches", "[ir, vis]",
                             "vd.feature_mode", "v_specific"])
    assert "hc" not in get_method("vd").loss_config(cfg).active_terms()  # no shared encoder: Table 3 switches it off


@pytest.mark.parametrize("routing", ["official", "modality"])
@pytest.mark.parametrize("feature, normalize", [("z", True), ("v", False)])
def test_example_term_against_its_definition(example_term, routing, feature, normalize):
    out, pids = make_out(routing, ids=4, k=3, seed=5)
    options = {"hc": {"feature": feature, "normalize": normalize}}
    base = VDLossConfig.paper()
    with_hc = VDLossConfig.paper(weights={"hc": 0.5}, options=options)
    _, t0 = VDLoss(base, num_classes=C)(out, pids)
    total, terms = VDLoss(with_hc, num_classes=C)(out, pids)
    assert list(terms) == [*t0, "hc"]  # the step's terms, the plug-in's last
    x = out.shared_x
    ref = _hetero_center_reference(getattr(x, feature), pids[x.index], out.is_ir[x.index], normalize)
    assert math.isclose(terms["hc"].item(), 0.5 * ref, rel_tol=1e-9)
    assert math.isclose(total.item(), sum(t.item() for t in t0.values()) + 0.5 * ref, rel_tol=1e-9)
    terms["hc"].backward()
    assert getattr(x, feature).grad.abs().sum() > 0 and out.ir.z.grad is None  # it pulls the shared features only


def test_example_term_changes_a_training_step_of_the_real_network(example_term):
    from vdreid.builders import build_criterion, build_model

    opts = ["model.backbone", "test_resnet", "model.pretrained", "false", "vd.bottleneck_dims", "[32, 32, 16]",
            "vd.routing", "modality"]
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 16)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    is_ir = torch.tensor([False, True] * 4)
    steps = {}
    for weight in ("0", "0.5"):
        cfg = load_config(None, opts + ["vd.weights.hc", weight])
        torch.manual_seed(1)
        model = build_model(cfg, num_classes=4).train()
        crit = build_criterion(cfg, 4, model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = model(x, modality=is_ir)
        total, terms = crit(out, pids)
        total.backward()
        opt.step()
        steps[weight] = (total.item(), terms, [p.detach().clone() for p in model.parameters()])
    assert "hc" not in steps["0"][1] and steps["0.5"][1]["hc"].item() > 0
    assert math.isclose(steps["0.5"][0] - steps["0"][0], steps["0.5"][1]["hc"].item(), rel_tol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(steps["0"][2], steps["0.5"][2]))  # it trained differently


def test_example_term_trains_through_the_command_line(sysu_root, tmp_path):
    """`vdreid train --plugin tests/plugins/example_term.py ... vd.weights.hc 0.5`: the term is in every logged
    step, in the run's objective and config; the package is not edited (a subprocess, so nothing leaks)."""
    run = str(tmp_path / "run")
    args = ["train", "--plugin", EXAMPLE_TERM, "--config-file", "quickstart", "data.root", sysu_root,
            "data.save_dir", run, "model.backbone", "test_resnet", "vd.bottleneck_dims", "[32, 32, 16]",
            "vd.weights.hc", "0.5", "vd.term_options.hc.feature", "v", "train.max_epoch", "1", "sampler.num_ids", "4",
            "data.workers", "0", "data.height", "32", "data.width", "16", "test.visrank", "false",
            "data.sysu.num_trials", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VDREID_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "vdreid", *args], cwd=str(tmp_path), capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    log = [json.loads(line) for line in open(osp.join(run, "train_log.jsonl"))]
    assert log and all("hc" in row and row["hc"] > 0 for row in log), log
    res = json.load(open(osp.join(run, "results_sysu_mm01.json")))
    assert res["objective"]["hc"] == 0.5 and any(p.endswith("example_term.py") for p in res["plugins"])
    stored = yaml.safe_load(open(osp.join(run, "config.yaml")))
    assert float(stored["vd"]["weights"]["hc"]) == 0.5 and stored["vd"]["term_options"]["hc"]["feature"] == "v"


def test_the_docs_show_the_example_term_as_it_is():
    """docs/adding-a-loss.md shows the plug-in's code verbatim, so the page cannot drift from the tested file."""
    text = open(osp.join(ROOT, "docs", "adding-a-loss.md"), encoding="utf-8").read()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert code.strip() in open(EXAMPLE_TERM, encoding="utf-8").read()


def test_loss_config_switches_terms_by_the_parts_it_is_given():
    """VDLossConfig(encoders=..., bottlenecks=...) applies Table 3's switches itself (None: every part)."""
    def resolved(lc):
        return lc.weights, lc.options, lc.branch_weights

    assert resolved(VDLossConfig.paper()) == resolved(VDLossConfig.paper(encoders=("ir", "vis", "shared"))) \
        == resolved(VDLossConfig.paper(bottlenecks=("ir", "vis", "shared")))
    lc = VDLossConfig.paper(encoders=("ir", "vis"))  # their bottlenecks too
    assert lc.active_terms() == ("ce", "metric", "dml", "vsd") and lc.branch_weights == (0.5, 0.5, 0.0, 0.0)
    lc = VDLossConfig.official(bottlenecks=("shared",))  # every encoder, only the shared bottleneck
    assert lc.active_terms() == ("ce", "metric", "cml", "vcd") and lc.branch_weights == (0.5, 0.5, 0.25, 0.25)
