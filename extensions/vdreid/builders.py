"""Config -> components: data manager, model, criterion, optimiser/scheduler, engine, provenance.

Each builder reads one yacs config (:mod:`vdreid.config`) and calls the component's public constructor, so the CLI,
the demo, the benchmarks and the tests build runs the same way.

Table 3's settings (which encoders ``E`` and bottlenecks ``B`` are used) map onto the three-branch network as
follows: every branch is still computed (the network always has three), but a branch left out of ``vd.branches``
gets CE/metric weight 0, the terms that need it (DML/CML between ``ir`` and ``vis``, VSD on ``ir``/``vis``, VCD/VML on
``shared``) are switched off, and the test feature uses only the enabled branches. A branch left out of
``vd.bottleneck_branches`` trains without its bottleneck: see :class:`BranchMask`.
"""

from __future__ import annotations

import os.path as osp
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode as CN

from vdreid.config import ConfigError, config_hash, to_dict

# ------------------------------------------------------------------------------------------------ data


def dataset_kwargs(cfg: CN) -> dict[str, dict[str, Any]]:
    """Protocol options per registered dataset name (torchreid's ImageDataManager passes none of them)."""
    s, r = cfg.data.sysu, cfg.data.regdb
    sysu = dict(
        search_mode=s.search_mode,
        shots=s.shots,
        gallery_sampler=s.gallery_sampler,
        rand_perm_path=s.rand_perm_path or None,
        val_for_selection=s.val_for_selection,
        num_trials=s.num_trials,
    )
    regdb = dict(trial=r.trial, direction=r.direction)
    from vdreid.data import DATASET_REGISTRY

    out: dict[str, dict[str, Any]] = {}
    for name in list(cfg.data.sources) + list(cfg.data.targets):
        cls = DATASET_REGISTRY.get(name)
        if cls is None:
            continue  # another torchreid dataset: it takes no VI protocol options
        # a registered preset name (e.g. sysu_mm01_indoor) fixes its options; the config fills in the rest
        base = sysu if name.startswith("sysu") else regdb
        out[name] = {**base, **getattr(cls, "preset_defaults", {})}
    return out


def build_datamanager(cfg: CN, rank: int = 0, world_size: int = 1):
    """``vdreid.data.CrossModalDataManager`` from ``cfg.data`` and ``cfg.sampler``."""
    from vdreid.data import CrossModalDataManager

    root = osp.abspath(osp.expanduser(cfg.data.root))
    if not osp.isdir(root):
        raise FileNotFoundError(
            f'data.root "{root}" does not exist: point data.root at the folder holding SYSU-MM01/ or RegDB/ '
            "(for synthetic data: vdreid make-synthetic --layout sysu --out DIR)"
        )
    return CrossModalDataManager(
        root=root,
        sources=list(cfg.data.sources),
        targets=list(cfg.data.targets) or None,
        height=cfg.data.height,
        width=cfg.data.width,
        transforms=list(cfg.data.transforms),
        norm_mean=list(cfg.data.norm_mean),
        norm_std=list(cfg.data.norm_std),
        batch_size_test=cfg.test.batch_size,
        workers=cfg.data.workers,
        num_ids=cfg.sampler.num_ids,
        num_instances=cfg.sampler.num_instances,
        seed=cfg.sampler.seed,
        dataset_kwargs=dataset_kwargs(cfg),
        rank=rank,
        world_size=world_size,
    )


# ------------------------------------------------------------------------------------------------ model
def feature_mode_of(cfg: CN) -> str:
    """Test feature: ``test.feature_mode`` if set, else ``vd.feature_mode``, checked against the enabled branches."""
    mode = cfg.test.feature_mode or cfg.vd.feature_mode
    used = _branches_of_mode(mode)
    missing = used - set(cfg.vd.branches)
    if missing:
        raise ConfigError(
            f"feature mode '{mode}' reads branches {sorted(used)}, but vd.branches = {list(cfg.vd.branches)} "
            f"leaves {sorted(missing)} untrained; pick a mode of the enabled branches (e.g. shared_v, v_specific)"
        )
    if mode.startswith("z") or mode == "shared_z":
        nob = used - set(cfg.vd.bottleneck_branches)
        if nob:
            raise ConfigError(f"feature mode '{mode}' reads z of {sorted(nob)}, which vd.bottleneck_branches disables")
    return mode


def _branches_of_mode(mode: str) -> set[str]:
    if mode in ("obs_concat", "z_concat"):
        return {"ir", "vis", "shared"}
    if mode.startswith("shared"):
        return {"shared"}
    if mode.endswith("_specific"):
        return {"ir", "vis"}
    if mode.endswith("_ir"):
        return {"ir"}
    if mode.endswith("_vis"):
        return {"vis"}
    return set()


