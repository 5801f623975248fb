"""``vdreid`` command line (also ``python -m vdreid``).

    vdreid train   --config-file F [--split N | --all-splits] [--resume PATH | --overwrite] [KEY VALUE ...]
    vdreid test    [--config-file F] --checkpoint PATH [--trials N] [--feature-mode M] [--rerank] [--visrank]
    vdreid make-synthetic --layout L --out DIR [--preset demo|tiny|hard] [--seed S] [--style S] [--overwrite]
    vdreid leaderboard [--runs DIR ...] [--out benchmarks/LEADERBOARD.md]
    vdreid tsne    [--config-file F] --checkpoint PATH [--out DIR] [--modes M1,M2,...]
    vdreid export  [--config-file F] --checkpoint PATH --out model.onnx [--feature-mode M]
    vdreid plot    --cmc RESULTS.json ... | --train-log train_log.jsonl  --out FILE.png
    vdreid demo    [--config-file quickstart]
    vdreid recipes                    the shipped recipes (names for --config-file and _base_)
    vdreid --version

Every command that builds a model takes ``--config-file`` (a path or a shipped recipe name) and ``KEY VALUE``
overrides as torchreid's scripts do (``vdreid train --config-file sysu_all train.max_epoch 10 data.root /data``);
flags and overrides may come in any order. ``--plugin FILE_OR_MODULE`` (repeatable) imports a user's module that
registers methods, datasets or loss terms before anything is built. ``test``, ``tsne`` and ``export`` without
``--config-file`` rebuild the configuration stored in the checkpoint. ``train`` under ``torchrun --nproc_per_node N``
uses all N processes (DDP; the engine handles the rest).
"""

from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import re
import sys
import time
from typing import Any

import torch
from yacs.config import CfgNode as CN

from vdreid import builders, compat, methods, plugins, runtime
from vdreid.config import ConfigError, flat_keys, get_default_config, load_config, merge_from_list
from vdreid.data import registry as data_registry
from vdreid.data.synthetic_layout import is_synthetic_tree
from vdreid.engine import init_distributed
from vdreid.engine.checkpoint import read_model_checkpoint
from vdreid.engine.distributed import cleanup
from vdreid.engine.outputs import Outputs
from vdreid.errors import SyntheticTreeError, VDReIDError
from vdreid.models.original import original_model_kwargs
from vdreid.recipes import configs_dir, list_recipes, published_path
from vdreid.tools.export import export_onnx
from vdreid.tools.leaderboard import build_leaderboard
from vdreid.tools.plots import plot_cmc_runs, plot_training_curves
from vdreid.tools.tsne import tsne_from_datamanager
from vdreid.version import __version__

logger = logging.getLogger("vdreid.cli")

#: the shipped recipe ``make demo`` trains
DEMO_RECIPE = "quickstart"


# ------------------------------------------------------------------------------------------------ config
def _cfg_from_args(args: argparse.Namespace, extra: list[str] | None = None, ckpt=None,
                   first: list[str] | None = None) -> CN:
    """The run's configuration: ``--config-file`` (a path or a shipped recipe name) or, without one, the config a
    vdreid checkpoint ``ckpt`` stores; ``first``, the command's overrides and ``extra`` applied in that order."""
    opts = list(first or []) + list(args.opts or []) + list(extra or [])
    if getattr(args, "config_file", None):
        return load_config(args.config_file, opts)
    if ckpt is not None and ckpt.config is not None:
        return builders.config_from_stored(ckpt.config, opts,
                                           plugins_used=(ckpt.provenance or {}).get("plugins") or ())
    if ckpt is None:  # `vdreid export` without a checkpoint: a graph check of the default config + overrides
        logger.info("no --config-file: the default configuration with the command line's overrides")
        return load_config(None, opts)
    raise ConfigError(f'--config-file is required: "{ckpt.path}" is a {ckpt.kind} checkpoint and stores no vdreid '
                      "config (a checkpoint written by `vdreid train` does)")


def _read_checkpoint(path: str | None):
    """The checkpoint (``vdreid.engine.checkpoint.ModelCheckpoint``) named by ``--checkpoint``, or None."""
    return read_model_checkpoint(path) if path else None


def _config_method(args: argparse.Namespace) -> str | None:
    """``model.method`` as the overrides or the config file set it (the method to prefer for an original checkpoint
    whose layout several methods read)."""
    opts = list(args.opts or [])
    for key, value in zip(opts[0::2], opts[1::2]):
        if key == "model.method":
            return value
    return load_config(args.config_file).model.method if getattr(args, "config_file", None) else None


