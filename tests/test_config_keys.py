"""Every key of the default config means something: changing it from its default changes what the run builds or does,
or the key is declared here as provenance-only (with the reason) or as proven by another named test.

The fingerprint of a run is computed from the same functions the command line builds runs with
(``vdreid.builders``: data-manager, optimiser, schedule, engine and run options; the method's model, built on the
``meta`` device, and its criterion); the config itself (and the provenance that copies it) is left out, so a key
that no component reads cannot change it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch
from vdreid import config as C
from vdreid import methods
from vdreid.config import flat_keys, get_default_config, load_config

#: keys recorded in results and provenance only, and why that is all they should do
PROVENANCE_ONLY = {
    "data.synthetic": "marks a synthetic data root in the results JSON; the leaderboard shows such runs apart",
}
#: keys whose effect needs a resource the fingerprint does not build (weights files, the hub), proven elsewhere
TESTED_ELSEWHERE = {
    "model.pretrained": "tests/test_config_keys.py::test_pretrained_keys_reach_the_weights_loader",
    "model.pretrained_path": "tests/test_config_keys.py::test_pretrained_keys_reach_the_weights_loader",
    # process-wide settings the command line applies before building anything (vdreid.runtime)
    "train.threads": "tests/test_runtime.py::test_cli_applies_the_settings_before_building_anything",
    "test.threads": "tests/test_runtime.py::test_cli_applies_the_settings_before_building_anything",
    "train.flush_denormal": "tests/test_runtime.py::test_cli_applies_the_settings_before_building_anything",
}

#: the method each section's keys are walked with, and the configuration that makes a key matter
SECTION_METHOD = {spec.path: spec.selected_by[1] for spec in C.sections()
                  if spec.selected_by and spec.selected_by[0] == "model.method"}
CONTEXT = {
    "vd.term_options.metric.triplet_margin": ["vd.term_options.metric.kind", "triplet"],
    "data.sysu.rand_perm_path": ["data.sysu.gallery_sampler", "official"],
    "train.momentum": ["train.optim", "sgd"],
    "train.nesterov": ["train.optim", "sgd"],
    "agw.triplet_margin": ["agw.metric", "triplet"],
    "vd.weights.cml": ["vd.recipe", "official"],
    "vd.branches": ["vd.bottleneck_branches", "['ir', 'vis']", "vd.feature_mode", "v_specific"],
}
for _k in ("test.ivf_nlist", "test.ivf_nprobe"):
    CONTEXT[_k] = ["test.approximate", "ivf"]
for _k in ("test.hnsw_m", "test.hnsw_ef_search"):
    CONTEXT[_k] = ["test.approximate", "hnsw"]
for _k in ("data.regdb.trial", "data.regdb.direction"):
    CONTEXT[_k] = ["data.sources", "['regdb']", "data.targets", "['regdb']"]
for _k in ("data.llcm.direction", "data.llcm.num_trials"):
    CONTEXT[_k] = ["data.sources", "['llcm']", "data.targets", "['llcm']"]



def _small_model(method: str) -> str:
    """The method's smallest registered preset (ResNet-18-sized), for cheap builds."""
    names = methods.get(method).model_names
    return next((n for n in names if any(t in n for t in ("resnet18", "resnet10t", "_r18"))), names[0])


METHOD_MODEL = {m: _small_model(m) for m in methods.names()}

