"""Checkpoints written by the original authors' code, mapped to vdreid's models.

Two layouts are understood (key names as the authors' code writes them; ``docs/baselines.md`` lists them):

* ``'agw'``: mangye16/Cross-Modal-Re-ID-baseline (``model.py`` ``embed_net``), saved by its ``train.py`` as
  ``{'net': state_dict, 'epoch': ..., 'mAP': ..., ...}``, possibly with a ``module.`` prefix (DataParallel).
  Keys: ``visible_module.visible.*`` / ``thermal_module.thermal.*`` (a whole ResNet each, of which AGW uses only
  conv1/bn1), ``base_resnet.base.*`` (a whole ResNet, of which AGW uses layer1..layer4), ``NL_1 .. NL_4``
  (non-local blocks), ``bottleneck`` (BNNeck), ``classifier``. Maps to :class:`~vdreid.models.agw.AGWNet`; the
  parts AGW saves but never uses (visible/thermal layer1..4, base conv1/bn1) are dropped.
* ``'vd_official'``: the released Variational Distillation code (``reid/models/newresnet.py`` ``ft_net``,
  ``reid/models/baseline.py`` ``Baseline``, ``utlis.py`` ``ChannelCompress``), saved as ``{'model': state_dict,
  ...}``. Keys ``{IR,RGB,shared}_backbone.*`` (encoders: ``base`` ResNet-50 with its unused ImageNet ``fc``,
  ``cam_256/512/1024`` channel attention, ``bottleneck`` BNNeck, ``classifier.0``) and ``{IR,RGB,shared}_
  Bottleneck.*`` (``bottleneck.model`` MLP, ``classifier`` head). Maps to :class:`~vdreid.models.VDNet` as built by
  ``vd_resnet50_official``: ``IR`` -> branch ``ir`` (it sees the grayscale view), ``RGB`` -> ``vis``, ``shared`` ->
  ``shared``.

Functions: :func:`detect_original` (which layout a state dict has), :func:`from_original` (key renaming with a
complete check), :func:`original_model_kwargs` (the architecture the keys imply) and :func:`model_from_original`
(build the vdreid model and load the checkpoint into it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vdreid.errors import CheckpointError, CheckpointMismatchError

logger = logging.getLogger(__name__)

ORIGINAL_KINDS = ("agw", "vd_official")
_WRAPPERS = ("net", "state_dict", "model", "model_state_dict")
_VD_BRANCHES = (("IR", "ir"), ("RGB", "vis"), ("shared", "shared"))
_VD_CAM = (("256", "0"), ("512", "1"), ("1024", "2"))
_BLOCKS_TO_RESNET = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


@dataclass(frozen=True)
class _Rule:
    """Rename keys starting with ``original`` to ``ours`` (``None``: an unused part, dropped). ``{i}``/``{j}`` are
    integers carried over."""

    original: str
    ours: str | None

    @staticmethod
    def _regex(template: str) -> re.Pattern:
        pattern = re.escape(template)
        for name in ("i", "j"):
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>\\d+)")
        return re.compile(pattern)

    def apply(self, key: str, forward: bool = True) -> tuple[bool, str | None]:
        src, dst = (self.original, self.ours) if forward else (self.ours, self.original)
        if src is None:
            return False, None
        m = self._regex(src).match(key)
        if not m:
            return False, None
        if dst is None:
            return True, None
        return True, dst.format(**m.groupdict()) + key[m.end() :]


_AGW_RULES: tuple[_Rule, ...] = (
    # unused parts AGW builds and saves: the visible/thermal ResNets beyond their stems, the base ResNet's stem
    *(_Rule(f"{p}.layer{{i}}.", None) for p in ("visible_module.visible", "thermal_module.thermal")),
    *(_Rule(f"{p}.fc.", None) for p in ("visible_module.visible", "thermal_module.thermal", "base_resnet.base")),
    _Rule("base_resnet.base.conv1.", None),
    _Rule("base_resnet.base.bn1.", None),
    _Rule("visible_module.visible.conv1.", "stem_vis.conv1."),
    _Rule("visible_module.visible.bn1.", "stem_vis.bn1."),
    _Rule("thermal_module.thermal.conv1.", "stem_ir.conv1."),
    _Rule("thermal_module.thermal.bn1.", "stem_ir.bn1."),
    _Rule("base_resnet.base.layer{i}.", "shared.layer{i}."),
    _Rule("NL_{i}.{j}.g.0.", "non_local.layer{i}.{j}.g."),
    _Rule("NL_{i}.{j}.theta.", "non_local.layer{i}.{j}.theta."),
    _Rule("NL_{i}.{j}.phi.", "non_local.layer{i}.{j}.phi."),
    _Rule("NL_{i}.{j}.W.", "non_local.layer{i}.{j}.w_z."),
    _Rule("bottleneck.", "bnneck."),
    _Rule("classifier.", "classifier."),
)

_VD_RULES: tuple[_Rule, ...] = tuple(
    rule
    for orig, ours in _VD_BRANCHES
    for rule in (
        _Rule(f"{orig}_backbone.base.fc.", None),  # ResNet-50's ImageNet classifier, never used
        _Rule(f"{orig}_backbone.base.", f"branches.{ours}.encoder.body."),
        *(
            _Rule(f"{orig}_backbone.cam_{c}._cam_module.", f"branches.{ours}.encoder.attention.{idx}.")
            for c, idx in _VD_CAM
        ),
        _Rule(f"{orig}_backbone.bottleneck.", f"branches.{ours}.encoder.bnneck."),
        _Rule(f"{orig}_backbone.classifier.0.", f"branches.{ours}.encoder.classifier."),
        _Rule(f"{orig}_Bottleneck.bottleneck.model.", f"branches.{ours}.bottleneck.mlp."),
        _Rule(f"{orig}_Bottleneck.classifier.", f"branches.{ours}.bottleneck.classifier."),
    )
)

_RULES = {"agw": _AGW_RULES, "vd_official": _VD_RULES}


def _check_kind(kind: str) -> None:
    if kind not in ORIGINAL_KINDS:
        raise ValueError(f"original checkpoint kind must be one of {ORIGINAL_KINDS}, got {kind!r}")


def unwrap_original(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """The state dict inside an original checkpoint (``{'net': ...}``, ``{'model': ...}``, ``{'state_dict': ...}`` or
    a bare state dict), with a leading ``module.`` (DataParallel) removed from every key."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a checkpoint dict or a state dict, got {type(obj).__name__}")
    for _ in range(3):
        tensors = [k for k, v in obj.items() if isinstance(v, Tensor)]
        if tensors and len(tensors) >= len(obj) // 2:
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(
            f"no state dict found in the checkpoint (top-level keys: {sorted(map(str, obj))[:10]}); expected the "
            "authors' {'net': state_dict, ...} (AGW) or {'model': state_dict, ...} (released VD code)"
        )
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def detect_original(state_dict: Mapping[str, Any]) -> str | None:
    """``'agw'`` or ``'vd_official'`` when the keys have that code's layout (wrappers and ``module.`` allowed),
    else ``None`` (e.g. a vdreid checkpoint)."""
    try:
        keys = unwrap_original(state_dict).keys()
    except CheckpointError:
        return None
    if any(k.startswith(("visible_module.visible.", "thermal_module.thermal.", "base_resnet.base.")) for k in keys):
        return "agw"
    if any(k.startswith(tuple(f"{o}_backbone." for o, _ in _VD_BRANCHES)) for k in keys):
        return "vd_official"
    return None


