"""What torchreid's own entry points do with vdreid's parts, decided here and installed by :mod:`vdreid.compat`.

Three torchreid routes meet vdreid models and datasets (``docs/torchreid.md``):

* **Engines** (``ImageSoftmaxEngine``, ``ImageTripletEngine`` and the video engines): their step calls
  ``model(imgs)`` and applies one fixed torchreid loss to the output. Models that set ``needs_vdreid_engine`` (VD,
  AGW: training outputs for their method's criterion, a forward that may need each image's modality) are refused when
  the engine is built (:func:`check_torchreid_engine`), naming vdreid's engine. Models that declare their torchreid
  training output (``loss``: the BNNeck baseline) must declare the one the engine unpacks.
* **``Engine.test()``** ranks each query against the whole torchreid-facing gallery with Market-1501's rule and the
  standard CMC. :func:`protocol_differences` lists where that departs from a vdreid dataset's protocol;
  :func:`warn_torchreid_test` warns with the protocol's name and the calls that compute it.
* **``FeatureExtractor``** builds the preset with one class and loads the matching keys only. Given a vdreid
  checkpoint (or one of the AGW code or the released VD code) and a vdreid model name,
  :func:`setup_feature_extractor` rebuilds the model exactly as ``vdreid test`` does and
  :func:`extract_with_modality` computes its features through :func:`vdreid.evaluation.extract_features`, taking
  each image's modality when the test feature needs it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os.path as osp
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from vdreid import builders, compat, methods
from vdreid.data.base import VIImageDataset
from vdreid.data.transforms import resize_mode
from vdreid.engine.checkpoint import read_model_checkpoint
from vdreid.errors import CheckpointMismatchError, ConfigError, EvaluationInputError
from vdreid.evaluation.extract import extract_features
from vdreid.models.common import unwrap_model
from vdreid.models.original import model_from_original

logger = logging.getLogger(__name__)

#: training outputs of vdreid models that declare one (``model.loss``), and what each torchreid engine unpacks
_TORCHREID_OUTPUTS = ("softmax", "triplet")


class TorchreidProtocolWarning(UserWarning):
    """torchreid's ``Engine.test()`` computed a number that is not the dataset protocol's."""


def _is_torchreid_function(fn: Any) -> bool:
    return getattr(fn, "__module__", "").split(".")[0] == "torchreid"


# ----------------------------------------------------------------------------------------------------- engines
def check_torchreid_engine(engine: Any, model: Any) -> None:
    """Refuse, when a torchreid engine is built, a model its training step cannot train.

    Only engines whose ``forward_backward`` is torchreid's are checked (a subclass with its own step is the user's
    business). Raises :class:`~vdreid.errors.ConfigError` naming the engine to use instead.
    """
    if not _is_torchreid_function(getattr(type(engine), "forward_backward", None)):
        return
    net = unwrap_model(model)
    ename = f"torchreid.engine.{type(engine).__name__}"
    mname = type(net).__name__
    if getattr(net, "needs_vdreid_engine", False):
        raise ConfigError(
            f"{ename} cannot train {mname}: torchreid's engines call model(imgs) without the images' modality and "
            f"apply one fixed torchreid loss to the output, while {mname} returns its method's training outputs for "
            "the method's own criterion and its forward may need each image's modality (True = infrared). Train it "
            "with vdreid's engine: `vdreid train --config-file CONFIG`, or vdreid.engine.VIEngine(datamanager, "
            "model, optimizer, criterion) with a vdreid.data.CrossModalDataManager and criterion = "
            "vdreid.builders.build_criterion(cfg, num_classes, model). torchreid's engines do train the plain "
            "BNNeck baseline (bnneck_resnet50, bnneck_resnet18)."
        )
    declared = getattr(net, "loss", None)
    if type(net).__module__.startswith("vdreid.") and isinstance(declared, str):
        expected = "triplet" if isinstance(engine, compat.engine.ImageTripletEngine) else "softmax"
        if declared != expected:
            shape = "(logits, features)" if expected == "triplet" else "the logits"
            raise ConfigError(
                f"{ename} takes the '{expected}' training output ({shape}), but this {mname} was built with "
                f"loss={declared!r}: build it with torchreid.models.build_model(name, num_classes, loss='{expected}')"
            )


# ----------------------------------------------------------------------------------------------------- test()
def protocol_differences(protocol: Any, num_query: int, num_gallery: int, query_camids: Sequence[int] = (),
                         gallery_camids: Sequence[int] = ()) -> list[str]:
    """Where torchreid's ``Engine.test()`` departs from ``protocol`` on a query set of ``num_query`` and a gallery of
    ``num_gallery`` images (the torchreid-facing lists of the dataset), one phrase each; empty when it computes the
    protocol's ranking and CMC.

    torchreid (``metrics/rank.py``, ``eval_market1501``) ranks every query against the whole gallery, removes the
    gallery images of the query's identity seen by the query's camera id, and counts every match in the CMC.
    """
    out: list[str] = []
    if protocol.num_trials > 1:
        out.append(f"it ranks against the union of the protocol's {protocol.num_trials} gallery trials at once "
                   "instead of averaging over separate galleries")
    elif int(protocol.gallery_trials[0].size) != num_gallery:
        out.append(f"it ranks against all {num_gallery} gallery images instead of the protocol's "
                   f"{int(protocol.gallery_trials[0].size)}")
    if protocol.query_trials is not None or int(protocol.query.size) != num_query:
        out.append("it uses every listed query instead of the protocol's query set")
    if protocol.exclude_cam_pairs:
        pairs = ", ".join(f"cam{q + 1} queries -> cam{g + 1} gallery" for q, g in protocol.exclude_cam_pairs)
        out.append(f"it keeps the gallery images the protocol excludes ({pairs})")
    if protocol.cmc_mode == "dedup":
        out.append("its CMC rank-k asks whether a match is among the first k gallery images, the protocol's "
                   "(identity-deduplicated) whether the query's identity is among the first k identities")
    shared = set(int(c) for c in query_camids) & set(int(c) for c in gallery_camids)
    if protocol.physical_camera and protocol.remove_same_pid_same_cam:
        out.append("it applies the same-identity same-camera rule to camera ids, not to the protocol's physical "
                   "cameras")
    elif shared and not protocol.remove_same_pid_same_cam:
        out.append("it removes same-identity same-camera gallery images, which the protocol keeps")
    return out


def _target_protocols(engine: Any) -> list[tuple[str, Any, list[str]]]:
    """(target, protocol, differences) of every test target of ``engine`` that is a vdreid dataset."""
    dm = engine.datamanager
    protocols = getattr(dm, "protocols", None)
    test_lists = getattr(dm, "test_dataset", None) or {}
    out = []
    for name, loaders in (engine.test_loader or {}).items():
        sets = {split: getattr(loaders.get(split), "dataset", None) for split in ("query", "gallery")}
        protocol = protocols.get(name) if isinstance(protocols, Mapping) else None
        if protocol is None:
            vi = [ds for ds in sets.values() if isinstance(ds, VIImageDataset)]
            protocol = getattr(vi[0], "protocol", None) if vi else None
        if protocol is None:
            continue
        items = {}
        for split in ("query", "gallery"):
            lst = (test_lists.get(name) or {}).get(split)
            if lst is None:
                lst = getattr(sets[split], "data", None) or []
            items[split] = lst
        diffs = protocol_differences(protocol, len(items["query"]), len(items["gallery"]),
                                     [it[2] for it in items["query"]], [it[2] for it in items["gallery"]])
        out.append((name, protocol, diffs))
    return out


def warn_torchreid_test(engine: Any) -> list[str]:
    """Warn (``warnings.warn`` with :class:`TorchreidProtocolWarning` and a logging warning) for every vdreid target
    whose protocol torchreid's ``Engine.test()`` does not compute; returns the warning texts."""
    texts = []
    for name, protocol, diffs in _target_protocols(engine):
        if not diffs:
            logger.info("torchreid's Engine.test() on '%s' ranks as protocol '%s' does (metric: torchreid's "
                        "dist_metric)", name, protocol.name)
            continue
        text = (
            f"torchreid's Engine.test() on '{name}' does not compute protocol '{protocol.name}': "
            + "; ".join(diffs)
            + ". Its rank-1 and mAP are not the protocol's numbers. For those use vdreid.engine.VIEngine(datamanager, "
            "model).test() with a vdreid.data.CrossModalDataManager, vdreid.evaluation.run_protocol(dataset.protocol, "
            "qf, gf, q_pids, g_pids, q_camids, g_camids), or `vdreid test --checkpoint FILE`."
        )
        warnings.warn(text, TorchreidProtocolWarning, stacklevel=3)  # the caller of test()
        logger.warning("%s", text)
        texts.append(text)
    return texts


