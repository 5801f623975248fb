"""Ranking/evaluation speed: vdreid's exact blockwise evaluator vs torchreid's ``evaluate_rank`` (Python path)
vs a straightforward numpy evaluator, from features to metrics, on the same random features.

Usage (from the repository root)::

    .venv/bin/python benchmarks/rank_speed.py                 # all cases
    .venv/bin/python benchmarks/rank_speed.py --cases sysu    # one case: sysu | 10k | 1m
    .venv/bin/python benchmarks/rank_speed.py --quick         # smaller sizes, smoke run
    .venv/bin/python benchmarks/rank_speed.py --cases sysu 10k --backend both --threads 2
                                                              # the de-duplicated CMC's top-L from the counting
                                                              # blocks (torch) vs from faiss indexes, side by side
    .venv/bin/python benchmarks/rank_speed.py --compare-rev e8749fc~1 --threads 2
                                                              # SYSU size with the SYSU rules: this tree's evaluator
                                                              # vs the one of an older commit, interleaved

Features: identity-clustered Gaussians (``center[pid] + noise``), so metrics are neither 0 nor 100 and
positives sit near the top as with a trained model; ``--pure-noise`` makes them i.i.d. (the worst case for our
counting, every positive deep in the list). Metric: cosine (AGW: L2-normalised, ``-q @ g.T``).

Every implementation computes its own distances from the features (the matrix product is part of each
timing). ``floor`` is the time of the float32 matrix products alone (``q @ g.T`` over all blocks), which no exact
evaluator can avoid. Agreement: rank-1 / mAP / mINP of each implementation vs ours. torchreid and the numpy
evaluator use the standard CMC without exclusions here (torchreid has no de-duplicated CMC and no exclusion
rule), so all three compute the same quantity; ours runs in 'standard' mode for the comparison and the
SYSU case also times ours with the SYSU rules (dedup CMC, cam3->cam2 exclusion).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import threading
import time
import warnings

import numpy as np
import torch
from vdreid import compat
from vdreid.evaluation import evaluate_features


def make_features(nq: int, ng: int, dim: int, num_ids: int, seed: int, pure_noise: bool):
    """Queries and gallery of ``num_ids`` identities; features ``center[pid] + noise`` (float32)."""
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, num_ids, ng)
    q_pids = rng.choice(np.unique(g_pids), nq)
    if pure_noise:
        qf = rng.standard_normal((nq, dim), dtype=np.float32)
        gf = rng.standard_normal((ng, dim), dtype=np.float32)
    else:
        # noise level giving R1 ~ 70% / mAP ~ 40% on a 3k gallery (same-id cosine ~ 2.5 / sqrt(D))
        sigma = np.float32(np.sqrt(max(np.sqrt(dim) / 2.5 - 1.0, 0.25)))
        centers = rng.standard_normal((num_ids, dim), dtype=np.float32)
        qf = centers[q_pids] + sigma * rng.standard_normal((nq, dim), dtype=np.float32)
        gf = np.empty((ng, dim), np.float32)
        for i in range(0, ng, 1 << 16):  # chunked: the 1M gallery must stay within the memory budget
            sl = slice(i, min(ng, i + (1 << 16)))
            gf[sl] = centers[g_pids[sl]] + sigma * rng.standard_normal((sl.stop - sl.start, dim), dtype=np.float32)
    q_cam = np.where(rng.random(nq) < 0.5, 2, 5)  # SYSU-like query cameras cam3 / cam6 (0-based 2 / 5)
    g_cam = rng.choice([0, 1, 3, 4], ng)
    return qf, gf, q_pids, g_pids, q_cam, g_cam


def numpy_evaluator(qf, gf, q_pids, g_pids, max_rank=20):
    """Straightforward evaluator: dense -cosine matrix, full argsort, a loop over queries (standard CMC)."""
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True).clip(1e-12)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True).clip(1e-12)
    dist = -(qn @ gn.T)
    order = np.argsort(dist, axis=1, kind="stable")
    cmc, aps, inps = np.zeros(max_rank), [], []
    nvalid = 0
    for i in range(len(q_pids)):
        hit = g_pids[order[i]] == q_pids[i]
        if not hit.any():
            continue
        nvalid += 1
        pos = np.nonzero(hit)[0]
        if pos[0] < max_rank:
            cmc[pos[0]:] += 1
        aps.append(np.mean(np.arange(1, pos.size + 1) / (pos + 1)))
        inps.append(pos.size / (pos[-1] + 1))
    return {"cmc": cmc / nvalid, "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}


def torchreid_evaluator(qf, gf, q_pids, g_pids, q_cam, g_cam, max_rank=20):
    """torchreid: distance matrix with torch (its cosine distance), then ``evaluate_rank`` (Python path).
    torchreid's ``eval_market1501`` removes same-pid-same-camera items; the query cameras differ from the
    gallery cameras here, so nothing is removed. It returns CMC and mAP (no mINP)."""
    q = torch.nn.functional.normalize(torch.from_numpy(qf), dim=1)
    g = torch.nn.functional.normalize(torch.from_numpy(gf), dim=1)
    dist = (1 - q @ g.T).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmc, mAP = compat.evaluate_rank(dist, q_pids, g_pids, q_cam, g_cam, max_rank=max_rank, use_cython=False)
    return {"cmc": cmc, "mAP": float(mAP), "mINP": float("nan")}


def matmul_floor(qf, gf, block=1 << 23) -> float:
    """Seconds for the float32 products q @ g.T alone, in blocks like ours."""
    q = torch.nn.functional.normalize(torch.from_numpy(qf), dim=1)
    g = torch.nn.functional.normalize(torch.from_numpy(gf), dim=1)
    cb = min(g.shape[0], 65536)
    rb = max(1, min(q.shape[0], block // cb))
    t0 = time.perf_counter()
    for r in range(0, q.shape[0], rb):
        for c in range(0, g.shape[0], cb):
            _ = q[r : r + rb] @ g[c : c + cb].T
    return time.perf_counter() - t0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn, *args, **kw):
    """(result, seconds, peak RSS increase in MiB during the call). RSS is sampled every 5 ms by a thread
    (tracemalloc misses torch's allocations and slows numpy-heavy code down)."""
    gc.collect()
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    dt = time.perf_counter() - t0
    done.set()
    th.join()
    peak[0] = max(peak[0], _rss())
    return out, dt, (peak[0] - base) / 2**20


def agree(a: dict, b: dict) -> str:
    d = max(abs(a["cmc"][0] - b["cmc"][0]), abs(a["mAP"] - b["mAP"]))
    if not np.isnan(b["mINP"]):
        d = max(d, abs(a["mINP"] - b["mINP"]))
    return f"max |diff| R1/mAP/mINP = {d:.1e}"


def run_case(name, nq, ng, dim, num_ids, trials, others, pure_noise, backend):
    print(f"\n=== {name}: {nq} queries x {ng} gallery, D={dim}, {num_ids} ids, {trials} trial(s) ===", flush=True)
    tot = {"ours": 0.0, "ours_sysu_rules": 0.0, "ours_sysu_faiss_topl": 0.0, "torchreid": 0.0, "numpy": 0.0,
           "floor": 0.0}
    peaks = {k: 0.0 for k in tot}
    for t in range(trials):
        qf, gf, qp, gp, qc, gc_ = make_features(nq, ng, dim, num_ids, seed=t, pure_noise=pure_noise)
        ours, dt, pk = timed(evaluate_features, qf, gf, qp, gp, qc, gc_, metric="cosine",
                             backend="torch" if backend == "both" else backend, cmc_mode="standard")
        tot["ours"] += dt
        peaks["ours"] = max(peaks["ours"], pk)
        if name in ("sysu", "10k") or backend == "both":
            rules = [("ours_sysu_rules", "torch" if backend == "both" else backend)]
            if backend == "both":  # top-L from faiss indexes instead of the counting blocks (same numbers)
                rules.append(("ours_sysu_faiss_topl", "faiss"))
            res = []
            for key, be in rules:
                r, dt, pk = timed(evaluate_features, qf, gf, qp, gp, qc, gc_, metric="cosine", backend=be,
                                  cmc_mode="dedup", exclude_cam_pairs=((2, 1),))
                tot[key] += dt
                peaks[key] = max(peaks[key], pk)
                res.append(r)
            if len(res) == 2 and t == 0:
                same = res[0]["mAP"] == res[1]["mAP"] and np.array_equal(res[0]["cmc"], res[1]["cmc"])
                print(f"  SYSU rules, torch vs faiss top-L: identical metrics = {same} "
                      f"({res[0]['backend']} / {res[1]['backend']})")
        tot["floor"] += matmul_floor(qf, gf)
        if others:
            tr, dt, pk = timed(torchreid_evaluator, qf, gf, qp, gp, qc, gc_)
            tot["torchreid"] += dt
            peaks["torchreid"] = max(peaks["torchreid"], pk)
            npy, dt2, pk2 = timed(numpy_evaluator, qf, gf, qp, gp)
            tot["numpy"] += dt2
            peaks["numpy"] = max(peaks["numpy"], pk2)
            if t == 0:
                print(f"  agreement torchreid vs ours: {agree(ours, tr)}; numpy vs ours: {agree(ours, npy)}")
        if t == 0:
            print(f"  ours: R1 {ours['cmc'][0] * 100:.2f}  mAP {ours['mAP'] * 100:.2f}  mINP {ours['mINP'] * 100:.2f}")
        del qf, gf
        gc.collect()
    print(f"  {'impl':<18}{'total s':>10}{'peak RSS increase MiB':>26}")
    for k, v in tot.items():
        if v > 0:
            print(f"  {k:<18}{v:10.3f}{peaks[k] if k != 'floor' else float('nan'):26.1f}")
    if tot["ours_sysu_faiss_topl"] > 0:
        print(f"  SYSU rules: faiss top-L / torch top-L time = "
              f"{tot['ours_sysu_faiss_topl'] / tot['ours_sysu_rules']:.2f}x")
    if others:
        r_tr, r_np = tot["torchreid"] / tot["ours"], tot["numpy"] / tot["ours"]
        beyond = (tot["torchreid"] - tot["floor"]) / max(tot["ours"] - tot["floor"], 1e-9)
        print(f"  speed-up vs torchreid: {r_tr:.1f}x   vs numpy: {r_np:.1f}x")
        print(f"  speed-up vs torchreid on the time beyond the matmul floor: {beyond:.1f}x")
    print(f"  matmul floor = {tot['floor'] / tot['ours'] * 100:.0f}% of our time")
    print(f"  process max RSS so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)


def load_old_evaluator(rev: str):
    """``evaluate_features`` of commit ``rev`` (its whole package, imported beside this tree's as ``vdreid_old`` by
    ``revision_speed.import_revision``), for a side-by-side timing in one process."""
    import importlib

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from revision_speed import import_revision

    pkg = import_revision(rev, "vdreid_old")
    return importlib.import_module(f"{pkg.__name__}.evaluation").evaluate_features


def compare_rev(rev: str, rounds: int = 3) -> None:
    """SYSU all-search size, 10 trials with the SYSU rules, this tree vs ``rev``, interleaved round by round."""
    old_fn = load_old_evaluator(rev)
    feats = [make_features(3803, 301, 2048, 96, seed=t, pure_noise=False) for t in range(10)]
    kw = dict(metric="cosine", cmc_mode="dedup", exclude_cam_pairs=((2, 1),))
    best = {"new": np.inf, "old": np.inf}
    for r in range(rounds):
        for name, fn in (("new", evaluate_features), ("old", old_fn)):
            t0 = time.perf_counter()
            outs = [fn(qf, gf, qp, gp, qc, gc_, **kw) for qf, gf, qp, gp, qc, gc_ in feats]
            dt = time.perf_counter() - t0
            best[name] = min(best[name], dt)
            print(f"  round {r} {name}: {dt:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
            if name == "new":
                new_outs = outs
        same = all(a["mAP"] == b["mAP"] and a["mINP"] == b["mINP"] and np.array_equal(a["cmc"], b["cmc"])
                   for a, b in zip(new_outs, outs))
    print(f"  SYSU size, 10 trials, SYSU rules: this tree {best['new']:.2f} s, {rev} {best['old']:.2f} s "
          f"(best of {rounds}); new / old = {best['new'] / best['old']:.2f}; identical metrics: {same}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["sysu", "10k", "1m"], choices=["sysu", "10k", "1m"])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--pure-noise", action="store_true", help="i.i.d. features (worst case)")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "faiss", "both"])
    ap.add_argument("--threads", type=int, default=0, help="torch / faiss threads (0: library default)")
    ap.add_argument("--compare-rev", default=None, help="only: SYSU size, this tree vs the evaluator of a commit")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
        try:
            import faiss

            faiss.omp_set_num_threads(a.threads)
        except ImportError:
            pass
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}; "
          f"backend {a.backend}; features {'pure noise' if a.pure_noise else 'identity-clustered'}")
    if a.compare_rev:
        compare_rev(a.compare_rev)
        return
    s = 10 if a.quick else 1
    for c in a.cases:
        if c == "sysu":
            run_case("sysu", 3803 // s, 301 // s if s == 1 else 60, 2048, 96, 10 if s == 1 else 2, True, a.pure_noise,
                     a.backend)
        elif c == "10k":
            run_case("10k", 10000 // s, 10000 // s, 2048, 1000 // s, 1, True, a.pure_noise, a.backend)
        else:
            run_case("1m", 10000 // s, 1_000_000 // s, 256, 100_000 // s, 1, False, a.pure_noise, a.backend)


if __name__ == "__main__":
    sys.exit(main())
