"""Encoders ``E`` of the paper (Fig. 3): a timm encoder, pooling and a BNNeck giving the observation ``v``.

vdreid runs two kinds of timm encoder (docs/encoders.md):

* **CNNs**, which timm builds for any input size (ResNet, RegNet, ConvNeXt, EfficientNet, ...): ``forward_features``
  gives a (B, C, H, W) map, pooled by global average pooling. With a ResNet-50 this is the released VD ``Baseline``
  (docs/vd-recipes.md section 1): ImageNet ResNet-50 with last stride 1, optional channel attention before
  layer2/3/4, GAP, BatchNorm1d with frozen bias (BNNeck) and an identity classifier on the post-BN feature (weights
  N(0, 0.001), bias 0). Last stride 1 sets the stride-2 layers of the last stage to stride 1 (no dilation).
* **encoders timm builds for one input size** (its pretrained config says ``fixed_input_size``: ViT, DeiT, Swin,
  EVA, BEiT, CaiT, XCiT, MaxViT, ...): built for the recipe's input size (timm's ``img_size=``) or, when no size is
  given, with timm's ``dynamic_img_size=True`` (any multiple of the patch size). They are pooled by the model's own
  head, ``forward_head(pre_logits=True)`` with the ``global_pool`` the model was registered with: ViT's class
  token, DeiT's mean of the class and distillation tokens, Swin's mean over the final token map, SigLIP's attention
  pooling, ... Last stride has no meaning for them (the patch size fixes the token grid that the blocks keep, or
  the stages' patch merging is part of the weights) and is ignored; :func:`describe_encoder` says so.

A timm encoder that timm builds for any size but whose features are not a (B, C, H, W) map (e.g. MambaOut's
channels-last map) is also pooled by its own head. What vdreid decides for a backbone is an :class:`EncoderLayout`,
worked out on PyTorch's ``meta`` device (shapes only: no weights, no arithmetic, no random numbers drawn).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from timm.layers import Conv2dSame
from torch import Tensor, nn

from vdreid.errors import ConfigError
from vdreid.models.attention import ShallowCAM
from vdreid.models.weights import PretrainedWeightsError, hub_state_dict, load_backbone_file, load_backbone_state

logger = logging.getLogger(__name__)

GAP = "gap"  # global average pooling of a (B, C, H, W) map (CNNs)
HEAD = "head"  # the model's own forward_head(pre_logits=True)
INPUT_MODES = ("any", "img_size", "dynamic")
_SIZE_KEYS = "input_size (config keys data.height, data.width)"


# --------------------------------------------------------------------------------------------- names and sizes
def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"config key 'model.backbone': a timm model name such as 'resnet50' is expected, "
                          f"got {name!r}")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:10]
        raise ConfigError(f"config key 'model.backbone': '{name}' is not a timm model. Similar names: {close}")
    return name


def create_timm_backbone(name: str, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0, global_pool='')`` with a clear unknown-name error."""
    _check_name(name)
    return timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **timm_kwargs)


def is_fixed_size(name: str) -> bool:
    """Whether timm builds ``name`` for one input size (its pretrained config's ``fixed_input_size``: ViT, DeiT,
    Swin, ...), so that vdreid must give it the input size (``img_size``) or make it dynamic."""
    cfg = timm.get_pretrained_cfg(name)
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))


def _pretrained_size(name: str) -> tuple[int, int]:
    cfg = timm.get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) or (3, 224, 224)
    return int(size[-2]), int(size[-1])


def _check_input_size(input_size: Any) -> tuple[int, int] | None:
    if input_size is None:
        return None
    try:
        h, w = (int(s) for s in input_size)
        ok = all(float(s) == int(s) for s in input_size) and h > 0 and w > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{_SIZE_KEYS}: two positive integers (height, width) are expected, got {input_size!r}")
    return h, w


