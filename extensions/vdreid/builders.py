"""Config -> components: data manager, method (model and criterion), optimiser/scheduler, engine, provenance.

Each component turns its own config section into plain keyword arguments (datasets: ``data.<section>``; methods:
their section, see :mod:`vdreid.methods`); this module only routes sections to their owners, so the CLI, the demo,
the benchmarks and the tests build runs the same way. It names no method and no dataset.
"""

from __future__ import annotations

import dataclasses
import logging
import os.path as osp
import random
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode as CN

from vdreid import methods, plugins
from vdreid.config import (
    ConfigError,
    check_values,
    config_hash,
    explicit_keys,
    get_default_config,
    get_key,
    merge_dict,
    merge_from_list,
    set_explicit_keys,
    to_dict,
)
from vdreid.data import CrossModalDataManager
from vdreid.data import registry as data_registry
from vdreid.data.synthetic_layout import is_synthetic_tree
from vdreid.engine import EvalOptions, Evaluator, TrainOptions, VIEngine, build_optimizer
from vdreid.engine.checkpoint import load_model_weights, read_model_checkpoint
from vdreid.engine.distributed import device_for
from vdreid.engine.optim import ScheduleSpec, scheduler_from_spec
from vdreid.errors import CheckpointMismatchError, DatasetLayoutError
from vdreid.evaluation.approximate import ApproximateSearch
from vdreid.models.original import from_original, original_kinds, original_model_kwargs

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ data
def dataset_kwargs(cfg: CN) -> dict[str, dict[str, Any]]:
    """Protocol options per dataset name, each from its family's own config section (``data.<section>``,
    ``from_config``).

    A registered preset name (e.g. an indoor-search preset) fixes some options; a config that sets one of those keys
    explicitly to another value is an error naming both, never silently overridden.
    """
    explicit = explicit_keys(cfg)
    out: dict[str, dict[str, Any]] = {}
    for name in list(cfg.data.sources) + list(cfg.data.targets):
        cls = data_registry.get_dataset(name)
        if cls is None:
            continue  # another torchreid dataset: it takes no VI protocol options
        section = cls.config_section
        kw = dict(cls.from_config(cfg.data[section])) if section else {}
        for key, fixed in cls.preset_defaults.items():
            if kw.get(key) == fixed:
                continue
            ckey = f"data.{section}.{key}"
            if ckey in explicit:
                raise ConfigError(
                    f"config key '{ckey}' sets {kw.get(key)!r}, but data.sources/targets names '{name}', a preset "
                    f"that fixes {key}={fixed!r}; use the plain dataset name with '{ckey}', or drop the key"
                )
            kw[key] = fixed
        out[name] = kw
    return out


def datamanager_kwargs(cfg: CN, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Keyword arguments of ``vdreid.data.CrossModalDataManager`` from ``cfg.data``, ``cfg.sampler``, ``cfg.test``."""
    epoch = str(cfg.sampler.epoch)
    return dict(
        root=osp.abspath(osp.expanduser(cfg.data.root)),
        sources=list(cfg.data.sources),
        targets=list(cfg.data.targets) or None,
        height=cfg.data.height,
        width=cfg.data.width,
        transforms=list(cfg.data.transforms),
        norm_mean=list(cfg.data.norm_mean),
        norm_std=list(cfg.data.norm_std),
        random_erase_area=list(cfg.data.random_erase_area),
        resize_interpolation=cfg.data.resize_interpolation,
        visible_views=[str(v) for v in cfg.data.visible_views],
        infrared_views=[str(v) for v in cfg.data.infrared_views],
        batch_size_test=cfg.test.batch_size,
        workers=cfg.data.workers,
        num_ids=cfg.sampler.num_ids,
        num_instances=cfg.sampler.num_instances,
        seed=cfg.sampler.seed,
        epoch_definition=int(epoch) if epoch.isdigit() else epoch,
        sample_seeds=True,  # augmentation seeded per sample: the same run whatever data.workers is
        sampler_draw=cfg.sampler.draw,
        dataset_kwargs=dataset_kwargs(cfg),
        rank=rank,
        world_size=world_size,
    )


def build_datamanager(cfg: CN, rank: int = 0, world_size: int = 1):
    """``vdreid.data.CrossModalDataManager`` from ``cfg.data`` and ``cfg.sampler``."""
    kw = datamanager_kwargs(cfg, rank, world_size)
    root = kw["root"]
    if not osp.isdir(root):
        raise DatasetLayoutError(
            f'config key \'data.root\': "{root}" does not exist; point data.root at the folder holding '
            f"{', '.join(f'{f.dataset_dir}/' for f in data_registry.families())} (for synthetic data: vdreid "
            f"make-synthetic --layout {'|'.join(data_registry.synthetic_layouts())} --out DIR)"
        )
    return CrossModalDataManager(**kw)


# ------------------------------------------------------------------------------------------------ method
def method_of(cfg: CN) -> methods.Method:
    """The registered method the config picks (``model.method``)."""
    return methods.get(cfg.model.method)


def feature_mode_of(cfg: CN) -> str:
    """The run's test feature (``test.feature_mode`` or the method's recipe default), checked by the method."""
    return method_of(cfg).feature_mode(cfg)


def build_model(cfg: CN, num_classes: int) -> nn.Module:
    """The method's model (pretrained weights as configured, test feature set)."""
    return method_of(cfg).build_model(cfg, num_classes)


