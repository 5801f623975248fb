"""An out-of-tree vdreid method: the BNNeck baseline with GeM pooling and a centre loss ("center_gem").

This file uses only vdreid's public API: ``vdreid.methods.Method`` / ``register``, ``vdreid.config`` range rules,
``vdreid.models`` building blocks (``GeneralizedMeanPooling``, ``NeckOutput``, ``set_last_stride_one``) and
``vdreid.losses`` (``label_smooth_ce``, ``triplet_loss``). Nothing in vdreid's package is edited: load it with

    vdreid train --plugin /path/to/plugin_method.py --config-file /path/to/plugin_method.yaml data.root DATA

(or list it in your package's ``vdreid.plugins`` entry point group). ``docs/adding-a-method.md`` walks through it.

The method:

* network: ONE timm CNN shared by both modalities (last stride 1), generalised-mean pooling (GeM, p = 3, Radenovic
  et al. TPAMI'19) instead of average pooling, a BNNeck (BatchNorm1d with a frozen zero bias) and a bias-free identity
  classifier, as in Luo et al.'s "Bag of Tricks" (CVPRW'19);
* objective: ``ce * CE_ls(logits) + triplet * Triplet(pool) + center * L_C(pool)`` with the centre loss of Wen et
  al. (ECCV'16), ``L_C = 1/2 * mean_i ||f_i - c_{y_i}||^2``, whose identity centres ``c`` are parameters of the
  criterion (vdreid's trainer optimises a criterion's parameters too; "Bag of Tricks" weights it 5e-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import Tensor, nn
from vdreid.config import at_least
from vdreid.errors import ConfigError
from vdreid.losses import label_smooth_ce, triplet_loss
from vdreid.methods import Method, register
from vdreid.models import GeneralizedMeanPooling, NeckOutput, set_last_stride_one
from yacs.config import CfgNode as CN

FEATURE_MODES = ("bn", "pool")


class CenterGeMNet(nn.Module):
    """timm CNN -> GeM -> BNNeck -> classifier. Training returns ``NeckOutput(pool, bn, logits)``; eval returns the
    test feature (``feature_mode`` 'bn' or 'pool'), not L2-normalised. ``modality`` is accepted and ignored (the
    network is shared by both modalities)."""

    feature_modes = FEATURE_MODES
    needs_vdreid_engine = True  # its training output is a NeckOutput for its own criterion
    test_needs_modality = False

    def __init__(self, backbone: str, num_classes: int, last_stride: int = 1, gem_p: float = 3.0,
                 feature_mode: str = "bn", pretrained: bool | str = False) -> None:
        super().__init__()
        if isinstance(pretrained, str):  # a local weights file
            self.body = timm.create_model(backbone, pretrained=True, num_classes=0, global_pool="",
                                          pretrained_cfg_overlay={"file": pretrained})
        else:
            self.body = timm.create_model(backbone, pretrained=bool(pretrained), num_classes=0, global_pool="")
        if last_stride == 1:
            set_last_stride_one(self.body, backbone)
        dim = int(self.body.num_features)
        self.pool = GeneralizedMeanPooling(p=gem_p)
        self.bnneck = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bnneck.weight)
        nn.init.zeros_(self.bnneck.bias)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.out_dim = dim
        self.feature_mode = feature_mode

    @property
    def feature_mode(self) -> str:
        return self._feature_mode

    @feature_mode.setter
    def feature_mode(self, mode: str) -> None:
        if mode not in FEATURE_MODES:
            raise ValueError(f"CenterGeMNet feature_mode must be one of {FEATURE_MODES}, got {mode!r}")
        self._feature_mode = mode

    def forward(self, x: Tensor, modality: Tensor | None = None) -> NeckOutput | Tensor:
        pool = self.pool(self.body.forward_features(x))
        bn = self.bnneck(pool)
        if not self.training:
            return bn if self.feature_mode == "bn" else pool
        return NeckOutput(pool=pool, bn=bn, logits=self.classifier(bn))


class CenterLoss(nn.Module):
    """Centre loss (Wen et al., ECCV'16): ``1/2 * mean_i ||f_i - c_{y_i}||^2`` with learnable centres ``c``."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim))

    def forward(self, features: Tensor, pids: Tensor) -> Tensor:
        return 0.5 * (features - self.centers[pids.long()]).pow(2).sum(dim=1).mean()


class CenterGeMCriterion(nn.Module):
    """``(outputs, pids) -> (total, {'ce', 'triplet', 'center'})``, each term weighted (weight 0: left out)."""

    def __init__(self, num_classes: int, dim: int, ce: float, label_smooth: float, triplet: float, margin: float,
                 center: float) -> None:
        super().__init__()
        self.ce, self.label_smooth, self.triplet, self.margin, self.center = ce, label_smooth, triplet, margin, center
        self.center_loss = CenterLoss(num_classes, dim)

    def forward(self, outputs: NeckOutput, pids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        terms: dict[str, Tensor] = {}
        if self.ce:
            terms["ce"] = self.ce * label_smooth_ce(outputs.logits, pids, eps=self.label_smooth)
        if self.triplet:
            terms["triplet"] = self.triplet * triplet_loss(outputs.pool, pids, margin=self.margin)
        if self.center:
            terms["center"] = self.center * self.center_loss(outputs.pool, pids)
        return sum(terms.values()), terms  # type: ignore[return-value]


@dataclass(frozen=True)
class _Preset:
    backbone: str


PRESETS = {"center_gem_resnet50": _Preset("resnet50"), "center_gem_resnet18": _Preset("resnet18")}


def _factory(name: str):
    def factory(num_classes: int, loss: str = "softmax", pretrained: bool | str = True, use_gpu: bool = True,
                **kwargs: Any) -> nn.Module:
        kwargs.setdefault("backbone", PRESETS[name].backbone)
        return CenterGeMNet(num_classes=num_classes, pretrained=pretrained, **kwargs)

    factory.__name__ = name
    return factory


class CenterGeM(Method):
    name = "center_gem"
    section = "center_gem"
    model_names = tuple(PRESETS)
    feature_modes = FEATURE_MODES
    default_feature_mode = "bn"
    tsne_modes = ("bn", "pool")
    resume_keys = ("model", "num_classes", "backbone")

    @classmethod
    def model_factories(cls) -> dict[str, Any]:
        return {name: _factory(name) for name in PRESETS}

    @classmethod
    def config(cls) -> CN:
        c = CN()
        c.last_stride = 1
        c.gem_p = 3.0  # GeM exponent (1 = average pooling)
        c.ce = 1.0
        c.label_smooth = 0.1
        c.triplet = 1.0
        c.triplet_margin = 0.3
        c.center = 5e-4  # "Bag of Tricks" weight of the centre loss
        c.feature_mode = "bn"
        return c

    @classmethod
    def ranges(cls) -> dict[str, Any]:
        return {
            "center_gem.last_stride": ((lambda v: v in (1, 2)), "1 or 2"),
            "center_gem.gem_p": ((lambda v: v >= 1), "a GeM exponent >= 1"),
            "center_gem.ce": at_least(0),
            "center_gem.label_smooth": ((lambda v: 0 <= v < 1), "a number in [0, 1)"),
            "center_gem.triplet": at_least(0),
            "center_gem.triplet_margin": at_least(0),
            "center_gem.center": at_least(0),
        }

    def check_config(self, cfg: CN) -> None:
        super().check_config(cfg)
        c = cfg.center_gem
        if c.ce == 0 and c.triplet == 0 and c.center == 0:
            raise ConfigError("config keys 'center_gem.ce', '.triplet' and '.center' are all 0: nothing would train")

    def model_kwargs(self, cfg: CN) -> dict[str, Any]:
        c = cfg.center_gem
        return dict(last_stride=int(c.last_stride), gem_p=float(c.gem_p), feature_mode=self.feature_mode(cfg),
                    **self.backbone_kwargs(cfg))

    def build_model(self, cfg: CN, num_classes: int) -> nn.Module:
        name = cfg.model.name if cfg.model.name in PRESETS else "center_gem_resnet50"
        return _factory(name)(num_classes=num_classes, pretrained=self.pretrained_arg(cfg), **self.model_kwargs(cfg))

    def build_criterion(self, cfg: CN, num_classes: int, model: nn.Module | None = None) -> nn.Module:
        c = cfg.center_gem
        dim = model.out_dim if model is not None else 2048
        return CenterGeMCriterion(num_classes, dim, ce=c.ce, label_smooth=c.label_smooth, triplet=c.triplet,
                                  margin=c.triplet_margin, center=c.center)

    def provenance(self, cfg: CN) -> dict[str, Any]:
        return {"method": self.name, "backbone": cfg.model.backbone or cfg.model.name, "gem_p": cfg.center_gem.gem_p,
                "feature_mode": self.feature_mode(cfg)}


register(CenterGeM())
