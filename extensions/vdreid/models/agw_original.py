"""Checkpoints of AGW's code (mangye16/Cross-Modal-Re-ID-baseline), layout ``'agw'``.

Its ``model.py`` ``embed_net`` is saved by its ``train.py`` as ``{'net': state_dict, 'epoch': ..., 'mAP': ...}``,
possibly with a ``module.`` prefix (DataParallel). Keys: ``visible_module.visible.*`` / ``thermal_module.thermal.*``
(a whole ResNet each, of which AGW uses only conv1/bn1), ``base_resnet.base.*`` (a whole ResNet, of which AGW uses
layer1..layer4), ``NL_1 .. NL_4`` (non-local blocks), ``bottleneck`` (BNNeck), ``classifier``. Maps to
:class:`~vdreid.models.agw.AGWNet`; the parts AGW saves but never uses (visible/thermal layer1..4, base conv1/bn1)
are dropped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from typing import Any

from torch import Tensor

from vdreid.models.agw import build_agw
from vdreid.models.original import OriginalLayout, Rule, register_layout, resnet_of

AGW_RULES: tuple[Rule, ...] = (
    # unused parts AGW builds and saves: the visible/thermal ResNets beyond their stems, the base ResNet's stem
    *(Rule(f"{p}.layer{{i}}.", None) for p in ("visible_module.visible", "thermal_module.thermal")),
    *(Rule(f"{p}.fc.", None) for p in ("visible_module.visible", "thermal_module.thermal", "base_resnet.base")),
    Rule("base_resnet.base.conv1.", None),
    Rule("base_resnet.base.bn1.", None),
    Rule("visible_module.visible.conv1.", "stem_vis.conv1."),
    Rule("visible_module.visible.bn1.", "stem_vis.bn1."),
    Rule("thermal_module.thermal.conv1.", "stem_ir.conv1."),
    Rule("thermal_module.thermal.bn1.", "stem_ir.bn1."),
    Rule("base_resnet.base.layer{i}.", "shared.layer{i}."),
    Rule("NL_{i}.{j}.g.0.", "non_local.layer{i}.{j}.g."),
    Rule("NL_{i}.{j}.theta.", "non_local.layer{i}.{j}.theta."),
    Rule("NL_{i}.{j}.phi.", "non_local.layer{i}.{j}.phi."),
    Rule("NL_{i}.{j}.W.", "non_local.layer{i}.{j}.w_z."),
    Rule("bottleneck.", "bnneck."),
    Rule("classifier.", "classifier."),
)


def agw_model_kwargs(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """:func:`~vdreid.models.build_agw` kwargs the keys imply: backbone, num_classes, non_local; ``gem`` is True when
    the checkpoint has non-local blocks, as AGW's ``--method agw`` switches both on and ``--method base`` both off (GeM
    has no weights, so this is the one choice the keys cannot show)."""
    non_local = tuple(
        len({int(m.group(1)) for k in sd if (m := re.match(rf"NL_{i}\.(\d+)\.", k))}) for i in range(1, 5)
    )
    return dict(
        backbone=resnet_of(sd, "base_resnet.base.", "agw checkpoint"),
        num_classes=int(sd["classifier.weight"].shape[0]),
        non_local=non_local,
        gem=any(non_local),
        last_stride=1,
    )


def is_agw_layout(keys: Collection[str]) -> bool:
    return any(k.startswith(("visible_module.visible.", "thermal_module.thermal.", "base_resnet.base.")) for k in keys)


AGW_LAYOUT = register_layout(OriginalLayout(
    kind="agw",
    rules=AGW_RULES,
    model_kwargs=agw_model_kwargs,
    build=lambda **kw: build_agw(pretrained=False, **kw),
    detect=is_agw_layout,
    name="the AGW code",
    source="the AGW code (mangye16/Cross-Modal-Re-ID-baseline, model.py embed_net)",
))

#: CAJ's code (``ICCV21_CAJ/`` of the same repository) saves the same ``embed_net`` as AGW's (its ``model.py`` and
#: ``resnet.py`` are AGW's files), so its checkpoints have AGW's keys: the same rules; never guessed from the keys
#: (they cannot tell CAJ from AGW), named by the config's method (CAJ reads the 'agw' layout too)
CAJ_LAYOUT = register_layout(dataclasses.replace(
    AGW_LAYOUT,
    kind="caj",
    detect=None,
    name="the CAJ code",
    source="the CAJ code (mangye16/Cross-Modal-Re-ID-baseline, ICCV21_CAJ/model.py embed_net, AGW's network)",
))
