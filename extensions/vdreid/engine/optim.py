"""Optimiser and learning-rate schedule of the VD recipes (spec section 5.4, paper section 4.2).

* Optimiser: Adam, lr 2.6e-4, weight decay 5e-4 (the released code's ``ft_net.optims()``); SGD as an option.
* Schedule: linear warm-up over ``warmup_epochs`` epochs from ``warmup_factor`` to 1, then x``gamma`` at each
  milestone (paper: 300 epochs, milestone 200; released code: 600 epochs, milestone 210).

The schedule is stepped once per epoch. *Where* it is stepped is the engine's business
(``VDEngine(official_scheduler_offbyone=...)``): torchreid's order steps at the end of an epoch, so epoch ``e``
trains with ``last_epoch = e``; the released code steps at the start of each epoch, and since PyTorch's constructor
already took one step, epoch ``e`` trains with ``last_epoch = e + 1`` (trap 16: warm-up factor 0.109 in epoch 0,
decay from epoch 209 with milestone 210).

torchreid's own ``build_lr_scheduler`` has no warm-up, hence :class:`WarmupMultiStepLR` here (the formula of the
released code's ``utlis.WarmupMultiStepLR``, itself maskrcnn-benchmark's).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

OPTIMIZERS = ("adam", "sgd")
WARMUP_METHODS = ("linear", "constant")


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
    w = 1.0
    if step < warmup_epochs:
        if warmup_method == "constant":
            w = warmup_factor
        else:
            a = step / warmup_epochs
            w = warmup_factor * (1.0 - a) + a
    return w * gamma ** bisect_right(list(milestones), step)


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


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    milestones: Sequence[int] = (200,),
    gamma: float = 0.1,
    warmup_epochs: int = 10,
    warmup_factor: float = 0.01,
    warmup_method: str = "linear",
) -> WarmupMultiStepLR:
    """The recipes' schedule. Paper: ``milestones=(200,)`` over 300 epochs; released code: ``(210,)`` over 600
    epochs together with ``VDEngine(official_scheduler_offbyone=True)``."""
    return WarmupMultiStepLR(optimizer, milestones, gamma, warmup_factor, warmup_epochs, warmup_method)
