"""Independent restatements of DEEN's LLCM code (ZYK100/LLCM ``DEEN/data_manager.py`` and ``eval_metrics.py``, as
the LLCM protocol notes describe them), shared by the LLCM tests. Not our code: DEEN's loops, global ``random``,
plain string sorts and its path parse (applied to paths relative to the data folder, see ``pid_cam``)."""

from __future__ import annotations

import os
import random

import numpy as np

VIS_CAMS = [f"test_vis/cam{k}" for k in range(1, 10)]
NIR_CAMS = [f"test_nir/cam{k}" for k in (1, 2, 4, 5, 6, 7, 8, 9)]  # DEEN leaves out the empty NIR cam3


def test_ids(data_path: str) -> list[str]:
    """``idx/test_id.txt``: the first line split on ',', each an int, formatted ``%04d``."""
    with open(os.path.join(data_path, "idx/test_id.txt")) as f:
        ids = f.read().splitlines()[0].split(",")
    return ["%04d" % int(y) for y in ids]  # noqa: UP031  (DEEN's own formatting)


def process_query_llcm(data_path: str, mode: int) -> list[str]:
    """DEEN ``process_query_llcm``: mode 1 = visible cameras, 2 = near-infrared; every image of every existing
    (pid, camera) folder, pids in sorted string order, cameras inside, sorted full paths."""
    cameras = VIS_CAMS if mode == 1 else NIR_CAMS
    files = []
    for pid in sorted(test_ids(data_path)):
        for cam in cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                files.extend(sorted([img_dir + "/" + i for i in os.listdir(img_dir)]))
    return files


def process_gallery_llcm(data_path: str, mode: int, trial: int) -> list[str]:
    """DEEN ``process_gallery_llcm``: ``random.seed(trial)`` on the global generator, the same loops, one
    ``random.choice`` per existing (pid, camera) folder. Restores the caller's global random state."""
    state = random.getstate()
    try:
        random.seed(trial)
        cameras = VIS_CAMS if mode == 1 else NIR_CAMS
        files = []
        for pid in sorted(test_ids(data_path)):
            for cam in cameras:
                img_dir = os.path.join(data_path, cam, pid)
                if os.path.isdir(img_dir):
                    files.append(random.choice(sorted([img_dir + "/" + i for i in os.listdir(img_dir)])))
        return files
    finally:
        random.setstate(state)


def pid_cam(path: str, data_path: str) -> tuple[int, int]:
    """DEEN's label parse: the character after the first ``cam`` is the 1-based camera digit and the 4 characters
    two positions later the pid; applied to the path relative to the data folder (a root path containing ``cam``
    would break DEEN's own parse)."""
    rest = os.path.relpath(path, data_path).split("cam")[1]
    return int(rest[2:6]), int(rest[0])


def load_data(path: str) -> tuple[list[str], list[int]]:
    """DEEN ``data_loader.load_data``: ``<path> <label>`` per line, split on one space."""
    with open(path) as f:
        lines = f.read().splitlines()
    return [s.split(" ")[0] for s in lines], [int(s.split(" ")[1]) for s in lines]


def eval_llcm_reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20):
    """DEEN's eval_llcm restated loop by loop (the spec's eval_sysu with another removal rule): stable argsort;
    drop gallery items with the query's pid AND the query's camera; de-duplicated CMC row on the kept list (first
    occurrence of each identity in rank order); queries without a kept match skipped; AP / INP on the kept,
    non-de-duplicated list; CMC padded with its last value past the end. Returns (cmc, mAP, mINP, nvalid)."""
    rows, aps, inps = [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        remove = (g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])
        ranked = g_pids[order][~remove]
        seen, dedup = set(), []
        for p in ranked.tolist():
            if p not in seen:
                seen.add(p)
                dedup.append(p)
        row = list(np.cumsum(np.array(dedup, dtype=np.int64) == q_pids[i])[:max_rank])
        row += [row[-1] if row else 0] * (max_rank - len(row))
        hit = ranked == q_pids[i]
        if not hit.any():
            continue
        rows.append(row)
        pos = np.nonzero(hit)[0]
        aps.append(sum((j + 1) / (p + 1) for j, p in enumerate(pos)) / len(pos))
        inps.append(len(pos) / (pos[-1] + 1))
    if not rows:
        return None
    return np.sum(rows, axis=0) / len(rows), float(np.mean(aps)), float(np.mean(inps)), len(rows)


