"""Feature extraction over a torchreid test loader (each image once), optionally with flip test-time augmentation.

Flip test-time augmentation (``flip=True``): the feature of an image is ``n(f(x)) + n(f(flip(x)))`` where ``n`` is
L2 normalisation and ``flip`` mirrors the width axis. Why this combination (``docs/protocols.md``, "Flip
test-time augmentation"):

* DEEN's ``test.py`` sums the features of the image and of its flip, and its model already returns L2-normalised
  features; CAJ's ``testa.py`` averages the two L2-normalised features and L2-normalises the average again. We
  normalise each view (our models return unnormalised features) and sum.
* Sum or mean: the mean is the sum times 1/2 for every image, and a common positive factor changes no ranking
  (cosine ignores it; squared Euclidean distances and inner products are all scaled by the same constant). So the
  two rank identically, with or without normalising the result again.
* With the evaluator's ``'cosine'`` metric the sum is L2-normalised again, which is exactly CAJ's computation.
  DEEN ranks by the inner product of the *un-normalised* sums instead; the norm of a sum depends on how much the
  image and its flip agree, so that ranking differs from cosine: the evaluator's ``'inner_product'`` metric is
  DEEN's (its six similarity matrices are the parts of DEEN's test feature, see ``vdreid.models.deen``).
"""

from __future__ import annotations

import contextlib
import inspect

import numpy as np
import torch

from vdreid.evaluation.progress import iterate


def _accepts_modality(model: torch.nn.Module) -> bool:
    try:
        return "modality" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _as_features(out) -> torch.Tensor:
    """The test feature of a model output: a tensor, or an object/dict with ``features`` / ``feat``."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("features", "feat", "feature"):
        if isinstance(out, dict) and key in out:
            return out[key]
        if hasattr(out, key):
            return getattr(out, key)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(
        f"model output of type {type(out).__name__} is not a feature tensor; in eval mode the model must return "
        "a (B, D) tensor (or an object with a .features tensor)"
    )


def _forward(
    model: torch.nn.Module, x: torch.Tensor, is_ir: torch.Tensor | None, device: torch.device,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """The float32 test feature (B, D) of one batch (``model(x, modality=is_ir)`` when ``is_ir`` is given)."""
    amp = contextlib.nullcontext() if amp_dtype is None else torch.autocast(device_type=device.type, dtype=amp_dtype)
    with amp:
        out = model(x, modality=is_ir) if is_ir is not None else model(x)
    f = _as_features(out)
    if f.ndim != 2 or f.shape[0] != x.shape[0]:
        raise ValueError(f"model returned features of shape {tuple(f.shape)} for a batch of {x.shape[0]}")
    return f.detach().float()


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    loader,
    device: str | torch.device = "cpu",
    ir_camids: frozenset[int] | set[int] = frozenset(),
    amp_dtype: torch.dtype | None = None,
    desc: str = "",
    flip: bool = False,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, list[str]]:
    """Run ``model`` in eval mode over ``loader`` (torchreid batches: dicts with 'img', 'pid', 'camid', 'impath').

    If ``model.forward`` has a ``modality`` keyword it is called as ``model(imgs, modality=is_ir)`` with ``is_ir``
    a bool tensor (camid in ``ir_camids``), otherwise ``model(imgs)``. Returns float32 features (N, D) on the CPU,
    pids, camids and image paths in loader order. ``flip=True``: the feature is the sum of the L2-normalised features
    of the image and of its horizontal mirror (see the module docstring).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    use_mod = _accepts_modality(model)
    feats, pids, camids, paths = [], [], [], []
    ir = torch.tensor(sorted(int(c) for c in ir_camids), dtype=torch.int64)
    try:
        for batch in iterate(loader, desc or "extracting features", unit="batch"):
            if not isinstance(batch, dict) or "img" not in batch:
                raise ValueError("loader must yield torchreid dict batches with keys 'img', 'pid', 'camid', 'impath'")
            imgs = batch["img"].to(device, non_blocking=True)
            cam = torch.as_tensor(batch["camid"]).long()
            is_ir = torch.isin(cam, ir).to(device) if use_mod else None
            f = _forward(model, imgs, is_ir, device, amp_dtype)
            if flip:  # horizontal mirror = the width axis of (B, C, H, W)
                f_flip = _forward(model, torch.flip(imgs, dims=[3]), is_ir, device, amp_dtype)
                f = torch.nn.functional.normalize(f, dim=1) + torch.nn.functional.normalize(f_flip, dim=1)
            feats.append(f.cpu())
            pids.append(torch.as_tensor(batch["pid"]).long().numpy())
            camids.append(cam.numpy())
            paths.extend(list(batch["impath"]))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError(f"loader {desc or ''} yielded no batches: empty query/gallery set")
    return torch.cat(feats, 0), np.concatenate(pids), np.concatenate(camids), paths
