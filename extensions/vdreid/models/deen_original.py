"""Checkpoints of DEEN's code (ZYK100/LLCM ``DEEN/``), layout ``'deen'``: both its SYSU-MM01 / LLCM network and its
RegDB network (``embed_net(class_num, 'regdb')``: no MFA3, DEE after layer 2, no layer 4 in the forward pass).

Its ``train.py`` saves ``{'net': state_dict, 'cmc': ..., 'mAP': ..., 'mINP': ..., 'epoch': ...}``. Keys:
``visible_module.visible.*`` / ``thermal_module.thermal.*`` (a whole ResNet-50 each, of which DEEN runs only
conv1/bn1), ``base_resnet.base.*`` (a whole ResNet-50, of which DEEN runs layer1..layer4, or layer1..layer3 for
RegDB), ``MFA{1,2,3}.CNL.*`` / ``MFA{i}.PNL.*``, ``DEE.FC{11,12,13,1,21,22,23,2}.*``, ``bottleneck.*``,
``classifier.weight``. Maps to :class:`~vdreid.models.deen.DEENNet`; the parts DEEN saves but never runs are dropped.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from torch import Tensor

from vdreid.models.deen import build_deen
from vdreid.models.original import OriginalLayout, Rule, register_layout, resnet_of

_DEE = tuple(
    rule
    for b in (1, 2)
    for rule in (Rule(f"DEE.FC{b}{{i}}.", f"dee.branch{b}.conv_d{{i}}."), Rule(f"DEE.FC{b}.", f"dee.branch{b}.fuse."))
)

DEEN_RULES: tuple[Rule, ...] = (
    # unused parts DEEN builds and saves: the visible/thermal ResNets beyond their stems, the base ResNet's stem
    *(Rule(f"{p}.layer{{i}}.", None) for p in ("visible_module.visible", "thermal_module.thermal")),
    Rule("base_resnet.base.conv1.", None),
    Rule("base_resnet.base.bn1.", None),
    Rule("visible_module.visible.conv1.", "stem_vis.conv1."),
    Rule("visible_module.visible.bn1.", "stem_vis.bn1."),
    Rule("thermal_module.thermal.conv1.", "stem_ir.conv1."),
    Rule("thermal_module.thermal.bn1.", "stem_ir.bn1."),
    Rule("base_resnet.base.layer{i}.", "shared.layer{i}."),
    Rule("MFA{i}.CNL.W.", "mfa.layer{i}.cnl.w_z."),
    Rule("MFA{i}.CNL.", "mfa.layer{i}.cnl."),
    Rule("MFA{i}.PNL.W.", "mfa.layer{i}.pnl.w_z."),
    Rule("MFA{i}.PNL.", "mfa.layer{i}.pnl."),
    *_DEE,
    Rule("bottleneck.", "bnneck."),
    Rule("classifier.", "classifier."),
)


def deen_dee_stage(sd: Mapping[str, Tensor] | Collection[str]) -> int:
    """3 for the SYSU-MM01 / LLCM network (it has an MFA3 block), 2 for the RegDB one."""
    return 3 if any(k.startswith("MFA3.") for k in sd) else 2


def deen_model_kwargs(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """:func:`~vdreid.models.deen.build_deen` kwargs the keys imply: backbone, num_classes, dee_stage."""
    return dict(
        backbone=resnet_of(sd, "base_resnet.base.", "deen checkpoint"),
        num_classes=int(sd["classifier.weight"].shape[0]),
        dee_stage=deen_dee_stage(sd),
    )


def deen_unused(sd: Mapping[str, Tensor]) -> tuple[str, ...]:
    """The base ResNet's stages after the one following DEE (the RegDB network's layer 4)."""
    return tuple(f"base_resnet.base.layer{i}." for i in range(deen_dee_stage(sd) + 2, 5))


def is_deen_layout(keys: Collection[str]) -> bool:
    return any(k.startswith("DEE.") for k in keys) and any(k.startswith("base_resnet.base.") for k in keys)


DEEN_LAYOUT = register_layout(OriginalLayout(
    kind="deen",
    rules=DEEN_RULES,
    model_kwargs=deen_model_kwargs,
    build=lambda **kw: build_deen(pretrained=False, **kw),
    detect=is_deen_layout,
    name="the DEEN code",
    source="the DEEN code (ZYK100/LLCM, DEEN/model.py embed_net)",
    unused=deen_unused,
))
