"""``vdreid`` command line (also ``python -m vdreid``).

    vdreid train   --config-file F [--trial N | --all-trials] [--resume PATH | --overwrite] [KEY VALUE ...]
    vdreid test    [--config-file F] --checkpoint PATH [--trials N] [--feature-mode M] [--rerank] [--visrank]
    vdreid make-synthetic --layout sysu|regdb|llcm --out DIR [--preset demo|tiny|hard] [--seed S] [--style S]
    vdreid leaderboard [--runs DIR ...] [--out benchmarks/LEADERBOARD.md]
    vdreid tsne    [--config-file F] --checkpoint PATH [--out DIR] [--modes M1,M2,...]
    vdreid export  [--config-file F] --checkpoint PATH --out model.onnx [--feature-mode M]
    vdreid plot    --cmc RESULTS.json ... | --train-log train_log.jsonl  --out FILE.png
    vdreid demo    [--config-file configs/quickstart.yaml]

Every command that builds a model takes ``--config-file`` and trailing ``KEY VALUE`` overrides as torchreid's
scripts do (``vdreid train --config-file configs/sysu_all.yaml train.max_epoch 10 data.root /data``). ``test``,
``tsne`` and ``export`` without ``--config-file`` rebuild the configuration stored in the checkpoint.
``train`` under ``torchrun --nproc_per_node N`` uses all N processes (DDP; the engine handles the rest).
"""

from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import sys
import time
from typing import Any

from yacs.config import CfgNode as CN

from vdreid.config import ConfigError, get_default_config, load_config, merge_dict
from vdreid.recipes import published_path, resolve_config

REPO_HINT = "run from the repository root or pass paths explicitly"
logger = logging.getLogger("vdreid.cli")


# ------------------------------------------------------------------------------------------------ config
def _cfg_from_args(args: argparse.Namespace, extra: list[str] | None = None, ckpt_config: dict | None = None,
                   first: list[str] | None = None) -> CN:
    opts = list(first or []) + list(args.opts or []) + list(extra or [])
    if getattr(args, "config_file", None):
        return load_config(resolve_config(args.config_file), opts)  # a path, or a shipped recipe name
    if ckpt_config is not None:
        cfg = get_default_config()
        merge_dict(cfg, ckpt_config, "the checkpoint's stored config")
        from vdreid.config import check_values, merge_from_list

        merge_from_list(cfg, opts)
        check_values(cfg)
        cfg.freeze()
        return cfg
    raise ConfigError("--config-file is required (or a --checkpoint written by `vdreid train`, which stores its "
                      "config)")


def _read_checkpoint(path: str | None):
    """The checkpoint (``vdreid.engine.checkpoint.ModelCheckpoint``) named by ``--checkpoint``, or None."""
    if not path:
        return None
    from vdreid.engine.checkpoint import read_model_checkpoint

    return read_model_checkpoint(path)


def _original_overrides(ckpt) -> list[str]:
    """Config overrides describing a checkpoint written by a method's original code (the method decides)."""
    from vdreid import methods

    return methods.method_of_original(ckpt.kind).original_overrides(ckpt.kind, ckpt.state_dict)