# ----------------------------------------------------------------------------------------------------- extractor
@dataclass
class ExtractorSetup:
    """What :func:`setup_feature_extractor` decided for one ``FeatureExtractor``."""

    checkpoint: str
    kind: str
    model_name: str
    flip: bool = False


def is_vdreid_model(model_name: Any) -> bool:
    """Whether ``model_name`` is a torchreid factory name registered by a vdreid method."""
    return isinstance(model_name, str) and methods.method_of_model(model_name) is not None


def _explicit(args: Mapping[str, Any], defaults: Mapping[str, Any], key: str) -> Any:
    return args[key] if key in args else defaults[key]


def setup_feature_extractor(extractor: Any, args: Mapping[str, Any], defaults: Mapping[str, Any]) -> bool:
    """Set up ``extractor`` (a torchreid ``FeatureExtractor`` being built) for a vdreid model with a vdreid or an
    original-code checkpoint; return False to leave it to torchreid (another model, a torchreid checkpoint, no file).

    ``args``: the arguments the caller passed (by name); ``defaults``: torchreid's defaults. The model is rebuilt
    by :func:`vdreid.builders.build_model_from_checkpoint` (a vdreid checkpoint) or
    :func:`vdreid.models.model_from_original` (AGW / released VD code) and loaded strictly. Image size and
    normalisation default to the checkpoint's ``data.height``/``data.width``/``data.norm_mean``/``data.norm_std``
    (given values that differ are used, with a warning); ``test.flip`` and ``data.resize_interpolation`` are honoured.
    """
    model_name = str(_explicit(args, defaults, "model_name") or "")
    path = str(_explicit(args, defaults, "model_path") or "")
    method = methods.method_of_model(model_name)
    if method is None or not path or not osp.isfile(path):
        return False
    ckpt = read_model_checkpoint(path)
    if ckpt.kind == "torchreid":
        return False
    size = _explicit(args, defaults, "image_size")
    mean = list(_explicit(args, defaults, "pixel_mean"))
    std = list(_explicit(args, defaults, "pixel_std"))
    flip = False
    interpolation = T.InterpolationMode.BILINEAR  # torchreid's resize
    if ckpt.kind == "vdreid":
        cfg = builders.checkpoint_config(ckpt)
        stored = builders.method_of(cfg)
        if stored.name != method.name:
            raise CheckpointMismatchError(
                f'"{path}" holds a model of method \'{stored.name}\' (model.name {cfg.model.name!r}), not of '
                f"'{method.name}' as model_name={model_name!r} says: pass model_name={cfg.model.name!r}"
            )
        if cfg.model.name != model_name:
            logger.warning("FeatureExtractor: model_name=%r, but \"%s\" was trained as %r (backbone %r): the model "
                           "is rebuilt from the checkpoint's stored config", model_name, path, cfg.model.name,
                           cfg.model.backbone or "preset")
        model = builders.build_model_from_checkpoint(ckpt, cfg)
        stored_prep = {"image_size": (int(cfg.data.height), int(cfg.data.width)),
                       "pixel_mean": [float(v) for v in cfg.data.norm_mean],
                       "pixel_std": [float(v) for v in cfg.data.norm_std]}
        chosen: dict[str, Any] = {}
        for key, value in stored_prep.items():
            given = args.get(key)
            chosen[key] = value if given is None else given
            if given is not None and (not isinstance(given, Sequence) or list(map(float, given)) != list(value)):
                text = (f"FeatureExtractor: {key}={given!r} differs from the {list(value)} \"{path}\" was "
                        "trained and tested with: its features will not match `vdreid test`")
                warnings.warn(text, UserWarning, stacklevel=3)  # the caller of FeatureExtractor()
                logger.warning("%s", text)
        size, mean, std = chosen["image_size"], chosen["pixel_mean"], chosen["pixel_std"]
        flip = bool(cfg.test.flip)
        interpolation = resize_mode(cfg.data.resize_interpolation)  # the resize filter `vdreid test` used
    else:  # the authors' own code
        owner = methods.method_of_original(ckpt.kind, prefer=method.name).name
        if owner != method.name:
            raise CheckpointMismatchError(
                f'"{path}" was written by the {ckpt.kind} code (method \'{owner}\'), not a model of method '
                f"'{method.name}' as model_name={model_name!r} says"
            )
        model, _ = model_from_original(ckpt.state_dict, ckpt.kind)

    device = torch.device(str(_explicit(args, defaults, "device")))
    model.eval().to(device)
    steps: list[Callable] = [T.Resize(size, interpolation=interpolation), T.ToTensor()]
    if _explicit(args, defaults, "pixel_norm"):
        steps.append(T.Normalize(mean=mean, std=std))
    extractor.model = model
    extractor.preprocess = T.Compose(steps)
    extractor.to_pil = T.ToPILImage()
    extractor.device = device
    extractor.vdreid = ExtractorSetup(checkpoint=path, kind=ckpt.kind, model_name=model_name, flip=flip)
    if _explicit(args, defaults, "verbose"):
        n = sum(p.numel() for p in model.parameters())
        logger.info("FeatureExtractor: %s rebuilt from \"%s\" (%s checkpoint), %s parameters, test feature %r%s",
                    type(model).__name__, path, ckpt.kind, f"{n:,}", getattr(model, "feature_mode", None),
                    ", flip" if flip else "")
    return True


