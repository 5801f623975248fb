"""Optimiser and warm-up multistep schedule against hand-computed learning rates (spec 5.4, trap 16)."""

from __future__ import annotations

import types

import pytest
import torch
from vdreid.engine import VDEngine, build_optimizer, build_scheduler
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


class _LREngine(VDEngine):
    """Records the lr each epoch trains with; the training step itself is replaced (schedule placement only)."""

    def forward_backward(self, data):
        self.seen_lr.append(self.optimizer.param_groups[0]["lr"])
        return {"total": 0.0}

    def test(self, *args, **kwargs):
        return None


def _lr_engine(offbyone: bool, milestones) -> _LREngine:
    dm = types.SimpleNamespace(train_loader=[{"img": torch.zeros(1, 3, 4, 4)}], test_loader={}, train_ir_camids=())
    model = torch.nn.Linear(1, 1)
    opt = build_optimizer(model.parameters())
    eng = _LREngine(dm, model, opt, torch.nn.Identity(), scheduler=build_scheduler(opt, milestones=milestones),
                    official_scheduler_offbyone=offbyone, progress=False)
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
