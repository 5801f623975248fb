"""Mixed precision beside the training loop: autocast, the fp16 GradScaler, gradient clipping and the optimiser step.

Modes: ``'none'`` (fp32), ``'bf16'`` (autocast; CPU or GPU) and ``'fp16'`` (autocast + ``torch.amp.GradScaler``;
GPU only: the scaler has no CPU path here).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

AMP_MODES = ("none", "bf16", "fp16")


class AMP:
    """One object that knows the precision mode: ``autocast()``, ``backward(loss)`` and ``step(optimizer)``."""

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
        if mode == "fp16" and device.type != "cuda":
            raise ValueError(
                "amp='fp16' needs a CUDA GPU (its GradScaler has no CPU path here); on CPU use amp='bf16' or "
                "amp='none'"
            )
        self.mode, self.device = mode, device
        self.dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
        self.scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], grad_clip: float) -> None:
        """Optional clipping of the global gradient norm (after unscaling), then the optimiser step."""
        if grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)
