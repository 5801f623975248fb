"""Optimiser and warm-up multistep schedule against hand-computed learning rates (spec 5.4, trap 16)."""

from __future__ import annotations

import types

import pytest
import torch
from vdreid.engine import TrainOptions, VIEngine, build_optimizer, build_scheduler
from vdreid.engine.optim import WarmupMultiStepLR

BASE = 2.6e-4
# these tests step schedulers without optimiser steps on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")


def _hand_factor(step: int, milestones, warmup=10, f0=0.01, gamma=0.1) -> float:
    # written out from the definition: linear ramp f0 -> 1 over `warmup` steps, then gamma per passed milestone
    if step < warmup:
        w = f0 + (1 - f0) * step / warmup
    else:
        w = 1.0
    n = sum(1 for m in milestones if step >= m)
    return w * gamma**n


def test_adam_defaults_and_sgd_option():
    m = torch.nn.Linear(3, 2)
    m.bias.requires_grad_(False)
    opt = build_optimizer(m.parameters())
    assert isinstance(opt, torch.optim.Adam)
    g = opt.param_groups[0]
    assert g["lr"] == pytest.approx(2.6e-4) and g["weight_decay"] == pytest.approx(5e-4)
    assert len(g["params"]) == 1  # frozen bias left out
    sgd = build_optimizer(m.parameters(), name="sgd", lr=0.1, momentum=0.5)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.5
    with pytest.raises(ValueError, match="name must be one of"):
        build_optimizer(m.parameters(), name="adamw2")
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([p for p in m.parameters() if not p.requires_grad])


def test_scheduler_values_by_step():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))])
    sch = build_scheduler(opt, milestones=(200,))
    seen = []
    for _ in range(205):
        seen.append(opt.param_groups[0]["lr"])
        sch.step()
    # hand values: 0.01, 0.109, ..., 0.901 over the warm-up, then 1, then 0.1 from step 200
    assert seen[0] == pytest.approx(BASE * 0.01)
    assert seen[1] == pytest.approx(BASE * 0.109)
    assert seen[5] == pytest.approx(BASE * 0.505)
    assert seen[9] == pytest.approx(BASE * 0.901)
    assert seen[10] == pytest.approx(BASE)
    assert seen[199] == pytest.approx(BASE)
    assert seen[200] == pytest.approx(BASE * 0.1)
    for s, lr in enumerate(seen):
        assert lr == pytest.approx(BASE * _hand_factor(s, (200,)), rel=1e-9)


def test_scheduler_errors_and_constant_warmup():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="milestones must be increasing"):
        WarmupMultiStepLR(opt, [20, 10])
    with pytest.raises(ValueError, match="warmup_method"):
        WarmupMultiStepLR(opt, [10], warmup_method="cosine")
    sch = WarmupMultiStepLR(opt, [3, 5], gamma=0.5, warmup_factor=0.2, warmup_epochs=2, warmup_method="constant")
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        sch.step()
    assert lrs == pytest.approx([0.2, 0.2, 1.0, 0.5, 0.5, 0.25, 0.25])


class _LREngine(VIEngine):
    """Records the lr each epoch trains with; the training step itself is replaced (schedule placement only)."""

    def forward_backward(self, data):
        self.seen_lr.append(self.optimizer.param_groups[0]["lr"])
        return {"total": 0.0}

    def test(self, *args, **kwargs):
        return None


def _lr_engine(offbyone: bool, milestones) -> _LREngine:
    dm = types.SimpleNamespace(train_loader=[{"img": torch.zeros(1, 3, 4, 4)}], test_loader={}, train_ir_camids=(),
                               protocols={}, ir_camids_of=lambda name: frozenset())
    model = torch.nn.Linear(1, 1)
    opt = build_optimizer(model.parameters())
    eng = _LREngine(dm, model, opt, torch.nn.Identity(), scheduler=build_scheduler(opt, milestones=milestones),
                    options=TrainOptions(scheduler_step="start" if offbyone else "end", progress=False))
    eng.seen_lr = []
    return eng


def test_engine_paper_order_epoch_e_uses_step_e():
    eng = _lr_engine(False, (200,))
    eng.run(save_dir="", max_epoch=202)
    lr = eng.seen_lr
    assert lr[0] == pytest.approx(BASE * 0.01) and lr[9] == pytest.approx(BASE * 0.901)
    assert lr[10] == pytest.approx(BASE) and lr[199] == pytest.approx(BASE) and lr[200] == pytest.approx(BASE * 0.1)


def test_engine_official_offbyone_epoch_e_uses_step_e_plus_1():
    eng = _lr_engine(True, (210,))
    eng.run(save_dir="", max_epoch=212)
    lr = eng.seen_lr
    # released code (trap 16): 0.109 already in epoch 0, full lr from epoch 9, decay from epoch 209
    assert lr[0] == pytest.approx(BASE * 0.109)
    assert lr[8] == pytest.approx(BASE * 0.901)
    assert lr[9] == pytest.approx(BASE)
    assert lr[208] == pytest.approx(BASE)
    assert lr[209] == pytest.approx(BASE * 0.1)
    for e, v in enumerate(lr):
        assert v == pytest.approx(BASE * _hand_factor(e + 1, (210,)), rel=1e-9)


# ------------------------------------------------------------------ recipes' schedules, epoch by epoch
def _train_loop_lrs(spec, base_lr: float, epochs: int) -> list[float]:
    """The lr each epoch trains with when a trainer steps the scheduler where ``spec.step_at`` says."""
    from vdreid.engine.optim import scheduler_from_spec

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sch = scheduler_from_spec(opt, spec)
    out = []
    for _ in range(epochs):
        if spec.step_at == "start":
            sch.step()
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if spec.step_at == "end":
            sch.step()
    return out


