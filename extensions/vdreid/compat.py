"""The one place that imports torchreid.

The registry package ``torchreid==0.2.5`` is upstream torchreid 1.4 re-packaged under ``torchreid.reid``;
upstream installs it as ``torchreid``. Everything else in vdreid imports torchreid through this module.
It also carries the small fixes we need for torchreid on current torch / numpy, each with a comment.
"""

from __future__ import annotations

import os.path as osp
import warnings
from collections.abc import Callable
from typing import Any

import torch

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
    error on torch >= 2.6) and prints instead of raising useful errors; this loads with ``weights_only=True``."""
    if not fpath:
        raise ValueError(
            "checkpoint path is empty: name a file written by `vdreid train` or torchreid's save_checkpoint"
        )
    fpath = osp.abspath(osp.expanduser(fpath))
    if not osp.isfile(fpath):
        raise FileNotFoundError(f'checkpoint not found: "{fpath}"')
    try:
        return torch.load(fpath, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path named
        raise RuntimeError(
            f'could not load checkpoint "{fpath}" with weights_only={weights_only}: {exc}. '
            "Is it a PyTorch checkpoint written by vdreid/torchreid?"
        ) from exc