# ------------------------------------------------------------------------------------------------ train
def _train_one(cfg: CN, resume: str | None, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    run = builders.run_options(cfg)
    resume = resume or run["resume"]
    rt = runtime.apply_config(cfg, "train", use_gpu=builders.use_gpu(cfg))  # threads, denormals: before any work
    info = init_distributed(use_gpu=builders.use_gpu(cfg))
    builders.seed_everything(run["seed"] + info.rank)
    dm = builders.build_datamanager(cfg, rank=info.rank, world_size=info.world_size)
    model = builders.build_model(cfg, dm.num_train_pids)
    if run["evaluate_only"]:  # test.evaluate: no optimiser, no training
        ckpt = run["load_weights"] or (osp.join(run["save_dir"], "latest.pth") if resume in ("latest", "auto")
                                       else resume)
        if not ckpt:
            raise ConfigError("test.evaluate true evaluates a trained model: name its checkpoint with "
                              "model.load_weights (or use `vdreid test --checkpoint FILE`)")
        builders.load_weights(model, ckpt)
        return _evaluate_only(cfg, dm, model, ckpt)
    if run["load_weights"]:
        builders.load_weights(model, run["load_weights"])
    criterion = builders.build_criterion(cfg, dm.num_train_pids, model)
    optimizer, scheduler = builders.build_optim(cfg, model, criterion)
    engine = builders.build_engine(cfg, dm, model, criterion, optimizer, scheduler, progress=progress)
    engine.provenance.update(num_classes=dm.num_train_pids, runtime=rt.provenance())
    # the start banner: what the process runs with, and what the encoder's last stride and pooling mean
    engine.run_state.banner_lines.append(rt.line())
    describe = getattr(engine.net, "describe_encoder", None)
    if callable(describe):
        engine.run_state.banner_lines.append(describe())
    save_dir = run["save_dir"]
    t0 = time.time()
    rank1 = engine.run(
        save_dir=save_dir,
        max_epoch=run["max_epoch"],
        start_epoch=run["start_epoch"],
        resume=resume,
        rerank=run["rerank"],
        overwrite=overwrite,
    )
    out = {"rank1": rank1, "save_dir": save_dir, "engine": engine, "datamanager": dm, "model": engine.net,
           "wall_s": time.time() - t0, "rank": info.rank}
    if info.is_main:
        _after_test(cfg, engine, dm, save_dir)
    if info.is_distributed:
        cleanup()
    return out


def _evaluate_only(cfg: CN, dm, model, checkpoint: str) -> dict[str, Any]:
    """``test.evaluate true``: test the model loaded from ``checkpoint`` with the evaluator alone (no trainer)."""
    evaluator = builders.build_evaluator(cfg, dm, model)
    evaluator.provenance.update(num_classes=dm.num_train_pids, checkpoint=osp.abspath(checkpoint))
    save_dir = cfg.data.save_dir
    os.makedirs(save_dir, exist_ok=True)
    rank1 = evaluator.test(save_dir=save_dir, rerank=cfg.test.rerank, selection_info={"selection": "checkpoint"})
    _after_test(cfg, evaluator, dm, save_dir)
    # "engine": the evaluator answers what callers read of it (net, device, last_reports, provenance, written)
    return {"rank1": rank1, "save_dir": save_dir, "engine": evaluator, "evaluator": evaluator,
            "datamanager": dm, "model": evaluator.net, "wall_s": 0.0, "rank": 0}


def _split_cfg(cfg: CN, key: str, value: int, subdir: bool) -> CN:
    c = cfg.clone()
    c.defrost()
    merge_from_list(c, [key, str(value)], source=f"--split {value}")
    if subdir:
        c.data.save_dir = osp.join(cfg.data.save_dir, f"split{value}")
    c.freeze()
    return c


def _log_outputs(outputs: Outputs) -> None:
    """One line per file the run or the evaluation recorded writing (:class:`~vdreid.engine.outputs.Outputs`:
    checkpoints, config, train log, tensorboard events, results JSON, pictures), with its kind and size."""
    items = outputs.existing()
    if not items:
        return
    top = osp.commonpath([osp.dirname(p) for p, _ in items])
    logger.info("wrote under %s:", top)
    for path, kind in items:
        size = _tree_size(path)
        label = osp.relpath(path, top) + (os.sep if osp.isdir(path) else "")
        logger.info("  %-44s %-12s %s", label, kind, _size(size))


def _tree_size(path: str) -> int:
    if osp.isfile(path):
        return osp.getsize(path)
    return sum(osp.getsize(osp.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_train(args: argparse.Namespace) -> int:
    extra = ["data.save_dir", args.save_dir] if args.save_dir else []
    cfg = _cfg_from_args(args, extra)
    names = list(cfg.data.sources) + list(cfg.data.targets)
    if args.split or args.all_splits:
        key = data_registry.split_config_key(names, args.split_flag)
        fam = data_registry.split_families(names)[0]
        if args.split:
            if args.split not in fam.split_values:
                raise ConfigError(f"--split {args.split}: {fam.display_name or fam.__name__} has splits "
                                  f"{list(fam.split_values)}")
            cfg = _split_cfg(cfg, key, args.split, subdir=False)
    if args.all_splits:
        results, written = {}, Outputs()
        for value in fam.split_values:
            logger.info("========== %s split %d/%d ==========", fam.display_name or fam.__name__, value,
                        len(fam.split_values))
            res = _train_one(_split_cfg(cfg, key, value, subdir=True), None, overwrite=args.overwrite)
            results[value] = res["rank1"]
            written = written.merged(_outputs_of(res["engine"]))
        logger.info("rank-1 per split: %s", ", ".join(f"{t}: {r:.2f}" for t, r in results.items() if r is not None))
        logger.info("average the splits with: vdreid leaderboard --runs %s", cfg.data.save_dir)
        _log_outputs(written)
        return 0
    res = _train_one(cfg, args.resume, overwrite=args.overwrite)
    if res.get("rank", 0) == 0:
        _log_outputs(_outputs_of(res["engine"]))
    return 0


def _outputs_of(runner) -> Outputs:
    """The record of written files of a trainer (``outputs``) or of an evaluation-only run's evaluator (``written``)."""
    return runner.outputs if hasattr(runner, "outputs") else runner.written


# ------------------------------------------------------------------------------------------------ test
def _after_test(cfg: CN, engine, dm, save_dir: str) -> dict[str, str]:
    """CMC curve per target and, with ``test.visrank``, ranked-list pictures from the features the evaluation just
    extracted (nothing is extracted twice); returns the written paths. ``engine``: the
    :class:`vdreid.engine.Evaluator` that tested, or the ``VIEngine`` holding it; the pictures join its record of
    written files."""
    evaluator = getattr(engine, "evaluator", engine)
    paths: dict[str, str] = {}
    label_of = evaluator.provenance.get("recipe") or evaluator.provenance.get("method", "")
    run = builders.run_options(cfg)
    for name, rep in (evaluator.last_reports or {}).items():
        label = f"{cfg.model.backbone or cfg.model.name} {label_of} ({rep.protocol_name})"
        paths[f"cmc_{name}"] = plot_cmc_runs({label: list(rep.cmc_mean)}, osp.join(save_dir, f"cmc_{name}.png"),
                                             title=f"CMC: {name}", percent=True)
        evaluator.written.add(paths[f"cmc_{name}"], "pictures")
        if run["visrank"]:
            paths[f"ranked_{name}"] = evaluator.write_ranked_lists(name, save_dir, topk=run["visrank_topk"])
    return paths


def _build_for_checkpoint(args: argparse.Namespace, extra: list[str]):
    """(config, data manager, model with the checkpoint's weights, checkpoint) for ``--checkpoint``.

    A vdreid checkpoint rebuilds the configuration it stores (``--config-file`` and overrides still win); a
    checkpoint of a method's original code is mapped to vdreid's model (:func:`vdreid.models.from_original`) and
    needs ``--config-file`` for the data; a plain torchreid state dict needs ``--config-file``.
    """
    ckpt = _read_checkpoint(args.checkpoint)
    original = builders.is_original(ckpt)
    if ckpt is not None and ckpt.kind == "torchreid" and not getattr(args, "config_file", None):
        raise ConfigError(f'"{args.checkpoint}" stores no vdreid config (a torchreid state dict): pass --config-file '
                          "with the model and data it was trained with")
    if original and not getattr(args, "config_file", None):
        readers = [m.name for m in methods.all_methods() if m.reads_original(ckpt.kind)]
        raise ConfigError(f'"{args.checkpoint}" was written by the {ckpt.kind} code: pass --config-file for the data '
                          f"(a recipe of method {' or '.join(readers)}, e.g. `vdreid recipes`); the model is read "
                          "from the checkpoint")
    first = builders.original_overrides(ckpt, _config_method(args)) if original else None
    cfg = _cfg_from_args(args, extra, ckpt, first=first)
    runtime.apply_config(cfg, "test", use_gpu=builders.use_gpu(cfg))  # threads, denormals: before any work
    dm = builders.build_datamanager(cfg)
    if ckpt is None:
        c = cfg.clone()
        c.defrost()
        c.model.pretrained = False
        return cfg, dm, builders.build_model(c, dm.num_train_pids), None
    # the same rebuild as torchreid's FeatureExtractor given a vdreid checkpoint; an original checkpoint keeps the
    # authors' classifier size, whatever the data manager's training set
    model = builders.build_model_from_checkpoint(ckpt, cfg, num_classes=None if original else dm.num_train_pids)
    return cfg, dm, model, ckpt


def cmd_test(args: argparse.Namespace) -> int:
    extra: list[str] = []
    if args.trials:
        extra += _trials_override(args.trials)
    if args.feature_mode:
        extra += ["test.feature_mode", args.feature_mode]
    if args.rerank:
        extra += ["test.rerank", "true"]
    if args.visrank:
        extra += ["test.visrank", "true"]
    if args.save_dir:
        extra += ["data.save_dir", args.save_dir]
    cfg, dm, model, ckpt = _build_for_checkpoint(args, extra)
    evaluator = builders.build_evaluator(cfg, dm, model)  # no trainer: no criterion, no optimiser
    save_dir = cfg.data.save_dir
    os.makedirs(save_dir, exist_ok=True)
    evaluator.provenance.update(checkpoint=osp.abspath(args.checkpoint), checkpoint_format=ckpt.kind,
                                num_classes=dm.num_train_pids, runtime=runtime.current().provenance())
    # the results record the checkpoint's epoch as the selected one
    evaluator.test(save_dir=save_dir, rerank=cfg.test.rerank,
                   selection_info={"selection": "checkpoint", "selected_epoch": ckpt.epoch})
    _after_test(cfg, evaluator, dm, save_dir)
    _log_outputs(evaluator.written)
    return 0


def _trials_override(trials: int) -> list[str]:
    """``--trials N``: the ``num_trials`` key of every target family that has one."""
    cfg = get_default_config()
    keys = [f"data.{f.config_section}.num_trials" for f in data_registry.families()
            if f.config_section and "num_trials" in cfg.data[f.config_section]]
    return [v for key in keys for v in (key, str(trials))]


# ------------------------------------------------------------------------------------------------ tools
def cmd_make_synthetic(args: argparse.Namespace) -> int:
    layout = data_registry.synthetic_layouts()[args.layout]
    if args.preset not in layout.presets:
        raise ConfigError(f"--preset {args.preset!r}: the {args.layout} layout has presets {sorted(layout.presets)}")
    kw: dict[str, Any] = {} if args.style is None else {"style": args.style}
    if args.num_ids:
        kw["num_ids"] = args.num_ids
    path = layout.write(args.out, seed=args.seed, preset=args.preset, overwrite=args.overwrite, **kw)
    logger.info("wrote synthetic %s tree (preset %s, %s style, seed %s) to %s", args.layout, args.preset,
                layout.style_of(args.preset, args.style), args.seed, path)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    out_csv = args.csv or osp.splitext(args.out)[0] + ".csv"
    published = None if args.no_published else (args.published or published_path())
    rows = build_leaderboard(args.runs, published, args.out, out_csv)
    ours = sum(r.kind == "ours" for r in rows)
    logger.info("leaderboard: %d runs of ours + %d published rows -> %s, %s", ours, len(rows) - ours, args.out, out_csv)
    return 0


def cmd_tsne(args: argparse.Namespace) -> int:
    cfg, dm, model, _ = _build_for_checkpoint(args, ["data.workers", "0"])
    target = args.target or list(cfg.data.targets)[0]
    modes = [m for m in args.modes.split(",") if m] or list(builders.method_of(cfg).tsne_modes)
    out = args.out or osp.join(cfg.data.save_dir, "tsne")
    paths = tsne_from_datamanager(model, dm, target, out, modes, num_ids=args.num_ids, per_id=args.per_id,
                                  joint_mode=args.joint_mode if args.joint_mode in modes else modes[0])
    for k, v in paths.items():
        logger.info("t-SNE %s: %s", k, v)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    ckpt = _read_checkpoint(args.checkpoint)
    original = builders.is_original(ckpt)
    extra = ["test.feature_mode", args.feature_mode] if args.feature_mode else []
    cfg = _cfg_from_args(args, extra, ckpt,
                         first=builders.original_overrides(ckpt, _config_method(args)) if original else None)
    num_classes = args.num_classes
    if num_classes is None and ckpt is not None:
        num_classes = (original_model_kwargs(ckpt.kind, ckpt.state_dict)["num_classes"] if original
                       else builders.checkpoint_num_classes(ckpt))
    c = cfg.clone()
    c.defrost()
    c.model.pretrained = False
    model = builders.build_model(c, int(num_classes or 2))
    if ckpt is not None:
        builders.load_weights(model, args.checkpoint)
    else:
        logger.warning("no --checkpoint given: exporting randomly initialised weights (a graph check only)")
    res = export_onnx(model, args.out, cfg.data.height, cfg.data.width, builders.feature_mode_of(cfg),
                      batch=args.batch, opset=args.opset)
    logger.info("ONNX (%s) -> %s: inputs %s, features %s-d, onnxruntime vs PyTorch max |diff| = %.2e", res["opset"],
                res["path"], res["inputs"], res["feature_dim"], res["max_abs_diff"])
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    if bool(args.cmc) == bool(args.train_log):
        raise ConfigError("vdreid plot: give either --cmc RESULTS.json ... or --train-log train_log.jsonl")
    if args.cmc:
        runs = {}
        for p in args.cmc:
            label = osp.basename(osp.dirname(osp.abspath(p))) or p
            runs[label if label not in runs else p] = p
        logger.info("%s", plot_cmc_runs(runs, args.out))
    else:
        logger.info("%s", plot_training_curves(args.train_log, args.out))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """The shipped recipes with the first line of each file's header comment."""
    top = configs_dir()
    names = list_recipes(include_bases=args.all)
    width = max((len(n) for n in names), default=0)
    for name in names:
        logger.info("%-*s  %s", width, name, _first_comment(osp.join(top, *name.split("/")) + ".yaml"))
    logger.info("(%d recipes in %s; use a name with --config-file NAME or _base_: NAME)", len(names), top)
    return 0


def _first_comment(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("#"):
                    text = line.lstrip("#").strip()
                    return text if len(text) <= 100 else text[:97] + "..."
    except OSError:
        pass
    return ""


# ------------------------------------------------------------------------------------------------ demo
def _demo_tree(root: str, dataset: str | None = None) -> str:
    """Make sure ``root`` holds a tree of ``dataset`` (default: the default config's first source) for the demo;
    returns what was found.

    ``'generated'``: none was there, the family's demo preset was written; ``'demo'``: today's demo tree is there;
    ``'other'``: a synthetic tree of other generator arguments (an older version's demo tree, another preset), used
    as it is with a warning (never deleted); ``'real'``: a tree not written by the generator, used as it is."""
    dataset = dataset or list(get_default_config().data.sources)[0]
    fam = data_registry.family_of(dataset)
    layout = fam.synthetic if fam is not None else None
    if layout is None:
        raise ConfigError(f"the demo trains on data.sources {dataset!r}, which has no synthetic writer; pick a "
                          f"dataset with one ({sorted(data_registry.synthetic_layouts())})")
    folder = osp.join(root, layout.folder)
    if not osp.isdir(folder) or not os.listdir(folder):
        logger.info("=> generating the synthetic %s demo tree under %s", layout.folder, root)
        layout.write(root, preset="demo", seed=0)
        return "generated"
    if not is_synthetic_tree(folder):
        logger.info("=> using the %s tree under %s", layout.folder, root)
        return "real"
    try:  # an identical demo tree: nothing to do
        layout.write(root, preset="demo", seed=0)
    except SyntheticTreeError:
        logger.warning(
            "=> %s holds a synthetic tree made with other generator arguments than today's demo preset; the demo "
            "trains on it as it is (its time and numbers differ from the README's). For today's demo tree: "
            "vdreid make-synthetic --layout %s --preset demo --out %s --overwrite", root, layout.name, root)
        return "other"
    logger.info("=> using the synthetic %s demo tree under %s", layout.folder, root)
    return "demo"


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic tree -> train the quickstart -> evaluate -> table, leaderboard, pictures."""
    t0 = time.time()
    cfg = _cfg_from_args(args)
    root = cfg.data.root
    _demo_tree(root, list(cfg.data.sources)[0])
    # a previous demo run in the folder is moved aside into replaced-<time>/ (logged, never deleted)
    res = _train_one(cfg, None, progress=not args.no_progress, overwrite=True)
    save_dir, engine, dm = res["save_dir"], res["engine"], res["datamanager"]
    published = args.published or published_path()
    board = osp.join(save_dir, "LEADERBOARD.md")
    build_leaderboard([save_dir], published if osp.isfile(published) else None, board,
                      osp.join(save_dir, "LEADERBOARD.csv"))
    curves = plot_training_curves(osp.join(save_dir, "train_log.jsonl"), osp.join(save_dir, "training_curves.png"))
    target = list(cfg.data.targets)[0]
    modes = [m for m in builders.method_of(cfg).tsne_modes if m in getattr(engine.net, "feature_modes", ())]
    tsne = tsne_from_datamanager(engine.net, dm, target, osp.join(save_dir, "tsne"), modes, num_ids=12, per_id=8,
                                 device=engine.device)
    rep = engine.last_reports.get(target)
    chance = 100.0 / max(1, len({it[1] for it in dm.test_dataset[target]["gallery"]}))
    logger.info("================ vdreid demo: done ================")
    if rep is not None:
        logger.info(f"rank-1 {rep.rank1:.2f}% ({rep.protocol_name}, {rep.num_trials} trials; chance ~ {chance:.2f}%)")
    logger.info(f"results JSON     : {osp.join(save_dir, f'results_{target}.json')}")
    logger.info(f"leaderboard      : {board}")
    logger.info(f"CMC curve        : {osp.join(save_dir, f'cmc_{target}.png')}")
    if cfg.test.visrank:
        logger.info(f"ranked lists     : {osp.join(save_dir, f'ranked_{target}')}")
    logger.info(f"t-SNE (Fig. 6)   : {tsne.get('joint')}")
    logger.info(f"t-SNE (Fig. 5)   : {tsne.get('branches')}")
    logger.info(f"training curves  : {curves}")
    logger.info(f"checkpoint       : {osp.join(save_dir, 'latest.pth')}")
    logger.info(f"total time       : {time.time() - t0:.0f} s")
    return 0


# ------------------------------------------------------------------------------------------------ parser
#: habits of torchreid's and fast-reid's scripts: flags that work here as aliases, and the answer to the others
_FLAG_ALIASES = {"--root": "data.root", "--sources": "data.sources", "--targets": "data.targets",
                 "--transforms": "data.transforms", "--save-dir": "data.save_dir"}
_FLAG_ANSWERS = {
    "--gpu-devices": "vdreid uses the GPUs CUDA makes visible (set CUDA_VISIBLE_DEVICES) and train.use_gpu",
    "--num-gpus": "for several GPUs run `torchrun --nproc_per_node N -m vdreid train ...` (DDP)",
    "--num-machines": "for several machines run torchrun with --nnodes and --rdzv-endpoint",
    "--dist-url": "torchrun sets the rendezvous; vdreid reads its environment",
    "--machine-rank": "torchrun sets the rank; vdreid reads its environment",
    "--resume": "--resume belongs to `vdreid train` (`vdreid train --config-file F --resume latest`)",
}
#: fast-reid / detectron2 upper-case keys with an exact vdreid equivalent
_KEY_ALIASES = {"MODEL.WEIGHTS": "model.load_weights", "OUTPUT_DIR": "data.save_dir", "SOLVER.BASE_LR": "train.lr",
                "SOLVER.MAX_EPOCH": "train.max_epoch", "SOLVER.WEIGHT_DECAY": "train.weight_decay",
                "SOLVER.MOMENTUM": "train.momentum", "SOLVER.SEED": "train.seed", "SEED": "train.seed",
                "DATASETS.NAMES": "data.sources", "DATASETS.TESTS": "data.targets",
                "DATALOADER.NUM_WORKERS": "data.workers", "TEST.IMS_PER_BATCH": "test.batch_size",
                "MODEL.BACKBONE.PRETRAIN_PATH": "model.pretrained_path", "TEST.RERANK.ENABLED": "test.rerank",
                "TEST.FLIP.ENABLED": "test.flip", "INPUT.SIZE_TRAIN": "data.height data.width (two keys)"}
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+(e[-+]?\d+)?$", re.IGNORECASE)


def _add_model_args(p: argparse.ArgumentParser, config_required: bool = False, default_config: str = "") -> None:
    p.add_argument("--config-file", default=default_config, required=config_required,
                   help="a config file, or a shipped recipe name (`vdreid recipes` lists them)")
    for flag, key in _FLAG_ALIASES.items():
        if flag != "--save-dir":
            p.add_argument(flag, dest=f"alias_{key}", default=None, metavar=key.split(".")[-1].upper(),
                           help=f"torchreid's spelling of {key}")
    p.add_argument("--eval-only", action="store_true", help="fast-reid's spelling of test.evaluate true")
    _add_plugin(p)


def _add_plugin(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="import a module that registers methods, datasets or loss terms (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdreid", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"vdreid {__version__} (torch {torch.__version__}, torchreid layout "
                                f"{compat.TORCHREID_LAYOUT}, methods: {', '.join(methods.names())})")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, allow_abbrev=False, **kw)

    p = add("train", help="train a config (a dataset with several splits: one split, or --all-splits)")
    p.add_argument("--split", "--trial", dest="split", type=int, default=0,
                   help="the split of a dataset with several train/test splits (RegDB: 1..10)")
    p.add_argument("--all-splits", "--all-trials", dest="all_splits", action="store_true",
                   help="train and test every split in turn (into <save_dir>/split<N>)")
    p.add_argument("--resume", default="", help="checkpoint to resume (or 'latest' = save_dir/latest.pth)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a folder that holds one (its files are moved aside, never deleted)")
    p.add_argument("--save-dir", default="", help="output folder (sets data.save_dir)")
    _add_model_args(p, config_required=True)
    p.set_defaults(func=cmd_train)

    p = add("test", help="evaluate a checkpoint on the config's targets")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--trials", type=int, default=0, help="gallery trials (num_trials of the target's section)")
    p.add_argument("--feature-mode", default="", help="test feature: one of the method's feature modes "
                   "(vdreid.methods.get(name).feature_modes)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (recorded in the results)")
    p.add_argument("--visrank", action="store_true", help="write ranked-list pictures")
    p.add_argument("--save-dir", default="")
    _add_model_args(p)
    p.set_defaults(func=cmd_test)

    layouts = data_registry.synthetic_layouts()
    presets = sorted({name for lay in layouts.values() for name in lay.presets})
    p = add("make-synthetic", help="write a synthetic tree in a dataset's real layout")
    p.add_argument("--layout", choices=sorted(layouts), required=True)
    p.add_argument("--out", required=True, help="data root (the dataset folder is created inside)")
    p.add_argument("--preset", choices=presets, default="demo",
                   help="size (and style): tiny (tests), demo, hard (the transfer check's tree: hard style, 200 ids)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", choices=("classic", "hard", "shift"), default=None,
                   help="default the preset's. classic: the fast attribute-grid people; hard: shape/texture/accessory "
                        "identities with viewpoint, occluder and sensor variation; shift: hard's held-out sibling")
    p.add_argument("--num-ids", type=int, default=0, help="identities in the split files (0: the preset's)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a synthetic tree made with other arguments (a real dataset is never touched)")
    _add_plugin(p)
    p.set_defaults(func=cmd_make_synthetic)

    p = add("leaderboard", help="results JSON files + published numbers -> Markdown and CSV")
    p.add_argument("--runs", nargs="+", default=["log"], help="results JSON files or folders (recursive)")
    p.add_argument("--published", default="", help="published numbers YAML (default: the shipped one)")
    p.add_argument("--no-published", action="store_true")
    p.add_argument("--out", default=osp.join("benchmarks", "LEADERBOARD.md"))
    p.add_argument("--csv", default="")
    _add_plugin(p)
    p.set_defaults(func=cmd_leaderboard)

    p = add("tsne", help="t-SNE pictures (paper Fig. 5 per branch, Fig. 6 joint)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="")
    p.add_argument("--target", default="")
    p.add_argument("--modes", default="", help="feature modes to draw (default: the method's tsne_modes)")
    p.add_argument("--joint-mode", default="", help="mode of the joint cross-modal picture (default: the first)")
    p.add_argument("--num-ids", type=int, default=12)
    p.add_argument("--per-id", type=int, default=10)
    _add_model_args(p)
    p.set_defaults(func=cmd_tsne)

    p = add("export", help="ONNX export of the test-time feature extractor, checked with onnxruntime")
    p.add_argument("--checkpoint", default="")
    p.add_argument("--out", required=True)
    p.add_argument("--feature-mode", default="")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--opset", type=int, default=17)
    _add_model_args(p)
    p.set_defaults(func=cmd_export)

    p = add("plot", help="CMC curves of several runs, or training curves of every loss term")
    p.add_argument("--cmc", nargs="+", default=None, help="results JSON files")
    p.add_argument("--train-log", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_plot)

    p = add("demo", help="synthetic data -> train the quickstart -> evaluate -> leaderboard and pictures")
    p.add_argument("--published", default="")
    p.add_argument("--no-progress", action="store_true")
    _add_model_args(p, default_config=DEMO_RECIPE)
    p.set_defaults(func=cmd_demo)

    p = add("recipes", help="list the shipped recipes (names for --config-file and _base_)")
    p.add_argument("--all", action="store_true", help="also the shared parents (names starting with _)")
    p.set_defaults(func=cmd_recipes)
    return parser


def _preload_plugins(argv: list[str]) -> None:
    """Import every ``--plugin`` before the parser is built: a plug-in may register a dataset whose synthetic
    layout ``make-synthetic --layout`` offers, or a method a config names."""
    for i, tok in enumerate(argv):
        if tok == "--plugin" and i + 1 < len(argv):
            plugins.load_plugin(argv[i + 1])
        elif tok.startswith("--plugin="):
            plugins.load_plugin(tok.split("=", 1)[1])


def _overrides(command: str, rest: list[str]) -> list[str]:
    """The ``KEY VALUE`` overrides among the arguments the parser did not take; habits of torchreid and fast-reid get
    an alias or a one-line answer naming vdreid's equivalent."""
    out: list[str] = []
    valid = set(flat_keys(get_default_config()))
    for tok in rest:
        if tok == "--":
            continue
        if tok == "--opts":  # detectron2 / fast-reid put the overrides after --opts; here they may stand anywhere
            continue
        if tok.startswith("-") and not _NEGATIVE_NUMBER.match(tok):
            flag = tok.split("=", 1)[0]
            hint = _FLAG_ANSWERS.get(flag) or (f"set {_FLAG_ALIASES[flag]} instead" if flag in _FLAG_ALIASES else "")
            raise ConfigError(f"vdreid {command}: unknown option {flag!r}"
                              + (f"; {hint}" if hint else f"; see `vdreid {command} --help`"))
        out.append(tok)
    keys = out[0::2]
    for i, key in enumerate(keys):
        if key in valid or "." not in key and key.upper() != key:
            continue
        if key in _KEY_ALIASES:
            target = _KEY_ALIASES[key]
            if " " in target or target not in valid:
                raise ConfigError(f"{key} is fast-reid's key; vdreid's equivalent is {target}")
            logger.info("fast-reid's %s is vdreid's %s (used as such)", key, target)
            out[2 * i] = target
        elif key.upper() == key and key.lower() in valid:
            raise ConfigError(f"unknown config key {key!r}: vdreid's keys are lower case; use {key.lower()!r}")
    return out


def _apply_aliases(args: argparse.Namespace) -> None:
    extra: list[str] = []
    for key in _FLAG_ALIASES.values():
        value = getattr(args, f"alias_{key}", None)
        if value is not None:
            extra += [key, value]
    if getattr(args, "eval_only", False):
        extra += ["test.evaluate", "true"]
    args.opts = list(args.opts or []) + extra


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line: known flags anywhere, everything else ``KEY VALUE`` overrides (``args.opts``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _preload_plugins(argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # the spelling the user typed, for messages (--trial and --all-trials are torchreid-style aliases)
    args.split_flag = next((t.split("=", 1)[0] for t in argv
                            if t.split("=", 1)[0] in ("--split", "--trial", "--all-splits", "--all-trials")), "--split")
    args.opts = _overrides(args.command, rest)
    _apply_aliases(args)
    if args.opts and not hasattr(args, "config_file"):
        raise ConfigError(f"vdreid {args.command} takes no KEY VALUE overrides, got {args.opts}")
    return args


def setup_logging(level: int = logging.INFO) -> None:
    """Console output of the command line: vdreid's loggers, one line per message, to stdout (rank 0 of a DDP job
    logs; the others only warnings)."""
    rank = int(os.environ.get("RANK", "0") or 0)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("vdreid")
    root.handlers[:] = [handler]
    root.setLevel(level if rank == 0 else logging.WARNING)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run a command. Bad input (any :class:`~vdreid.errors.VDReIDError`: a config key, a data file, a checkpoint,
    a run folder, a plug-in, a full disk) prints one line naming what to fix and exits with 2; anything else is a bug
    and shows its traceback (``VDREID_TRACEBACK=1`` shows it for bad input too)."""
    setup_logging()
    command = "?"
    try:
        args = parse_args(argv)
        command = args.command
        return int(args.func(args) or 0)
    except VDReIDError as exc:
        if os.environ.get("VDREID_TRACEBACK"):
            raise
        kind = "configuration error" if isinstance(exc, ConfigError) else type(exc).__name__
        if command == "?":
            command = next((a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")), "")
        sys.stderr.write(f"vdreid {command}: {kind}: {' '.join(str(exc).split())}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
