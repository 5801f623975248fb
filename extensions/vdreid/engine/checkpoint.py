"""Atomic checkpoints that load with ``torch.load(weights_only=True)`` and restore a run exactly.

torchreid's ``save_checkpoint`` writes in place (a kill mid-write leaves a corrupt file) and stores arbitrary
objects; here every checkpoint is written to a temporary file in the same folder and renamed with ``os.replace``
(atomic on POSIX), and RNG states are converted to tensors, lists and ints so that the safe unpickler accepts them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vdreid import compat
from vdreid.atomic import atomic_write
from vdreid.errors import CheckpointError, CheckpointMismatchError
from vdreid.models.common import unwrap_model
from vdreid.models.original import detect_original, unwrap_original


# ----------------------------------------------------------------------------------------------------- RNG states
def get_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states as weights_only-safe values (lists, ints, tensors)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(py_version), "state": [int(s) for s in py_state], "gauss": py_gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy() if isinstance(npst["keys"], torch.Tensor) else np.asarray(npst["keys"])
    np.random.set_state(
        (npst["name"], keys.astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ------------------------------------------------------------------------------------------------------- writing
def save_checkpoint_atomic(state: dict[str, Any], path: str) -> str:
    """Write ``state`` to ``path`` through a temporary file in the same folder and ``os.replace``: a reader (or a
    resumed run after SIGKILL) sees either the previous complete file or the new complete file, never a torn one."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (through ``compat.load_checkpoint``, which names the file in
    every error)."""
    return compat.load_checkpoint(path, weights_only=True, map_location=map_location)


# --------------------------------------------------------------------------------------------------- model weights
def _strip_prefix(state_dict: dict[str, Any], prefix: str = "module.") -> dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def state_dict_mismatches(model: torch.nn.Module, state_dict: dict[str, Any]) -> dict[str, list[str]]:
    """Keys the model has and the state dict lacks, keys only the state dict has, and keys whose shapes differ."""
    own = unwrap_model(model).state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    shape = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape != own[k].shape
    )
    return {"missing": missing, "unexpected": unexpected, "shape": shape}


def _fmt_keys(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_model_weights(model: torch.nn.Module, state_dict: dict[str, Any], source: str = "checkpoint") -> None:
    """Strictly load ``state_dict`` into ``model`` (a ``module.`` prefix from DDP is accepted).

    Raises :class:`CheckpointMismatchError` listing missing, unexpected and shape-mismatched keys when the weights
    come from another model or an incompatible configuration (number of classes, bottleneck form, ...).
    """
    state_dict = _strip_prefix(dict(state_dict))
    mm = state_dict_mismatches(model, state_dict)
    if any(mm.values()):
        parts = []
        if mm["missing"]:
            parts.append(f"missing in {source} ({len(mm['missing'])}): {_fmt_keys(mm['missing'])}")
        if mm["unexpected"]:
            parts.append(f"not in the model ({len(mm['unexpected'])}): {_fmt_keys(mm['unexpected'])}")
        if mm["shape"]:
            parts.append(f"shape mismatch ({len(mm['shape'])}): {_fmt_keys(mm['shape'])}")
        raise CheckpointMismatchError(
            f"weights from {source} do not fit {type(unwrap_model(model)).__name__}: " + "; ".join(parts)
            + ". Build the model with the configuration the checkpoint was trained with "
            "(same architecture, number of training identities, bottleneck form)."
        )
    unwrap_model(model).load_state_dict(state_dict, strict=True)


def check_config_compatible(saved: dict[str, Any] | None, current: dict[str, Any] | None, keys: tuple[str, ...],
                            source: str = "checkpoint") -> None:
    """Fail when any of ``keys`` differs between the configuration stored in a checkpoint and the current one
    (only keys present in both are compared)."""
    if not saved or not current:
        return
    diff = [f"{k}: checkpoint {saved[k]!r} vs now {current[k]!r}" for k in keys
            if k in saved and k in current and saved[k] != current[k]]
    if diff:
        raise CheckpointMismatchError(
            f"cannot resume from {source}: its configuration differs in {'; '.join(diff)}. "
            "Resume with the configuration it was written with, or start a new run (load weights only)."
        )


# ------------------------------------------------------------------------------------------ one checkpoint reader
@dataclass
class ModelCheckpoint:
    """What a model file holds, whatever wrote it.

    ``kind``: ``'vdreid'`` (written by ``vdreid train``: state dict + the run's stored config), ``'torchreid'``
    (``{'state_dict': ...}`` or a bare state dict, no config), or the name of a registered original-checkpoint
    layout (a method's original code, e.g. the AGW code or the released VD code: keys in the authors' layout, see
    :func:`vdreid.models.original.original_kinds` and :func:`vdreid.models.from_original`). ``config``: the stored
    vdreid config
    (nested dict) when there is one; ``provenance``: the stored run description; ``epoch`` when known.
    """

    path: str
    kind: str
    state_dict: dict[str, Any]
    config: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    epoch: int | None = None
    raw: dict[str, Any] | None = None


def read_model_checkpoint(path: str) -> ModelCheckpoint:
    """The one reader of model files for evaluation, t-SNE, export and ``model.load_weights`` (weights_only load)."""
    raw = load_checkpoint(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f'"{path}" holds a {type(raw).__name__}, not a checkpoint dict or a state dict')
    kind = detect_original(raw)
    if kind is not None:
        epoch = raw.get("epoch") if isinstance(raw.get("epoch"), int) else None
        return ModelCheckpoint(path, kind, unwrap_original(raw), epoch=epoch, raw=raw)
    prov = raw.get("config") if isinstance(raw.get("config"), dict) else None
    state = raw.get("state_dict", raw)
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f'"{path}" holds no state dict (keys: {sorted(raw)[:8]}); expected a checkpoint written '
                              "by vdreid, torchreid, the AGW code or the released VD code")
    stored = prov.get("config") if prov is not None and isinstance(prov.get("config"), dict) else None
    epoch = raw.get("epoch") if isinstance(raw.get("epoch"), int) else None
    return ModelCheckpoint(path, "vdreid" if stored else "torchreid", _strip_prefix(dict(state)), stored, prov,
                           epoch, raw)
