"""The spread of the learning tests' outcomes over seeds and CPU kernel families, to set their margins from.

Runs the training of a learning test (tests/test_engine_training.py::test_training_lowers_loss_and_beats_chance:
VD on the learning test's tree; tests/test_engine_agw.py::test_agw_trains_logs_its_terms_and_keeps_bounded_checkpoints:
AGW on the 16-id tiny tree) once per seed and kernel family, each in its own process with one intra-op thread, the
test session's denormal flushing (``vdreid.runtime``, as tests/conftest.py applies it) and ``ATEN_CPU_CAPABILITY``
set to the family (``default`` = what the CPU offers). Prints one row per run and the minimum over runs of each
quantity the test asserts on.

    python benchmarks/learning_spread.py --test vd --seeds 0 1 2 3 4 --families default avx2
    python benchmarks/learning_spread.py --test agw --seeds 0 1 2 3 4 --families default avx2
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, "tests")


def one_run(test: str, seed: int, epochs: int, tree: str, flush: str, lr: float | None = None) -> dict:
    """One training as the test runs it (in this process); returns what the test asserts on."""
    sys.path.insert(0, TESTS)
    import torch
    from vdreid import runtime

    rt = runtime.apply(runtime.resolve("1", flush))
    from _engine_worker import build_engine
    from test_engine_training import LEARN_RUN, _chance_rank1

    out = {"seed": seed, "capability": str(torch.backends.cpu.get_cpu_capability()), "flush": rt.flush_denormal}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.process_time()
        if test == "vd":
            eng = build_engine(tree, seed=seed, **dict(LEARN_RUN, **({"lr": lr} if lr else {})))
        else:  # tests/test_engine_agw.py's
            eng = build_engine(tree, seed=seed, method="agw", lr=lr or 3e-3, warmup_epochs=0)
        rank1 = eng.run(save_dir=osp.join(tmp, "run"), max_epoch=epochs)
        out["cpu_s"] = time.process_time() - t0
        with open(osp.join(tmp, "run", "train_log.jsonl")) as f:
            log = [json.loads(ln) for ln in f if ln.strip()]
        with open(osp.join(tmp, "run", "results_sysu_mm01.json")) as f:
            res = json.load(f)
    chance = _chance_rank1(eng.datamanager, "sysu_mm01")
    out.update(rank1=rank1, mAP=res["mean"]["mAP"], chance=chance, rank1_over_chance=rank1 / chance,
               ce_ratio=log[-1]["ce"] / log[0]["ce"], total_ratio=log[-1]["total"] / log[0]["total"],
               steps=epochs * len(eng.train_loader))
    return out


def make_tree(test: str, where: str) -> str:
    """The test's tree: the learning test's (tests/test_engine_training.py LEARN_TREE) or the 16-id session tree
    (tests/conftest.py sysu_root) for AGW."""
    sys.path.insert(0, TESTS)
    from test_engine_training import LEARN_TREE
    from vdreid.data.synthetic import make_sysu

    root = osp.join(where, f"tree_{test}")
    if not osp.isdir(osp.join(root, "SYSU-MM01")):
        make_sysu(root, preset="tiny", seed=0, **(LEARN_TREE if test == "vd" else {}))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", choices=["vd", "agw"], default="vd")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--families", nargs="+", default=["default", "avx2"],
                    help="ATEN_CPU_CAPABILITY values; 'default' leaves it unset")
    ap.add_argument("--epochs", type=int, default=0, help="0: the test's own (vd LEARN_EPOCHS, agw 3)")
    ap.add_argument("--lr", type=float, default=0.0, help="0: the test's own learning rate")
    ap.add_argument("--flush", default="auto", help="denormal flushing: auto (the test session's) | true | false")
    ap.add_argument("--work", default=osp.join(tempfile.gettempdir(), "vdreid_learning_spread2"))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, TESTS)
    from test_engine_training import LEARN_EPOCHS

    epochs = args.epochs or {"vd": LEARN_EPOCHS, "agw": 3}[args.test]
    if args.one:
        print(json.dumps(one_run(args.test, args.seed, epochs, make_tree(args.test, args.work), args.flush,
                                args.lr or None)))
        return
    os.makedirs(args.work, exist_ok=True)
    make_tree(args.test, args.work)
    rows = []
    lr = args.lr or "the test's"
    print(f"test {args.test}, {epochs} epochs, lr {lr}, flush {args.flush}; one process per run, OMP_NUM_THREADS=1",
          flush=True)
    print(f"{'family':8s} {'capability':10s} {'seed':>4s} {'rank1':>6s} {'chance':>6s} {'R1/ch':>6s} {'mAP':>6s} "
          f"{'ce last/first':>13s} {'total l/f':>9s} {'cpu s':>6s}", flush=True)
    for fam in args.families:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env.pop("ATEN_CPU_CAPABILITY", None)
        if fam != "default":
            env["ATEN_CPU_CAPABILITY"] = fam
        for seed in args.seeds:
            cmd = [sys.executable, __file__, "--one", "--test", args.test, "--seed", str(seed), "--epochs",
                   str(epochs), "--flush", args.flush, "--work", args.work, "--lr", str(args.lr)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(p.stderr[-3000:])
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["family"] = fam
            rows.append(r)
            print(f"{fam:8s} {r['capability']:10s} {seed:4d} {r['rank1']:6.2f} {r['chance']:6.2f} "
                  f"{r['rank1_over_chance']:6.2f} {r['mAP']:6.2f} {r['ce_ratio']:13.3f} {r['total_ratio']:9.3f} "
                  f"{r['cpu_s']:6.1f}", flush=True)
    for key in ("rank1_over_chance", "mAP", "ce_ratio", "total_ratio"):
        vals = [r[key] for r in rows]
        print(f"{key:18s} min {min(vals):7.3f}  max {max(vals):7.3f}  mean {sum(vals) / len(vals):7.3f}  "
              f"({len(vals)} runs)")


if __name__ == "__main__":
    main()