def _rename(kind: str, key: str, forward: bool = True) -> tuple[bool, str | None]:
    for rule in _RULES[kind]:
        hit, new = rule.apply(key, forward)
        if hit:
            return True, new
    return False, None


def to_original_key(kind: str, key: str) -> str | None:
    """The original code's name of vdreid key ``key`` (for messages), or None when it has none."""
    _check_kind(kind)
    return _rename(kind, key, forward=False)[1]


def _resnet_of(state: Mapping[str, Tensor], prefix: str, where: str) -> str:
    counts = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(f"{prefix}layer{i}.") + r"(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    block = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state else "basic"
    name = _BLOCKS_TO_RESNET.get((block, tuple(counts)))
    if name is None:
        raise CheckpointMismatchError(
            f"{where}: the ResNet under '{prefix}' has {block} blocks {tuple(counts)} per stage, which is not a "
            f"ResNet-18/34/50/101/152; keys of a supported ResNet were expected"
        )
    return name


def original_model_kwargs(kind: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Builder keyword arguments of the architecture the original keys describe.

    ``'agw'`` -> :func:`~vdreid.models.build_agw` kwargs (backbone, num_classes, non_local; ``gem`` is True when
    the checkpoint has non-local blocks, as AGW's ``--method agw`` switches both on and ``--method base`` both off:
    GeM has no weights, so this is the one choice the keys cannot show). ``'vd_official'`` ->
    :func:`~vdreid.models.build_vd_net` kwargs (backbone, num_classes, attention, bottleneck sizes, z-classifier).
    """
    _check_kind(kind)
    sd = unwrap_original(state_dict)
    where = f"{kind} checkpoint"
    try:
        if kind == "agw":
            non_local = tuple(
                len({int(m.group(1)) for k in sd if (m := re.match(rf"NL_{i}\.(\d+)\.", k))}) for i in range(1, 5)
            )
            return dict(
                backbone=_resnet_of(sd, "base_resnet.base.", where),
                num_classes=int(sd["classifier.weight"].shape[0]),
                non_local=non_local,
                gem=any(non_local),
                last_stride=1,
            )
        mlp = [sd[f"shared_Bottleneck.bottleneck.model.{i}.weight"] for i in (0, 3, 6)]
        return dict(
            backbone=_resnet_of(sd, "shared_backbone.base.", where),
            num_classes=int(sd["shared_backbone.classifier.0.weight"].shape[0]),
            routing="official",
            bottleneck="deterministic",
            bottleneck_dims=tuple(int(w.shape[0]) for w in mlp),
            z_classifier_hidden=int(sd["shared_Bottleneck.classifier.0.weight"].shape[0]),
            attention=any(".cam_" in k for k in sd),
            last_stride=1,
        )
    except KeyError as exc:
        raise CheckpointMismatchError(
            f"{where}: key {exc.args[0]!r} is missing, so the architecture cannot be read from the checkpoint"
        ) from None


def _build(kind: str, kwargs: dict[str, Any]) -> nn.Module:
    if kind == "agw":
        from vdreid.models.agw import build_agw

        return build_agw(pretrained=False, **kwargs)
    from vdreid.models.vd_net import build_vd_net

    return build_vd_net(pretrained=False, feature_mode="obs_concat", **kwargs)


def _show(items: list[str], n: int = 10) -> str:
    return f"{len(items)} (first: {items[:n]})"


def from_original(kind: str, state_dict: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Rename an original checkpoint's keys to vdreid's (module docstring) and check that nothing is left over.

    Args:
        kind: 'agw' or 'vd_official' (see :func:`detect_original`).
        state_dict: the original state dict, or the checkpoint dict holding it; a ``module.`` prefix is allowed.
        model: the vdreid model the result is for. Without it, the model the keys describe
            (:func:`original_model_kwargs`) is built on the ``meta`` device (no memory, no weights) to check against.

    Returns the state dict with vdreid's keys, ready for ``model.load_state_dict(..., strict=True)``. Keys of parts
    the original code saves but never uses are dropped. Raises :class:`~vdreid.errors.CheckpointMismatchError`
    listing keys that match no rule of the layout, keys the model needs that the checkpoint lacks (named as the
    original code would name them) and shape mismatches.
    """
    _check_kind(kind)
    sd = unwrap_original(state_dict)
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    dropped = 0
    for key, value in sd.items():
        hit, new = _rename(kind, key)
        if not hit:
            unknown.append(key)
        elif new is None:
            dropped += 1
        else:
            mapped[new] = value
    if model is None:
        with torch.device("meta"):
            model = _build(kind, original_model_kwargs(kind, sd))
    reference = model.state_dict()
    unexpected = unknown + [to_original_key(kind, k) or k for k in mapped if k not in reference]
    missing = [k for k in reference if k not in mapped and not k.endswith("num_batches_tracked")]
    shapes = [
        f"{to_original_key(kind, k) or k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(v.shape)}"
        for k, v in reference.items()
        if k in mapped and tuple(mapped[k].shape) != tuple(v.shape)
    ]
    if unexpected or missing or shapes:
        parts = []
        if unexpected:
            parts.append(f"keys that are not part of the {kind} layout: {_show(unexpected)}")
        if missing:
            lacking = [to_original_key(kind, k) or k for k in missing]
            parts.append(f"keys the model needs but the checkpoint lacks: {_show(lacking)}")
        if shapes:
            parts.append(f"shape mismatches: {_show(shapes, 5)}")
        raise CheckpointMismatchError(
            f"the {kind} checkpoint does not fit {type(model).__name__}: " + "; ".join(parts)
            + ". Expected a state dict written by the authors' code for this architecture (docs/baselines.md)."
        )
    for k in reference:  # checkpoints from before PyTorch 0.4.1 have no BatchNorm counters
        if k.endswith("num_batches_tracked") and k not in mapped:
            mapped[k] = torch.zeros((), dtype=torch.long)
    logger.debug("%s checkpoint: %d keys mapped, %d unused keys dropped", kind, len(mapped), dropped)
    return mapped


def model_from_original(
    checkpoint: Mapping[str, Any], kind: str | None = None, feature_mode: str | None = None
) -> tuple[nn.Module, str]:
    """Build the vdreid model an original checkpoint describes and load it (strict). Returns ``(model, kind)``.

    ``kind`` defaults to :func:`detect_original`; ``feature_mode`` to the model's default (AGW: 'bn', AGW's "FC";
    VD: 'obs_concat', the released ``extract_feature.py`` feature). The model is in eval mode.
    """
    sd = unwrap_original(checkpoint)
    kind = kind or detect_original(sd)
    if kind is None:
        raise CheckpointError(
            f"not a checkpoint of the AGW code or the released VD code (first keys: {list(sd)[:5]}); "
            "AGW's keys start with visible_module./thermal_module./base_resnet., VD's with RGB_backbone./IR_backbone."
        )
    _check_kind(kind)
    model = _build(kind, original_model_kwargs(kind, sd))
    model.load_state_dict(from_original(kind, sd, model=model), strict=True)
    if feature_mode is not None:
        model.feature_mode = feature_mode
    return model.eval(), kind
