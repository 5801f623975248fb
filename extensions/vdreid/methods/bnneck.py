"""The plain BNNeck baseline (Luo et al., CVPRW'19) as a vdreid method (``model.method: bnneck``): one ResNet shared
by both modalities, label-smoothed identity loss + batch-hard triplet loss (``docs/baselines.md``).

This file is the whole method: a :class:`~vdreid.methods.base.Method` naming its models (registered by
:mod:`vdreid.models.baseline`), its config section, its builders and its test features (``docs/adding-a-method.md``
walks through it).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from yacs.config import CfgNode as CN

from vdreid.config import at_least
from vdreid.errors import ConfigError
from vdreid.losses import BNNeckCriterion
from vdreid.methods import register
from vdreid.methods.base import Method
from vdreid.models.baseline import BNNECK_PRESETS, make_bnneck_factory


class BNNeck(Method):
    name = "bnneck"
    section = "bnneck"
    model_names = ("bnneck_resnet50", "bnneck_resnet18")
    feature_modes = ("bn", "pool")
    default_feature_mode = "bn"
    tsne_modes = ("bn", "pool")
    resume_keys = ("model", "num_classes", "backbone")

    @classmethod
    def model_factories(cls) -> dict[str, Any]:
        return {name: make_bnneck_factory(name) for name in cls.model_names}

    @classmethod
    def config(cls) -> CN:
        c = CN()
        c.last_stride = 1
        c.ce = 1.0  # identity loss weight
        c.label_smooth = 0.1
        c.triplet = 1.0  # batch-hard triplet loss weight (on the feature before the BNNeck)
        c.triplet_margin = 0.3
        c.feature_mode = "bn"  # test feature: bn | pool; test.feature_mode overrides
        return c

    @classmethod
    def ranges(cls) -> dict[str, Any]:
        return {
            "bnneck.last_stride": ((lambda v: v in (1, 2)), "1 or 2"),
            "bnneck.ce": at_least(0),
            "bnneck.label_smooth": ((lambda v: 0 <= v < 1), "a number in [0, 1)"),
            "bnneck.triplet": at_least(0),
            "bnneck.triplet_margin": at_least(0),
        }

    def check_config(self, cfg: CN) -> None:
        super().check_config(cfg)
        b = cfg.bnneck
        if b.last_stride not in (1, 2):
            raise ConfigError(f"config key 'bnneck.last_stride': 1 or 2, got {b.last_stride}")
        if not 0.0 <= b.label_smooth < 1.0:
            raise ConfigError(f"config key 'bnneck.label_smooth': must be in [0, 1), got {b.label_smooth}")
        for key in ("ce", "triplet", "triplet_margin"):
            if b[key] < 0:
                raise ConfigError(f"config key 'bnneck.{key}': must be >= 0, got {b[key]}")
        if b.ce == 0 and b.triplet == 0:
            raise ConfigError("config keys 'bnneck.ce' and 'bnneck.triplet' are both 0: nothing would be trained")

    def model_kwargs(self, cfg: CN) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            last_stride=int(cfg.bnneck.last_stride), feature_mode=self.feature_mode(cfg), loss="vdreid",
            input_size=(int(cfg.data.height), int(cfg.data.width)),  # transformers are built for it (docs/encoders.md)
        )
        kw.update(self.backbone_kwargs(cfg))
        return kw

    def build_model(self, cfg: CN, num_classes: int) -> nn.Module:
        name = cfg.model.name if cfg.model.name in BNNECK_PRESETS else "bnneck_resnet50"
        kw = self.model_kwargs(cfg)
        return make_bnneck_factory(name)(num_classes=num_classes, pretrained=self.pretrained_arg(cfg), **kw)

    def build_criterion(self, cfg: CN, num_classes: int, model: nn.Module | None = None) -> nn.Module:
        b = cfg.bnneck
        return BNNeckCriterion(ce=b.ce, triplet=b.triplet, label_smooth=b.label_smooth, triplet_margin=b.triplet_margin)

    def provenance(self, cfg: CN) -> dict[str, Any]:
        return {
            "method": self.name,
            "backbone": cfg.model.backbone or cfg.model.name,
            "feature_mode": self.feature_mode(cfg),
        }


register(BNNeck())
