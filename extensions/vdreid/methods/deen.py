"""DEEN (Zhang & Wang, CVPR'23, "Diverse Embedding Expansion Network", the LLCM paper) as a vdreid method
(``model.method: deen``).

Network :mod:`vdreid.models.deen` (models ``deen``: the SYSU-MM01 / LLCM network, ``deen_regdb``: the RegDB one,
``deen_resnet18``: the SYSU-MM01 network on ResNet-18 for CPU runs), objective :class:`vdreid.losses.DEENCriterion`
(CE + batch-hard triplet + lambda_1 CPM + lambda_2 orthogonal loss), optimiser groups as DEEN's ``train.py``: every
parameter except the BNNeck and the classifier at ``deen.backbone_lr_mult`` (0.1) x ``train.lr``. The rest of the
recipe (SGD with Nesterov momentum, warm-up and steps, sampler, epoch, input size, augmentation, selection) lives in
``configs/methods/deen_*.yaml`` and ``configs/llcm_deen.yaml``; ``docs/baselines.md`` describes it.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from yacs.config import CfgNode as CN

from vdreid.config import at_least
from vdreid.errors import ConfigError
from vdreid.losses import DEENCriterion
from vdreid.methods import register
from vdreid.methods.base import Method
from vdreid.models.common import unwrap_model
from vdreid.models.deen import DEEN_PRESETS, make_deen_factory
from vdreid.models.original import original_model_kwargs

DEEN_FEATURE_MODES = ("all", "weighted", "bn", "pool")
_HEAD = ("bnneck.", "classifier.")
_WEIGHTS = ("ce", "triplet", "cpm", "ort")


class DEEN(Method):
    name = "deen"
    section = "deen"
    model_names = ("deen", "deen_regdb", "deen_resnet18")
    feature_modes = DEEN_FEATURE_MODES
    default_feature_mode = "all"
    tsne_modes = ("bn", "pool")
    resume_keys = ("model", "num_classes", "backbone", "dee_stage")
    original_kinds = ("deen",)

    @classmethod
    def model_factories(cls) -> dict[str, Any]:
        return {name: make_deen_factory(name) for name in cls.model_names}

    @classmethod
    def config(cls) -> CN:
        c = CN()
        c.ce = 1.0  # identity loss weight (no label smoothing), over the 3 embeddings of every image
        c.triplet = 1.0  # batch-hard triplet loss weight (pooled features of the 3 embeddings)
        c.triplet_margin = 0.3
        c.cpm = 0.8  # lambda_1: cross-modality prototype loss weight
        c.cpm_margin = 0.2  # the authors' CPMLoss always uses 0.2
        c.ort = 0.01  # lambda_2: orthogonal loss weight (the two DEE embeddings)
        c.dropout = 0.01  # dropout after the DEE module (training only)
        c.backbone_lr_mult = 0.1  # learning-rate factor of everything except BNNeck and classifier
        # test feature: all (six L2-normalised parts, DEEN's distmat7) | weighted (0.1 pool + 0.9 BN, distmat8) |
        # bn | pool (the input embedding's alone); test.feature_mode overrides
        c.feature_mode = "all"
        return c

    @classmethod
    def ranges(cls) -> dict[str, Any]:
        rules = {f"deen.{k}": at_least(0) for k in (*_WEIGHTS, "triplet_margin", "cpm_margin", "backbone_lr_mult")}
        rules["deen.dropout"] = ((lambda v: 0 <= v < 1), "a probability in [0, 1)")
        return rules

    def check_config(self, cfg: CN) -> None:
        super().check_config(cfg)
        d = cfg.deen
        if not 0.0 <= d.dropout < 1.0:
            raise ConfigError(f"config key 'deen.dropout': a probability in [0, 1) expected, got {d.dropout}")
        for key in (*_WEIGHTS, "triplet_margin", "cpm_margin", "backbone_lr_mult"):
            if d[key] < 0:
                raise ConfigError(f"config key 'deen.{key}': must be >= 0, got {d[key]}")
        if not any(d[k] for k in _WEIGHTS):
            raise ConfigError("config keys 'deen.ce', 'deen.triplet', 'deen.cpm' and 'deen.ort' are all 0: nothing "
                              "would be trained")

    def model_kwargs(self, cfg: CN) -> dict[str, Any]:
        return dict(dropout=float(cfg.deen.dropout), feature_mode=self.feature_mode(cfg), **self.backbone_kwargs(cfg))

    def build_model(self, cfg: CN, num_classes: int) -> nn.Module:
        """``model.name``'s preset (``deen``, ``deen_regdb``: ResNet-50; ``deen_resnet18``), ``model.backbone``
        overriding its CNN."""
        name = cfg.model.name if cfg.model.name in DEEN_PRESETS else "deen"
        return make_deen_factory(name)(num_classes=num_classes, pretrained=self.pretrained_arg(cfg),
                                       **self.model_kwargs(cfg))

    def build_criterion(self, cfg: CN, num_classes: int, model: nn.Module | None = None) -> nn.Module:
        d = cfg.deen
        return DEENCriterion(ce=d.ce, triplet=d.triplet, triplet_margin=d.triplet_margin, cpm=d.cpm,
                             cpm_margin=d.cpm_margin, ort=d.ort)

    def param_groups(self, cfg: CN, model: nn.Module, criterion: nn.Module) -> list[dict[str, Any]]:
        """DEEN ``train.py``: everything but BNNeck and classifier (stems, shared stages, MFA blocks, DEE) at
        ``deen.backbone_lr_mult``, BNNeck and classifier at 1. The frozen BNNeck bias is left out (no gradient)."""
        backbone, head = [], []
        for n, p in unwrap_model(model).named_parameters():
            if p.requires_grad:
                (head if n.startswith(_HEAD) else backbone).append(p)
        groups = [{"params": backbone, "lr_mult": float(cfg.deen.backbone_lr_mult)}, {"params": head, "lr_mult": 1.0}]
        extra = [p for p in criterion.parameters() if p.requires_grad]
        if extra:
            groups.append({"params": extra, "lr_mult": 1.0})
        return groups

    def original_overrides(self, kind: str, state_dict: dict[str, Any]) -> list[str]:
        """A checkpoint of DEEN's code: the network (SYSU-MM01 / LLCM or RegDB form) and its ResNet read from the
        keys."""
        kw = original_model_kwargs(kind, state_dict)
        name = "deen" if kw["dee_stage"] == 3 else "deen_regdb"
        return ["model.method", "deen", "model.name", name, "model.backbone", kw["backbone"]]

    def provenance(self, cfg: CN) -> dict[str, Any]:
        d = cfg.deen
        preset = DEEN_PRESETS.get(cfg.model.name, DEEN_PRESETS["deen"])
        return {
            "method": self.name,
            "backbone": cfg.model.backbone or cfg.model.name,
            "dee_stage": int(preset["dee_stage"]),
            "weights": {k: float(d[k]) for k in _WEIGHTS},
            "feature_mode": self.feature_mode(cfg),
        }


register(DEEN())
