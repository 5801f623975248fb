"""Training-step time of the quickstart recipe with torch's default intra-op threads, one thread, and
``train.threads auto`` (``vdreid.runtime``), on an idle machine and with a competing busy process.

Each variant runs in its own process (a thread pool lives as long as its process), built as ``vdreid train``
builds the run (builders) on the synthetic SYSU-MM01 demo tree, with the denormal setting a CPU run applies; one
untimed step, then ``--steps`` timed steps on real batches. Variants alternate round by round. ``--load N`` starts
N busy processes (a Python ``while True`` loop each) for the loaded half of the measurement.

    python benchmarks/threads_speed.py --root /tmp/syn --steps 3 --rounds 2 --load 1
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time

VARIANTS = ("torch default", "1", "auto")


def child(variant: str, root: str, steps: int) -> dict:
    import torch
    from vdreid import builders, runtime
    from vdreid.config import load_config
    from vdreid.recipes import resolve_config

    if variant == "torch default":  # what a run did before train.threads: torch's own count, flush as a CPU run
        torch.set_flush_denormal(True)
    else:
        runtime.apply(runtime.resolve(variant, "auto"))
    cfg = load_config(resolve_config("quickstart"), ["data.root", root, "data.workers", "0", "train.use_gpu", "false"])
    dm = builders.build_datamanager(cfg)
    builders.seed_everything(0)
    model = builders.build_model(cfg, dm.num_train_pids)
    criterion = builders.build_criterion(cfg, dm.num_train_pids, model)
    opt, sched = builders.build_optim(cfg, model, criterion)
    eng = builders.build_engine(cfg, dm, model, criterion, opt, sched, progress=False)
    eng.set_model_mode("train")
    batches = []
    for b in dm.train_loader:
        batches.append(b)
        if len(batches) == steps + 1:
            break
    eng.forward_backward(batches[0])
    wall, cpu = [], []
    for b in batches[1:]:
        t0, c0 = time.perf_counter(), time.process_time()
        eng.forward_backward(b)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"threads": torch.get_num_threads(), "wall": wall, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/vdreid_bench_tree")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--load", type=int, default=1, help="busy processes for the loaded measurement (0: idle only)")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.root, args.steps)))
        return
    if not osp.isdir(osp.join(args.root, "SYSU-MM01")):
        from vdreid.data.synthetic import make_sysu

        make_sysu(args.root, preset="demo", seed=0)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    from vdreid import runtime

    print(f"CPUs: {runtime.usable_cores()}; quickstart step (vd_resnet10t, 64x32, batch 64), {args.steps} timed steps "
          f"per process, {args.rounds} rounds", flush=True)
    print(f"{'condition':18s} {'variant':14s} {'threads':>7s} {'wall s/step':>11s} {'cpu s/step':>10s} "
          f"{'load avg':>8s}", flush=True)
    for loaded in ([False, True] if args.load else [False]):
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load if loaded else 0)]
        try:
            res: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for _ in range(args.rounds):
                for v in VARIANTS:
                    p = subprocess.run([sys.executable, __file__, "--child", v, "--root", args.root, "--steps",
                                        str(args.steps)], env=env, capture_output=True, text=True)
                    if p.returncode:
                        raise SystemExit(p.stderr[-3000:])
                    r = json.loads(p.stdout.strip().splitlines()[-1])
                    r["load"] = os.getloadavg()[0]
                    res[v].append(r)
        finally:
            for b in busy:
                b.kill()
                b.wait()
        cond = f"{args.load} busy process" + ("es" if args.load > 1 else "") if loaded else "idle"
        for v in VARIANTS:
            wall = statistics.median(x for r in res[v] for x in r["wall"])
            cpu = statistics.median(x for r in res[v] for x in r["cpu"])
            load = statistics.mean(r["load"] for r in res[v])
            print(f"{cond:18s} {v:14s} {res[v][0]['threads']:7d} {wall:11.3f} {cpu:10.3f} {load:8.1f}", flush=True)


if __name__ == "__main__":
    main()
