"""Checkpoints of the released Variational Distillation code, layout ``'vd_official'``.

The released code (``reid/models/newresnet.py`` ``ft_net``, ``reid/models/baseline.py`` ``Baseline``, ``utlis.py``
``ChannelCompress``) saves ``{'model': state_dict, ...}``. Keys ``{IR,RGB,shared}_backbone.*`` (encoders: ``base``
ResNet-50 with its unused ImageNet ``fc``, ``cam_256/512/1024`` channel attention, ``bottleneck`` BNNeck,
``classifier.0``) and ``{IR,RGB,shared}_Bottleneck.*`` (``bottleneck.model`` MLP, ``classifier`` head). Maps to
:class:`~vdreid.models.VDNet` as built by ``vd_resnet50_official``: ``IR`` -> branch ``ir`` (it sees the grayscale
view), ``RGB`` -> ``vis``, ``shared`` -> ``shared``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from torch import Tensor

from vdreid.models.original import OriginalLayout, Rule, register_layout, resnet_of
from vdreid.models.vd_net import build_vd_net

_VD_BRANCHES = (("IR", "ir"), ("RGB", "vis"), ("shared", "shared"))
_VD_CAM = (("256", "0"), ("512", "1"), ("1024", "2"))

VD_RULES: tuple[Rule, ...] = tuple(
    rule
    for orig, ours in _VD_BRANCHES
    for rule in (
        Rule(f"{orig}_backbone.base.fc.", None),  # ResNet-50's ImageNet classifier, never used
        Rule(f"{orig}_backbone.base.", f"branches.{ours}.encoder.body."),
        *(
            Rule(f"{orig}_backbone.cam_{c}._cam_module.", f"branches.{ours}.encoder.attention.{idx}.")
            for c, idx in _VD_CAM
        ),
        Rule(f"{orig}_backbone.bottleneck.", f"branches.{ours}.encoder.bnneck."),
        Rule(f"{orig}_backbone.classifier.0.", f"branches.{ours}.encoder.classifier."),
        Rule(f"{orig}_Bottleneck.bottleneck.model.", f"branches.{ours}.bottleneck.mlp."),
        Rule(f"{orig}_Bottleneck.classifier.", f"branches.{ours}.bottleneck.classifier."),
    )
)


def vd_model_kwargs(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """:func:`~vdreid.models.build_vd_net` kwargs the keys imply: backbone, num_classes, attention, bottleneck
    sizes, z-classifier."""
    mlp = [sd[f"shared_Bottleneck.bottleneck.model.{i}.weight"] for i in (0, 3, 6)]
    return dict(
        backbone=resnet_of(sd, "shared_backbone.base.", "vd_official checkpoint"),
        num_classes=int(sd["shared_backbone.classifier.0.weight"].shape[0]),
        routing="official",
        bottleneck="deterministic",
        bottleneck_dims=tuple(int(w.shape[0]) for w in mlp),
        z_classifier_hidden=int(sd["shared_Bottleneck.classifier.0.weight"].shape[0]),
        attention=any(".cam_" in k for k in sd),
        last_stride=1,
    )


def is_vd_layout(keys: Collection[str]) -> bool:
    return any(k.startswith(tuple(f"{o}_backbone." for o, _ in _VD_BRANCHES)) for k in keys)


VD_LAYOUT = register_layout(OriginalLayout(
    kind="vd_official",
    rules=VD_RULES,
    model_kwargs=vd_model_kwargs,
    build=lambda **kw: build_vd_net(pretrained=False, feature_mode="obs_concat", **kw),
    detect=is_vd_layout,
    name="the released VD code",
    source="the released VD code (reid/models/newresnet.py ft_net + reid/models/baseline.py Baseline)",
))
