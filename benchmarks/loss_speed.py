"""Loss-side cost of the VD objective, two implementations side by side in one process (ratios, not absolute claims).

1. ``official_rank_loss`` (vectorised masks) versus a per-anchor Python loop with the released ``Rank_loss``'s
   structure (written here from spec 5.3), forward + backward on one feature set.
2. ``VDLoss`` forward + backward: L_ReID only (CE + metric) versus the full paper objective and the full official one,
   on synthetic branch outputs with SYSU-sized heads (395 classes, v 2048-d, z 512-d).

Usage: python benchmarks/loss_speed.py [--batch 64] [--repeats 20] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from vdreid.losses import VDLoss, VDLossConfig, official_rank_loss
from vdreid.losses.reid import pairwise_euclidean
from vdreid.models.outputs import BranchOutput, VDOutput


def rank_loss_loop(x, pids, sub, a1=2.2, m1=0.9, a2=2.0, m2=1.0, tval=1.0):
    """Per-anchor loop in the released code's structure (boolean indexing per anchor)."""
    x = torch.nn.functional.normalize(x, dim=1)
    d = pairwise_euclidean(x)
    loss = 0.0
    for i in range(d.shape[0]):
        is_pos = pids.eq(pids[i])
        is_pos[i] = False
        is_neg = pids.ne(pids[i])
        intra = sub.eq(sub[i])
        for mod, a, m in ((intra, a1, m1), (~intra, a2, m2)):
            ap = torch.clamp(d[i][is_pos & mod] + m - a, min=0)
            loss = loss + ap.sum() / (ap.numel() + 1e-5)
            an = d[i][is_neg & mod]
            an = an[an < a]
            w = torch.exp(tval * (a - an))
            loss = loss + (w * (a - an)).sum() / (w.sum() + 1e-5)
    return loss / d.shape[0]


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def make_out(batch: int, classes: int, dv: int, dz: int, device: str) -> tuple[VDOutput, torch.Tensor]:
    ids = batch // 4
    pids = torch.arange(ids).repeat_interleave(4).to(device)
    is_ir = torch.tensor([False, False, True, True]).repeat(ids).to(device)
    idx = torch.arange(batch, device=device)

    def br():
        def t(d):
            return torch.randn(batch, d, device=device, requires_grad=True)

        return BranchOutput(v=t(dv), v_pre=t(dv), v_logits=t(classes), z=t(dz), z_logits=t(classes), index=idx)

    return VDOutput(ir=br(), vis=br(), shared_x=br(), shared_gray=br(), is_ir=is_ir, routing="official"), pids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=395)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = args.device

    x = torch.randn(args.batch, 2048, device=dev, requires_grad=True)
    pids = torch.arange(args.batch // 4).repeat_interleave(4).to(dev)
    sub = torch.tensor([0, 0, 1, 1]).repeat(args.batch // 4).to(dev)
    a = official_rank_loss(x, pids, sub).item()
    b = rank_loss_loop(x, pids, sub).item()
    assert abs(a - b) < 1e-4 * max(1.0, abs(b)), (a, b)
    t_vec = timeit(lambda: official_rank_loss(x, pids, sub).backward(), args.repeats)
    t_loop = timeit(lambda: rank_loss_loop(x, pids, sub).backward(), args.repeats)
    print(f"official_rank_loss B={args.batch} D=2048 fwd+bwd: vectorised {t_vec * 1e3:.2f} ms, "
          f"per-anchor loop {t_loop * 1e3:.2f} ms, loop/vectorised = {t_loop / t_vec:.1f}x")

    out, pids = make_out(args.batch, args.classes, 2048, 512, dev)
    configs = {
        "paper L_ReID only (CE + RLL + DML)": VDLossConfig.paper(weights=dict(vsd=0, vcd=0, vml=0)),
        "paper full": VDLossConfig.paper(),
        "official L_ReID only (CE + rank)": VDLossConfig.official(weights=dict(cml=0, vsd=0, vcd=0)),
        "official full (+ Sinkhorn CML, VSD, VCD)": VDLossConfig.official(),
    }
    times = {}
    for name, cfg in configs.items():
        crit = VDLoss(cfg, args.classes).to(dev)
        times[name] = timeit(lambda crit=crit: crit(out, pids)[0].backward(), args.repeats)
    names = list(configs)
    for n in names:
        print(f"VDLoss {n:45s} fwd+bwd {times[n] * 1e3:8.2f} ms")
    print(f"paper full / L_ReID only = {times[names[1]] / times[names[0]]:.3f}; "
          f"official full / L_ReID only = {times[names[3]] / times[names[2]]:.3f}")


if __name__ == "__main__":
    main()