def _recipe_train(path: str) -> dict:
    import os.path as osp

    from vdreid.config import read_yaml_with_bases

    merged: dict = {}
    for _, data in read_yaml_with_bases(osp.join(osp.dirname(__file__), "..", "configs", path)):
        merged.update(data.get("train", {}))
    return merged


def test_official_sysu_lr_at_all_600_epochs_equals_the_released_schedule():
    from vdreid.engine.optim import VD_RELEASED_SCHEDULE, ScheduleSpec

    tr = _recipe_train("official/sysu_all.yaml")
    assert tr["max_epoch"] == 600 and tr["scheduler_step"] == "start"
    spec = ScheduleSpec(milestones=tuple(tr["stepsize"]), gamma=tr.get("gamma", 0.1),
                        warmup_epochs=tr["warmup_epochs"], warmup_factor=tr["warmup_factor"], step_at="start")
    assert spec == VD_RELEASED_SCHEDULE

    def released(e: int) -> float:
        # utlis.WarmupMultiStepLR (maskrcnn-benchmark's), lr 2.6e-4, milestones [210], gamma 0.1, warmup_factor 0.01,
        # warmup_iters 10, linear; mm01.py calls conv_scheduler.step() at the start of each epoch after the
        # constructor's own step, so epoch e runs with last_epoch = e + 1
        last_epoch = e + 1
        warm = 1.0
        if last_epoch < 10:
            alpha = float(last_epoch) / 10
            warm = 0.01 * (1 - alpha) + alpha
        return 2.6e-4 * warm * 0.1 ** sum(1 for m in [210] if m <= last_epoch)

    lrs = _train_loop_lrs(spec, tr["lr"], 600)
    for e in range(600):
        assert lrs[e] == pytest.approx(released(e), rel=1e-12, abs=0), e
        assert tr["lr"] * spec.epoch_factor(e) == pytest.approx(released(e), rel=1e-12, abs=0), e
    assert lrs[0] == pytest.approx(2.6e-4 * 0.109) and lrs[9] == pytest.approx(2.6e-4)
    assert lrs[208] == pytest.approx(2.6e-4) and lrs[209] == pytest.approx(2.6e-5) and lrs[599] == pytest.approx(2.6e-5)
    assert spec.warmup_end_epoch() == 9 and spec.decay_epochs() == (209,)


@pytest.mark.parametrize("variant", ["end", "start"])
def test_agw_lr_at_all_81_epochs(variant):
    from vdreid.engine.optim import AGW_SCHEDULE, ScheduleSpec

    if variant == "end":
        spec = AGW_SCHEDULE
    else:  # the same schedule stepped at the start of each epoch
        spec = ScheduleSpec(milestones=(21, 51), warmup_epochs=10, warmup_factor=0.0, step_at="start")

    def agw(e: int, lr: float = 0.1) -> float:
        # AGW train.py adjust_learning_rate, applied at the start of epoch e (agw.md A.3)
        if e < 10:
            return lr * (e + 1) / 10
        if e < 20:
            return lr
        if e < 50:
            return lr * 0.1
        return lr * 0.01

    lrs = _train_loop_lrs(spec, 0.1, 81)
    for e in range(81):
        assert lrs[e] == pytest.approx(agw(e), rel=1e-12, abs=0), e
        assert 0.1 * spec.epoch_factor(e) == pytest.approx(agw(e), rel=1e-12, abs=0), e
    assert spec.warmup_end_epoch() == 9 and spec.decay_epochs() == (20, 50)


def test_cosine_with_warmup_against_torch_cosine_annealing():
    from vdreid.engine.optim import ScheduleSpec

    base, W, T, mn = 0.5, 3, 20, 0.1
    spec = ScheduleSpec(name="cosine", warmup_epochs=W, warmup_factor=0.2, max_epoch=T, min_factor=mn)
    lrs = _train_loop_lrs(spec, base, T + 3)
    for e in range(W):
        assert lrs[e] == pytest.approx(base * (0.2 + 0.8 * e / W), rel=1e-12)
    # after the warm-up: torch's (recursive) CosineAnnealingLR with T_max = T - W and eta_min = mn * base
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T - W, eta_min=mn * base)
    for e in range(W, T + 1):
        assert lrs[e] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), e
        opt.step()
        ref.step()
    assert lrs[T] == pytest.approx(mn * base) and lrs[T + 2] == pytest.approx(mn * base)  # held after max_epoch
    assert spec.decay_epochs() == () and spec.warmup_end_epoch() == W
    sch = build_scheduler(torch.optim.SGD([p], lr=1.0), name="cosine", max_epoch=10, warmup_epochs=0)
    assert type(sch).__name__ == "WarmupCosineLR"


def test_build_scheduler_names_and_errors():
    from vdreid.engine.optim import ScheduleSpec
    from vdreid.errors import ConfigError

    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(build_scheduler(opt, name="warmup_multi_step"), WarmupMultiStepLR)  # older config value
    assert isinstance(build_scheduler(opt, name="warmup_multistep"), WarmupMultiStepLR)
    with pytest.raises(ConfigError, match="train.lr_scheduler='step'.*cosine"):
        build_scheduler(opt, name="step")
    with pytest.raises(ConfigError, match="max_epoch=0 must exceed warmup_epochs=10"):
        build_scheduler(opt, name="cosine")
    with pytest.raises(ConfigError, match="train.scheduler_step='middle'"):
        ScheduleSpec(step_at="middle")
    with pytest.raises(ConfigError, match="increasing"):
        ScheduleSpec(milestones=(50, 20))
