"""Training-step time of VIEngine: L_ReID only vs the full VD loss, fp32 vs bf16 autocast, channels_last on/off.

All variants run in one process on the same network (``vd_resnet18`` by default) and the same random batch, through
the engine's real ``forward_backward`` (forward, loss, NaN guard, backward, optimiser step). Variants are measured
in interleaved rounds (A B C ... A B C ...) so that load from other processes hits all of them alike; the median
step time per variant is reported with ratios to the fp32 full-VD baseline.

    python benchmarks/train_speed.py                    # vd_resnet18, batch 16 (4 ids x (2 vis + 2 ir)), 128x64
    python benchmarks/train_speed.py --model vd_resnet50 --batch 64 --height 256 --width 128 --device cuda

``L_ReID`` = label-smoothed CE + ranked-list loss + DML (Eq. 17); full VD adds beta (VSD + VCD + VML) (Eq. 16).
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import torch
import vdreid  # noqa: F401  (registers the models)
from vdreid import compat
from vdreid.engine import TrainOptions, VIEngine, build_optimizer
from vdreid.losses import VDLoss, VDLossConfig


def make_batch(batch: int, height: int, width: int, num_classes: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = batch // 4
    pids = torch.arange(ids).repeat_interleave(4) % num_classes
    camids = torch.tensor([0, 0, 2, 2] * ids)  # SYSU: 2 visible (cam1) + 2 infrared (cam3) per identity
    return {"img": torch.randn(batch, 3, height, width, generator=g), "pid": pids, "camid": camids}


def build_engine(args, loss_cfg: VDLossConfig, amp: str, channels_last: bool) -> VIEngine:
    torch.manual_seed(0)
    model = compat.models.build_model(args.model, num_classes=args.num_classes, pretrained=False)
    criterion = VDLoss(loss_cfg, args.num_classes)
    opt = build_optimizer(list(model.parameters()) + list(criterion.parameters()))
    # a stand-in data manager: only forward_backward runs (no loaders, no test targets)
    dm = types.SimpleNamespace(train_loader=[], test_loader={}, train_ir_camids=frozenset({2, 5}), protocols={},
                               ir_camids_of=lambda name: frozenset({2, 5}))
    return VIEngine(dm, model, opt, criterion, use_gpu=args.device == "cuda",
                    options=TrainOptions(amp=amp, channels_last=channels_last, progress=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vd_resnet18")
    ap.add_argument("--batch", type=int, default=16, help="multiple of 4 (ids x (2 visible + 2 infrared))")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--num-classes", type=int, default=395)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; one timed step per variant per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before timing")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--variants", default="all", help="comma list of variant names, or 'all'")
    args = ap.parse_args()
    if args.batch % 4:
        ap.error("--batch must be a multiple of 4")
    if args.threads:
        torch.set_num_threads(args.threads)

    reid_only = VDLossConfig.paper(weights=dict(vsd=0.0, vcd=0.0, vml=0.0))
    full = VDLossConfig.paper()
    variants = {
        "reid_only fp32": (reid_only, "none", False),
        "full_vd fp32": (full, "none", False),
        "full_vd bf16": (full, "bf16", False),
        "full_vd fp32 channels_last": (full, "none", True),
        "full_vd bf16 channels_last": (full, "bf16", True),
        "reid_only bf16": (reid_only, "bf16", False),
    }
    if args.variants != "all":
        wanted = [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in wanted if v not in variants]
        if unknown:
            ap.error(f"unknown variants {unknown}; choose from {list(variants)}")
        variants = {k: variants[k] for k in wanted}

    batch = make_batch(args.batch, args.height, args.width, args.num_classes)
    engines = {name: build_engine(args, *spec) for name, spec in variants.items()}
    for eng in engines.values():
        eng.set_model_mode("train")
        for _ in range(args.warmup):
            eng.forward_backward(batch)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    # wall time, and process CPU time: on a machine shared with other jobs, CPU time with one thread is the robust
    # measure of the work a step does (wall time then mostly measures the competition)
    times: dict[str, list[float]] = {name: [] for name in engines}
    cpu: dict[str, list[float]] = {name: [] for name in engines}
    terms: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        for name, eng in engines.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            terms[name] = sorted(eng.forward_backward(batch))
            sync()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    print(f"model {args.model}, batch {args.batch}, input {args.height}x{args.width}, device {args.device}, "
          f"threads {torch.get_num_threads()}, rounds {args.rounds}")
    first = next(iter(times))
    ref = "full_vd fp32" if "full_vd fp32" in times else first
    base_w, base_c = statistics.median(times[ref]), statistics.median(cpu[ref])
    print(f"{'variant':28s} {'wall s/step':>12s} {'img/s':>7s} {'wall ratio':>11s} {'cpu s/step':>11s} "
          f"{'cpu ratio':>10s}  terms")
    for name in times:
        w, c = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"{name:28s} {w:12.3f} {args.batch / w:7.1f} {w / base_w:11.3f} {c:11.3f} {c / base_c:10.3f}  "
              f"{','.join(t for t in terms[name] if t != 'total')}")
    if "reid_only fp32" in times and "full_vd fp32" in times:
        for label, d in (("wall", times), ("cpu", cpu)):
            extra = statistics.median(d["full_vd fp32"]) / statistics.median(d["reid_only fp32"]) - 1
            print(f"distillation terms (VSD+VCD+VML), {label} time: {100 * extra:+.1f}% over L_ReID only "
                  "(target <= 5%)")


if __name__ == "__main__":
    main()
