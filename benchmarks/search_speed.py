"""Top-k search speed: faiss flat indexes vs vdreid's torch path vs a plain torch.topk loop, one process.

Usage (from the repository root)::

    .venv/bin/python benchmarks/search_speed.py                          # 10k queries x 1M gallery, D=256, top-20
    .venv/bin/python benchmarks/search_speed.py --nq 2000 --ng 200000    # scaled down
    .venv/bin/python benchmarks/search_speed.py --quick                  # smoke run

Implementations (all cosine, all from the same float32 features):

* ``faiss``: ``vdreid.evaluation.search(backend='faiss')``: ``IndexFlatIP`` over the L2-normalised gallery (one
  index per 256 MiB block), then the exact float64 re-scoring and certification of the candidates;
* ``torch``: ``search(backend='torch')``: torch GEMM blocks with a running ``topk`` (the engine behind the CMC
  top-L of the evaluation), then the same exact re-scoring;
* ``topk loop``: normalise, then for each chunk of queries ``(q @ g.T).topk(k)`` over the whole gallery in float32
  (no exactness: float32 order, ties as torch leaves them).

Build time (index / normalised copy) is included in each timing: a one-off search pays it. Peak memory = increase of
the process RSS during the call (sampled every 5 ms). Agreement: the fraction of identical lists vs ``faiss``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rank_speed import make_features, timed  # noqa: E402
from vdreid.evaluation import search  # noqa: E402


def topk_loop(qf: np.ndarray, gf: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """A plain torch top-k: float32 normalised GEMM per query chunk against the whole gallery."""
    q = torch.nn.functional.normalize(torch.from_numpy(qf), dim=1)
    g = torch.nn.functional.normalize(torch.from_numpy(gf), dim=1)
    out = np.empty((q.shape[0], k), np.int64)
    for r in range(0, q.shape[0], chunk):
        s = q[r : r + chunk] @ g.T
        out[r : r + chunk] = s.topk(k, dim=1).indices.numpy()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nq", type=int, default=10_000)
    ap.add_argument("--ng", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--impls", nargs="+", default=["faiss", "torch", "loop"], choices=["faiss", "torch", "loop"])
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the best time of each is kept")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.nq, a.ng = 500, 20_000
    torch.set_num_threads(a.threads)
    import faiss

    faiss.omp_set_num_threads(a.threads)
    print(f"torch {torch.__version__}, faiss {faiss.__version__}, threads {a.threads}; load average "
          f"{os.getloadavg()[0]:.1f}; top-{a.k} of {a.nq} queries x {a.ng} gallery, D={a.dim}", flush=True)
    qf, gf, *_ = make_features(a.nq, a.ng, a.dim, max(10, a.ng // 10), seed=0, pure_noise=False)
    times, peaks, lists = {}, {}, {}
    for rnd in range(a.rounds):
        for name in a.impls:
            if name == "loop":
                out, dt, pk = timed(topk_loop, qf, gf, a.k)
            else:
                res, dt, pk = timed(search, qf, gf, a.k, backend=name)
                out = res.indices
            lists[name] = out
            times[name] = min(times.get(name, np.inf), dt)
            peaks[name] = max(peaks.get(name, 0.0), pk)
            print(f"  round {rnd} {name:<6} {dt:9.2f} s   peak RSS +{pk:8.1f} MiB   load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    base = "faiss" if "faiss" in times else a.impls[0]
    print(f"\n  {'impl':<8}{'time s':>10}{'x ' + base:>10}{'peak MiB':>10}{'same lists':>12}")
    for name in a.impls:
        same = float(np.mean(np.all(lists[name] == lists[base], axis=1)))
        print(f"  {name:<8}{times[name]:10.2f}{times[name] / times[base]:10.2f}{peaks[name]:10.1f}{same:12.4f}")
    print(f"  load average after: {os.getloadavg()[0]:.1f}; wall {time.strftime('%H:%M:%S')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