#: a value other than the default for keys the generic rule cannot guess
ALTERNATIVE = {
    "model.method": "agw",
    "model.name": "vd_resnet50",
    "model.backbone": "resnet34",
    "model.load_weights": "some/weights.pth",
    "model.resume": "latest",
    "data.root": "/elsewhere",
    "data.sources": "['regdb']",
    "data.targets": "['sysu_mm01', 'regdb']",
    "data.transforms": "['random_flip', 'random_erase']",
    "data.save_dir": "log/other",
    "data.norm_mean": "[0.5, 0.5, 0.5]",
    "data.norm_std": "[0.5, 0.5, 0.5]",
    "data.random_erase_area": "[0.2, 0.8]",
    "data.resize_interpolation": "lanczos",
    "data.visible_views": "['channel_exchange:1']",
    "data.infrared_views": "['']",
    "data.sysu.search_mode": "indoor",
    "data.sysu.shots": "10",
    "data.sysu.gallery_sampler": "official",
    "data.sysu.rand_perm_path": "perm.mat",
    "data.sysu.direction": "vis2ir",
    "data.regdb.direction": "ir2vis",
    "data.llcm.direction": "vis2ir",
    "sampler.epoch": "images",
    "sampler.draw": "independent",
    "train.optim": "sgd",
    "train.momentum": "0.5",
    "train.lr_scheduler": "cosine",
    "train.stepsize": "[100]",
    "train.scheduler_step": "start",
    "train.amp": "bf16",
    "train.selection": "test",
    "train.selection_flip": "true",
    "test.dist_metric": "euclidean",
    "test.backend": "torch",
    "test.feature_mode": "shared_z",
    "agw.non_local": "[0, 1, 1, 0]",
    "agw.metric": "triplet",
    "agw.feature_mode": "pool",
    "caj.non_local": "[0, 1, 1, 0]",
    "caj.feature_mode": "pool",
    "caj.square": "0",
    "caj.last_stride": "2",
    "bnneck.feature_mode": "pool",
    "deen.feature_mode": "weighted",
    "vd.recipe": "official",
    "vd.term_options.metric.kind": "triplet",
    "vd.term_options.vcd.form": "cross",
    "vd.term_options.vsd.form": "official",
    "vd.branches": "['ir', 'vis']",
    "vd.bottleneck_branches": "['ir', 'vis']",
    "vd.routing": "modality",
    "vd.bottleneck": "gaussian",
    "vd.bottleneck_dims": "[64, 32, 16]",
    "vd.z_classifier_hidden": "32",
    "vd.attention": "true",
    "vd.feature_mode": "shared_v",
    "vd.branch_weights": "[1.0, 1.0, 0.5, 0.5]",
    "vd.last_stride": "2",
    "agw.last_stride": "2",
    "bnneck.last_stride": "2",
    "test.max_rank": "10",
    "test.approximate": "hnsw",
}


def _alternative(key: str, default):
    if key in ALTERNATIVE:
        return ALTERNATIVE[key]
    if key.startswith("vd.weights.") and default == "recipe":  # a term's weight: the recipe's default -> 0.5
        return "0.5"
    if isinstance(default, bool):
        return str(not default).lower()
    if isinstance(default, int):
        return str(default + 1)
    if isinstance(default, float):
        return repr(0.5 if default in (0.0, -1.0) else default * 2)
    raise AssertionError(f"no alternative value for {key} (default {default!r}): add one to ALTERNATIVE")


