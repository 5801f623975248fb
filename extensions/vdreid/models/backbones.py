"""Encoders ``E`` of the paper (Fig. 3): a timm CNN, global average pooling and a BNNeck giving the observation ``v``.

Matches the released ``Baseline`` (docs/vd-recipes.md section 1): ImageNet ResNet-50 with last stride 1, optional
channel
attention before layer2/3/4, GAP, BatchNorm1d with frozen bias (BNNeck) and an identity classifier on the
post-BN feature (weights N(0, 0.001), bias 0).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import Tensor, nn

from vdreid.errors import ConfigError
from vdreid.models.attention import ShallowCAM
from vdreid.models.weights import PretrainedWeightsError, hub_state_dict, load_backbone_file, load_backbone_state


def create_timm_backbone(name: str, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0, global_pool='')`` with a clear unknown-name error."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"config key 'model.backbone': a timm model name such as 'resnet50' is expected, "
                          f"got {name!r}")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:10]
        raise ConfigError(f"config key 'model.backbone': '{name}' is not a timm model. Similar names: {close}")
    return timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **timm_kwargs)


def _is_timm_resnet(model: nn.Module) -> bool:
    from timm.models.resnet import ResNet

    return isinstance(model, ResNet)


def _last_stage(model: nn.Module) -> tuple[str, nn.Module]:
    info = getattr(model, "feature_info", None)
    if _is_timm_resnet(model):
        return "layer4", model.layer4
    if info:
        name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
        return name, model.get_submodule(name)
    raise ConfigError(f"cannot locate the last stage of backbone {type(model).__name__}; use last_stride=2")


def set_last_stride_one(model: nn.Module, name: str = "backbone") -> None:
    """Make the last stage of a timm CNN keep resolution (stride 1), as Re-ID does, by changing strides.

    Strided convolutions in the last stage get stride 1; stride-2 pooling shortcuts (ResNet-D ``avg_down``)
    become identities. No dilation is added (unlike timm's ``output_stride=16``), which is what the released
    code and torchreid's ResNets do. The result is checked with a small forward: the final feature map must be
    larger than with stride 2, otherwise a ValueError asks for ``last_stride=2``.
    """
    stage_name, stage = _last_stage(model)
    changed = 0
    for sub_name, mod in list(stage.named_modules()):
        stride = getattr(mod, "stride", None)
        is_two = stride == 2 or stride == (2, 2)
        if not is_two:
            continue
        if isinstance(mod, nn.Conv2d):
            mod.stride = (1, 1)
            changed += 1
        elif isinstance(mod, (nn.AvgPool2d, nn.MaxPool2d)) and sub_name:
            parent_name, _, child = sub_name.rpartition(".")
            parent = stage.get_submodule(parent_name) if parent_name else stage
            setattr(parent, child, nn.Identity())
            changed += 1
        elif isinstance(stride, int):  # e.g. timm's BlurPool2d keeps an int stride used in its forward
            mod.stride = 1
            changed += 1
    if changed == 0:
        raise ConfigError(
            f"last_stride=1: no stride-2 layer found in the last stage '{stage_name}' of {name}; "
            "this backbone is not supported with last_stride=1, use last_stride=2"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.forward_features(torch.zeros(1, 3, 64, 64))
    finally:
        model.train(was_training)
    reduction = model.feature_info[-1]["reduction"] if getattr(model, "feature_info", None) else 32
    if out.dim() != 4 or out.shape[-1] <= 64 // reduction:
        raise ConfigError(
            f"last_stride=1 did not enlarge the final feature map of {name} (got shape {tuple(out.shape)} for a "
            "64x64 input); use last_stride=2 for this backbone"
        )


class Encoder(nn.Module):
    """``E(v|x)``: timm CNN -> GAP -> BNNeck (``v``) -> identity classifier (``P_v``).

    Args:
        backbone: timm model name (any CNN whose ``forward_features`` returns a (B, C, H, W) map).
        num_classes: number of training identities.
        last_stride: 1 (Re-ID, by stride change) or 2 (unchanged).
        attention: add :class:`ShallowCAM` before layer2/3/4 (timm ResNet family only), as the released code.
        timm_kwargs: passed to ``timm.create_model``.

    ``forward(x)`` returns ``(v_pre, v, v_logits)``: pooled feature, post-BNNeck observation, logits.
    """

    def __init__(
        self, backbone: str, num_classes: int, last_stride: int = 1, attention: bool = False, **timm_kwargs: Any
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.timm_kwargs = dict(timm_kwargs)
        self.body = create_timm_backbone(backbone, **timm_kwargs)
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        if last_stride == 1:
            set_last_stride_one(self.body, backbone)
        self.attention: nn.ModuleList | None = None
        if attention:
            if not _is_timm_resnet(self.body):
                raise ValueError(
                    f"attention=True (channel attention before layer2/3/4, as the released code) needs a timm "
                    f"ResNet-family backbone; '{backbone}' is {type(self.body).__name__}"
                )
            chans = [self.body.feature_info[i]["num_chs"] for i in (1, 2, 3)]  # inputs of layer2, layer3, layer4
            self.attention = nn.ModuleList(ShallowCAM(c) for c in chans)
        self.out_dim = int(self.body.num_features)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.bnneck = nn.BatchNorm1d(self.out_dim)
        nn.init.ones_(self.bnneck.weight)
        nn.init.zeros_(self.bnneck.bias)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(self.out_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def feature_map(self, x: Tensor) -> Tensor:
        if self.attention is None:
            return self.body.forward_features(x)
        b = self.body
        x = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        x = b.layer1(x)
        x = b.layer2(self.attention[0](x))
        x = b.layer3(self.attention[1](x))
        return b.layer4(self.attention[2](x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fmap = self.feature_map(x)
        if fmap.dim() != 4:
            raise ValueError(
                f"backbone '{self.backbone_name}' returned features of shape {tuple(fmap.shape)}; only CNNs with "
                "(B, C, H, W) feature maps are supported"
            )
        v_pre = self.gap(fmap).flatten(1)
        v = self.bnneck(v_pre)
        return v_pre, v, self.classifier(v)

    def load_backbone_weights(self, path: str | None = None, state: dict[str, Tensor] | None = None) -> None:
        """Load ImageNet weights into the CNN from a local file ``path`` or an already read ``state``."""
        if state is not None:
            load_backbone_state(self.body, state, source=path or "state dict")
        elif path:
            load_backbone_file(self.body, path)
        else:
            raise PretrainedWeightsError("load_backbone_weights needs a file path or a state dict")

    def hub_state_dict(self) -> dict[str, Tensor]:
        """ImageNet weights of this backbone from the local cache or (online only) timm's hub; see weights.py."""
        return hub_state_dict(self.backbone_name, self.body, **self.timm_kwargs)
