"""Ranked-list pictures (torchreid's ``visualize_ranked_results``) and CMC curve plots (matplotlib)."""

from __future__ import annotations

import os
import os.path as osp
import shutil
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from vdreid import compat


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.symlink(osp.abspath(src), dst)
    except (OSError, NotImplementedError):  # no symlinks (e.g. Windows without privilege)
        shutil.copyfile(src, dst)


def save_ranked_lists(
    distmat,
    query_items: Sequence[tuple],
    gallery_items: Sequence[tuple],
    save_dir: str,
    topk: int = 10,
    exclude_cam_pairs: Sequence[Sequence[int]] = (),
    max_queries: int | None = None,
    width: int = 128,
    height: int = 256,
) -> list[str]:
    """Draw each query's top-``topk`` gallery images with torchreid's ``visualize_ranked_results``.

    ``query_items`` / ``gallery_items``: torchreid tuples ``(img_path, pid, camid, ...)`` aligned with the rows /
    columns of ``distmat`` (Q, G). The order drawn is ours (ascending distance, ties by gallery index); gallery
    items excluded for a query (``exclude_cam_pairs``) are pushed past the end. torchreid names each picture by
    the query file's basename, which repeats in SYSU-MM01 (``cam3/0001/0001.jpg`` and ``cam6/0001/0001.jpg``), so
    queries are passed through uniquely named links (``q<index>_p<pid>_c<camid>_<file>``) and every query gets its
    own file. Returns the written paths.
    """
    dm = np.asarray(distmat, dtype=np.float64)
    if dm.ndim != 2 or dm.shape != (len(query_items), len(gallery_items)):
        raise ValueError(
            f"distmat has shape {dm.shape}, expected ({len(query_items)}, {len(gallery_items)}) = (#query_items, "
            "#gallery_items)"
        )
    if not np.all(np.isfinite(dm)):
        raise ValueError("distmat contains NaN/inf entries")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    n = dm.shape[0] if max_queries is None else min(dm.shape[0], int(max_queries))
    dm = dm[:n]
    # our order: stable ranks as distances, so torchreid's (unstable) argsort reproduces it exactly
    order = np.argsort(dm, axis=1, kind="stable")
    ranks = np.empty_like(dm)
    np.put_along_axis(ranks, order, np.arange(dm.shape[1], dtype=np.float64)[None, :].repeat(n, 0), axis=1)
    q_cam = np.array([int(it[2]) for it in query_items[:n]])
    g_cam = np.array([int(it[2]) for it in gallery_items])
    for qc, gc in exclude_cam_pairs:
        ranks[np.ix_(q_cam == qc, g_cam == gc)] = np.inf
    os.makedirs(save_dir, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="vdreid_ranked_") as tmp:
        queries = []
        for i, it in enumerate(query_items[:n]):
            path, pid, cam = it[0], int(it[1]), int(it[2])
            name = f"q{i:05d}_p{pid}_c{cam}_{_safe(osp.basename(path))}"
            _link_or_copy(path, osp.join(tmp, name))
            queries.append((osp.join(tmp, name), pid, cam, *it[3:]))
            written.append(osp.join(save_dir, osp.splitext(name)[0] + ".jpg"))
        gallery = [tuple(it) for it in gallery_items]
        compat.visualize_ranked_results(
            ranks, (queries, gallery), "image", width=width, height=height, save_dir=save_dir, topk=topk
        )
    missing = [p for p in written if not osp.isfile(p)]
    if missing:
        raise RuntimeError(f"{len(missing)} ranked-list pictures were not written, e.g. {missing[0]}")
    return written


def save_ranked_lists_for_protocol(
    protocol,
    qf,
    gf,
    query_items: Sequence[tuple],
    gallery_items: Sequence[tuple],
    save_dir: str,
    topk: int = 10,
    metric: str = "cosine",
    trial: int = 0,
    max_queries: int | None = None,
) -> list[str]:
    """Ranked lists of one trial (default: trial 0) of ``protocol``. ``qf`` / ``gf`` and ``query_items`` /
    ``gallery_items`` cover all of ``dataset.query`` / ``dataset.gallery`` (as for ``run_protocol``); the trial's
    distances are computed densely in float64 (the evaluator's definitions), so use ``max_queries`` for huge sets."""
    import torch

    if not 0 <= trial < protocol.num_trials:
        raise ValueError(f"trial must be in 0..{protocol.num_trials - 1}, got {trial}")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    qf = qf.detach().cpu().numpy() if isinstance(qf, torch.Tensor) else np.asarray(qf)
    gf = gf.detach().cpu().numpy() if isinstance(gf, torch.Tensor) else np.asarray(gf)
    q_idx = protocol.query if max_queries is None else protocol.query[: int(max_queries)]
    g_idx = protocol.gallery_trials[trial]
    q, g = qf[q_idx].astype(np.float64), gf[g_idx].astype(np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1), 1e-12)[:, None]
        g = g / np.maximum(np.linalg.norm(g, axis=1), 1e-12)[:, None]
        dist = -(q @ g.T)
    else:
        dist = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * (q @ g.T)
    return save_ranked_lists(
        dist, [query_items[i] for i in q_idx], [gallery_items[i] for i in g_idx], save_dir, topk=topk,
        exclude_cam_pairs=protocol.exclude_cam_pairs,
    )


def plot_cmc(curves: Mapping[str, np.ndarray], path: str, title: str = "CMC") -> str:
    """One CMC curve per label (fractions or percent) as a PNG/PDF at ``path`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("plot_cmc needs at least one curve")
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, c in curves.items():
        c = np.asarray(c, dtype=np.float64).ravel()
        if c.size == 0 or not np.all(np.isfinite(c)):
            raise ValueError(f"CMC curve {label!r} is empty or has NaN/inf")
        y = c * 100.0 if c.max() <= 1.0 else c
        ax.plot(np.arange(1, c.size + 1), y, marker="o", markersize=3, label=f"{label} (R1 {y[0]:.2f}%)")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