def build_criterion(cfg: CN, num_classes: int, model: nn.Module | None = None) -> nn.Module:
    """The method's criterion ``(outputs, pids) -> (total, terms)``."""
    return method_of(cfg).build_criterion(cfg, num_classes, model)


# ------------------------------------------------------------------------------------------------ optimiser
def schedule_spec(cfg: CN):
    """The per-epoch lr schedule of ``cfg.train`` and where it is stepped (a ``vdreid.engine.optim.ScheduleSpec``)."""
    t = cfg.train
    return ScheduleSpec(name=t.lr_scheduler, milestones=tuple(t.stepsize), gamma=t.gamma,
                        warmup_epochs=t.warmup_epochs, warmup_factor=t.warmup_factor, step_at=t.scheduler_step,
                        max_epoch=t.max_epoch)


def optimizer_kwargs(cfg: CN) -> dict[str, Any]:
    """Keyword arguments of ``vdreid.engine.build_optimizer`` (besides the parameter groups)."""
    t = cfg.train
    return dict(name=t.optim, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum, nesterov=t.nesterov)


def build_optim(cfg: CN, model: nn.Module, criterion: nn.Module):
    """The optimiser over the method's parameter groups (each at ``train.lr x lr_mult``) and the per-epoch schedule."""
    groups = []
    for g in method_of(cfg).param_groups(cfg, model, criterion):
        g = dict(g)
        mult = float(g.pop("lr_mult", 1.0))
        groups.append({**g, "lr": cfg.train.lr * mult, "lr_mult": mult})
    opt = build_optimizer(groups, **optimizer_kwargs(cfg))
    return opt, scheduler_from_spec(opt, schedule_spec(cfg))


# ------------------------------------------------------------------------------------------------ provenance
def _split_keys(cfg: CN) -> list[str]:
    """Config keys of the split index of every dataset family with splits among the targets (RegDB's trial)."""
    return [f"data.{f.config_section}.{f.split_key}" for f in data_registry.split_families(list(cfg.data.targets))]


def _all_split_keys() -> list[str]:
    """Config keys of the split index of every registered dataset family with splits (left out of group hashes
    whatever the targets: a split index never makes two settings differ)."""
    return [f"data.{f.config_section}.{f.split_key}" for f in data_registry.families() if f.split_key]


def _with_defaults(cfg: CN, keys: list[str]) -> CN:
    default = get_default_config()
    c = cfg.clone()
    c.defrost()
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = c
        for part in parent.split("."):
            node = node[part]
        node[leaf] = get_key(default, key)
    return c


def group_hash(cfg: CN) -> str:
    """Config hash without the split index of datasets with several splits: the trainings of one setting on each
    split share it (the leaderboard averages them)."""
    return config_hash(_with_defaults(cfg, _all_split_keys()))


def seed_group_hash(cfg: CN) -> str:
    """Config hash without the seeds (``train.seed``, ``sampler.seed``) and without the split index: runs of one
    setting repeated over seeds share it, and the leaderboard reports them as one row (mean +/- std over seeds)."""
    return config_hash(_with_defaults(cfg, _all_split_keys() + ["train.seed", "sampler.seed"]))