def images_from_input(extractor: Any, input: Any) -> torch.Tensor:
    """The image batch torchreid's ``FeatureExtractor.__call__`` makes of ``input`` (image paths, HxWxC arrays, a
    (C, H, W) / (B, C, H, W) tensor; ``utils/feature_extractor.py``), on the extractor's device. Restated because
    torchreid's ``__call__`` preprocesses and runs the model in one function that takes no modality."""
    def one(element: Any) -> torch.Tensor:
        if isinstance(element, str):
            image = Image.open(element).convert("RGB")
        elif isinstance(element, np.ndarray):
            image = extractor.to_pil(element)
        else:
            raise TypeError("Type of each element must belong to [str | numpy.ndarray]")
        return extractor.preprocess(image)

    if isinstance(input, list):
        images = torch.stack([one(e) for e in input], dim=0)
    elif isinstance(input, str | np.ndarray):
        images = one(input).unsqueeze(0)
    elif isinstance(input, torch.Tensor):
        images = input.unsqueeze(0) if input.dim() == 3 else input
    else:  # torchreid's FeatureExtractor accepts the same four input types
        raise TypeError(f"FeatureExtractor input must be an image path, a numpy image, a list of them or a tensor, "
                        f"got {type(input).__name__}")
    return images.to(extractor.device)


