"""vdreid.engine: VDEngine (a torchreid Engine), optimiser/schedule builders, checkpoints, torch.distributed."""

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
from vdreid.engine.optim import WarmupMultiStepLR, build_optimizer, build_scheduler, warmup_multistep_factor
from vdreid.engine.vd_engine import NonFiniteLossError, VDEngine

__all__ = [
    "CheckpointMismatchError",
    "DistInfo",
    "NonFiniteLossError",
    "VDEngine",
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