def synthetic_marked_folders(cfg: CN) -> list[str]:
    """The dataset folders of the run (each source's and target's family folder under ``data.root``) that hold the
    synthetic generator's marker (written by ``vdreid make-synthetic``)."""
    root = osp.abspath(osp.expanduser(cfg.data.root))
    out: list[str] = []
    for name in list(cfg.data.sources) + list(cfg.data.targets):
        fam = data_registry.family_of(name)
        folder = osp.join(root, fam.dataset_dir) if fam is not None else ""
        if folder and folder not in out and is_synthetic_tree(folder):
            out.append(folder)
    return out


#: marked folders whose override was already logged (provenance() runs several times per run)
_WARNED_OVERRIDES: set[tuple[str, ...]] = set()


def synthetic_override(cfg: CN) -> bool:
    """Whether the config declares a marked synthetic tree real data: ``data.synthetic false`` set explicitly (by a
    config file or an override, :func:`vdreid.config.explicit_keys`) while a dataset folder of the run holds the
    generator's marker. The run is then recorded as ``synthetic: false`` with ``synthetic_override: true``, and the
    leaderboard flags it."""
    return (not cfg.data.synthetic and "data.synthetic" in explicit_keys(cfg)
            and bool(synthetic_marked_folders(cfg)))


def synthetic_data(cfg: CN) -> bool:
    """Whether the run's data is synthetic: ``data.synthetic``, or any of its datasets' folders under ``data.root``
    holds the synthetic generator's marker (a tree written by ``vdreid make-synthetic`` needs no flag), unless the
    config sets ``data.synthetic false`` explicitly (:func:`synthetic_override`, logged as a warning)."""
    if cfg.data.synthetic:
        return True
    marked = synthetic_marked_folders(cfg)
    if marked and synthetic_override(cfg):
        if tuple(marked) in _WARNED_OVERRIDES:
            return False
        _WARNED_OVERRIDES.add(tuple(marked))
        logger.warning("data.synthetic false is set explicitly, but %s hold(s) the synthetic generator's marker: the "
                       "run is recorded as real data with synthetic_override (flagged on the leaderboard)",
                       ", ".join(marked))
        return False
    return bool(marked)


def provenance(cfg: CN) -> dict[str, Any]:
    """What goes into checkpoints and results JSON besides the evaluator's own fields."""
    split = _split_keys(cfg)
    return {
        "config_hash": config_hash(cfg),
        "config_group": group_hash(cfg),
        "seed_group": seed_group_hash(cfg),
        "model": cfg.model.backbone or cfg.model.name,
        "seed": cfg.train.seed,
        "dataset": ",".join(cfg.data.targets),
        "synthetic": synthetic_data(cfg),
        "synthetic_override": synthetic_override(cfg),
        "trial": get_key(cfg, split[0]) if split else None,
        "flip": bool(cfg.test.flip),
        **method_of(cfg).provenance(cfg),
        "plugins": plugins.loaded(),
        "config": to_dict(cfg),
    }


# ------------------------------------------------------------------------------------------------ engine
def use_gpu(cfg: CN) -> bool:
    return bool(cfg.train.use_gpu) and torch.cuda.is_available()


def engine_kwargs(cfg: CN, training: bool = True) -> dict[str, Any]:
    """What the trainer and its evaluator take besides their components: ``use_gpu``, ``options`` (the trainer's
    ``vdreid.engine.TrainOptions``), ``evaluation`` (the evaluator's ``vdreid.engine.EvalOptions``) and
    ``provenance`` (the run description stored in checkpoints and results)."""
    m = method_of(cfg)
    evaluation = dict(
        metric=cfg.test.dist_metric,
        backend=cfg.test.backend,
        max_rank=cfg.test.max_rank,
        flip=cfg.test.flip,
        approximate=ApproximateSearch.of(cfg.test.approximate, nlist=cfg.test.ivf_nlist, nprobe=cfg.test.ivf_nprobe,
                                         hnsw_m=cfg.test.hnsw_m, ef_search=cfg.test.hnsw_ef_search),
        feature_mode=m.feature_mode(cfg),
    )
    options = TrainOptions(
        amp=cfg.train.amp,
        channels_last=cfg.train.channels_last,
        grad_clip=cfg.train.grad_clip,
        selection=cfg.train.selection,
        eval_freq=cfg.train.eval_freq,
        eval_start=cfg.train.eval_start,
        eval_phase=cfg.train.eval_phase,
        eval_last=cfg.train.eval_last,
        selection_flip={"auto": None, "true": True, "false": False}[cfg.train.selection_flip],
        scheduler_step=cfg.train.scheduler_step,
        schedule=schedule_spec(cfg) if training else None,
        checkpoint_every=cfg.train.checkpoint_every,
        sync_bn=cfg.train.sync_bn,
        find_unused_parameters=m.find_unused_parameters(cfg),
        print_freq=cfg.train.print_freq,
    )
    return dict(
        use_gpu=use_gpu(cfg),
        options=options,
        evaluation=EvalOptions(**evaluation),
        provenance={**provenance(cfg), "resume_keys": list(m.resume_keys)},
    )