# ------------------------------------------------------------------------------------------------ train
def _train_one(cfg: CN, resume: str | None, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    from vdreid import builders
    from vdreid.engine import init_distributed
    from vdreid.engine.distributed import cleanup

    run = builders.run_options(cfg)
    resume = resume or run["resume"]
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
        _load_weights(model, ckpt)
        return _evaluate_only(cfg, dm, model, ckpt)
    if run["load_weights"]:
        _load_weights(model, run["load_weights"])
    criterion = builders.build_criterion(cfg, dm.num_train_pids, model)
    optimizer, scheduler = builders.build_optim(cfg, model, criterion)
    engine = builders.build_engine(cfg, dm, model, criterion, optimizer, scheduler, progress=progress)
    engine.provenance["num_classes"] = dm.num_train_pids
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


def _load_weights(model, path: str) -> None:
    """``model.load_weights``: initialise from a vdreid, torchreid or original-code checkpoint (strict)."""
    from vdreid.engine import load_model_weights
    from vdreid.engine.checkpoint import read_model_checkpoint
    from vdreid.models.original import from_original

    ckpt = read_model_checkpoint(path)
    state = from_original(ckpt.kind, ckpt.state_dict, model) if ckpt.kind in ("agw", "vd_official") else ckpt.state_dict
    load_model_weights(model, state, source=path)


def _evaluate_only(cfg: CN, dm, model, checkpoint: str) -> dict[str, Any]:
    """``test.evaluate true``: test the model loaded from ``checkpoint`` with no optimiser."""
    from vdreid import builders

    engine = builders.build_engine(cfg, dm, model)
    engine.provenance.update(num_classes=dm.num_train_pids, checkpoint=osp.abspath(checkpoint))
    save_dir = cfg.data.save_dir
    os.makedirs(save_dir, exist_ok=True)
    rank1 = engine.run(save_dir=save_dir, test_only=True, rerank=cfg.test.rerank)
    _after_test(cfg, engine, dm, save_dir)
    return {"rank1": rank1, "save_dir": save_dir, "engine": engine, "datamanager": dm, "model": engine.net,
            "wall_s": 0.0, "rank": 0}


def _trial_cfg(cfg: CN, trial: int, subdir: bool) -> CN:
    c = cfg.clone()
    c.defrost()
    c.data.regdb.trial = trial
    if subdir:
        c.data.save_dir = osp.join(cfg.data.save_dir, f"trial{trial}")
    c.freeze()
    return c


def cmd_train(args: argparse.Namespace) -> int:
    extra = ["data.regdb.trial", str(args.trial)] if args.trial else []
    if args.save_dir:
        extra += ["data.save_dir", args.save_dir]
    cfg = _cfg_from_args(args, extra)
    is_regdb = any(n.startswith("regdb") for n in list(cfg.data.sources) + list(cfg.data.targets))
    if args.all_trials:
        if not is_regdb:
            raise ConfigError("--all-trials is for RegDB (ten train/test splits); this config trains on "
                              f"{list(cfg.data.sources)}")
        results = {}
        for t in range(1, 11):
            logger.info("========== RegDB split %d/10 ==========", t)
            results[t] = _train_one(_trial_cfg(cfg, t, subdir=True), None, overwrite=args.overwrite)["rank1"]
        logger.info("RegDB rank-1 per split: %s",
                    ", ".join(f"{t}: {r:.2f}" for t, r in results.items() if r is not None))
        logger.info("average the splits with: vdreid leaderboard --runs %s", cfg.data.save_dir)
        return 0
    _train_one(cfg, args.resume, overwrite=args.overwrite)
    return 0


# ------------------------------------------------------------------------------------------------ test
def _after_test(cfg: CN, engine, dm, save_dir: str) -> dict[str, str]:
    """CMC curve per target and, with ``test.visrank``, ranked-list pictures from the features the evaluation just
    extracted (nothing is extracted twice); returns the written paths."""
    from vdreid import builders
    from vdreid.tools.plots import plot_cmc_runs

    paths: dict[str, str] = {}
    label_of = engine.provenance.get("recipe") or engine.provenance.get("method", "")
    for name, rep in (engine.last_reports or {}).items():
        label = f"{cfg.model.backbone or cfg.model.name} {label_of} ({rep.protocol_name})"
        paths[f"cmc_{name}"] = plot_cmc_runs({label: list(rep.cmc_mean)}, osp.join(save_dir, f"cmc_{name}.png"),
                                             title=f"CMC: {name}")
        run = builders.run_options(cfg)
        if run["visrank"]:
            paths[f"ranked_{name}"] = engine.write_ranked_lists(name, save_dir, topk=run["visrank_topk"])
    return paths


def _build_for_checkpoint(args: argparse.Namespace, extra: list[str]):
    """(config, data manager, model with the checkpoint's weights, checkpoint) for ``--checkpoint``.

    A vdreid checkpoint rebuilds the configuration it stores (``--config-file`` and overrides still win); a
    checkpoint of the AGW code or the released VD code is mapped to vdreid's model (:func:`vdreid.models.
    from_original`) and needs ``--config-file`` for the data; a plain torchreid state dict needs ``--config-file``.
    """
    from vdreid import builders

    ckpt = _read_checkpoint(args.checkpoint)
    original = ckpt is not None and ckpt.kind in ("agw", "vd_official")
    if ckpt is not None and ckpt.kind == "torchreid" and not getattr(args, "config_file", None):
        raise ConfigError(f'"{args.checkpoint}" stores no vdreid config (a torchreid state dict): pass --config-file '
                          "with the model and data it was trained with")
    if original and not getattr(args, "config_file", None):
        raise ConfigError(f'"{args.checkpoint}" was written by the {ckpt.kind} code: pass --config-file for the data '
                          "(e.g. configs/methods/agw_sysu.yaml or configs/official/sysu_all.yaml); the model is read "
                          "from the checkpoint")
    first = _original_overrides(ckpt) if original else None
    cfg = _cfg_from_args(args, extra, ckpt.config if ckpt is not None else None, first=first)
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
    from vdreid import builders

    extra: list[str] = []
    if args.trials:
        extra += ["data.sysu.num_trials", str(args.trials)]
    if args.feature_mode:
        extra += ["test.feature_mode", args.feature_mode]
    if args.rerank:
        extra += ["test.rerank", "true"]
    if args.visrank:
        extra += ["test.visrank", "true"]
    if args.save_dir:
        extra += ["data.save_dir", args.save_dir]
    cfg, dm, model, ckpt = _build_for_checkpoint(args, extra)
    engine = builders.build_engine(cfg, dm, model)  # evaluation only: no criterion, no optimiser
    save_dir = cfg.data.save_dir
    os.makedirs(save_dir, exist_ok=True)
    engine.provenance.update(checkpoint=osp.abspath(args.checkpoint), checkpoint_format=ckpt.kind,
                             num_classes=dm.num_train_pids)
    if ckpt.epoch is not None:
        engine.epoch = ckpt.epoch - 1  # the results record the checkpoint's epoch as the selected one
    engine.run(save_dir=save_dir, test_only=True, rerank=cfg.test.rerank)
    paths = _after_test(cfg, engine, dm, save_dir)
    logger.info("results JSON: %s/results_<target>.json", save_dir)
    for k, v in paths.items():
        logger.info("%s: %s", k, v)
    return 0


# ------------------------------------------------------------------------------------------------ tools
def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from vdreid.data import synthetic

    fn = {"sysu": synthetic.make_sysu, "regdb": synthetic.make_regdb, "llcm": synthetic.make_llcm}[args.layout]
    kw: dict[str, Any] = {} if args.style is None else {"style": args.style}
    if args.num_ids:
        kw["num_ids"] = args.num_ids
    path = fn(args.out, seed=args.seed, preset=args.preset, **kw)
    presets = {"sysu": synthetic.SYSU_PRESETS, "regdb": synthetic.REGDB_PRESETS, "llcm": synthetic.LLCM_PRESETS}
    style = args.style or presets[args.layout].get(args.preset, {}).get("style", "classic")
    logger.info("wrote synthetic %s tree (preset %s, %s style, seed %s) to %s", args.layout, args.preset, style,
                args.seed, path)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from vdreid.tools.leaderboard import build_leaderboard

    out_csv = args.csv or osp.splitext(args.out)[0] + ".csv"
    published = None if args.no_published else (args.published or published_path())
    rows = build_leaderboard(args.runs, published, args.out, out_csv)
    ours = sum(r.kind == "ours" for r in rows)
    logger.info("leaderboard: %d runs of ours + %d published rows -> %s, %s", ours, len(rows) - ours, args.out, out_csv)
    return 0


def cmd_tsne(args: argparse.Namespace) -> int:
    from vdreid import builders
    from vdreid.tools.tsne import tsne_from_datamanager

    extra = ["data.workers", "0"]
    cfg, dm, model, _ = _build_for_checkpoint(args, extra)
    target = args.target or list(cfg.data.targets)[0]
    modes = [m for m in args.modes.split(",") if m] or list(builders.method_of(cfg).tsne_modes)
    out = args.out or osp.join(cfg.data.save_dir, "tsne")
    paths = tsne_from_datamanager(model, dm, target, out, modes, num_ids=args.num_ids, per_id=args.per_id,
                                  joint_mode=args.joint_mode if args.joint_mode in modes else modes[0])
    for k, v in paths.items():
        logger.info("t-SNE %s: %s", k, v)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vdreid import builders
    from vdreid.engine import load_model_weights
    from vdreid.models.original import from_original, original_model_kwargs
    from vdreid.tools.export import export_onnx

    ckpt = _read_checkpoint(args.checkpoint)
    original = ckpt is not None and ckpt.kind in ("agw", "vd_official")
    extra = ["test.feature_mode", args.feature_mode] if args.feature_mode else []
    cfg = _cfg_from_args(args, extra, ckpt.config if ckpt is not None else None,
                         first=_original_overrides(ckpt) if original else None)
    num_classes = args.num_classes
    if num_classes is None and ckpt is not None:
        if original:
            num_classes = original_model_kwargs(ckpt.kind, ckpt.state_dict)["num_classes"]
        else:
            num_classes = int((ckpt.provenance or {}).get("num_classes") or _classes_from_state(ckpt.state_dict))
    c = cfg.clone()
    c.defrost()
    c.model.pretrained = False
    model = builders.build_model(c, int(num_classes or 2))
    if ckpt is not None:
        state = from_original(ckpt.kind, ckpt.state_dict, model) if original else ckpt.state_dict
        load_model_weights(model, state, source=args.checkpoint)
    else:
        logger.warning("no --checkpoint given: exporting randomly initialised weights (a graph check only)")
    res = export_onnx(model, args.out, cfg.data.height, cfg.data.width, builders.feature_mode_of(cfg),
                      batch=args.batch, opset=args.opset)
    logger.info("ONNX (%s) -> %s: inputs %s, features %s-d, onnxruntime vs PyTorch max |diff| = %.2e", res["opset"],
                res["path"], res["inputs"], res["feature_dim"], res["max_abs_diff"])
    return 0


def _classes_from_state(state: dict) -> int:
    for k, v in state.items():
        if k.endswith("classifier.weight") and getattr(v, "dim", lambda: 0)() == 2:
            return int(v.shape[0])
    raise ConfigError("cannot tell the number of training identities from the checkpoint; pass --num-classes")


def cmd_plot(args: argparse.Namespace) -> int:
    from vdreid.tools.plots import plot_cmc_runs, plot_training_curves

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


# ------------------------------------------------------------------------------------------------ demo
def _demo_tree(root: str) -> str:
    """Make sure ``root`` holds a SYSU-MM01 tree for the demo; returns what was found.

    ``'generated'``: none was there, today's demo preset was written; ``'demo'``: today's demo tree is there;
    ``'other'``: a synthetic tree of other generator arguments (an older version's demo tree, another preset), used
    as it is with a warning (never deleted); ``'real'``: a tree not written by the generator, used as it is."""
    from vdreid.data import synthetic

    if not osp.isdir(osp.join(root, "SYSU-MM01", "exp")):
        logger.info("=> generating the synthetic SYSU-MM01 demo tree under %s", root)
        synthetic.make_sysu(root, preset="demo", seed=0)
        return "generated"
    if not osp.isfile(osp.join(root, "SYSU-MM01", synthetic.MARKER)):
        logger.info("=> using the SYSU-MM01 tree under %s", root)
        return "real"
    try:  # an identical demo tree: nothing to do
        synthetic.make_sysu(root, preset="demo", seed=0)
    except FileExistsError:
        logger.warning(
            "=> %s holds a synthetic tree made with other generator arguments than today's demo preset; the demo "
            "trains on it as it is (its time and numbers differ from the README's). For today's demo tree: "
            "vdreid make-synthetic --layout sysu --preset demo --out %s --overwrite", root, root)
        return "other"
    logger.info("=> using the synthetic SYSU-MM01 demo tree under %s", root)
    return "demo"


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic SYSU tree -> train quickstart -> all-search 10 trials -> table, leaderboard, pictures."""
    from vdreid.tools.leaderboard import build_leaderboard
    from vdreid.tools.plots import plot_training_curves
    from vdreid.tools.tsne import tsne_from_datamanager

    t0 = time.time()
    cfg = _cfg_from_args(args)
    root = cfg.data.root
    _demo_tree(root)
    # a previous demo run in the folder is moved aside into replaced-<time>/ (logged, never deleted)
    res = _train_one(cfg, None, progress=not args.no_progress, overwrite=True)
    save_dir, engine, dm = res["save_dir"], res["engine"], res["datamanager"]
    published = args.published or published_path()
    board = osp.join(save_dir, "LEADERBOARD.md")
    build_leaderboard([save_dir], published if osp.isfile(published) else None, board,
                      osp.join(save_dir, "LEADERBOARD.csv"))
    curves = plot_training_curves(osp.join(save_dir, "train_log.jsonl"), osp.join(save_dir, "training_curves.png"))
    target = list(cfg.data.targets)[0]
    from vdreid import builders

    modes = [m for m in builders.method_of(cfg).tsne_modes if m in getattr(engine.net, "feature_modes", ())]
    tsne = tsne_from_datamanager(engine.net, dm, target, osp.join(save_dir, "tsne"), modes, num_ids=12, per_id=8,
                                 device=engine.device)
    rep = engine.last_reports.get(target)
    chance = 100.0 / max(1, len({it[1] for it in dm.test_dataset[target]["gallery"]}))
    logger.info("================ vdreid demo: done ================")
    if rep is not None:
        logger.info(f"all-search rank-1 {rep.rank1:.2f}% over {rep.num_trials} trials (chance ~ {chance:.2f}%)")
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
def _add_common(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    p.add_argument("--config-file", default="", required=config_required, help="yacs YAML (see configs/)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=None,
                   help="KEY VALUE overrides, e.g. train.max_epoch 10 data.root /data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdreid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a config (RegDB: one split, or --all-trials)")
    p.add_argument("--trial", type=int, default=0, help="RegDB split 1..10 (sets data.regdb.trial)")
    p.add_argument("--all-trials", action="store_true", help="RegDB: train and test the ten splits in turn")
    p.add_argument("--resume", default="", help="checkpoint to resume (or 'latest' = save_dir/latest.pth)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a folder that holds one (its files are moved aside, never deleted)")
    p.add_argument("--save-dir", default="", help="output folder (sets data.save_dir)")
    _add_common(p, config_required=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="evaluate a checkpoint on the config's targets")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--trials", type=int, default=0, help="SYSU gallery trials (data.sysu.num_trials)")
    p.add_argument("--feature-mode", default="", help="test feature: one of the method's feature modes "
                   "(vdreid.methods.get(name).feature_modes)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (recorded in the results)")
    p.add_argument("--visrank", action="store_true", help="write ranked-list pictures")
    p.add_argument("--save-dir", default="")
    _add_common(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("make-synthetic", help="write a synthetic SYSU-MM01, RegDB or LLCM tree")
    p.add_argument("--layout", choices=("sysu", "regdb", "llcm"), required=True)
    p.add_argument("--out", required=True, help="data root (SYSU-MM01/, RegDB/ or LLCM/ is created inside)")
    p.add_argument("--preset", choices=("demo", "tiny", "hard"), default="demo",
                   help="size (and style): tiny (tests), demo, hard (the transfer check's tree: hard style, 200 ids)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", choices=("classic", "hard", "shift"), default=None,
                   help="default the preset's. classic: the fast attribute-grid people; hard: shape/texture/accessory "
                        "identities with viewpoint, occluder and sensor variation; shift: hard's held-out sibling")
    p.add_argument("--num-ids", type=int, default=0, help="identities in the split files (0: the preset's)")
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser("leaderboard", help="results JSON files + published numbers -> Markdown and CSV")
    p.add_argument("--runs", nargs="+", default=["log"], help="results JSON files or folders (recursive)")
    p.add_argument("--published", default="", help="published numbers YAML (default: the shipped one)")
    p.add_argument("--no-published", action="store_true")
    p.add_argument("--out", default=osp.join("benchmarks", "LEADERBOARD.md"))
    p.add_argument("--csv", default="")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("tsne", help="t-SNE pictures (paper Fig. 5 per branch, Fig. 6 joint)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="")
    p.add_argument("--target", default="")
    p.add_argument("--modes", default="", help="feature modes to draw (default: the method's tsne_modes)")
    p.add_argument("--joint-mode", default="", help="mode of the joint cross-modal picture (default: the first)")
    p.add_argument("--num-ids", type=int, default=12)
    p.add_argument("--per-id", type=int, default=10)
    _add_common(p)
    p.set_defaults(func=cmd_tsne)

    p = sub.add_parser("export", help="ONNX export of the test-time feature extractor, checked with onnxruntime")
    p.add_argument("--checkpoint", default="")
    p.add_argument("--out", required=True)
    p.add_argument("--feature-mode", default="")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--opset", type=int, default=17)
    _add_common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="CMC curves of several runs, or training curves of every loss term")
    p.add_argument("--cmc", nargs="+", default=None, help="results JSON files")
    p.add_argument("--train-log", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="synthetic data -> train quickstart -> evaluate -> leaderboard and pictures")
    p.add_argument("--published", default="")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--config-file", default="configs/quickstart.yaml")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=None)
    p.set_defaults(func=cmd_demo)
    return parser


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
    a run folder, a full disk) prints one line naming what to fix and exits with 2; anything else is a bug and shows
    its traceback (``VDREID_TRACEBACK=1`` shows it for bad input too)."""
    from vdreid.errors import VDReIDError

    args = build_parser().parse_args(argv)
    if getattr(args, "opts", None) and args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    setup_logging()
    try:
        return int(args.func(args) or 0)
    except VDReIDError as exc:
        if os.environ.get("VDREID_TRACEBACK"):
            raise
        kind = "configuration error" if isinstance(exc, ConfigError) else type(exc).__name__
        print(f"vdreid {args.command}: {kind}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
