"""Optimiser and per-epoch learning-rate schedules of the recipes.

* Optimiser: Adam, lr 2.6e-4, weight decay 5e-4 (the released VD code's ``ft_net.optims()``); SGD as an option.
* Schedules (``build_scheduler(name=...)``), both stepped once per epoch:
  ``'warmup_multistep'`` -- linear (or constant) warm-up over ``warmup_epochs`` steps from ``warmup_factor`` to 1, then
  x ``gamma`` at each milestone: maskrcnn-benchmark's ``WarmupMultiStepLR``, which the released VD code copies
  (``utlis.py``); ``'cosine'`` -- the same warm-up, then a half cosine from 1 down to ``min_factor`` at ``max_epoch``.

*Where* the schedule is stepped decides which step an epoch trains with (:class:`ScheduleSpec`, ``step_at``):

* ``'end'`` (torchreid's order): epoch ``e`` (0-based) trains with step ``e``;
* ``'start'`` (the released VD code: ``conv_scheduler.step()`` first thing in each epoch, after PyTorch's constructor
  already took one step): epoch ``e`` trains with step ``e + 1``. With milestone 210, warm-up factor 0.01 over 10:
  factor 0.109 in epoch 0, full lr from epoch 9, x0.1 from epoch 209 (``docs/reproduce.md``).

AGW's schedule (``train.py`` ``adjust_learning_rate``: lr * (e + 1) / 10 for e < 10, lr until 20, x0.1 from epoch 20,
x0.01 from epoch 50) is the warm-up multistep schedule with ``warmup_factor=0.1``, ``warmup_epochs=9``,
``milestones=(20, 50)`` stepped at the end of each epoch (0.1 + 0.9 e / 9 = (e + 1) / 10), or equivalently
``warmup_factor=0``, ``warmup_epochs=10``, ``milestones=(21, 51)`` stepped at the start: :data:`AGW_SCHEDULE`.

torchreid's own ``build_lr_scheduler`` has no warm-up, hence the schedulers here.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LRScheduler

from vdreid.errors import ConfigError

OPTIMIZERS = ("adam", "sgd")
WARMUP_METHODS = ("linear", "constant")
SCHEDULERS = ("warmup_multistep", "cosine")
_SCHEDULER_ALIASES = {"warmup_multi_step": "warmup_multistep", "multistep": "warmup_multistep"}
STEP_AT = ("end", "start")


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict],
    name: str = "adam",
    lr: float = 2.6e-4,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Adam (default, as released: lr 2.6e-4, wd 5e-4, default betas) or SGD with momentum.

    ``params``: model parameters, plus ``criterion.parameters()`` when the loss owns parameters (e.g. the
    mutual-information estimator of the conventional-IB baseline). Parameters with ``requires_grad=False``
    (a BNNeck's frozen bias) are left out.
    """
    name = name.lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"build_optimizer: name must be one of {OPTIMIZERS}, got {name!r}")
    if lr <= 0:
        raise ValueError(f"build_optimizer: lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"build_optimizer: weight_decay must be >= 0, got {weight_decay}")
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": [p for p in params if p.requires_grad]}]
    if not groups or not any(g["params"] for g in groups):
        raise ValueError("build_optimizer: no trainable parameters were given")
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, betas=betas)
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def warmup_multistep_factor(
    step: int,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_factor: float = 0.01,
    warmup_epochs: int = 10,
    warmup_method: str = "linear",
) -> float:
    """Multiplier of the base lr at scheduler step ``step`` (= ``last_epoch``).

    Linear warm-up: ``warmup_factor * (1 - a) + a`` with ``a = step / warmup_epochs`` while ``step < warmup_epochs``;
    constant warm-up: ``warmup_factor``; then ``gamma ** (number of milestones <= step)``.
    """
    return warmup_factor_at(step, warmup_factor, warmup_epochs, warmup_method) * gamma ** bisect_right(
        list(milestones), step
    )


def warmup_factor_at(step: int, warmup_factor: float, warmup_epochs: int, warmup_method: str = "linear") -> float:
    """The warm-up multiplier alone (1 from step ``warmup_epochs`` on), maskrcnn-benchmark's
    ``_get_warmup_factor_at_iter``."""
    if step >= warmup_epochs:
        return 1.0
    if warmup_method == "constant":
        return warmup_factor
    a = step / warmup_epochs
    return warmup_factor * (1.0 - a) + a