def run_options(cfg: CN) -> dict[str, Any]:
    """What the command line does with a run besides building it: epochs, where it writes, what it resumes or loads,
    evaluation-only, and which pictures it adds to the results (``vdreid train`` / ``vdreid demo``)."""
    return dict(
        save_dir=cfg.data.save_dir,
        max_epoch=cfg.train.max_epoch,
        start_epoch=cfg.train.start_epoch,
        resume=cfg.model.resume or None,
        load_weights=cfg.model.load_weights or None,
        evaluate_only=bool(cfg.test.evaluate),
        rerank=bool(cfg.test.rerank),
        visrank=bool(cfg.test.visrank),
        visrank_topk=int(cfg.test.visrank_topk),
        seed=cfg.train.seed,
    )


def build_evaluator(cfg: CN, datamanager, model: nn.Module) -> Evaluator:
    """The evaluator of ``model`` on the config's test targets, as ``vdreid test`` uses it (no trainer): its options
    and the run's provenance from :func:`engine_kwargs`, the model moved to the configured device."""
    kw = engine_kwargs(cfg, training=False)
    return Evaluator(datamanager, model, kw["evaluation"], provenance=kw["provenance"],
                     device=device_for(kw["use_gpu"]))


def build_engine(cfg: CN, datamanager, model: nn.Module, criterion: nn.Module | None = None, optimizer=None,
                 scheduler=None, progress: bool = True) -> VIEngine:
    """The trainer and its evaluator (``optimizer=None``: an evaluation-only engine)."""
    kw = engine_kwargs(cfg, training=optimizer is not None)
    evaluator = Evaluator(datamanager, model, kw["evaluation"], provenance=kw["provenance"])
    engine = VIEngine(datamanager, model, optimizer, criterion, scheduler, evaluator=evaluator,
                      options=dataclasses.replace(kw["options"], progress=progress), use_gpu=kw["use_gpu"])
    if getattr(engine, "run_state", None) is not None:
        engine.run_state.upgrade_config = upgrade_stored_config
    return engine