def model_kwargs(cfg: CN) -> dict[str, Any]:
    """Keyword arguments for ``build_vd_net`` / the registered factories; preset values left out."""
    kw: dict[str, Any] = dict(
        routing=cfg.vd.routing,
        bottleneck=cfg.vd.bottleneck,
        last_stride=cfg.vd.last_stride,
        feature_mode=feature_mode_of(cfg),
    )
    if cfg.vd.bottleneck_dims:
        kw["bottleneck_dims"] = tuple(cfg.vd.bottleneck_dims)
    if cfg.vd.z_classifier_hidden >= 0:
        kw["z_classifier_hidden"] = cfg.vd.z_classifier_hidden or None
    if cfg.vd.attention != "preset":
        kw["attention"] = cfg.vd.attention == "true"
    return kw


def build_model(cfg: CN, num_classes: int) -> nn.Module:
    """The VD network: ``model.backbone`` (any timm CNN) through ``build_vd_net``, else the registered
    ``model.name`` through torchreid's ``build_model``."""
    from vdreid import compat
    from vdreid.models import build_vd_net

    kw = model_kwargs(cfg)
    pretrained = bool(cfg.model.pretrained)
    path = cfg.model.pretrained_path or None
    if path and not pretrained:
        path = None  # pretrained=False wins: a path left in a base config must not force loading
    if cfg.model.backbone:
        return build_vd_net(backbone=cfg.model.backbone, num_classes=num_classes, pretrained=pretrained,
                            pretrained_path=path, **kw)
    factories = getattr(compat.models, "__model_factory")
    if cfg.model.name not in factories:
        vd = sorted(n for n in factories if n.startswith("vd_"))
        raise ConfigError(f"model.name '{cfg.model.name}' is not a registered model; VD models: {vd} "
                          "(or set model.backbone to a timm CNN name)")
    # torchreid's build_model passes no extra keywords; call the registered factory (same object) directly
    return factories[cfg.model.name](num_classes=num_classes, pretrained=path or pretrained, **kw)


# ------------------------------------------------------------------------------------------------ loss
def _recipe_value(v: float) -> float | None:
    return None if v < 0 else float(v)


def loss_config(cfg: CN):
    """``vdreid.losses.VDLossConfig`` with Table 3's branch switches applied (module docstring)."""
    from vdreid.losses import BRANCH_ORDER, VDLossConfig

    on = set(cfg.vd.branches)
    weights = []
    for name, w in zip(BRANCH_ORDER, cfg.vd.branch_weights):
        branch = "shared" if name.startswith("shared") else name
        weights.append(float(w) if branch in on else 0.0)
    lc = dict(
        recipe=cfg.vd.recipe,
        ce=cfg.loss.ce,
        label_smooth=cfg.loss.label_smooth,
        metric=cfg.loss.metric or None,
        metric_weight=cfg.loss.metric_weight,
        triplet_margin=cfg.loss.triplet_margin,
        dml=_recipe_value(cfg.loss.dml),
        cml=_recipe_value(cfg.loss.cml),
        beta=cfg.vd.beta,
        vsd=_recipe_value(cfg.vd.vsd),
        vcd=_recipe_value(cfg.vd.vcd),
        vml=_recipe_value(cfg.vd.vml),
        temperature=cfg.vd.temperature,
        detach_teacher=cfg.vd.detach_teacher,
        branch_weights=tuple(weights),
        ib_baseline=cfg.vd.ib_baseline,
    )
    if not {"ir", "vis"} <= on:  # DML / CML compare the two modality-specific branches
        lc["dml"], lc["cml"] = 0.0, 0.0
    bott = set(cfg.vd.bottleneck_branches)
    if not ({"ir", "vis"} & on & bott):  # VSD distils v -> z inside a modality-specific branch
        lc["vsd"] = 0.0
    if "shared" not in (on & bott):  # VCD / VML compare the shared branch's two views' representations
        lc["vcd"], lc["vml"] = 0.0, 0.0
    return VDLossConfig(**lc)


class BranchMask(nn.Module):
    """Criterion wrapper for Table 3 rows that leave out encoders ``E`` or bottlenecks ``B``.

    * A branch without ``B``: ``VDLoss`` always applies its CE and metric terms to both ``v`` and ``z`` of every
      branch, so we hand it the branch's observation in place of the representation (``z := v``, ``P_z := P_v``).
      The branch trains only its encoder (the bottleneck gets no gradient and is never used at test time) and its
      CE/metric act on ``v`` twice, i.e. with the branch weight doubled on ``v``. VSD there would be
      ``KL(P_v || P_v) = 0``; :func:`loss_config` already switches the distillation terms off.
    * A branch without ``E`` (left out of ``vd.branches``): its outputs are detached, so no term (including the
      conventional-IB estimate, which ``VDLoss`` takes over every branch) trains it; its CE/metric weights are 0.

    Written here because the loss has no per-branch switch for its ``z`` terms or for the IB estimate.
    """

    def __init__(self, criterion: nn.Module, disabled: set[str], without_b: set[str]) -> None:
        super().__init__()
        self.criterion = criterion
        self.disabled = set(disabled)
        self.without_b = set(without_b) - self.disabled

    def forward(self, out, pids):
        import dataclasses

        def swap(b):
            return dataclasses.replace(b, z=b.v, z_logits=b.v_logits, mu=None, logvar=None)

        def detach(b):
            kw = {f.name: getattr(b, f.name).detach() for f in dataclasses.fields(b)
                  if isinstance(getattr(b, f.name), torch.Tensor) and f.name != "index"}
            return dataclasses.replace(b, **kw)

        repl = {}
        for field_name, branch in (("ir", "ir"), ("vis", "vis"), ("shared_x", "shared"), ("shared_gray", "shared")):
            if branch in self.disabled:
                repl[field_name] = detach(getattr(out, field_name))
            elif branch in self.without_b:
                repl[field_name] = swap(getattr(out, field_name))
        return self.criterion(dataclasses.replace(out, **repl) if repl else out, pids)


