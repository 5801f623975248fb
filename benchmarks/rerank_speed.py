"""k-reciprocal re-ranking: vdreid's sparse kNN-graph re-ranking vs torchreid's dense ``re_ranking``, one process.

Usage (from the repository root)::

    .venv/bin/python benchmarks/rerank_speed.py                      # 5k, 10k, 20k (both), 50k, 100k (ours only)
    .venv/bin/python benchmarks/rerank_speed.py --sizes 5000 --dim 256
    .venv/bin/python benchmarks/rerank_speed.py --quick              # 1k + 2k smoke run

N images in all, one fifth queries (Q = N / 5, G = 4 N / 5), identity-clustered Gaussian features (as in
``rank_speed.py``), cosine, torchreid's parameters k1=20, k2=6, lambda=0.3. Each timing goes from features to
metrics (standard CMC, mAP, mINP):

* ``torchreid``: the three float32 distance matrices (q-g, q-q, g-g, ``1 - cos``) as vdreid's earlier dense path
  built them, ``torchreid.utils.re_ranking`` (dense (Q+G)^2), then ``vdreid.evaluation.evaluate`` on its matrix;
* ``ours``: ``evaluate_features(rerank=True)`` (kNN graph and farthest distances from exact searches, sparse
  weights, re-ranked distances formed block by block inside the exact counting), with ``--backend``.

Equality (sizes where both run): max |ours - torchreid| over every re-ranked distance (ours read from the same
blocks the counting uses) and the metric differences. Peak memory: increase of the process RSS during the call.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rank_speed import make_features, timed  # noqa: E402
from vdreid import compat  # noqa: E402
from vdreid.evaluation import evaluate, evaluate_features, rerank_distances  # noqa: E402


def _n64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def torchreid_path(qf, gf, qp, gp, qc, gc_):
    q, g = _n64(qf), _n64(gf)
    dm = compat.re_ranking((1 - q @ g.T).astype(np.float32), (1 - q @ q.T).astype(np.float32),
                           (1 - g @ g.T).astype(np.float32))
    return dm, evaluate(dm, qp, gp, qc, gc_, cmc_mode="standard")


def ours_path(qf, gf, qp, gp, qc, gc_, backend):
    return evaluate_features(qf, gf, qp, gp, qc, gc_, rerank=True, backend=backend, cmc_mode="standard")


def max_diff(qf, gf, dm, backend) -> float:
    """max |ours - torchreid| over the whole matrix, ours from the counting's float32-GEMM blocks."""
    rr = rerank_distances(qf, gf, backend=backend)
    fn = rr.block_fn(np.arange(gf.shape[0]), torch.device("cpu"))
    worst = 0.0
    for r0 in range(0, qf.shape[0], 512):
        rows = np.arange(r0, min(qf.shape[0], r0 + 512))
        worst = max(worst, float(np.abs(fn(rows, 0, gf.shape[0]).numpy() - dm[rows]).max()))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 50000, 100000])
    ap.add_argument("--dense-max", type=int, default=20000, help="largest N for torchreid's dense re_ranking")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes = [1000, 2000]
    torch.set_num_threads(a.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(a.threads)
    except ImportError:
        pass
    print(f"torch {torch.__version__}, threads {a.threads}, backend {a.backend}, D={a.dim}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'N':>7}{'Q':>7}{'G':>7}{'ours s':>9}{'ours MiB':>10}{'torchreid s':>13}{'torchreid MiB':>15}"
          f"{'ratio':>7}{'max|diff|':>11}{'d mAP':>9}{'load':>6}", flush=True)
    for n in a.sizes:
        nq = n // 5
        ng = n - nq
        qf, gf, qp, gp, qc, gc_ = make_features(nq, ng, a.dim, max(10, n // 10), seed=0, pure_noise=False)
        ours, t_o, m_o = timed(ours_path, qf, gf, qp, gp, qc, gc_, a.backend)
        row = f"{n:7d}{nq:7d}{ng:7d}{t_o:9.1f}{m_o:10.0f}"
        if n <= a.dense_max:
            (dm, ref), t_t, m_t = timed(torchreid_path, qf, gf, qp, gp, qc, gc_)
            diff = max_diff(qf, gf, dm, a.backend)
            d_map = abs(ours["mAP"] - ref["mAP"])
            row += f"{t_t:13.1f}{m_t:15.0f}{t_t / t_o:7.1f}{diff:11.1e}{d_map:9.1e}"
            del dm
        else:
            row += f"{'-':>13}{'-':>15}{'-':>7}{'-':>11}{'-':>9}"
        print(row + f"{os.getloadavg()[0]:6.1f}   (ours: R1 {ours['cmc'][0] * 100:.2f} mAP {ours['mAP'] * 100:.2f}, "
              f"{ours['backend']}, {time.strftime('%H:%M:%S')})", flush=True)
        del qf, gf
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
