"""Checkpoints written by the original authors' code, mapped to vdreid's models: the machinery.

Each original code base is one :class:`OriginalLayout` (its key-renaming :class:`Rule` list, the architecture its
keys imply, the vdreid builder, how its keys are recognised), registered with :func:`register_layout` by the module
beside its model: :mod:`vdreid.models.agw_original` (``'agw'``, mangye16/Cross-Modal-Re-ID-baseline),
:mod:`vdreid.models.vd_original` (``'vd_official'``, the released VD code), and any layout a method adds
(``docs/adding-a-method.md``). A method lists the kinds it reads in ``Method.original_kinds``.

Functions: :func:`detect_original` (which layout a state dict has), :func:`from_original` (key renaming with a
complete check), :func:`original_model_kwargs` (the architecture the keys imply) and :func:`model_from_original`
(build the vdreid model and load the checkpoint into it). ``docs/baselines.md`` lists the layouts' keys.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vdreid.errors import CheckpointError, CheckpointMismatchError, ConfigError

logger = logging.getLogger(__name__)

_WRAPPERS = ("net", "state_dict", "model", "model_state_dict")
_BLOCKS_TO_RESNET = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


@dataclass(frozen=True)
class Rule:
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


@dataclass(frozen=True)
class OriginalLayout:
    """How checkpoints written by one original code base map to a vdreid model.

    Attributes:
        kind: the layout's name (``from_original(kind, ...)``, ``Method.original_kinds``).
        rules: key renaming, first match wins (:class:`Rule`).
        model_kwargs: ``f(state_dict) -> builder kwargs`` (including ``num_classes``) read from the unwrapped keys;
            raising ``KeyError`` for a missing key is turned into a :class:`CheckpointMismatchError`.
        build: ``f(**model_kwargs) -> nn.Module``, the vdreid model with random weights (``pretrained=False``).
        detect: ``f(keys) -> bool``: whether unwrapped keys have this layout; ``None`` for a layout that is never
            guessed (its keys equal another layout's: the config or the caller names it).
        name: the code base in a few words, for messages ("the AGW code").
        source: where that code lives and which class it saves, for messages.
        unused: ``f(state_dict) -> key prefixes`` of parts this state dict's architecture builds and saves but never
            runs, dropped like a rule to ``None``; for layouts whose unused parts depend on the variant the keys show
            (DEEN's RegDB network saves a layer 4 it never runs, its SYSU-MM01 network runs it).
    """

    kind: str
    rules: tuple[Rule, ...]
    model_kwargs: Callable[[Mapping[str, Tensor]], dict[str, Any]]
    build: Callable[..., nn.Module]
    detect: Callable[[Collection[str]], bool] | None = None
    name: str = ""
    source: str = ""
    unused: Callable[[Mapping[str, Tensor]], tuple[str, ...]] | None = None


_LAYOUTS: dict[str, OriginalLayout] = {}


def register_layout(layout: OriginalLayout) -> OriginalLayout:
    """Add an original-checkpoint layout (idempotent for a re-registration of the same kind)."""
    if not layout.kind:
        raise ValueError("an original-checkpoint layout needs a kind")
    _LAYOUTS[layout.kind] = layout
    return layout


def original_kinds() -> tuple[str, ...]:
    """The registered layouts' kinds, in registration order."""
    return tuple(_LAYOUTS)


def layout(kind: str) -> OriginalLayout:
    """The registered layout ``kind``; a :class:`CheckpointError` lists the known kinds otherwise."""
    try:
        return _LAYOUTS[kind]
    except KeyError:
        raise ConfigError(f"unknown original checkpoint kind {kind!r}; known: {list(_LAYOUTS)}") from None


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
            f"no state dict found in the checkpoint (top-level keys: {sorted(map(str, obj))[:10]}); expected a "
            "state dict written by an original code base, e.g. {'net': state_dict, ...} or {'model': state_dict, ...}"
        )
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def detect_original(state_dict: Mapping[str, Any]) -> str | None:
    """The kind of the registered layout whose ``detect`` accepts the keys (wrappers and ``module.`` allowed), else
    ``None`` (e.g. a vdreid checkpoint). When several accept them (a code base that extends another one's network,
    as DEEN's extends AGW's), the one whose rules name the most keys; ties go to the first registered."""
    try:
        keys = unwrap_original(state_dict).keys()
    except CheckpointError:
        return None
    hits = [lay for lay in _LAYOUTS.values() if lay.detect is not None and lay.detect(keys)]
    if len(hits) > 1:
        hits.sort(key=lambda lay: -sum(_rename(lay.kind, k)[0] for k in keys))  # stable: ties keep the order
    return hits[0].kind if hits else None


def _rename(kind: str, key: str, forward: bool = True) -> tuple[bool, str | None]:
    for rule in layout(kind).rules:
        hit, new = rule.apply(key, forward)
        if hit:
            return True, new
    return False, None


def to_original_key(kind: str, key: str) -> str | None:
    """The original code's name of vdreid key ``key`` (for messages), or None when it has none."""
    return _rename(kind, key, forward=False)[1]


def resnet_of(state: Mapping[str, Tensor], prefix: str, where: str) -> str:
    """The torchvision/timm ResNet name (``resnet18`` ... ``resnet152``) whose stages the keys under ``prefix`` hold."""
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
    """Builder keyword arguments (including ``num_classes``) of the architecture the original keys describe
    (the layout's ``model_kwargs``)."""
    lay = layout(kind)
    sd = unwrap_original(state_dict)
    try:
        return lay.model_kwargs(sd)
    except KeyError as exc:
        raise CheckpointMismatchError(
            f"{kind} checkpoint: key {exc.args[0]!r} is missing, so the architecture cannot be read from the "
            "checkpoint"
        ) from None


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
    lay = layout(kind)
    sd = unwrap_original(state_dict)
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    dropped = 0
    skip = tuple(lay.unused(sd)) if lay.unused is not None else ()
    for key, value in sd.items():
        hit, new = (True, None) if skip and key.startswith(skip) else _rename(kind, key)
        if not hit:
            unknown.append(key)
        elif new is None:
            dropped += 1
        else:
            mapped[new] = value
    if model is None:
        with torch.device("meta"):
            model = lay.build(**original_model_kwargs(kind, sd))
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
            + f". Expected a state dict written by {lay.name or 'the original code'} for this architecture "
            "(docs/baselines.md)."
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
        guessed = [lay for lay in _LAYOUTS.values() if lay.detect is not None]
        raise CheckpointError(
            f"not a checkpoint of {' or '.join(lay.name or lay.kind for lay in guessed)} (first keys: "
            f"{list(sd)[:5]}); known layouts: " + "; ".join(f"{lay.kind}: {lay.source}" for lay in guessed))
    model = layout(kind).build(**original_model_kwargs(kind, sd))
    model.load_state_dict(from_original(kind, sd, model=model), strict=True)
    if feature_mode is not None:
        model.feature_mode = feature_mode
    return model.eval(), kind
