"""What a training run will do, said before its first step: iterations, lr events, checkpoint disk.

:func:`make_plan` is pure: from the iterations per epoch (the train sampler's ``num_batches``), ``max_epoch``, the
start epoch, the schedule (:class:`~vdreid.engine.optim.ScheduleSpec`), the checkpoint policy and the bytes of one
checkpoint, it gives a :class:`TrainingPlan` whose :meth:`~TrainingPlan.lines` are the run's start banner and whose
:meth:`~TrainingPlan.as_dict` goes into provenance. :func:`estimate_checkpoint_bytes` sizes a checkpoint from the
model, optimiser and criterion without writing one.

Numbering in the banner is the one the training log uses: epochs and iterations are 1-based (``epoch 1`` is the
first). :meth:`TrainingPlan.as_dict` uses 0-based indices (``epoch`` = index of the first epoch at the new lr,
``iteration`` = ``epoch * iterations_per_epoch``, the index of its first step).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from vdreid.engine.optim import ScheduleSpec
from vdreid.errors import ConfigError

logger = logging.getLogger(__name__)

# torch.save (zip format) stores each tensor storage as its own archive member: a local header and a central-directory
# entry (each carrying the member name), padding to a 64-byte boundary and a pickled reference under its key.
# Measured with torch 2.x: 250-280 bytes per tensor, about 1.3 kB per file.
PER_TENSOR_OVERHEAD = 264
PER_FILE_OVERHEAD = 1300
# RNG states (python, numpy, torch: about 16 kB pickled), stored config, selection state and counters
DEFAULT_EXTRA_BYTES = 32 * 1024


# ------------------------------------------------------------------------------------------ checkpoint policy
@dataclass(frozen=True)
class CheckpointPolicy:
    """Which checkpoint files a run keeps.

    Args:
        keep_best: a separate file for the selected best epoch (``train.selection`` ``val`` or ``test``); with
            ``final`` the model is ``latest`` and no second file is kept.
        every: also keep ``epoch_NNN.pth`` every ``every`` epochs (0: never). NNN = number of completed epochs.
        keep_periodic: keep only the newest ``keep_periodic`` periodic files (0: all that ``every`` asks for).
        best_bytes_ratio: size of the best file relative to ``latest`` (1.0 when it holds the full state; about
            1/3 for Adam when it holds the weights only).

    ``latest`` is always kept (resume needs it). Every file is written through a temporary file and renamed, so the
    peak disk use is one checkpoint above what is kept.
    """

    keep_best: bool = False
    every: int = 0
    keep_periodic: int = 0
    best_bytes_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"train.checkpoint_every={self.every}: must be >= 0 (0: keep only latest and best)")
        if self.keep_periodic < 0:
            raise ConfigError(f"checkpoint keep_periodic={self.keep_periodic}: must be >= 0")
        if self.best_bytes_ratio <= 0:
            raise ConfigError(f"checkpoint best_bytes_ratio={self.best_bytes_ratio}: must be > 0")

    def periodic_epochs(self, max_epoch: int, start_epoch: int = 0) -> list[int]:
        """Completed-epoch counts ``e`` in ``start_epoch + 1 .. max_epoch`` whose ``epoch_NNN.pth`` is written."""
        if self.every <= 0:
            return []
        first = (start_epoch // self.every + 1) * self.every
        return list(range(first, max_epoch + 1, self.every))

    def retained(self, written: Iterable[int]) -> list[int]:
        """Of the periodic files ``written`` (completed-epoch counts), those to keep; delete the others."""
        epochs = sorted(set(int(e) for e in written))
        if self.keep_periodic > 0:
            return epochs[-self.keep_periodic :]
        return epochs

    def files_at_end(self, max_epoch: int) -> list[str]:
        """File names in the run folder after a run of ``max_epoch`` epochs under this policy."""
        names = ["latest.pth"]
        if self.keep_best:
            names.append("best.pth")
        names += [f"epoch_{e:03d}.pth" for e in self.retained(self.periodic_epochs(max_epoch))]
        return names


# -------------------------------------------------------------------------------------------- bytes estimate
def _storage_key(t: torch.Tensor) -> tuple[Any, ...]:
    st = t.untyped_storage()
    return (t.device.type, t.device.index, st.data_ptr(), st.nbytes())


def tensor_bytes(tensors: Iterable[Any]) -> tuple[int, int]:
    """(payload bytes, number of storages) of the tensors in ``tensors``; a storage shared by several tensors counts
    once, as ``torch.save`` writes it once. Non-tensors are skipped."""
    seen: dict[tuple[Any, ...], int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            key = _storage_key(t)
            seen[key] = key[3]
    return sum(seen.values()), len(seen)


def _walk(obj: Any) -> Iterable[Any]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)


def optimizer_state_tensors_per_param(optimizer: torch.optim.Optimizer) -> tuple[int, bool]:
    """(full-size state tensors per parameter, whether a 0-d ``step`` tensor is stored per parameter) that the
    optimiser keeps once it has stepped: Adam/AdamW 2 (``exp_avg``, ``exp_avg_sq``; 3 with amsgrad), SGD 1 with
    momentum (``momentum_buffer``) and 0 without, RMSprop 1 (+1 momentum, +1 centered), Adagrad 1. Raises
    ``ConfigError`` for another optimiser (use :func:`optimizer_state_bytes` after a step instead)."""
    d = optimizer.defaults
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return 2 + int(bool(d.get("amsgrad", False))), True
    if isinstance(optimizer, torch.optim.SGD):
        return int(d.get("momentum", 0) != 0), False
    if isinstance(optimizer, torch.optim.RMSprop):
        return 1 + int(d.get("momentum", 0) > 0) + int(bool(d.get("centered", False))), True
    if isinstance(optimizer, torch.optim.Adagrad):
        return 1, True
    raise ConfigError(
        f"estimate_checkpoint_bytes: no state-size rule for {type(optimizer).__name__}; pass an optimiser that has "
        "taken one step (its state is then measured) or one of Adam, AdamW, SGD, RMSprop, Adagrad"
    )


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(payload bytes, number of tensors) of the optimiser's state once every parameter has been stepped.

    The state is measured where it exists for every parameter; otherwise it is predicted from the optimiser type
    (:func:`optimizer_state_tensors_per_param`), the parameters' sizes and dtypes. Parameters that never receive a
    gradient get no state in torch, so the prediction is an upper bound for models with unused parameters."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if params and all(len(optimizer.state.get(p, {})) > 0 for p in params):
        return tensor_bytes(_walk([optimizer.state[p] for p in params]))
    per_param, has_step = optimizer_state_tensors_per_param(optimizer)
    payload = sum(p.numel() * p.element_size() for p in params) * per_param
    count = len(params) * per_param
    if has_step:
        payload += 4 * len(params)  # 0-d float32 'step' tensor per parameter
        count += len(params)
    return payload, count


def estimate_checkpoint_bytes(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    criterion: torch.nn.Module | None = None,
    extra_bytes: int = DEFAULT_EXTRA_BYTES,
) -> int:
    """Bytes of one full training checkpoint (model state_dict + optimiser state + criterion state_dict + RNG states
    and bookkeeping), without writing it: tensor payloads plus ``torch.save``'s per-tensor and per-file overheads
    plus ``extra_bytes``. Before the first optimiser step the optimiser's state is predicted
    (:func:`optimizer_state_bytes`)."""
    payload, count = tensor_bytes(model.state_dict().values())
    if criterion is not None:
        p2, c2 = tensor_bytes(criterion.state_dict().values())
        payload, count = payload + p2, count + c2
    if optimizer is not None:
        p3, c3 = optimizer_state_bytes(optimizer)
        payload, count = payload + p3, count + c3
    return int(payload + count * PER_TENSOR_OVERHEAD + PER_FILE_OVERHEAD + extra_bytes)


def format_bytes(n: float) -> str:
    """Human-readable size with binary prefixes (``1.5 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class LREvent:
    """A change of the learning rate: ``kind`` is ``'warmup_end'``, ``'decay'`` or ``'cosine'``; ``epoch`` the 0-based
    index of the first epoch at the new value, ``iteration`` the 0-based index of its first step; ``factor`` the
    multiplier of the base lr from then on (for ``'cosine'``: the factor reached at the last epoch);
    ``reached``: whether the run gets there before ``max_epoch``."""

    kind: str
    epoch: int
    iteration: int
    factor: float
    reached: bool = True


@dataclass(frozen=True)
class TrainingPlan:
    """See :func:`make_plan`."""

    iterations_per_epoch: int
    max_epoch: int
    start_epoch: int
    total_iterations: int
    remaining_iterations: int
    start_factor: float | None
    events: tuple[LREvent, ...]
    checkpoint_files: tuple[str, ...]
    bytes_per_checkpoint: int
    checkpoint_bytes: int
    peak_checkpoint_bytes: int
    base_lr: float | None = None
    schedule: dict[str, Any] = field(default_factory=dict)
    epoch_definition: str | int | None = None
    batch_size: int | None = None
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["events"] = [asdict(e) for e in self.events]
        out["checkpoint_files"] = list(self.checkpoint_files)
        out["notes"] = list(self.notes)
        return out

    def _lr(self, factor: float) -> str:
        if self.base_lr is None:
            return f"x{factor:.4g}"
        return f"{self.base_lr * factor:.4g} (x{factor:.4g})"

    def _at(self, epoch: int) -> str:
        return (f"epoch {epoch + 1:,}/{self.max_epoch:,} (0-based {epoch:,}), iteration "
                f"{epoch * self.iterations_per_epoch + 1:,}/{self.total_iterations:,}")

    def lines(self) -> list[str]:
        """The start banner, one line per fact."""
        ipe = self.iterations_per_epoch
        what = f"{ipe:,} iterations per epoch"
        if self.batch_size:
            what += f" of {self.batch_size} images"
        if self.epoch_definition is not None:
            what += f" (epoch = {self.epoch_definition!r})"
        out = [what, f"{self.total_iterations:,} iterations in total ({self.max_epoch:,} epochs)"]
        if self.start_epoch:
            out.append(f"resuming at epoch {self.start_epoch + 1:,}: {self.remaining_iterations:,} iterations to run")
        if self.start_factor is not None:
            out.append(f"lr in epoch 1: {self._lr(self.start_factor)}")
        for ev in self.events:
            if ev.kind == "warmup_end":
                label = "warm-up ends: full lr from"
            elif ev.kind == "decay":
                label = "lr decays to " + self._lr(ev.factor) + " from"
            else:
                label = f"cosine decay to {self._lr(ev.factor)} at the last epoch, starting from"
            suffix = "" if ev.reached else f"  -- NOT reached: the run stops after epoch {self.max_epoch:,}"
            out.append(f"{label} {self._at(ev.epoch)}{suffix}")
        files = ", ".join(self.checkpoint_files)
        out.append(
            f"checkpoints: {files} = {format_bytes(self.checkpoint_bytes)} at the end "
            f"({format_bytes(self.bytes_per_checkpoint)} each; peak {format_bytes(self.peak_checkpoint_bytes)} "
            "while one is being written)"
        )
        out += [str(n) for n in self.notes]  # lines the caller adds (e.g. the runtime: threads, devices)
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def make_plan(
    iterations_per_epoch: int,
    max_epoch: int,
    start_epoch: int = 0,
    schedule: ScheduleSpec | None = None,
    policy: CheckpointPolicy | None = None,
    bytes_per_checkpoint: int = 0,
    base_lr: float | None = None,
    epoch_definition: str | int | None = None,
    batch_size: int | None = None,
    notes: Iterable[str] = (),
) -> TrainingPlan:
    """Describe a run (pure; nothing is built or written).

    Args:
        iterations_per_epoch: batches per epoch and rank (``len(train_loader)``, the sampler's ``num_batches``).
        max_epoch: epochs of the whole run; start_epoch: completed epochs when (re)starting.
        schedule: the lr schedule and where it is stepped (None: no lr events in the plan).
        policy: checkpoint policy (default: ``latest.pth`` only).
        bytes_per_checkpoint: one checkpoint's size (:func:`estimate_checkpoint_bytes`).
        base_lr, epoch_definition, batch_size: only for the banner's wording.
        notes: extra banner lines, logged after the plan's own (e.g. a runtime summary).
    """
    for name, val in (("iterations_per_epoch", iterations_per_epoch), ("max_epoch", max_epoch)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(f"make_plan: {name} must be a positive int, got {val!r}")
    if not 0 <= start_epoch <= max_epoch:
        raise ConfigError(f"make_plan: start_epoch={start_epoch} outside 0..max_epoch={max_epoch}")
    policy = policy or CheckpointPolicy()
    ipe = iterations_per_epoch
    events: list[LREvent] = []
    start_factor = None
    if schedule is not None:
        start_factor = schedule.epoch_factor(0)
        if schedule.warmup_end_epoch() > 0:  # stepped at the start, a 1-epoch warm-up is already over in epoch 0
            e = schedule.warmup_end_epoch()
            events.append(LREvent("warmup_end", e, e * ipe, schedule.epoch_factor(e), e < max_epoch))
        if schedule.name == "cosine":
            e = schedule.warmup_end_epoch()
            events.append(LREvent("cosine", e, e * ipe, schedule.epoch_factor(max_epoch - 1), e < max_epoch))
        else:
            for e in schedule.decay_epochs():
                events.append(LREvent("decay", e, e * ipe, schedule.epoch_factor(e), e < max_epoch))
    files = policy.files_at_end(max_epoch)
    n_best = 1 if policy.keep_best else 0
    kept = (len(files) - n_best) * bytes_per_checkpoint + n_best * bytes_per_checkpoint * policy.best_bytes_ratio
    kept = int(math.ceil(kept))
    return TrainingPlan(
        iterations_per_epoch=ipe,
        max_epoch=max_epoch,
        start_epoch=start_epoch,
        total_iterations=ipe * max_epoch,
        remaining_iterations=ipe * (max_epoch - start_epoch),
        start_factor=start_factor,
        events=tuple(events),
        checkpoint_files=tuple(files),
        bytes_per_checkpoint=int(bytes_per_checkpoint),
        checkpoint_bytes=kept,
        peak_checkpoint_bytes=kept + int(bytes_per_checkpoint),
        base_lr=base_lr,
        schedule=asdict(schedule) if schedule is not None else {},
        epoch_definition=epoch_definition,
        batch_size=batch_size,
        notes=tuple(str(n) for n in notes),
    )


def log_plan(plan: TrainingPlan, log: logging.Logger | None = None) -> None:
    """Log the banner at INFO level (the trainer calls this before the first step)."""
    log = log or logger
    log.info("=> training plan")
    for line in plan.lines():
        log.info("   %s", line)