def _scalars(obj) -> dict:
    """Public plain-valued attributes of a module or dataclass (what a criterion computes with)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: repr(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    out = {}
    for k, v in vars(obj).items():
        if k.startswith("_"):
            continue
        if isinstance(v, (int, float, str, bool, tuple)) or v is None:
            out[k] = repr(v)
        elif dataclasses.is_dataclass(v):
            out[k] = _scalars(v)
    for name, sub in getattr(obj, "_modules", {}).items():
        if sub is not None:
            out[f"module:{name}"] = type(sub).__name__
    return out


def fingerprint(cfg) -> dict:
    from vdreid import builders
    from vdreid.engine import build_optimizer

    m = builders.method_of(cfg)
    c = cfg.clone()
    c.defrost()
    c.model.pretrained = False  # weights loading: TESTED_ELSEWHERE
    with torch.device("meta"):
        model = m.build_model(c, 7)
        crit = m.build_criterion(c, 7, model)
    fp: dict = {"method": m.name}
    fp["model"] = (
        sorted((k, tuple(v.shape)) for k, v in model.state_dict().items()),
        [(n, type(x).__name__, getattr(x, "stride", None), getattr(x, "p", None)) for n, x in model.named_modules()],
        getattr(model, "routing", None), getattr(model, "feature_mode", None),
    )
    fp["criterion"] = _scalars(crit)
    groups = m.param_groups(c, model, crit)
    opt = build_optimizer([dict(g, lr=cfg.train.lr * g.get("lr_mult", 1.0)) for g in groups],
                          **builders.optimizer_kwargs(cfg))
    fp["optimizer"] = (type(opt).__name__, sorted((k, repr(v)) for k, v in opt.defaults.items()),
                       [sorted((k, repr(v)) for k, v in g.items() if k != "params") for g in opt.param_groups])
    spec = builders.schedule_spec(cfg)
    fp["schedule"] = [round(spec.epoch_factor(e), 12) for e in range(cfg.train.max_epoch + 1)]
    fp["data"] = builders.datamanager_kwargs(cfg)
    fp["engine"] = {k: v for k, v in builders.engine_kwargs(cfg).items() if k not in ("provenance", "schedule")}
    fp["run"] = builders.run_options(cfg)
    return fp


def _cfg(method: str, opts: list[str]):
    return load_config(None, ["model.method", method, "model.name", METHOD_MODEL[method]] + opts)


def _walk():
    cfg = get_default_config()
    for key in flat_keys(cfg):
        section = key.split(".")[0]
        method = SECTION_METHOD.get(section, "vd")
        yield pytest.param(key, method, id=key)


@pytest.mark.parametrize("key, method", list(_walk()))
def test_every_key_changes_what_the_run_does(key, method, monkeypatch):
    if key in PROVENANCE_ONLY:
        from vdreid import builders

        cfg = _cfg(method, [])
        assert key.split(".")[-1] in str(builders.provenance(cfg)["config"])  # it is recorded
        return
    if key in TESTED_ELSEWHERE:
        path, name = TESTED_ELSEWHERE[key].split("::")
        mod = importlib.import_module(path.replace("/", ".").removesuffix(".py").removeprefix("tests."))
        assert callable(getattr(mod, name)), TESTED_ELSEWHERE[key]
        return
    if key == "train.use_gpu":  # the device choice: only visible where CUDA is
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ctx = CONTEXT.get(key, [])
    if key == "model.name":
        ctx = ["model.name", "vd_resnet18"] + ctx
    base = _cfg(method, ctx) if key != "model.name" else load_config(None, ["model.method", "vd"] + ctx)
    node = base
    for part in key.split("."):
        node = node[part]
    alt_opts = ctx + [key, _alternative(key, node)]
    if key == "model.method":
        alt_opts += ["model.name", "agw_resnet18"]
    alt = _cfg(method, alt_opts) if key != "model.name" else load_config(None, ["model.method", "vd"] + alt_opts)
    fa, fb = fingerprint(base), fingerprint(alt)
    changed = [part for part in fa if fa[part] != fb[part]]
    assert changed, f"{key}: changing it ({node!r} -> {_alternative(key, node)}) changes nothing the run builds"


def test_declared_lists_name_real_keys():
    keys = set(flat_keys(get_default_config()))
    assert set(PROVENANCE_ONLY) <= keys and set(TESTED_ELSEWHERE) <= keys and set(ALTERNATIVE) <= keys
    assert math.isfinite(len(keys)) and len(keys) > 90


def test_removed_keys_are_gone():
    """Keys that were accepted and ignored are gone (an unknown key is an error naming the closest valid one)."""
    from vdreid.errors import ConfigError

    for key in ("data.type", "sampler.train_sampler", "loss.name", "train.official_scheduler_offbyone"):
        with pytest.raises(ConfigError, match="unknown config key"):
            load_config(None, [key, "1"])


def test_evaluate_only_and_max_rank_reach_the_run(sysu_root, tmp_path):
    """test.evaluate true evaluates a checkpoint without training; test.max_rank is the CMC length evaluated."""
    import json
    import os.path as osp

    from vdreid.cli import main

    quick = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs", "quickstart.yaml")
    common = ["--config-file", quick, "data.root", sysu_root, "model.backbone", "test_resnet", "vd.bottleneck_dims",
              "[32, 32, 16]", "data.height", "32", "data.width", "16", "sampler.num_ids", "4", "data.workers", "0",
              "test.visrank", "false", "data.sysu.num_trials", "1", "train.max_epoch", "1"]
    run = str(tmp_path / "run")
    assert main(["train", *common, "data.save_dir", run]) == 0
    ev = str(tmp_path / "eval")
    assert main(["train", *common, "data.save_dir", ev, "test.evaluate", "true", "test.max_rank", "5",
                 "model.load_weights", osp.join(run, "latest.pth")]) == 0
    assert not osp.exists(osp.join(ev, "latest.pth")) and not osp.exists(osp.join(ev, "train_log.jsonl"))
    res = json.load(open(osp.join(ev, "results_sysu_mm01.json")))
    assert len(res["cmc_mean"]) == 5 and res["checkpoint"].endswith("latest.pth")


def test_pretrained_keys_reach_the_weights_loader(tmp_path):
    """model.pretrained + model.pretrained_path load the named ImageNet file into every method's CNNs; with
    model.pretrained false the same path is not read."""
    import timm
    from vdreid import builders

    torch.manual_seed(0)
    src = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    path = str(tmp_path / "imagenet.pth")
    torch.save(src.state_dict(), path)
    first, w0 = next(iter(src.named_parameters()))  # the stem's first convolution

    def stems(model):
        return [p for n, p in model.named_parameters() if n.endswith("." + first) and p.shape == w0.shape]

    for method, name in METHOD_MODEL.items():
        opts = ["model.method", method, "model.name", name, "model.backbone", "test_resnet",
                "model.pretrained_path", path]
        loaded = builders.build_model(load_config(None, opts + ["model.pretrained", "true"]), 5)
        fresh = builders.build_model(load_config(None, opts + ["model.pretrained", "false"]), 5)

        assert stems(loaded) and all(torch.equal(w, w0) for w in stems(loaded)), method
        assert not any(torch.equal(w, w0) for w in stems(fresh)), method
