"""Independent restatement of AGW's eval_sysu / eval_regdb (spec section 3.1-3.2), written from the definition and
shared by the evaluation tests. Not our code: per-query loops, stable argsort, plain Python dedup."""

from __future__ import annotations

import numpy as np
import pytest


def agw_reference(dist, q_pids, g_pids, q_camids, g_camids, max_rank=20, mode="dedup", excluded=()):
    """Spec 3.1 restated: per query, stable argsort, remove excluded cameras, dedup or standard CMC row,
    AP / INP on the non-deduplicated kept list; invalid queries are skipped. Returns (cmc, mAP, mINP, nvalid)."""
    rows, aps, inps = [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = np.ones(order.size, dtype=bool)
        for qc, gc in excluded:
            if q_camids[i] == qc:
                keep &= g_camids[order] != gc
        ranked = g_pids[order][keep]
        hit = ranked == q_pids[i]
        if mode == "dedup":
            seen, dedup = set(), []
            for p in ranked:  # first occurrence of each identity, in rank order
                if p not in seen:
                    seen.add(p)
                    dedup.append(p)
            row = np.cumsum(np.array(dedup) == q_pids[i]) if dedup else np.zeros(0)
        else:
            row = np.minimum(np.cumsum(hit), 1)
        row = list(row[:max_rank])
        row += [row[-1] if row else 0] * (max_rank - len(row))
        if not hit.any():
            continue
        rows.append(row)
        pos = np.nonzero(hit)[0]
        aps.append(sum((j + 1) / (p + 1) for j, p in enumerate(pos)) / len(pos))
        inps.append(len(pos) / (pos[-1] + 1))
    if not rows:
        return None
    return np.sum(rows, axis=0) / len(rows), float(np.mean(aps)), float(np.mean(inps)), len(rows)


def assert_same(out, ref):
    cmc, mAP, mINP, nvalid = ref
    assert out["cmc"].shape == cmc.shape
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-6, rtol=0)
    assert out["mAP"] == pytest.approx(mAP, abs=1e-6)
    assert out["mINP"] == pytest.approx(mINP, abs=1e-6)
    assert out["num_valid_queries"] == nvalid
