"""Training plan (start banner): iterations, lr events, checkpoint files and bytes, checked against definitions and
against real ``torch.save`` sizes."""

from __future__ import annotations

import io

import pytest
import torch
from vdreid.engine.optim import AGW_SCHEDULE, VD_RELEASED_SCHEDULE, ScheduleSpec
from vdreid.engine.plan import (
    CheckpointPolicy,
    estimate_checkpoint_bytes,
    format_bytes,
    make_plan,
    optimizer_state_bytes,
)
from vdreid.errors import ConfigError


def _released_factor(e: int) -> float:
    # released VD schedule written out (utlis.WarmupMultiStepLR, stepped at the start of each epoch: last_epoch = e+1)
    last = e + 1
    warm = 0.01 * (1 - last / 10) + last / 10 if last < 10 else 1.0
    return warm * (0.1 if last >= 210 else 1.0)


def _change_points(factor, n: int) -> list[int]:
    """0-based epochs whose factor differs from the previous epoch's, found by scanning."""
    return [e for e in range(1, n) if abs(factor(e) - factor(e - 1)) > 1e-15]


def test_official_sysu_plan_14400_iterations_and_lr_events():
    from vdreid.data import CrossModalIdentitySampler

    # SYSU's training counts (395 ids, 22,258 visible, 11,909 infrared), images spread over the ids; no files
    items = [(f"v{p}_{j}", p, 0, 0) for p in range(395) for j in range(22258 // 395 + (p < 22258 % 395))]
    items += [(f"i{p}_{j}", p, 2, 0) for p in range(395) for j in range(11909 // 395 + (p < 11909 % 395))]
    s = CrossModalIdentitySampler(items, num_ids=16, num_instances=4, ir_camids={2, 5}, epoch_definition="identities")
    plan = make_plan(s.num_batches, 600, schedule=VD_RELEASED_SCHEDULE, base_lr=2.6e-4, epoch_definition="identities",
                     batch_size=s.batch_size)
    assert plan.iterations_per_epoch == 24 and plan.total_iterations == 14_400 == plan.remaining_iterations
    # independent: where the released schedule's value changes after the warm-up ramp
    changes = [e for e in _change_points(_released_factor, 600) if e >= 9]
    assert changes == [9, 209]
    kinds = [(ev.kind, ev.epoch, ev.iteration) for ev in plan.events]
    assert kinds == [("warmup_end", 9, 9 * 24), ("decay", 209, 209 * 24)]
    assert plan.events[1].factor == pytest.approx(0.1) and plan.start_factor == pytest.approx(0.109)
    text = str(plan)
    assert "24 iterations per epoch of 128 images (epoch = 'identities')" in text
    assert "14,400 iterations in total (600 epochs)" in text
    assert "warm-up ends: full lr from epoch 10/600 (0-based 9), iteration 217/14,400" in text
    assert "lr decays to 2.6e-05 (x0.1) from epoch 210/600 (0-based 209), iteration 5,017/14,400" in text
    assert "lr in epoch 1: 2.834e-05 (x0.109)" in text


@pytest.mark.parametrize("spec", [
    AGW_SCHEDULE,
    VD_RELEASED_SCHEDULE,
    ScheduleSpec(milestones=(200,), warmup_epochs=10, step_at="end"),  # the paper recipe
    ScheduleSpec(milestones=(5, 7, 30), warmup_epochs=3, warmup_factor=0.5, step_at="start"),
    ScheduleSpec(milestones=(4,), warmup_epochs=0, step_at="end"),
])
def test_plan_events_are_where_the_lr_changes(spec):
    n, ipe = 60, 7
    plan = make_plan(ipe, n, schedule=spec)
    scanned = _change_points(spec.epoch_factor, n)
    warm_end = spec.warmup_end_epoch()
    # the ramp changes every epoch until the warm-up ends; after it, only the decays change the lr
    assert [e for e in scanned if e >= warm_end] == [ev.epoch for ev in plan.events if ev.reached and ev.epoch]
    for ev in plan.events:
        assert ev.iteration == ev.epoch * ipe
        assert ev.factor == pytest.approx(spec.epoch_factor(ev.epoch), rel=1e-12)
        if ev.kind == "decay":
            assert spec.epoch_factor(ev.epoch) < spec.epoch_factor(ev.epoch - 1)


def test_unreached_decay_is_flagged_and_cosine_and_resume():
    plan = make_plan(24, 100, schedule=VD_RELEASED_SCHEDULE)
    assert [(e.kind, e.reached) for e in plan.events] == [("warmup_end", True), ("decay", False)]
    assert "NOT reached: the run stops after epoch 100" in str(plan)
    cos = ScheduleSpec(name="cosine", max_epoch=50, warmup_epochs=5, min_factor=0.01)
    plan = make_plan(10, 50, start_epoch=20, schedule=cos, base_lr=1e-3)
    assert [(e.kind, e.epoch, e.iteration) for e in plan.events] == [("warmup_end", 5, 50), ("cosine", 5, 50)]
    assert plan.events[1].factor == pytest.approx(cos.factor(49))
    assert plan.remaining_iterations == 300 and plan.total_iterations == 500
    assert "resuming at epoch 21: 300 iterations to run" in str(plan)
    assert make_plan(3, 4).events == () and make_plan(3, 4).start_factor is None
    with pytest.raises(ConfigError, match="max_epoch must be a positive int"):
        make_plan(3, 0)
    with pytest.raises(ConfigError, match="start_epoch=5 outside"):
        make_plan(3, 4, start_epoch=5)


def test_checkpoint_policy_files_and_disk():
    assert CheckpointPolicy().files_at_end(600) == ["latest.pth"]
    pol = CheckpointPolicy(keep_best=True, every=50)
    files = pol.files_at_end(600)
    assert files[:2] == ["latest.pth", "best.pth"] and len(files) == 2 + 12 and files[-1] == "epoch_600.pth"
    assert CheckpointPolicy(every=50, keep_periodic=3).files_at_end(600)[1:] == [
        "epoch_500.pth", "epoch_550.pth", "epoch_600.pth"]
    assert CheckpointPolicy(every=10).periodic_epochs(35, start_epoch=20) == [30]
    assert CheckpointPolicy(every=10).periodic_epochs(35, start_epoch=19) == [20, 30]
    assert CheckpointPolicy(every=10, keep_periodic=2).retained([10, 30, 20, 40]) == [30, 40]
    plan = make_plan(24, 600, policy=pol, bytes_per_checkpoint=1000)
    assert plan.checkpoint_bytes == 14 * 1000 and plan.peak_checkpoint_bytes == 15 * 1000
    half = make_plan(24, 600, policy=CheckpointPolicy(keep_best=True, best_bytes_ratio=0.5), bytes_per_checkpoint=1000)
    assert half.checkpoint_bytes == 1500
    assert "latest.pth, best.pth = 1.5 KiB at the end" in str(half)
    assert format_bytes(3 * 1024**3) == "3.0 GiB" and format_bytes(12) == "12 B"
    with pytest.raises(ConfigError, match="train.checkpoint_every=-1"):
        CheckpointPolicy(every=-1)
    d = plan.as_dict()
    assert d["events"] == [] and d["checkpoint_files"][0] == "latest.pth" and d["total_iterations"] == 14_400


# ------------------------------------------------------------------------------------- bytes per checkpoint
class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
            torch.nn.Conv2d(64, 128, 3), torch.nn.BatchNorm2d(128), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(128, 3000)
        self.cls = torch.nn.Linear(3000, 395)

    def forward(self, x):
        return self.cls(self.fc(self.body(x)))


def _saved_size(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


@pytest.mark.parametrize("opt_name", ["adam", "adam_amsgrad", "sgd_momentum", "sgd_plain"])
def test_estimate_matches_a_real_checkpoint_within_3_percent(opt_name):
    from vdreid.engine.checkpoint import get_rng_state

    torch.manual_seed(0)
    net = _Net()
    crit = torch.nn.Linear(4, 4)  # a criterion that owns parameters (e.g. an MI estimator)
    params = list(net.parameters()) + list(crit.parameters())
    opt = {
        "adam": lambda: torch.optim.Adam(params, lr=1e-3),
        "adam_amsgrad": lambda: torch.optim.Adam(params, lr=1e-3, amsgrad=True),
        "sgd_momentum": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True),
        "sgd_plain": lambda: torch.optim.SGD(params, lr=0.1),
    }[opt_name]()
    predicted = estimate_checkpoint_bytes(net, opt, crit)  # before any step: optimiser state predicted
    before = optimizer_state_bytes(opt)
    loss = net(torch.randn(2, 3, 8, 8)).sum() + crit(torch.randn(2, 4)).sum()
    loss.backward()
    opt.step()
    assert optimizer_state_bytes(opt) == before  # prediction == measured state (payload and tensor count)
    ckpt = {"state_dict": net.state_dict(), "optimizer": opt.state_dict(), "criterion": crit.state_dict(),
            "scheduler": {"last_epoch": 3, "base_lrs": [1e-3]}, "epoch": 3, "rng": [get_rng_state()],
            "best": {"rank1": 0.0}, "config": {"model": {"name": "x"}, "train": {"max_epoch": 600}}}
    real = _saved_size(ckpt)
    assert real > 4_000_000
    assert predicted == pytest.approx(real, rel=0.03), (predicted, real)
    assert estimate_checkpoint_bytes(net, opt, crit) == pytest.approx(predicted, rel=1e-6)  # after the step: measured


def test_shared_storage_counts_once_and_unknown_optimizer():
    lin = torch.nn.Linear(512, 512, bias=False)

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = lin, torch.nn.Linear(512, 512, bias=False)
            self.b.weight = lin.weight  # tied: one storage

    tied = Tied()
    real = _saved_size(tied.state_dict())
    assert estimate_checkpoint_bytes(tied, extra_bytes=0) == pytest.approx(real, rel=0.02)
    assert real < 2 * 512 * 512 * 4
    with pytest.raises(ConfigError, match="no state-size rule for Adadelta"):
        estimate_checkpoint_bytes(lin, torch.optim.Adadelta(lin.parameters()))


def test_extra_banner_lines_come_after_the_plan_and_are_recorded():
    """Room for lines other parts add to the start banner (e.g. the runtime: threads, devices)."""
    plain = make_plan(10, 4)
    noted = make_plan(10, 4, notes=["runtime: 1 thread", "devices: cpu"])
    assert noted.lines() == plain.lines() + ["runtime: 1 thread", "devices: cpu"]
    assert noted.as_dict()["notes"] == ["runtime: 1 thread", "devices: cpu"] and plain.as_dict()["notes"] == []