def _modality_tensor(modality: Any, batch: int) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(modality) if isinstance(modality, list | tuple) else modality).flatten()
    if m.numel() != batch:
        raise EvaluationInputError(f"FeatureExtractor: modality has {m.numel()} entries for {batch} images; give one "
                                   "bool per image (True = infrared)")
    if m.dtype != torch.bool:
        if m.is_floating_point() or not bool(((m == 0) | (m == 1)).all()):
            raise EvaluationInputError(f"FeatureExtractor: modality must be bools (True = infrared) or 0/1, got "
                                       f"{m.dtype} values")
        m = m.bool()
    return m


def _takes_modality(net: Any) -> bool:
    try:
        return "modality" in inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return False


def extract_with_modality(extractor: Any, input: Any, modality: Any, torchreid_call: Callable) -> torch.Tensor:
    """``FeatureExtractor.__call__(input, modality=None)``.

    A model whose test feature needs each image's modality (``test_needs_modality``: AGW, VD's modality-specific
    features) refuses a call without it. An extractor set up by :func:`setup_feature_extractor` extracts through
    :func:`vdreid.evaluation.extract_features` (the routine of ``vdreid test``, flip included); any other extractor
    keeps torchreid's call, with ``model(images, modality=...)`` when a modality is given.
    """
    net = unwrap_model(extractor.model)
    setup: ExtractorSetup | None = getattr(extractor, "vdreid", None)
    if modality is None and getattr(net, "test_needs_modality", False):
        mode = getattr(net, "feature_mode", None)
        raise EvaluationInputError(
            f"FeatureExtractor: the test feature of {type(net).__name__} (feature_mode {mode!r}) needs each image's "
            "modality: call extractor(images, modality=is_ir) with one bool per image (True = infrared)"
        )
    if modality is not None and not _takes_modality(net):
        raise EvaluationInputError(f"FeatureExtractor: {type(net).__name__}.forward takes no modality; call "
                                   "extractor(images) without it")
    if setup is None and modality is None:
        return torchreid_call(extractor, input)
    images = images_from_input(extractor, input)
    n = int(images.shape[0])
    is_ir = _modality_tensor(modality, n) if modality is not None else None
    if setup is None:
        with torch.no_grad():
            return extractor.model(images, modality=is_ir.to(extractor.device))
    # one batch through the evaluation's own extraction: camid 1 marks the infrared images
    camid = is_ir.long() if is_ir is not None else torch.zeros(n, dtype=torch.long)
    batch = {"img": images, "pid": torch.zeros(n, dtype=torch.long), "camid": camid, "impath": [""] * n}
    feats, *_ = extract_features(extractor.model, [batch], extractor.device, frozenset({1}), flip=setup.flip,
                                 desc="FeatureExtractor")
    return feats.to(extractor.device)