def _size_hint(h: int, w: int, ph: int, pw: int) -> str:
    """``multiples of 16x16, e.g. 64x32 or 80x48`` around ``h x w``."""
    lo = (max(ph, h // ph * ph), max(pw, w // pw * pw))
    hi = (-(-h // ph) * ph, -(-w // pw) * pw)
    return f"multiples of {ph}x{pw} (height x width), e.g. {lo[0]}x{lo[1]} or {hi[0]}x{hi[1]}"


def _fmt(size: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in size)


# --------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class EncoderLayout:
    """What vdreid builds for one timm encoder (module docstring).

    Attributes:
        backbone: the timm name.
        family: the timm class (``ResNet``, ``VisionTransformer``, ``SwinTransformer``, ...).
        fixed_size: timm builds it for one input size.
        pooling: :data:`GAP` or :data:`HEAD`.
        feature_format: layout of ``forward_features``: 'NCHW', 'NHWC' or 'NLC' (tokens).
        width: width of the pooled feature (the BNNeck's).
        input_mode: 'any' (built for any size), 'img_size' (built for ``img_size``), 'dynamic' (timm's
            ``dynamic_img_size``: any multiple of ``patch_size``).
        img_size: the size it is built for ('img_size' mode) or the pretrained size (other modes).
        patch_size: the patch embedding's patch size, when the model has one.
        global_pool: the model's ``global_pool`` ('' for :data:`GAP`).
        prefix_tokens: class / distillation / register tokens before the patch tokens.
        distilled: a DeiT with a distillation token (pooled with the class token).
        probe_size: the input size the shapes below were computed at.
        final_size: spatial size (or token count) of ``forward_features`` at ``probe_size``.
        stride_two_size: the same with last stride 2 (CNNs with last stride 1 only; else ``final_size``).
        last_stride: the requested last stride (1 or 2).
        create_kwargs: the keyword arguments given to ``timm.create_model`` (besides ``pretrained``).
    """

    backbone: str
    family: str
    fixed_size: bool
    pooling: str
    feature_format: str
    width: int
    input_mode: str
    img_size: tuple[int, int] | None
    patch_size: tuple[int, int] | None
    global_pool: str
    prefix_tokens: int
    distilled: bool
    probe_size: tuple[int, int]
    final_size: tuple[int, ...]
    stride_two_size: tuple[int, ...]
    last_stride: int
    create_kwargs: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def last_stride_applies(self) -> bool:
        """Whether ``last_stride=1`` changes the network (CNN-like encoders built for any size)."""
        return not self.fixed_size


def _creation_kwargs(name: str, size: tuple[int, int] | None, timm_kwargs: dict[str, Any]
                     ) -> tuple[dict[str, Any], str, tuple[int, int] | None]:
    """``timm.create_model`` keyword arguments of an encoder built for one input size, its input mode and size."""
    kw = dict(timm_kwargs)
    kw.setdefault("num_classes", 0)
    kw.setdefault("global_pool", None)  # timm drops None: the pooling the model is registered with
    if kw.get("img_size") is not None:
        own = _check_input_size(kw["img_size"] if not isinstance(kw["img_size"], int) else (kw["img_size"],) * 2)
        if size is not None and own != size:
            raise ConfigError(f"backbone '{name}': timm argument img_size={kw['img_size']!r} contradicts "
                              f"{_SIZE_KEYS} = {_fmt(size)}; give one of them")
        return kw, "img_size", own
    if kw.get("dynamic_img_size"):
        return kw, "dynamic", None
    if size is not None:
        kw["img_size"] = size
        return kw, "img_size", size
    kw["dynamic_img_size"] = True
    return kw, "dynamic", None


def _create(name: str, kwargs: dict[str, Any], meta: bool) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``, on the meta device with ``meta``. A family without
    ``dynamic_img_size`` is a ConfigError asking for the input size."""
    try:
        if meta:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                try:
                    return timm.create_model(name, pretrained=False, **kwargs)
                except (NotImplementedError, RuntimeError) as exc:  # e.g. a value read from a tensor at init
                    if _meta_trouble(exc):
                        raise _MetaUnsupported(str(exc)) from exc
                    raise
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        if "dynamic_img_size" in str(exc):
            raise ConfigError(
                f"backbone '{name}' is built for one input size ({_fmt(_pretrained_size(name))} pretrained) and its "
                f"timm family has no dynamic-size mode: give the input size, {_SIZE_KEYS}"
            ) from exc
        raise
    except (AssertionError, ValueError) as exc:  # timm's checks of img_size against its windows / strides
        size = kwargs.get("img_size")
        if size is None or isinstance(exc, ConfigError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0] or type(exc).__name__
        raise ConfigError(
            f"timm cannot build backbone '{name}' for {_fmt(size)} images ({_SIZE_KEYS}): {first}; its pretrained "
            f"size is {_fmt(_pretrained_size(name))}"
        ) from exc


def _feature_format(f: Tensor, body: nn.Module) -> str:
    if f.dim() == 3:
        return "NLC"
    if f.dim() != 4:
        return f"{f.dim()}-D"
    own = getattr(body, "output_fmt", None)
    own = str(getattr(own, "value", own) or "")
    if own in ("NCHW", "NHWC"):
        return own
    n = int(getattr(body, "num_features", -1))
    if f.shape[1] == n:
        return "NCHW"
    return "NHWC" if f.shape[-1] == n else "NCHW"


def _final_size(f: Tensor, fmt: str) -> tuple[int, ...]:
    if fmt == "NCHW":
        return tuple(int(s) for s in f.shape[2:])
    if fmt == "NHWC":
        return tuple(int(s) for s in f.shape[1:3])
    return (int(f.shape[1]),)


def _probe(model: nn.Module, size: tuple[int, int], head: bool) -> tuple[Tensor, Tensor | None]:
    """``forward_features`` (and ``forward_head(pre_logits=True)``) of zeros of ``size``, in eval mode, on the
    model's device (the meta device: shapes only)."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            f = model.forward_features(torch.zeros(1, 3, *size, device=dev))
            p = model.forward_head(f, pre_logits=True) if head else None
    finally:
        model.train(was_training)
    return f, p


def _probe_or_config_error(model: nn.Module, name: str, size: tuple[int, int], head: bool, mode: str
                           ) -> tuple[Tensor, Tensor | None]:
    try:
        return _probe(model, size, head)
    except (AssertionError, RuntimeError, ValueError) as exc:
        if next(model.parameters()).is_meta and _meta_trouble(exc):
            raise _MetaUnsupported(str(exc)) from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        patch = _patch_size(model)
        hint = f"; use {_size_hint(*size, *patch)}" if patch and (size[0] % patch[0] or size[1] % patch[1]) else (
            f"; its pretrained size is {_fmt(_pretrained_size(name))}")
        how = {"img_size": "built for that size (timm img_size)", "dynamic": "timm dynamic_img_size",
               "any": "a CNN"}.get(mode, mode)
        raise ConfigError(
            f"backbone '{name}' ({type(model).__name__}, {how}) does not run on {_fmt(size)} images "
            f"({_SIZE_KEYS}): timm says: {first}{hint}"
        ) from exc


def _patch_size(model: nn.Module) -> tuple[int, int] | None:
    ps = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(ps, int):
        return ps, ps
    if isinstance(ps, (tuple, list)) and len(ps) == 2 and all(isinstance(p, int) for p in ps):
        return int(ps[0]), int(ps[1])
    return None


def _layout_of(name: str, body: nn.Module, *, pooling: str, fixed: bool, mode: str, img_size: tuple[int, int] | None,
               probe_size: tuple[int, int], f: Tensor, p: Tensor | None, last_stride: int,
               stride_two: tuple[int, ...] | None, kwargs: dict[str, Any]) -> EncoderLayout:
    fmt = _feature_format(f, body)
    width = int(p.shape[-1]) if p is not None else int(body.num_features)
    gp = getattr(body, "global_pool", "")
    gp = gp if isinstance(gp, str) else str(getattr(gp, "pool_type", "") or "")
    final = _final_size(f, fmt)
    return EncoderLayout(
        backbone=name, family=type(body).__name__, fixed_size=fixed, pooling=pooling, feature_format=fmt,
        width=width, input_mode=mode, img_size=img_size if mode == "img_size" else _pretrained_size(name),
        patch_size=_patch_size(body), global_pool=gp if pooling == HEAD else "",
        prefix_tokens=int(getattr(body, "num_prefix_tokens", 0) or 0),
        distilled=getattr(body, "dist_token", None) is not None, probe_size=probe_size, final_size=final,
        stride_two_size=stride_two or final, last_stride=last_stride, create_kwargs=dict(kwargs))


class _MetaUnsupported(Exception):
    """The model cannot be built or run on the meta device (an op without a meta kernel, a value read at init)."""


def _meta_trouble(exc: BaseException) -> bool:
    return isinstance(exc, NotImplementedError) or re.search(r"\bmeta\b", str(exc), flags=re.I) is not None


def _plan(name: str, last_stride: int, size: tuple[int, int] | None, timm_kwargs: dict[str, Any]
          ) -> tuple[EncoderLayout, nn.Module]:
    """The layout of ``name`` and the model it was read from (see :func:`encoder_layout`): worked out on the meta
    device, or, for a model that cannot live there, on a CPU copy (random numbers drawn for it are given back)."""
    _check_name(name)
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    try:
        return _plan_on(name, last_stride, size, timm_kwargs, meta=True)
    except _MetaUnsupported:
        with torch.random.fork_rng(devices=[]):
            return _plan_on(name, last_stride, size, timm_kwargs, meta=False)


def _plan_on(name: str, last_stride: int, size: tuple[int, int] | None, timm_kwargs: dict[str, Any], meta: bool
             ) -> tuple[EncoderLayout, nn.Module]:
    probe_size = size or _pretrained_size(name)
    if is_fixed_size(name):
        kw, mode, img_size = _creation_kwargs(name, size, timm_kwargs)
        probe_size = img_size or probe_size
        model = _create(name, kw, meta=meta)
        f, p = _probe_or_config_error(model, name, probe_size, True, mode)
        layout = _layout_of(name, model, pooling=HEAD, fixed=True, mode=mode, img_size=img_size,
                            probe_size=probe_size, f=f, p=p, last_stride=last_stride, stride_two=None, kwargs=kw)
        if size is not None or mode == "img_size":  # timm would crop a size that is not a multiple of the patches
            check_image_size(layout, *probe_size)
        return layout, model
    kw = {**timm_kwargs, "num_classes": 0, "global_pool": ""}  # exactly create_timm_backbone's model
    model = _create(name, kw, meta=meta)
    f, _ = _probe_or_config_error(model, name, probe_size, False, "any")
    pooling = GAP
    if _feature_format(f, model) != "NCHW":  # e.g. a channels-last map: the model's own head pools it
        pooling, kw = HEAD, {**timm_kwargs, "num_classes": 0}
        model = _create(name, kw, meta=meta)
    stride_two = None
    if last_stride == 1:
        f2, _ = _probe(model, probe_size, False)
        stride_two = _final_size(f2, _feature_format(f2, model))
        try:
            set_last_stride_one(model, name)
        except (NotImplementedError, RuntimeError) as exc:
            if meta and _meta_trouble(exc):
                raise _MetaUnsupported(str(exc)) from exc
            raise
    f, p = _probe_or_config_error(model, name, probe_size, pooling == HEAD, "any")
    layout = _layout_of(name, model, pooling=pooling, fixed=False, mode="any", img_size=None, probe_size=probe_size,
                        f=f, p=p, last_stride=last_stride, stride_two=stride_two, kwargs=kw)
    return layout, model


_LAYOUTS: dict[tuple, EncoderLayout] = {}  # VD builds three alike encoders: one layout


def encoder_layout(backbone: str, last_stride: int = 1, input_size: tuple[int, int] | None = None,
                   **timm_kwargs: Any) -> EncoderLayout:
    """What :class:`Encoder` builds for ``backbone`` at ``input_size`` (height, width), computed on the meta device
    (and remembered for the process).

    Raises :class:`~vdreid.errors.ConfigError` for an unknown name, an input size the encoder cannot run on
    (e.g. not a multiple of a ViT's or Swin's patch size), or a fixed-size family without a dynamic mode when no
    input size is given.
    """
    size = _check_input_size(input_size)
    key = (backbone, last_stride, size, tuple(sorted((k, repr(v)) for k, v in timm_kwargs.items())))
    if key not in _LAYOUTS:
        if len(_LAYOUTS) >= 64:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
        _LAYOUTS[key] = _plan(backbone, last_stride, size, dict(timm_kwargs))[0]
    return _LAYOUTS[key]


# --------------------------------------------------------------------------------------------- description
def _pooling_phrase(layout: EncoderLayout) -> str:
    if layout.pooling == GAP:
        return f"global average over the final map ({layout.width} channels)"
    gp, fmt = layout.global_pool, layout.feature_format
    if layout.distilled and gp == "token":
        what = "mean of the class and distillation tokens"
    elif gp == "token":
        what = "the class token"
    elif gp == "map":
        what = "attention pooling (timm's MAP head)"
    elif gp in ("avg", "max", "avgmax") and fmt == "NLC":
        name = {"avg": "mean", "max": "maximum", "avgmax": "mean + maximum / 2"}[gp]
        skip = " (prefix tokens left out)" if layout.prefix_tokens else ""
        what = f"{name} over the patch tokens{skip}"
    elif gp in ("avg", "max", "avgmax", "fast", "avgmaxc", "catavgmax"):
        what = f"global {gp} pooling of the final {_fmt(layout.final_size)} map"
    elif gp:
        what = f"the model's head (global_pool={gp!r})"
    else:
        what = "the model's own head"
    return f"{what} (timm forward_head(pre_logits=True), {layout.width} features)"


def describe_layout(layout: EncoderLayout) -> str:
    """One line: what last stride and pooling mean for this encoder (for the start banner)."""
    at = _fmt(layout.probe_size)
    pooling = f"pooling: {_pooling_phrase(layout)}"
    if not layout.fixed_size:
        final = _fmt(layout.final_size)
        if layout.last_stride == 1:
            stride = (f"last stride 1 (the last stage's stride-2 layers set to stride 1, no dilation): final map "
                      f"{final} at {at}, {_fmt(layout.stride_two_size)} with last stride 2")
        else:
            stride = f"last stride 2 (timm's strides): final map {final} at {at}"
        kind = "CNN" if layout.pooling == GAP else f"{layout.feature_format} feature map"
        return f"encoder {layout.backbone} ({layout.family}, {kind}); {stride}; {pooling}"
    if layout.input_mode == "img_size":
        size = f"built for {at} (timm img_size; pretrained position tables resampled when weights load)"
    else:
        multiple = f"any multiple of {_fmt(layout.patch_size)}" if layout.patch_size else "any size"
        size = (f"{multiple} (timm dynamic_img_size: position tables and masks follow the input in every forward; "
                f"pretrained at {_fmt(layout.img_size or ())})")
    if layout.feature_format == "NLC" and layout.patch_size:
        ph, pw = layout.patch_size
        grid = f"{layout.probe_size[0] // ph}x{layout.probe_size[1] // pw} patches at {at}"
        if layout.prefix_tokens:
            grid += f" + {layout.prefix_tokens} prefix token{'s' if layout.prefix_tokens > 1 else ''}"
    elif layout.feature_format == "NLC":
        grid = f"{layout.final_size[0]} tokens at {at}"
    else:
        grid = f"final map {_fmt(layout.final_size)} at {at}"
    by = f"the {_fmt(layout.patch_size)} patches fix the token grid" if layout.patch_size else (
        "the input size fixes every stage's grid")
    stride = f"last stride has no meaning ({by}, {grid}; last_stride={layout.last_stride} ignored)"
    return f"encoder {layout.backbone} ({layout.family}, fixed input size: {size}); {stride}; {pooling}"


def describe_encoder(backbone: str, last_stride: int = 1, input_size: tuple[int, int] | None = None,
                     **timm_kwargs: Any) -> str:
    """One line for the start banner: the encoder, what ``last_stride`` means for it, its input size and pooling.

    Example: ``describe_encoder('vit_tiny_patch16_224', 1, (288, 144))``. Computed on the meta device (no weights);
    raises :class:`~vdreid.errors.ConfigError` for what cannot run (see :func:`encoder_layout`).
    """
    return describe_layout(encoder_layout(backbone, last_stride, input_size, **timm_kwargs))


# --------------------------------------------------------------------------------------------- building
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


def _keeps_size_at_stride_one(conv: nn.Conv2d) -> bool:
    """Whether a stride-1 ``conv`` keeps the spatial size: ``2 * padding == dilation * (kernel - 1)`` per axis."""
    if isinstance(conv.padding, str):
        return conv.padding == "same"
    return all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size))


def set_last_stride_one(model: nn.Module, name: str = "backbone") -> None:
    """Make the last stage of a timm CNN keep resolution (stride 1), as Re-ID does, by changing strides.

    Strided convolutions in the last stage get stride 1; stride-2 pooling shortcuts (ResNet-D ``avg_down``)
    become identities. No dilation is added (unlike timm's ``output_stride=16``), which is what the released
    code and torchreid's ResNets do.

    A convolution that would shrink the map at stride 1 becomes timm's ``Conv2dSame`` (TensorFlow's 'SAME'
    padding). ResNets do not have one (3x3 convolutions with padding 1, 1x1 with padding 0 keep the size either
    way); ConvNeXt-style downsampling does: a 2x2 convolution with stride 2 and no padding halves an even map
    exactly, but at stride 1 it returns ``H - 1`` rows and ``W - 1`` columns (256x128 input: a 15x7 final map
    instead of 16x8; 288x144: 17x8 instead of 18x9). 'SAME' pads the missing row and column with zeros at the
    bottom and right, so the final map is twice the stride-2 one. The module keeps its parameters and state-dict
    keys (its class is switched, nothing is re-initialised).

    The result is checked with a small forward (on the model's device, so it also works on the meta device): the
    final feature map must be larger than with stride 2, otherwise a ConfigError asks for ``last_stride=2``.
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
            if mod.padding_mode == "zeros" and not isinstance(mod, Conv2dSame) and not _keeps_size_at_stride_one(mod):
                # timm's 'SAME' convolution pads in its forward and has no state of its own, so switching the class
                # keeps this module's weights; PyTorch's padding='same' would do the same but warns at every call
                # for even kernels
                mod.__class__ = Conv2dSame
                mod.padding = (0, 0)
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
            out = model.forward_features(torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
    reduction = model.feature_info[-1]["reduction"] if getattr(model, "feature_info", None) else 32
    fmt = _feature_format(out, model) if out.dim() == 4 else ""
    if fmt not in ("NCHW", "NHWC") or _final_size(out, fmt)[-1] <= 64 // reduction:
        raise ConfigError(
            f"last_stride=1 did not enlarge the final feature map of {name} (got shape {tuple(out.shape)} for a "
            "64x64 input); use last_stride=2 for this backbone"
        )


def build_timm_encoder(backbone: str, last_stride: int = 1, input_size: tuple[int, int] | None = None,
                       **timm_kwargs: Any) -> tuple[nn.Module, EncoderLayout]:
    """The timm body of an :class:`Encoder` and its :class:`EncoderLayout`.

    CNNs are created exactly as :func:`create_timm_backbone` does (then last stride 1 by
    :func:`set_last_stride_one`); encoders built for one input size get ``img_size=input_size`` or, without an
    input size, ``dynamic_img_size=True``, and keep their registered ``global_pool``.
    """
    layout = encoder_layout(backbone, last_stride, input_size, **timm_kwargs)
    body = _create(backbone, dict(layout.create_kwargs), meta=False)
    if layout.last_stride_applies and last_stride == 1:
        set_last_stride_one(body, backbone)
    return body, layout


class Encoder(nn.Module):
    """``E(v|x)``: timm encoder -> pooling -> BNNeck (``v``) -> identity classifier (``P_v``).

    Args:
        backbone: timm model name: a CNN (GAP of its final map) or an encoder timm builds for one input size
            (ViT, DeiT, Swin, ...: pooled by its own head); module docstring.
        num_classes: number of training identities.
        last_stride: 1 (Re-ID, by stride change) or 2 (unchanged); ignored by fixed-size encoders.
        attention: add :class:`ShallowCAM` before layer2/3/4 (timm ResNet family only), as the released code.
        input_size: (height, width) of the images: fixed-size encoders are built for it (timm ``img_size``);
            None builds them with timm's ``dynamic_img_size``. CNNs do not need it.
        timm_kwargs: passed to ``timm.create_model``.

    ``forward(x)`` returns ``(v_pre, v, v_logits)``: pooled feature, post-BNNeck observation, logits.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        last_stride: int = 1,
        attention: bool = False,
        input_size: tuple[int, int] | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.timm_kwargs = dict(timm_kwargs)
        self.last_stride = last_stride
        self.body, self.layout = build_timm_encoder(backbone, last_stride, input_size, **timm_kwargs)
        self.attention: nn.ModuleList | None = None
        if attention:
            if not _is_timm_resnet(self.body):
                raise ValueError(
                    f"attention=True (channel attention before layer2/3/4, as the released code) needs a timm "
                    f"ResNet-family backbone; '{backbone}' is {type(self.body).__name__}"
                )
            chans = [self.body.feature_info[i]["num_chs"] for i in (1, 2, 3)]  # inputs of layer2, layer3, layer4
            self.attention = nn.ModuleList(ShallowCAM(c) for c in chans)
        self.out_dim = int(self.layout.width)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.bnneck = nn.BatchNorm1d(self.out_dim)
        nn.init.ones_(self.bnneck.weight)
        nn.init.zeros_(self.bnneck.bias)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(self.out_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def describe(self) -> str:
        """One line: what last stride and pooling mean for this encoder (:func:`describe_layout`)."""
        return describe_layout(self.layout)

    def check_input_size(self, x: Tensor) -> None:
        """ConfigError when a fixed-size encoder gets images it cannot run on (instead of timm's assertion)."""
        if not self.layout.fixed_size:
            return
        check_image_size(self.layout, int(x.shape[-2]), int(x.shape[-1]))

    def feature_map(self, x: Tensor) -> Tensor:
        if self.attention is None:
            self.check_input_size(x)
            return self.body.forward_features(x)
        b = self.body
        x = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        x = b.layer1(x)
        x = b.layer2(self.attention[0](x))
        x = b.layer3(self.attention[1](x))
        return b.layer4(self.attention[2](x))

    def pooled(self, fmap: Tensor) -> Tensor:
        """The pooled feature ``v_pre`` (B, out_dim) of ``forward_features``' output."""
        if self.layout.pooling == HEAD:
            return self.body.forward_head(fmap, pre_logits=True)
        if fmap.dim() != 4:
            raise ValueError(
                f"backbone '{self.backbone_name}' returned features of shape {tuple(fmap.shape)}; only CNNs with "
                "(B, C, H, W) feature maps are supported"
            )
        return self.gap(fmap).flatten(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        v_pre = self.pooled(self.feature_map(x))
        v = self.bnneck(v_pre)
        return v_pre, v, self.classifier(v)

    def load_backbone_weights(self, path: str | None = None, state: dict[str, Tensor] | None = None) -> None:
        """Load ImageNet weights into the timm body from a local file ``path`` or an already read ``state``."""
        if state is not None:
            load_backbone_state(self.body, state, source=path or "state dict")
        elif path:
            load_backbone_file(self.body, path)
        else:
            raise PretrainedWeightsError("load_backbone_weights needs a file path or a state dict")

    def hub_state_dict(self) -> dict[str, Tensor]:
        """ImageNet weights of this backbone from the local cache or (online only) timm's hub; see weights.py."""
        if self.layout.pooling == HEAD:  # the body's own creation arguments (img_size, pooling head)
            kw = {k: v for k, v in self.layout.create_kwargs.items() if k != "num_classes"}
            return hub_state_dict(self.backbone_name, self.body, **kw)
        return hub_state_dict(self.backbone_name, self.body, **self.timm_kwargs)


def check_image_size(layout: EncoderLayout, h: int, w: int) -> None:
    """ConfigError naming the valid sizes when ``h x w`` images do not fit a fixed-size encoder's ``layout``."""
    if layout.input_mode == "img_size" and layout.img_size is not None and (h, w) != tuple(layout.img_size):
        raise ConfigError(
            f"backbone '{layout.backbone}' was built for {_fmt(layout.img_size)} images (timm img_size) but got "
            f"{h}x{w}: build it with {_SIZE_KEYS} = {h}x{w}, or feed {_fmt(layout.img_size)} images"
        )
    ps = layout.patch_size
    if ps and (h % ps[0] or w % ps[1]):
        raise ConfigError(
            f"backbone '{layout.backbone}' cuts images into {_fmt(ps)} patches and cannot take {h}x{w} "
            f"({_SIZE_KEYS}): use {_size_hint(h, w, *ps)}"
        )
