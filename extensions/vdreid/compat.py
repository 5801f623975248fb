"""The one place that imports torchreid.

The registry package ``torchreid==0.2.5`` is upstream torchreid 1.4 re-packaged under ``torchreid.reid``;
upstream installs it as ``torchreid``. Everything else in vdreid imports torchreid through this module, and it is the
only module that touches torchreid's private names. It is a leaf: it imports nothing of vdreid but its errors. It
also carries the small fixes we need for torchreid on current torch / numpy, each with a comment. The wrappers of
torchreid's entry points (engines, ``Engine.test()``, ``FeatureExtractor``) live in :mod:`vdreid.interop`, which
``import vdreid`` installs.
"""

from __future__ import annotations

import logging
import os.path as osp
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch

from vdreid.errors import CheckpointError, CheckpointNotFoundError, ConfigError

logger = logging.getLogger(__name__)

with warnings.catch_warnings():
    # torchreid warns at import time that its Cython ranking is not built; we never use that ranking.
    warnings.filterwarnings("ignore", message=".*Cython evaluation.*")
    warnings.filterwarnings("ignore", message=".*Cython rank evaluation.*")
    try:  # registry package torchreid==0.2.5
        import torchreid.reid as torchreid  # type: ignore[no-redef]

        TORCHREID_LAYOUT = "torchreid.reid"
    except ImportError:  # upstream torchreid 1.4 (pip install from source)
        import torchreid  # type: ignore[no-redef]

        TORCHREID_LAYOUT = "torchreid"

# attribute access (not import by dotted name), so both layouts resolve the same way
data = torchreid.data
models = torchreid.models
engine = torchreid.engine
utils = torchreid.utils
metrics = torchreid.metrics
losses = torchreid.losses
optim = torchreid.optim
transforms = torchreid.data.transforms

ImageDataset = data.ImageDataset
ImageDataManager = data.ImageDataManager
Engine = engine.Engine
build_transforms = transforms.build_transforms
visualize_ranked_results = utils.visualize_ranked_results
re_ranking = utils.re_ranking
evaluate_rank = metrics.evaluate_rank
TripletLoss = losses.TripletLoss
CrossEntropyLoss = losses.CrossEntropyLoss
save_checkpoint = utils.save_checkpoint
read_image = utils.read_image


def _image_dataset_registry() -> dict[str, Any]:
    # torchreid keeps its registry in a module-level dict named with two underscores (no public accessor).
    return getattr(data.datasets, "__image_datasets")


def _model_registry() -> dict[str, Callable[..., torch.nn.Module]]:
    return getattr(models, "__model_factory")


def register_image_dataset(name: str, dataset: type) -> None:
    """Register ``dataset`` under ``name``; idempotent (torchreid raises on a second registration)."""
    reg = _image_dataset_registry()
    if reg.get(name) is dataset:
        return
    if name in reg and getattr(reg[name], "__module__", "").startswith("vdreid"):
        reg[name] = dataset  # a reloaded vdreid module: replace our own older class
        return
    data.register_image_dataset(name, dataset)


def register_model(name: str, factory: Callable[..., torch.nn.Module]) -> None:
    """Add ``factory`` to torchreid's model factory so ``build_model(name, ...)`` works; idempotent."""
    _model_registry()[name] = factory


def load_checkpoint(fpath: str, weights_only: bool = True, map_location: str | torch.device | None = "cpu") -> dict:
    """torchreid's ``load_checkpoint`` calls ``torch.load`` without ``weights_only`` (unsafe, and a warning or
    error on torch >= 2.6) and prints instead of raising useful errors; this loads with ``weights_only=True``.

    Every failure is one :class:`~vdreid.errors.CheckpointError` line naming the file and what it is not (empty,
    truncated, not a PyTorch file, holding objects the safe loader refuses, not a dict). torch's own message for a
    refused pickle advises loading with the unsafe unpickler; that advice is never passed on: a file that needs it
    could run arbitrary code.
    """
    if not fpath:
        raise ConfigError(
            "checkpoint path is empty: name a file written by `vdreid train` or torchreid's save_checkpoint"
        )
    fpath = osp.abspath(osp.expanduser(fpath))
    if not osp.isfile(fpath):
        raise CheckpointNotFoundError(f'checkpoint not found: "{fpath}" is not a file')
    try:
        obj = torch.load(fpath, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path named and what the file is not
        raise CheckpointError(_load_failure(fpath, exc, weights_only)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f'"{fpath}" is not a checkpoint: it holds a {type(obj).__name__}, expected a dict (a state_dict, or '
            "a dict with 'state_dict' as written by `vdreid train` / torchreid's save_checkpoint)"
        )
    return obj


# first bytes of the formats torch.load reads: a zip archive (torch >= 1.6) or a pickle (legacy format)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


def _load_failure(fpath: str, exc: Exception, weights_only: bool) -> str:
    """One line saying what ``fpath`` is not, from its first bytes and torch's exception (without torch's advice)."""
    size = osp.getsize(fpath)
    with open(fpath, "rb") as f:
        head = f.read(8)
    text = str(exc)
    hint = "Use another checkpoint (a run folder's latest.pth is always complete) or write this one again."
    if size == 0:
        return f'"{fpath}" is not a checkpoint: the file is empty (0 bytes). {hint}'
    if head.startswith(_ZIP_MAGIC):
        if "central directory" in text or "zip archive" in text or isinstance(exc, EOFError):
            return (f'"{fpath}" is not a complete checkpoint: the zip archive written by torch.save is truncated or '
                    f"damaged ({size} bytes; {text.splitlines()[0].split('. ')[0]}). {hint}")
    elif not head.startswith(_PICKLE_PROTO):
        return (f'"{fpath}" is not a PyTorch checkpoint: it is neither a zip archive written by torch.save nor a '
                f"pickle (it starts with {head!r}). Name a .pth/.pth.tar file written by vdreid, torchreid or "
                "the original authors' code.")
    if weights_only and "Weights only load failed" in text:
        found = re.search(r"(?:GLOBAL|global) ([\w.]+)", text)
        if found is None:
            return (f'"{fpath}" is not a readable checkpoint: a pickle ({size} bytes) that the safe loader cannot '
                    "read (damaged, or not written by torch.save). " + hint)
        damaged = " (or the file is damaged)" if head.startswith(_PICKLE_PROTO) else ""
        return (f'"{fpath}" holds the Python object {found.group(1)}{damaged}, which the safe loader '
                "(weights_only=True) refuses: vdreid loads only tensors, numbers, strings, lists and dicts, because "
                "unpickling other objects can run arbitrary code. If the file is yours, save its state_dict "
                "(tensors only) and load that.")
    if isinstance(exc, EOFError) or "truncated" in text or "Ran out of input" in text:
        return f'"{fpath}" is not a complete checkpoint: the file ends early ({size} bytes). {hint}'
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "weights_only" in first:  # torch's advice to load unsafely is not passed on
        first = "the safe loader refused the file"
    return f'could not load checkpoint "{fpath}" ({size} bytes): {type(exc).__name__}: {first[:200]}. {hint}'