def warmup_cosine_factor(
    step: int,
    max_epoch: int,
    warmup_factor: float = 0.01,
    warmup_epochs: int = 10,
    warmup_method: str = "linear",
    min_factor: float = 0.0,
) -> float:
    """Multiplier at step ``step``: the warm-up of :func:`warmup_factor_at`, then
    ``min_factor + (1 - min_factor) * (1 + cos(pi * t)) / 2`` with ``t = (step - warmup_epochs) / (max_epoch -
    warmup_epochs)`` clipped to [0, 1] (1 when the warm-up ends, ``min_factor`` at step ``max_epoch``)."""
    if step < warmup_epochs:
        return warmup_factor_at(step, warmup_factor, warmup_epochs, warmup_method)
    span = max(1, max_epoch - warmup_epochs)
    t = min(1.0, max(0.0, (step - warmup_epochs) / span))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class ScheduleSpec:
    """A per-epoch schedule and where it is stepped: enough to know the lr of every epoch without an optimiser.

    ``factor(step)`` is the scheduler's multiplier at ``last_epoch = step``; :meth:`epoch_factor` is the multiplier
    epoch ``e`` trains with (``step = e`` when stepped at the ``'end'``, ``e + 1`` at the ``'start'``).
    """

    name: str = "warmup_multistep"
    milestones: tuple[int, ...] = (200,)
    gamma: float = 0.1
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    warmup_method: str = "linear"
    step_at: str = "end"
    max_epoch: int = 0  # cosine: the step at which the factor reaches min_factor
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        name = _SCHEDULER_ALIASES.get(self.name, self.name)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if name not in SCHEDULERS:
            raise ConfigError(f"train.lr_scheduler={self.name!r}: expected one of {SCHEDULERS}")
        if self.step_at not in STEP_AT:
            raise ConfigError(f"train.scheduler_step={self.step_at!r}: expected one of {STEP_AT}")
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"train.stepsize={list(self.milestones)}: milestones must be increasing")
        if self.warmup_method not in WARMUP_METHODS:
            raise ConfigError(f"warmup_method={self.warmup_method!r}: expected one of {WARMUP_METHODS}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"train.warmup_epochs={self.warmup_epochs}: must be >= 0")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"train.gamma={self.gamma}: must be in (0, 1]")
        if name == "cosine" and self.max_epoch <= self.warmup_epochs:
            raise ConfigError(
                f"cosine schedule: max_epoch={self.max_epoch} must exceed warmup_epochs={self.warmup_epochs} "
                "(pass train.max_epoch)"
            )
        if not 0 <= self.min_factor <= 1:
            raise ConfigError(f"cosine schedule: min_factor={self.min_factor} must be in [0, 1]")

    @property
    def offset(self) -> int:
        """Step an epoch trains with, minus the epoch index (0 when stepped at the end, 1 at the start)."""
        return 1 if self.step_at == "start" else 0

    def factor(self, step: int) -> float:
        if self.name == "cosine":
            return warmup_cosine_factor(
                step, self.max_epoch, self.warmup_factor, self.warmup_epochs, self.warmup_method, self.min_factor
            )
        return warmup_multistep_factor(
            step, self.milestones, self.gamma, self.warmup_factor, self.warmup_epochs, self.warmup_method
        )

    def epoch_factor(self, epoch: int) -> float:
        """Multiplier of the base lr during (0-based) epoch ``epoch``."""
        return self.factor(epoch + self.offset)

    def warmup_end_epoch(self) -> int:
        """First epoch that trains with the warm-up finished (0 when there is no warm-up)."""
        return max(0, self.warmup_epochs - self.offset)

    def decay_epochs(self) -> tuple[int, ...]:
        """Epochs from which each milestone's x ``gamma`` applies (multistep; empty for cosine)."""
        if self.name == "cosine":
            return ()
        return tuple(max(0, m - self.offset) for m in self.milestones)


#: AGW's schedule (train.py adjust_learning_rate), as a warm-up multistep schedule stepped at the end of each epoch
AGW_SCHEDULE = ScheduleSpec(milestones=(20, 50), gamma=0.1, warmup_epochs=9, warmup_factor=0.1, step_at="end")
#: the released VD code's schedule (utlis.WarmupMultiStepLR stepped at the start of each epoch)
VD_RELEASED_SCHEDULE = ScheduleSpec(milestones=(210,), gamma=0.1, warmup_epochs=10, warmup_factor=0.01,
                                    step_at="start")


class WarmupMultiStepLR(LRScheduler):
    """Linear (or constant) warm-up followed by step decay at ``milestones`` (stepped once per epoch)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.01,
        warmup_epochs: int = 10,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"WarmupMultiStepLR: milestones must be increasing, got {milestones}")
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(f"WarmupMultiStepLR: warmup_method must be one of {WARMUP_METHODS}, got {warmup_method!r}")
        if warmup_epochs < 0:
            raise ValueError(f"WarmupMultiStepLR: warmup_epochs must be >= 0, got {warmup_epochs}")
        if not 0 < gamma <= 1:
            raise ValueError(f"WarmupMultiStepLR: gamma must be in (0, 1], got {gamma}")
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_epochs = warmup_epochs
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return warmup_multistep_factor(
            step, self.milestones, self.gamma, self.warmup_factor, self.warmup_epochs, self.warmup_method
        )

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base_lr * f for base_lr in self.base_lrs]


class WarmupCosineLR(LRScheduler):
    """The warm-up of :class:`WarmupMultiStepLR`, then a half cosine to ``min_factor`` at step ``max_epoch``
    (:func:`warmup_cosine_factor`). torch's ``CosineAnnealingLR`` has no warm-up and computes its values
    recursively from the previous lr, so a resumed or re-ordered run could drift; this one is closed-form."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_epoch: int,
        warmup_factor: float = 0.01,
        warmup_epochs: int = 10,
        warmup_method: str = "linear",
        min_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        ScheduleSpec(name="cosine", max_epoch=max_epoch, warmup_factor=warmup_factor, warmup_epochs=warmup_epochs,
                     warmup_method=warmup_method, min_factor=min_factor)  # validates
        self.max_epoch = int(max_epoch)
        self.warmup_factor = warmup_factor
        self.warmup_epochs = warmup_epochs
        self.warmup_method = warmup_method
        self.min_factor = min_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return warmup_cosine_factor(
            step, self.max_epoch, self.warmup_factor, self.warmup_epochs, self.warmup_method, self.min_factor
        )

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base_lr * f for base_lr in self.base_lrs]


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    milestones: Sequence[int] = (200,),
    gamma: float = 0.1,
    warmup_epochs: int = 10,
    warmup_factor: float = 0.01,
    warmup_method: str = "linear",
    name: str = "warmup_multistep",
    max_epoch: int = 0,
    min_factor: float = 0.0,
) -> WarmupMultiStepLR | WarmupCosineLR:
    """The recipes' per-epoch schedule (``name``: ``'warmup_multistep'`` or ``'cosine'``; ``'warmup_multi_step'`` is
    accepted for the older config value). Paper: ``milestones=(200,)`` over 300 epochs; released code: ``(210,)``
    over 600 epochs, stepped at the start of each epoch. ``max_epoch`` is required for ``'cosine'``.
    Where it is stepped is the trainer's business (see :class:`ScheduleSpec`)."""
    spec = ScheduleSpec(name=name, milestones=tuple(milestones), gamma=gamma, warmup_epochs=warmup_epochs,
                        warmup_factor=warmup_factor, warmup_method=warmup_method, max_epoch=max_epoch,
                        min_factor=min_factor)
    return scheduler_from_spec(optimizer, spec)


def scheduler_from_spec(optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> WarmupMultiStepLR | WarmupCosineLR:
    """The scheduler object of ``spec`` (``spec.step_at`` is for the trainer: it says when to call ``step()``)."""
    if spec.name == "cosine":
        return WarmupCosineLR(optimizer, spec.max_epoch, spec.warmup_factor, spec.warmup_epochs, spec.warmup_method,
                              spec.min_factor)
    return WarmupMultiStepLR(optimizer, spec.milestones, spec.gamma, spec.warmup_factor, spec.warmup_epochs,
                             spec.warmup_method)
