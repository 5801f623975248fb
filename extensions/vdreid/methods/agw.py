"""AGW (Ye et al., TPAMI'21), the cross-modality baseline, as a vdreid method (``model.method: agw``).

Network :mod:`vdreid.models.agw`, objective :class:`vdreid.losses.AGWCriterion` (identity loss without label
smoothing + weighted regularized triplet), optimiser groups as AGW's ``train.py``: every parameter except the BNNeck
and the classifier at ``agw.backbone_lr_mult`` (0.1) x ``train.lr``, BNNeck and classifier at ``train.lr``. The rest
of AGW's recipe (SGD with Nesterov momentum, per-epoch warm-up and steps, its sampler and epoch) lives in the
``configs/methods/agw_*.yaml`` recipes; ``docs/baselines.md`` describes it.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from yacs.config import CfgNode as CN

from vdreid.config import at_least
from vdreid.errors import ConfigError
from vdreid.losses import AGWCriterion
from vdreid.methods import register
from vdreid.methods.base import Method
from vdreid.models.agw import AGW_PRESETS, make_agw_factory
from vdreid.models.common import unwrap_model
from vdreid.models.original import original_model_kwargs

AGW_FEATURE_MODES = ("bn", "pool")
AGW_METRICS = ("wrt", "triplet")
_HEAD = ("bnneck.", "classifier.")


class AGW(Method):
    name = "agw"
    section = "agw"
    model_names = ("agw", "agw_resnet18")
    feature_modes = AGW_FEATURE_MODES
    default_feature_mode = "bn"
    tsne_modes = ("bn", "pool")
    resume_keys = ("model", "num_classes", "backbone", "non_local", "gem")
    original_kinds = ("agw",)

    @classmethod
    def model_factories(cls) -> dict[str, Any]:
        return {name: make_agw_factory(name) for name in cls.model_names}

    @classmethod
    def config(cls) -> CN:
        c = CN()
        c.non_local = [0, 2, 3, 0]  # non-local blocks after the last bottlenecks of layer1..4 (base: 0, 0, 0, 0)
        c.gem = True  # GeM pooling, p = 3 (base: average pooling)
        c.last_stride = 1
        c.ce = 1.0  # identity loss weight (no label smoothing)
        c.metric = "wrt"  # wrt (AGW) | triplet (AGW --method base: batch-hard, margin agw.triplet_margin)
        c.metric_weight = 1.0
        c.triplet_margin = 0.3
        c.backbone_lr_mult = 0.1  # learning-rate factor of everything except BNNeck and classifier
        c.feature_mode = "bn"  # test feature: bn (AGW's "FC") | pool (AGW's "POOL"); test.feature_mode overrides
        return c

    @classmethod
    def ranges(cls) -> dict[str, Any]:
        return {
            "agw.non_local": at_least(0, "a block count"),
            "agw.last_stride": ((lambda v: v in (1, 2)), "1 or 2"),
            "agw.ce": at_least(0),
            "agw.metric_weight": at_least(0),
            "agw.triplet_margin": at_least(0),
            "agw.backbone_lr_mult": at_least(0),
        }

    def check_network(self, cfg: CN) -> None:
        """Checks of the network keys (non-local blocks, last stride) of the method's section."""
        super().check_config(cfg)
        a, sec = cfg[self.section], self.section
        if len(a.non_local) != 4 or any(int(n) < 0 for n in a.non_local):
            raise ConfigError(f"config key '{sec}.non_local': 4 non-negative block counts expected, got {a.non_local}")
        if a.last_stride not in (1, 2):
            raise ConfigError(f"config key '{sec}.last_stride': 1 or 2, got {a.last_stride}")

    def check_config(self, cfg: CN) -> None:
        self.check_network(cfg)
        a = cfg.agw
        if a.metric not in AGW_METRICS:
            raise ConfigError(f"config key 'agw.metric': {a.metric!r} is not one of {list(AGW_METRICS)}")
        for key in ("ce", "metric_weight", "triplet_margin", "backbone_lr_mult"):
            if a[key] < 0:
                raise ConfigError(f"config key 'agw.{key}': must be >= 0, got {a[key]}")
        if a.ce == 0 and a.metric_weight == 0:
            raise ConfigError("config keys 'agw.ce' and 'agw.metric_weight' are both 0: nothing would be trained")

    def model_kwargs(self, cfg: CN) -> dict[str, Any]:
        a = cfg[self.section]
        kw: dict[str, Any] = dict(
            non_local=tuple(int(n) for n in a.non_local),
            gem=bool(a.gem),
            last_stride=int(a.last_stride),
            feature_mode=self.feature_mode(cfg),
            input_size=(int(cfg.data.height), int(cfg.data.width)),  # transformers are built for it (docs/encoders.md)
            **self.backbone_kwargs(cfg),
        )
        return kw

    def build_model(self, cfg: CN, num_classes: int) -> nn.Module:
        """``model.name``'s preset (``agw``: ResNet-50, ``agw_resnet18``), ``model.backbone`` overriding its CNN."""
        name = self.preset_of(cfg.model.name)
        return make_agw_factory(name)(num_classes=num_classes, pretrained=self.pretrained_arg(cfg),
                                      **self.model_kwargs(cfg))

    def preset_of(self, model_name: str) -> str:
        """The AGW network preset a model name of this method builds (``agw``: ResNet-50)."""
        return model_name if model_name in AGW_PRESETS else "agw"

    def build_criterion(self, cfg: CN, num_classes: int, model: nn.Module | None = None) -> nn.Module:
        a = cfg.agw
        return AGWCriterion(ce=a.ce, metric_weight=a.metric_weight, metric=a.metric, triplet_margin=a.triplet_margin)

    def param_groups(self, cfg: CN, model: nn.Module, criterion: nn.Module) -> list[dict[str, Any]]:
        """AGW ``train.py``: backbone (stems, shared stages, non-local blocks) at the section's
        ``backbone_lr_mult``, BNNeck and classifier at 1. Frozen parameters (the BNNeck bias) are left out: they never
        get a gradient."""
        net = unwrap_model(model)
        backbone, head = [], []
        for n, p in net.named_parameters():
            if p.requires_grad:
                (head if n.startswith(_HEAD) else backbone).append(p)
        groups = [{"params": backbone, "lr_mult": float(cfg[self.section].backbone_lr_mult)},
                  {"params": head, "lr_mult": 1.0}]
        extra = [p for p in criterion.parameters() if p.requires_grad]
        if extra:
            groups.append({"params": extra, "lr_mult": 1.0})
        return groups

    def original_overrides(self, kind: str, state_dict: dict[str, Any]) -> list[str]:
        """A checkpoint of AGW's code: its backbone and non-local blocks read from its keys."""
        kw = original_model_kwargs(kind, state_dict)
        return ["model.method", "agw", "model.name", "agw", "model.backbone", kw["backbone"],
                "agw.non_local", str(list(kw["non_local"])), "agw.gem", str(kw["gem"])]

    def provenance(self, cfg: CN) -> dict[str, Any]:
        a = cfg.agw
        return {
            "method": self.name,
            "backbone": cfg.model.backbone or cfg.model.name,
            "non_local": [int(n) for n in a.non_local],
            "gem": bool(a.gem),
            "metric": a.metric,
            "feature_mode": self.feature_mode(cfg),
        }


register(AGW())
