"""Training-step time with and without flushing denormal floats to zero (``torch.set_flush_denormal``), side by side.

For each recipe, two engines are built from the recipe's config exactly as ``vdreid train`` builds them (builders:
model, criterion, optimiser over the method's parameter groups) with the same seed, and trained on the same real
batches of the synthetic SYSU-MM01 demo tree: one with flushing off, one with it on, step by step alternately (the
flag is per thread; with one intra-op thread every operation runs in the main thread). Reported: median process CPU
time and wall time per step over the timed rounds, and the ratio flush / no flush. Before timing, one untimed pass
with flushing off counts the denormal entries of every module output and of the channel attention's softmax.

    python benchmarks/denormal_speed.py --root /tmp/syn --threads 1        # quickstart, vd_resnet50_official, AGW
    python benchmarks/denormal_speed.py --root /tmp/syn --recipes quickstart --rounds 5

``--root`` must hold a ``SYSU-MM01`` tree (``vdreid make-synthetic --layout sysu --preset demo --out ROOT``; made
there when missing).
"""

from __future__ import annotations

import argparse
import os.path as osp
import statistics
import time

import torch
import vdreid  # noqa: F401  (registers datasets, models, methods)
from vdreid import builders
from vdreid.config import load_config
from vdreid.data.synthetic import make_sysu
from vdreid.models.attention import ShallowCAM
from vdreid.recipes import resolve_config

#: label -> (recipe, overrides): small batches of 2 ids x (2 visible + 2 infrared) for the ResNet-50 recipes
RECIPES = {
    "quickstart (vd_resnet10t, 64x32, batch 64)": ("quickstart", []),
    "vd_resnet50_official (256x128, batch 8)": ("official/sysu_all", ["sampler.num_ids", "2", "sampler.num_instances",
                                                                      "2", "model.pretrained", "false"]),
    "AGW (agw_sysu, batch 8)": ("methods/agw_sysu", ["sampler.num_ids", "2", "sampler.num_instances", "2",
                                                     "model.pretrained", "false"]),
}
SHORT = {"quickstart": "quickstart (vd_resnet10t, 64x32, batch 64)",
         "official": "vd_resnet50_official (256x128, batch 8)", "agw": "AGW (agw_sysu, batch 8)"}
TINY = torch.finfo(torch.float32).tiny


def _denormal(t: torch.Tensor) -> tuple[int, int]:
    if not t.is_floating_point() or t.dtype != torch.float32:
        return 0, 0
    a = t.detach().abs()
    return int(((a > 0) & (a < TINY)).sum()), a.numel()


def build(recipe: str, overrides: list[str], root: str, seed: int = 0):
    """Two engines of the recipe as ``vdreid train`` builds them (builders), with the same seed."""
    cfg = load_config(resolve_config(recipe), ["data.root", root, "data.workers", "0", "train.use_gpu", "false",
                                               *overrides])
    dm = builders.build_datamanager(cfg)
    engines = []
    for _ in range(2):
        builders.seed_everything(seed)
        model = builders.build_model(cfg, dm.num_train_pids)
        criterion = builders.build_criterion(cfg, dm.num_train_pids, model)
        opt, sched = builders.build_optim(cfg, model, criterion)
        eng = builders.build_engine(cfg, dm, model, criterion, opt, sched, progress=False)
        eng.set_model_mode("train")
        engines.append(eng)
    return cfg, dm, engines


def count_denormals(eng, batch) -> dict[str, float]:
    """One training step (flushing off) that counts the share (percent) of denormal entries in every leaf module's
    output and in the channel attention's softmax (recomputed from the block's input)."""
    torch.set_flush_denormal(False)
    outs, att = [0, 0], [0, 0]

    def leaf_hook(_m, _i, out):
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                d, n = _denormal(t)
                outs[0] += d
                outs[1] += n

    def cam_hook(_m, inputs, _out):
        x = inputs[0].detach()
        b, c, h, w = x.shape
        q = x.reshape(b, c, h * w)
        e = torch.bmm(q, q.transpose(1, 2))
        d, n = _denormal(torch.softmax(e.max(-1, keepdim=True).values - e, dim=-1))
        att[0] += d
        att[1] += n

    handles = [m.register_forward_hook(leaf_hook) for m in eng.net.modules() if not list(m.children())]
    handles += [m.register_forward_hook(cam_hook) for m in eng.net.modules() if isinstance(m, ShallowCAM)]
    try:
        eng.forward_backward(batch)
    finally:
        for h in handles:
            h.remove()
    return {"outputs": 100 * outs[0] / max(1, outs[1]), "attention": 100 * att[0] / att[1] if att[1] else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/vdreid_denormal_tree")
    ap.add_argument("--recipes", nargs="+", default=list(SHORT), choices=list(SHORT))
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per variant (alternating)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (the first counts denormals)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not osp.isdir(osp.join(args.root, "SYSU-MM01")):
        make_sysu(args.root, preset="demo", seed=0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {args.warmup} warm-up + {args.rounds} timed steps per variant")
    print(f"{'recipe':44s} {'denormal % (outputs / attention)':>33s} {'no flush s':>11s} {'flush s':>8s} "
          f"{'cpu ratio':>9s} {'wall ratio':>10s}")
    for key in args.recipes:
        label = SHORT[key]
        recipe, overrides = RECIPES[label]
        cfg, dm, (plain, flushed) = build(recipe, overrides, args.root)
        batches = []
        for b in dm.train_loader:
            batches.append(b)
            if len(batches) == args.warmup + args.rounds:
                break
        share = count_denormals(plain, batches[0])  # the plain engine's first step; the flushed one's follows
        torch.set_flush_denormal(True)
        flushed.forward_backward(batches[0])
        cpu = {False: [], True: []}
        wall = {False: [], True: []}
        for i, batch in enumerate(batches[1:], start=1):
            for flush, eng in ((False, plain), (True, flushed)):
                torch.set_flush_denormal(flush)
                t0, c0 = time.perf_counter(), time.process_time()
                eng.forward_backward(batch)
                if i >= args.warmup:
                    wall[flush].append(time.perf_counter() - t0)
                    cpu[flush].append(time.process_time() - c0)
        torch.set_flush_denormal(False)
        after = count_denormals(plain, batches[-1])
        c0, c1 = statistics.median(cpu[False]), statistics.median(cpu[True])
        w0, w1 = statistics.median(wall[False]), statistics.median(wall[True])
        print(f"{label:44s} {share['outputs']:8.2f} / {share['attention']:5.2f} -> "
              f"{after['outputs']:5.2f} / {after['attention']:5.2f} {c0:11.3f} {c1:8.3f} {c1 / c0:9.3f} "
              f"{w1 / w0:10.3f}", flush=True)
    print("denormal %: before the first step -> after the last one (no flush); attention: nan = no channel attention")


if __name__ == "__main__":
    main()
