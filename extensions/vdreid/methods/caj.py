"""CAJ (Ye et al., "Channel Augmented Joint Learning for Visible-Infrared Recognition", ICCV'21) as a vdreid method
(``model.method: caj``), exactly as its authors' code trains it (``ICCV21_CAJ/`` of mangye16/Cross-Modal-Re-ID-baseline;
``docs/baselines.md``).

* Network: AGW's (:mod:`vdreid.models.agw`: two-stream stems, non-local blocks (0, 2, 3, 0), GeM, BNNeck): CAJ's
  ``model.py`` and ``resnet.py`` are AGW's files. Registered as ``caj`` (ResNet-50) and ``caj_resnet18``.
* Objective (:class:`vdreid.losses.CAJCriterion`): cross-entropy without label smoothing + the adaptive weighted
  triplet (:func:`vdreid.losses.adaptive_weighted_triplet`, ``alpha=1, gamma=1, square=1`` as the README trains).
* Batch: every visible image twice, plainly and channel-exchanged, plus the infrared images (the recipes set
  ``data.visible_views [channel_exchange:1]``; the augmentation is in ``data.transforms``: ``docs/augmentation.md``).
* Optimiser groups as AGW's: everything but BNNeck and classifier at ``caj.backbone_lr_mult`` (0.1) x ``train.lr``.

Checkpoints of CAJ's code have AGW's keys: ``vdreid test --checkpoint caj_best.t --config-file methods/caj_sysu``
reads them (layout ``caj``, or the ``agw`` layout the keys are detected as).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from yacs.config import CfgNode as CN

from vdreid.config import at_least
from vdreid.errors import ConfigError
from vdreid.losses import CAJCriterion
from vdreid.methods import register
from vdreid.methods.agw import AGW, AGW_FEATURE_MODES
from vdreid.models.agw import make_agw_factory
from vdreid.models.original import original_model_kwargs

#: CAJ's model names -> the AGW network preset they build
CAJ_PRESETS = {"caj": "agw", "caj_resnet18": "agw_resnet18"}


class CAJ(AGW):
    name = "caj"
    section = "caj"
    model_names = tuple(CAJ_PRESETS)
    feature_modes = AGW_FEATURE_MODES
    default_feature_mode = "bn"
    tsne_modes = ("bn", "pool")
    resume_keys = ("model", "num_classes", "backbone", "non_local", "gem")
    original_kinds = ("caj",)
    reads_layouts = ("agw",)  # a CAJ checkpoint's keys are AGW's

    @classmethod
    def model_factories(cls) -> dict[str, Any]:
        return {name: make_agw_factory(preset, name=name) for name, preset in CAJ_PRESETS.items()}

    @classmethod
    def config(cls) -> CN:
        c = CN()
        c.non_local = [0, 2, 3, 0]  # non-local blocks after the last bottlenecks of layer1..4 (AGW's network)
        c.gem = True  # GeM pooling, p = 3
        c.last_stride = 1
        c.ce = 1.0  # identity loss weight (no label smoothing)
        c.adp = 1.0  # adaptive weighted triplet weight
        c.alpha = 1.0  # ADP: magnification of the softmax weights (train_ext.py --alpha)
        c.gamma = 1.0  # ADP: scale of the difference (--gamma)
        c.square = 1  # ADP: 1 = squared difference (the README's setting), 0 = soft margin (--square)
        c.backbone_lr_mult = 0.1  # learning-rate factor of everything except BNNeck and classifier
        c.feature_mode = "bn"  # test feature: bn (CAJ's "FC"/"att") | pool; test.feature_mode overrides
        return c

    @classmethod
    def ranges(cls) -> dict[str, Any]:
        return {
            "caj.non_local": at_least(0, "a block count"),
            "caj.last_stride": ((lambda v: v in (1, 2)), "1 or 2"),
            "caj.ce": at_least(0),
            "caj.adp": at_least(0),
            "caj.alpha": at_least(0),
            "caj.gamma": at_least(0),
            "caj.square": ((lambda v: v in (0, 1)), "0 (soft margin) or 1 (squared difference)"),
            "caj.backbone_lr_mult": at_least(0),
        }

    def check_config(self, cfg: CN) -> None:
        self.check_network(cfg)
        c = cfg.caj
        if c.ce == 0 and c.adp == 0:
            raise ConfigError("config keys 'caj.ce' and 'caj.adp' are both 0: nothing would be trained")

    def preset_of(self, model_name: str) -> str:
        return CAJ_PRESETS.get(model_name, "agw")

    def build_criterion(self, cfg: CN, num_classes: int, model: nn.Module | None = None) -> nn.Module:
        c = cfg.caj
        return CAJCriterion(ce=c.ce, adp=c.adp, alpha=c.alpha, gamma=c.gamma, square=int(c.square))

    def original_overrides(self, kind: str, state_dict: dict[str, Any]) -> list[str]:
        """A checkpoint of CAJ's code (AGW's keys): backbone and non-local blocks read from its keys."""
        kw = original_model_kwargs(kind, state_dict)
        return ["model.method", "caj", "model.name", "caj", "model.backbone", kw["backbone"],
                "caj.non_local", str(list(kw["non_local"])), "caj.gem", str(kw["gem"])]

    def provenance(self, cfg: CN) -> dict[str, Any]:
        c = cfg.caj
        return {
            "method": self.name,
            "backbone": cfg.model.backbone or cfg.model.name,
            "non_local": [int(n) for n in c.non_local],
            "gem": bool(c.gem),
            "metric": f"adp(alpha={c.alpha:g}, gamma={c.gamma:g}, square={int(c.square)})",
            "feature_mode": self.feature_mode(cfg),
        }


register(CAJ())
