"""Feature extraction over a torchreid test loader (each image once)."""

from __future__ import annotations

import contextlib
import inspect

import numpy as np
import torch
from tqdm.auto import tqdm


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


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    loader,
    device: str | torch.device = "cpu",
    ir_camids: frozenset[int] | set[int] = frozenset(),
    amp_dtype: torch.dtype | None = None,
    desc: str = "",
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, list[str]]:
    """Run ``model`` in eval mode over ``loader`` (torchreid batches: dicts with 'img', 'pid', 'camid', 'impath').

    If ``model.forward`` has a ``modality`` keyword it is called as ``model(imgs, modality=is_ir)`` with ``is_ir``
    a bool tensor (camid in ``ir_camids``), otherwise ``model(imgs)``. Returns float32 features (N, D) on the CPU,
    pids, camids and image paths in loader order.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    use_mod = _accepts_modality(model)
    feats, pids, camids, paths = [], [], [], []
    ir = torch.tensor(sorted(int(c) for c in ir_camids), dtype=torch.int64)
    try:
        for batch in tqdm(loader, desc=desc or "extracting features", leave=False):
            if not isinstance(batch, dict) or "img" not in batch:
                raise ValueError("loader must yield torchreid dict batches with keys 'img', 'pid', 'camid', 'impath'")
            imgs = batch["img"].to(device, non_blocking=True)
            cam = torch.as_tensor(batch["camid"]).long()
            amp = (
                torch.autocast(device_type=device.type, dtype=amp_dtype)
                if amp_dtype is not None
                else contextlib.nullcontext()
            )
            with amp:
                if use_mod:
                    is_ir = torch.isin(cam, ir).to(device)
                    out = model(imgs, modality=is_ir)
                else:
                    out = model(imgs)
            f = _as_features(out)
            if f.ndim != 2 or f.shape[0] != imgs.shape[0]:
                raise ValueError(f"model returned features of shape {tuple(f.shape)} for a batch of {imgs.shape[0]}")
            feats.append(f.detach().float().cpu())
            pids.append(torch.as_tensor(batch["pid"]).long().numpy())
            camids.append(cam.numpy())
            paths.extend(list(batch["impath"]))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError(f"loader {desc or ''} yielded no batches: empty query/gallery set")
    return torch.cat(feats, 0), np.concatenate(pids), np.concatenate(camids), paths