def build_criterion(cfg: CN, num_classes: int, model: nn.Module | None = None) -> nn.Module:
    from vdreid.losses import VDLoss

    lcfg = loss_config(cfg)
    dims: dict[str, Any] = {}
    if lcfg.ib_baseline > 0:
        if model is None:
            raise ValueError("build_criterion: the conventional-IB baseline needs the model (for the v and z sizes)")
        net = getattr(model, "module", model)
        dims = dict(feat_dim_v=int(net.v_dim), feat_dim_z=int(net.z_dim))
    crit = VDLoss(lcfg, num_classes, **dims)
    disabled = {"ir", "vis", "shared"} - set(cfg.vd.branches)
    without = set(cfg.vd.branches) - set(cfg.vd.bottleneck_branches)
    return BranchMask(crit, disabled, without) if (disabled or without) else crit


# ------------------------------------------------------------------------------------------------ optimiser
def build_optim(cfg: CN, model: nn.Module, criterion: nn.Module):
    """Adam/SGD over the model's and the criterion's parameters, and the warm-up multi-step schedule."""
    from vdreid.engine import build_optimizer, build_scheduler

    params = list(model.parameters()) + [p for p in criterion.parameters() if p.requires_grad]
    opt = build_optimizer(params, name=cfg.train.optim, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = build_scheduler(opt, milestones=tuple(cfg.train.stepsize), gamma=cfg.train.gamma,
                            warmup_epochs=cfg.train.warmup_epochs, warmup_factor=cfg.train.warmup_factor)
    return opt, sched


# ------------------------------------------------------------------------------------------------ provenance
def group_hash(cfg: CN) -> str:
    """Config hash without the RegDB split: the ten RegDB trainings of one setting share it (leaderboard)."""
    c = cfg.clone()
    c.defrost()
    c.data.regdb.trial = 1
    return config_hash(c)


def provenance(cfg: CN) -> dict[str, Any]:
    """What goes into checkpoints and results JSON besides the evaluator's own fields."""
    regdb = any(n.startswith("regdb") for n in cfg.data.targets)
    return {
        "config_hash": config_hash(cfg),
        "config_group": group_hash(cfg),
        "recipe": cfg.vd.recipe,
        "model": cfg.model.backbone or cfg.model.name,
        "backbone": cfg.model.backbone or cfg.model.name,
        "routing": cfg.vd.routing,
        "bottleneck": cfg.vd.bottleneck,
        "feature_mode": feature_mode_of(cfg),
        "seed": cfg.train.seed,
        "dataset": ",".join(cfg.data.targets),
        "synthetic": bool(cfg.data.synthetic),
        "trial": cfg.data.regdb.trial if regdb else None,
        "config": to_dict(cfg),
    }


# ------------------------------------------------------------------------------------------------ engine
def use_gpu(cfg: CN) -> bool:
    return bool(cfg.train.use_gpu) and torch.cuda.is_available()


def build_engine(cfg: CN, datamanager, model: nn.Module, criterion: nn.Module, optimizer, scheduler,
                 progress: bool = True):
    from vdreid.engine import VDEngine

    return VDEngine(
        datamanager,
        model,
        optimizer,
        criterion,
        scheduler=scheduler,
        use_gpu=use_gpu(cfg),
        amp=cfg.train.amp,
        channels_last=cfg.train.channels_last,
        grad_clip=cfg.train.grad_clip,
        selection=cfg.train.selection,
        eval_freq=cfg.train.eval_freq,
        official_scheduler_offbyone=cfg.train.official_scheduler_offbyone,
        metric=cfg.test.dist_metric,
        backend=cfg.test.backend,
        feature_mode=feature_mode_of(cfg),
        provenance=provenance(cfg),
        sync_bn=cfg.train.sync_bn,
        find_unused_parameters=bool(set(cfg.vd.branches) != {"ir", "vis", "shared"}
                                    or set(cfg.vd.bottleneck_branches) != set(cfg.vd.branches)),
        progress=progress,
    )


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