def upgrade_stored_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A configuration saved by a run of an older vdreid as today's tree: every method's key renames translated
    (``Method.upgrade_config``), keys added since at their defaults. Resuming compares this with the run's current
    configuration, so a rename is not mistaken for a changed training key. A tree that no longer loads is returned
    unchanged (the resume policy then names what differs)."""
    try:
        return to_dict(config_from_stored(stored, source="the resumed checkpoint's stored config"))
    except ConfigError:
        return stored


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------ checkpoints
def config_from_stored(stored: dict[str, Any], opts: list[str] | tuple[str, ...] = (),
                       source: str = "the checkpoint's stored config", plugins_used: list[str] | tuple[str, ...] = ()
                       ) -> CN:
    """A configuration stored by ``vdreid train`` (a checkpoint's or a run's), merged into today's defaults after
    every method translated the keys of its sections an older version named otherwise (``Method.upgrade_config``: a
    stored tree holds every method's sections), ``opts`` applied, checked, frozen. ``plugins_used``: the plug-ins the
    run had loaded (its provenance), named when its method is unknown."""
    model = stored.get("model") if isinstance(stored, dict) else None
    name = model.get("method") if isinstance(model, dict) else None
    try:
        methods.get(name or get_default_config().model.method)  # an unknown method: name the plug-ins it needs
    except ConfigError as exc:
        missing = [p for p in plugins_used if p not in plugins.loaded()]
        if not missing:
            raise
        raise ConfigError(f"{exc}; {source} was trained with the plug-in(s) {missing}: pass --plugin for "
                          "each") from None
    for owner in methods.all_methods():
        stored = owner.upgrade_config(stored)
    cfg = get_default_config()
    merge_dict(cfg, stored, source)
    merge_from_list(cfg, list(opts))
    # the keys the command line sets are explicit (a data.synthetic override, a preset conflict); the stored ones
    # are the run's own values
    set_explicit_keys(cfg, set(list(opts)[0::2]))
    check_values(cfg)
    cfg.freeze()
    return cfg


def checkpoint_config(ckpt, opts: list[str] | tuple[str, ...] = ()) -> CN:
    """The configuration a ``vdreid train`` checkpoint stores (:func:`config_from_stored`). ``ckpt``: a
    :class:`vdreid.engine.checkpoint.ModelCheckpoint` or a path."""
    if isinstance(ckpt, str):
        ckpt = read_model_checkpoint(ckpt)
    if ckpt.config is None:
        raise ConfigError(f'"{ckpt.path}" stores no vdreid config (a {ckpt.kind} checkpoint): give the configuration '
                          "it was trained with (--config-file)")
    return config_from_stored(ckpt.config, opts, plugins_used=(ckpt.provenance or {}).get("plugins") or ())


def is_original(ckpt) -> bool:
    """Whether a checkpoint was written by a method's original code (a registered layout), not by vdreid/torchreid."""
    return ckpt is not None and ckpt.kind in original_kinds()


def original_overrides(ckpt, prefer: str | None = None) -> list[str]:
    """Config overrides describing the model of an original-code checkpoint (the method that reads its layout
    decides; ``prefer``: the config's method, chosen when it reads the layout too)."""
    return methods.method_of_original(ckpt.kind, prefer).original_overrides(ckpt.kind, ckpt.state_dict)


def load_weights(model: nn.Module, path: str) -> None:
    """``model.load_weights``: initialise from a vdreid, torchreid or original-code checkpoint (strict)."""
    ckpt = read_model_checkpoint(path)
    state = from_original(ckpt.kind, ckpt.state_dict, model) if is_original(ckpt) else ckpt.state_dict
    load_model_weights(model, state, source=path)


def checkpoint_num_classes(ckpt) -> int:
    """Number of training identities of a vdreid/torchreid checkpoint: the recorded one (``vdreid train`` stores it
    in the provenance), else the rows of its identity classifier."""
    recorded = (ckpt.provenance or {}).get("num_classes")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
        return recorded
    for k, v in ckpt.state_dict.items():
        if k.endswith("classifier.weight") and isinstance(v, torch.Tensor) and v.dim() == 2:
            return int(v.shape[0])
    raise CheckpointMismatchError(f'"{ckpt.path}": cannot tell the number of training identities (no recorded '
                                  "num_classes and no '*classifier.weight' matrix); pass num_classes")


def build_model_from_checkpoint(ckpt, cfg: CN | None = None, num_classes: int | None = None) -> nn.Module:
    """The model a checkpoint holds, as ``vdreid test`` builds it: the method's model from ``cfg`` (default: the
    checkpoint's stored config) with no pretrained weights, then the checkpoint's weights loaded strictly (a
    checkpoint of the AGW code or the released VD code through :func:`vdreid.models.from_original`).

    ``ckpt``: a :class:`vdreid.engine.checkpoint.ModelCheckpoint` or a path. ``num_classes``: default the original
    code's classifier size, else :func:`checkpoint_num_classes`. The model's ``feature_mode`` is the config's test
    feature. Raises :class:`~vdreid.errors.CheckpointMismatchError` naming every key that does not fit.
    """
    if isinstance(ckpt, str):
        ckpt = read_model_checkpoint(ckpt)
    original = is_original(ckpt)
    if cfg is None:
        cfg = checkpoint_config(ckpt)
    if num_classes is None:
        num_classes = (original_model_kwargs(ckpt.kind, ckpt.state_dict)["num_classes"] if original
                       else checkpoint_num_classes(ckpt))
    c = cfg.clone()
    c.defrost()
    c.model.pretrained = False  # the checkpoint holds every weight
    model = build_model(c, num_classes)
    state = from_original(ckpt.kind, ckpt.state_dict, model) if original else ckpt.state_dict
    load_model_weights(model, state, source=ckpt.path)
    return model
