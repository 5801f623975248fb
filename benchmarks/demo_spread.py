"""The spread of the demo's result over training seeds and CPU kernel families (the README's demo range).

Trains ``configs/quickstart.yaml`` on today's demo tree (``vdreid make-synthetic --layout sysu --preset demo``, seed
0, as ``vdreid demo`` writes it) once per training seed (``train.seed`` = ``sampler.seed``) and kernel family
(``ATEN_CPU_CAPABILITY``; ``default`` = what the CPU offers), each by ``vdreid train`` in its own process with
``--threads`` intra-op threads, and prints one row per run plus the minimum, maximum and mean of the all-search
rank-1 and mAP (mean over the 10 gallery draws of each run). ``--jobs 2`` trains two side by side.

    python benchmarks/demo_spread.py --seeds 0 1 2 --families default avx2 --threads 1 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
VDREID = osp.join(REPO, ".venv", "bin", "vdreid")
TARGET = "sysu_mm01"


def make_tree(root: str) -> None:
    """Today's demo tree under ``root`` (nothing is written when it is already there)."""
    if osp.isdir(osp.join(root, "SYSU-MM01")):
        return
    subprocess.run([VDREID, "make-synthetic", "--layout", "sysu", "--preset", "demo", "--seed", "0", "--out", root],
                   check=True, cwd=REPO)


def read_run(run_dir: str, family: str, seed: int) -> dict:
    """The numbers of a finished run folder (its results JSON and this script's timing record)."""
    with open(osp.join(run_dir, f"results_{TARGET}.json")) as f:
        res = json.load(f)
    meta_path = osp.join(run_dir, "demo_spread_meta.json")
    if osp.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    else:  # a run trained before this record existed: its epochs' training time from the train log
        with open(osp.join(run_dir, "train_log.jsonl")) as f:
            epochs = [json.loads(ln) for ln in f if ln.strip()]
        meta = {"wall_s": sum(e.get("time_s", 0.0) for e in epochs), "cpu_s": None, "threads": None}
    return {"family": family, "seed": seed, "rank1": res["mean"]["R1"], "mAP": res["mean"]["mAP"],
            "mINP": res["mean"].get("mINP"), "capability": res.get("runtime", {}).get("cpu_capability"),
            "run_dir": run_dir, **meta}


def one_run(root: str, out_dir: str, seed: int, family: str, threads: int, reuse: bool) -> dict:
    """One quickstart training (or, with ``reuse``, the finished one of the same seed and family); returns its
    numbers, wall and CPU time."""
    run_dir = osp.join(out_dir, f"{family}_seed{seed}")
    if reuse and osp.isfile(osp.join(run_dir, f"results_{TARGET}.json")):
        return read_run(run_dir, family, seed)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("ATEN_CPU_CAPABILITY", None)
    if family != "default":
        env["ATEN_CPU_CAPABILITY"] = family
    cmd = [VDREID, "train", "--config-file", "quickstart", "data.root", root, "data.save_dir", run_dir,
           "train.seed", str(seed), "sampler.seed", str(seed), "test.visrank", "false", "train.threads", str(threads)]
    if osp.isdir(run_dir) and os.listdir(run_dir):
        cmd.insert(2, "--overwrite")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    with open(osp.join(out_dir, f"{family}_seed{seed}.log"), "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"training {run_dir} failed; see {log.name}")
    with open(osp.join(run_dir, "demo_spread_meta.json"), "w") as f:
        json.dump({"wall_s": time.time() - t0, "cpu_s": usage.ru_utime + usage.ru_stime, "threads": threads}, f)
    return read_run(run_dir, family, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--families", nargs="+", default=["default", "avx2"],
                    help="ATEN_CPU_CAPABILITY values; 'default' leaves it unset")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--root", default=osp.join(REPO, "datasets", "demo_spread"))
    ap.add_argument("--out-dir", default=osp.join(REPO, "log", "demo_spread"))
    ap.add_argument("--json", default="", help="also write the rows to this file")
    ap.add_argument("--reuse", action="store_true", help="read finished runs of --out-dir instead of training again")
    args = ap.parse_args()

    make_tree(args.root)
    grid = [(s, f) for s in args.seeds for f in args.families]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda sf: one_run(args.root, args.out_dir, sf[0], sf[1], args.threads, args.reuse), grid))
    print(f"{'family':>8} {'kernels':>8} {'seed':>4} {'rank-1':>7} {'mAP':>7} {'mINP':>7} {'wall s':>7} {'cpu s':>7}")
    for r in rows:
        print(f"{r['family']:>8} {r['capability'] or '?':>8} {r['seed']:>4} {r['rank1']:7.2f} {r['mAP']:7.2f} "
              f"{r['mINP'] or 0:7.2f} {r['wall_s']:7.0f} {r['cpu_s'] or 0:7.0f}")
    for key in ("rank1", "mAP"):
        vals = [r[key] for r in rows]
        print(f"{key}: {min(vals):.2f} - {max(vals):.2f} (mean {sum(vals) / len(vals):.2f}) over {len(vals)} runs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