# ---------------------------------------------------------------------------------------- torchreid entry points
# torchreid's engines, Engine.test() and FeatureExtractor meet vdreid's models and datasets; what they do with them
# is decided above and installed here by wrapping torchreid's methods (docs/torchreid.md).
_ENGINE_CLASSES = ("ImageSoftmaxEngine", "ImageTripletEngine", "VideoSoftmaxEngine", "VideoTripletEngine")


def _install(cls: type, attr: str, make: Callable[[Callable], Callable]) -> None:
    """Replace ``cls.attr`` by ``make(original)``. Idempotent: a second install (or a reloaded compat) wraps
    torchreid's original again instead of the previous wrapper."""
    current = cls.__dict__.get(attr)
    if current is None:
        return
    original = getattr(current, "__vdreid_original__", current)
    wrapper = functools.wraps(original)(make(original))
    wrapper.__vdreid_original__ = original
    setattr(cls, attr, wrapper)


def _guard_engine_init(original: Callable) -> Callable:
    sig = inspect.signature(original)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = sig.bind_partial(self, *args, **kwargs)
        check_torchreid_engine(self, bound.arguments.get("model"))
        original(self, *args, **kwargs)

    return __init__


def _warn_engine_test(original: Callable) -> Callable:
    def test(self, *args: Any, **kwargs: Any):
        warned = warn_torchreid_test(self)
        result = original(self, *args, **kwargs)
        if warned:  # again below torchreid's printed numbers
            logger.warning("the rank-1/mAP printed above are not the vdreid protocols' numbers (see the warning "
                            "before them): vdreid.engine.VIEngine(...).test() or `vdreid test` computes those")
        return result

    return test


def _extractor_init(original: Callable) -> Callable:
    sig = inspect.signature(original)
    defaults = {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = sig.bind(self, *args, **kwargs)
        passed = {k: v for k, v in bound.arguments.items() if k != "self"}
        if setup_feature_extractor(self, passed, defaults):
            return
        verbose = passed.get("verbose", defaults.get("verbose", True))
        if verbose and is_vdreid_model(passed.get("model_name", defaults.get("model_name"))):
            # torchreid's complexity count runs model(x) without a modality, which AGW refuses: count parameters only
            bound.arguments["verbose"] = False
            original(*bound.args, **bound.kwargs)
            logger.info("FeatureExtractor: %s, %s parameters", type(self.model).__name__,
                        f"{sum(p.numel() for p in self.model.parameters()):,}")
            return
        original(self, *args, **kwargs)

    return __init__


def _extractor_call(original: Callable) -> Callable:
    def __call__(self, input: Any, modality: Any = None):
        return extract_with_modality(self, input, modality, original)

    return __call__


def install_torchreid_patches() -> None:
    """Wrap torchreid's engines' ``__init__`` (refuse models they cannot train), ``Engine.test`` (warn on vdreid
    datasets) and ``FeatureExtractor`` (vdreid checkpoints, ``modality=``). Idempotent; run at import."""
    for name in _ENGINE_CLASSES:
        cls = getattr(compat.engine, name, None)
        if isinstance(cls, type):
            _install(cls, "__init__", _guard_engine_init)
    _install(compat.Engine, "test", _warn_engine_test)
    extractor = getattr(compat.utils, "FeatureExtractor", None)
    if isinstance(extractor, type):
        _install(extractor, "__init__", _extractor_init)
        _install(extractor, "__call__", _extractor_call)


__all__ = [
    "ExtractorSetup",
    "TorchreidProtocolWarning",
    "check_torchreid_engine",
    "extract_with_modality",
    "images_from_input",
    "install_torchreid_patches",
    "is_vdreid_model",
    "protocol_differences",
    "setup_feature_extractor",
    "warn_torchreid_test",
]
