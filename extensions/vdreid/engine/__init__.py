"""vdreid.engine: the trainer (a torchreid ``Engine``: a small loop plus hooks), optimiser/schedule builders,
checkpoints, mixed precision and torch.distributed helpers."""

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
from vdreid.engine.hooks import HookBase
from vdreid.engine.optim import WarmupMultiStepLR, build_optimizer, build_scheduler, warmup_multistep_factor
from vdreid.engine.trainer import VDEngine, VIEngine
from vdreid.errors import NonFiniteLossError

__all__ = [
    "CheckpointMismatchError",
    "DistInfo",
    "HookBase",
    "NonFiniteLossError",
    "VDEngine",
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
