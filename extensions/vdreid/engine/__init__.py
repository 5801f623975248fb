"""vdreid.engine: the trainer (a torchreid ``Engine``: a small loop plus hooks, built from its collaborators), the
evaluator, a run's state, optimiser/schedule builders, checkpoints, mixed precision and torch.distributed helpers.

``VDEngine`` is the deprecated old name of :class:`VIEngine` (a ``DeprecationWarning`` when used)."""

import warnings
from typing import Any

from vdreid.engine.checkpoint import (
    CheckpointMismatchError,
    get_rng_state,
    load_checkpoint,
    load_model_weights,
    save_checkpoint_atomic,
    set_rng_state,
    unwrap_model,
)
from vdreid.engine.distributed import DistInfo, init_distributed
from vdreid.engine.evaluator import Evaluator
from vdreid.engine.hooks import HookBase
from vdreid.engine.optim import WarmupMultiStepLR, build_optimizer, build_scheduler, warmup_multistep_factor
from vdreid.engine.options import EvalOptions, TrainOptions
from vdreid.engine.outputs import Outputs
from vdreid.engine.run_state import RunState
from vdreid.engine.trainer import VIEngine
from vdreid.errors import NonFiniteLossError

__all__ = [
    "CheckpointMismatchError",
    "DistInfo",
    "EvalOptions",
    "Evaluator",
    "HookBase",
    "NonFiniteLossError",
    "Outputs",
    "RunState",
    "TrainOptions",
    "VIEngine",
    "WarmupMultiStepLR",
    "build_optimizer",
    "build_scheduler",
    "get_rng_state",
    "init_distributed",
    "load_checkpoint",
    "load_model_weights",
    "save_checkpoint_atomic",
    "set_rng_state",
    "unwrap_model",
    "warmup_multistep_factor",
]


def __getattr__(name: str) -> Any:
    """``VDEngine``: the deprecated old name of :class:`VIEngine`."""
    if name == "VDEngine":
        warnings.warn("vdreid.engine.VDEngine is deprecated: use vdreid.engine.VIEngine (the same class); the old "
                      "name will be removed", DeprecationWarning, stacklevel=2)
        return VIEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
