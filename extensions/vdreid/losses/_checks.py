"""Input checks shared by the loss functions: clear errors that name the argument, what was expected and what to do."""

from __future__ import annotations

import torch
from torch import Tensor


def check_logits_pair(name_a: str, a: Tensor, name_b: str, b: Tensor, where: str) -> None:
    """Both arguments must be 2-D (N, C) tensors of the same shape."""
    for name, t in ((name_a, a), (name_b, b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{where}: `{name}` must be a torch.Tensor of shape (N, C), got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(
                f"{where}: `{name}` must be 2-D (N, C) logits/probabilities, got shape {tuple(t.shape)}; "
                "flatten extra dimensions or pass one row per image"
            )
    if a.shape != b.shape:
        raise ValueError(
            f"{where}: `{name_a}` {tuple(a.shape)} and `{name_b}` {tuple(b.shape)} must have the same shape: "
            "they must be predictions for the same images over the same classes"
        )


def check_temperature(T: float, where: str) -> None:
    if not (isinstance(T, (int, float)) and T > 0):
        raise ValueError(f"{where}: temperature `T` must be a positive number, got {T!r}")


def check_features_labels(features: Tensor, pids: Tensor, where: str, sub: Tensor | None = None) -> None:
    """``features`` (N, D), ``pids`` (N,) integer, optional ``sub`` (N,) modality flags."""
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{where}: `features` must be a 2-D (N, D) tensor, got {shape}")
    if not isinstance(pids, Tensor) or pids.dim() != 1 or pids.numel() != features.shape[0]:
        shape = tuple(pids.shape) if isinstance(pids, Tensor) else type(pids).__name__
        raise ValueError(
            f"{where}: `pids` must be a 1-D tensor with one label per feature row ({features.shape[0]}), got {shape}"
        )
    if pids.is_floating_point() or pids.is_complex():
        raise TypeError(f"{where}: `pids` must be an integer (Long) tensor of identity labels, got {pids.dtype}")
    if sub is not None:
        if not isinstance(sub, Tensor) or sub.dim() != 1 or sub.numel() != features.shape[0]:
            shape = tuple(sub.shape) if isinstance(sub, Tensor) else type(sub).__name__
            raise ValueError(
                f"{where}: `sub` (modality flag per row, True/1 = infrared) must be 1-D with {features.shape[0]} "
                f"entries, got {shape}"
            )


def compute_dtype(t: Tensor) -> torch.dtype:
    """Losses are computed in at least float32 (bf16/fp16 logits from autocast are upcast)."""
    return torch.promote_types(t.dtype, torch.float32)
