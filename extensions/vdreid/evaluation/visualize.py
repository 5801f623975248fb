"""Ranked-list pictures (torchreid's ``visualize_ranked_results``) and CMC curve plots (matplotlib)."""

from __future__ import annotations

import os
import os.path as osp
import shutil
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from vdreid import compat
from vdreid.errors import EvaluationInputError
from vdreid.evaluation.features import METRICS
from vdreid.evaluation.knn import search
from vdreid.evaluation.metrics import same_camera_removal


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
    """Ranked lists from a distance matrix you computed yourself; for a protocol's features use
    :func:`save_ranked_lists_for_protocol` (faiss top-k, no Q x G matrix).

    ``query_items`` / ``gallery_items``: torchreid tuples ``(img_path, pid, camid, ...)`` aligned with the rows /
    columns of ``distmat`` (Q, G). Order: ascending distance, ties by gallery index; gallery items excluded for a
    query (``exclude_cam_pairs``) are left out. Drawn by :func:`_draw` (torchreid's ``visualize_ranked_results``).
    """
    dm = np.asarray(distmat, dtype=np.float64)
    if dm.ndim != 2 or dm.shape != (len(query_items), len(gallery_items)):
        raise EvaluationInputError(
            f"distmat has shape {dm.shape}, expected ({len(query_items)}, {len(gallery_items)}) = (#query_items, "
            "#gallery_items)"
        )
    if not np.all(np.isfinite(dm)):
        raise EvaluationInputError("distmat contains NaN/inf entries")
    _check_topk(topk)
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
    return _draw(ranks, query_items[:n], gallery_items, save_dir, topk, width, height)


def _check_topk(topk) -> None:
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise EvaluationInputError(f"topk must be a positive integer, got {topk!r}")


def _draw(ranks: np.ndarray, query_items: Sequence[tuple], gallery_items: Sequence[tuple], save_dir: str,
          topk: int, width: int, height: int) -> list[str]:
    """The one drawing path: torchreid's ``visualize_ranked_results`` on ``ranks`` (Q, G): the 0-based place of
    each gallery item in a query's list, inf for items not in it (torchreid's argsort puts them last).

    torchreid names each picture by the query file's basename, which repeats in SYSU-MM01 (``cam3/0001/0001.jpg``
    and ``cam6/0001/0001.jpg``), so queries are passed through uniquely named links
    (``q<index>_p<pid>_c<camid>_<file>``) and every query gets its own file. Returns the written paths."""
    os.makedirs(save_dir, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="vdreid_ranked_") as tmp:
        queries = []
        for i, it in enumerate(query_items):
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
    backend: str = "auto",
    width: int = 128,
    height: int = 256,
) -> list[str]:
    """Ranked-list pictures of one trial (default: trial 0) of ``protocol`` from already extracted features.

    ``qf`` / ``gf`` and ``query_items`` / ``gallery_items`` cover all of ``dataset.query`` / ``dataset.gallery``
    (as for ``run_protocol``). Each query's exact top-``topk`` comes from :func:`vdreid.evaluation.search` (faiss
    when installed; the evaluation's distance definitions, ties by gallery index) with the protocol's rules
    applied: excluded camera pairs and the same-identity same-camera removal (``protocol.eval_kwargs()``) never
    appear. torchreid's drawer skips gallery items with the query's pid and camid, so those are left out of the
    search too. ``max_queries`` limits the number of pictures (the first queries of the trial)."""
    if not 0 <= trial < protocol.num_trials:
        raise EvaluationInputError(f"trial must be in 0..{protocol.num_trials - 1}, got {trial}")
    if metric not in METRICS:
        raise EvaluationInputError(f"metric must be one of {METRICS}, got {metric!r}")
    _check_topk(topk)
    qf = qf.detach().cpu().numpy() if isinstance(qf, torch.Tensor) else np.asarray(qf)
    gf = gf.detach().cpu().numpy() if isinstance(gf, torch.Tensor) else np.asarray(gf)
    q_all = protocol.query_of(trial) if hasattr(protocol, "query_of") else protocol.query
    q_idx = q_all if max_queries is None else q_all[: int(max_queries)]
    g_idx = protocol.gallery_trials[trial]
    q_items = [query_items[i] for i in q_idx]
    g_items = [gallery_items[i] for i in g_idx]
    qp = np.array([int(it[1]) for it in q_items], np.int64)
    qc = np.array([int(it[2]) for it in q_items], np.int64)
    gp = np.array([int(it[1]) for it in g_items], np.int64)
    gc = np.array([int(it[2]) for it in g_items], np.int64)
    kw = protocol.eval_kwargs() if hasattr(protocol, "eval_kwargs") else {
        "exclude_cam_pairs": protocol.exclude_cam_pairs}
    removal = same_camera_removal(qc, gc, bool(kw.get("remove_same_pid_same_cam", False)),
                                  kw.get("physical_camera"))
    exclude = []
    for i in range(qp.size):
        drop = (gp == qp[i]) & (gc == qc[i])  # torchreid's drawer skips these
        if removal is not None:
            drop |= (gp == qp[i]) & (removal[1] == removal[0][i])
        exclude.append(np.nonzero(drop)[0])
    res = search(qf[q_idx], gf[g_idx], min(int(topk), g_idx.size), metric=metric, backend=backend, q_camids=qc,
                 g_camids=gc, exclude_cam_pairs=kw.get("exclude_cam_pairs", ()), exclude=exclude)
    ranks = np.full((qp.size, g_idx.size), np.inf)
    r, c = np.nonzero(res.indices >= 0)
    ranks[r, res.indices[r, c]] = c
    shown = int((res.indices >= 0).sum(1).min()) if qp.size else 0
    if shown == 0:
        raise EvaluationInputError(f"protocol {protocol.name!r} trial {trial}: a query has no gallery item to show")
    return _draw(ranks, q_items, g_items, save_dir, min(int(topk), shown), width, height)


def cmc_percent(curve, percent: bool | None = None) -> np.ndarray:
    """A CMC curve in percent. ``percent``: True (already percent), False (fractions) or None (guess: fractions
    when no value exceeds 1). Raises ``ValueError`` for an empty curve or NaN/inf."""
    c = np.asarray(curve, dtype=np.float64).ravel()
    if c.size == 0 or not np.all(np.isfinite(c)):
        raise ValueError("a CMC curve is empty or has NaN/inf")
    fractions = c.max() <= 1.0 if percent is None else not percent
    return c * 100.0 if fractions else c


def plot_cmc(curves: Mapping[str, np.ndarray], path: str, title: str = "CMC", percent: bool | None = None) -> str:
    """One CMC curve per label as a PNG/PDF at ``path`` (matplotlib, Agg backend): the one CMC plotter
    (``EvalReport.plot_cmc`` and ``vdreid.tools.plots.plot_cmc_runs`` draw through it). ``percent``: the curves are
    in percent (True), fractions (False) or either, guessed per curve (None, see :func:`cmc_percent`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("plot_cmc needs at least one curve")
    fig, ax = plt.subplots(figsize=(5, 4))
    ys = {}
    for label, c in curves.items():
        try:
            ys[label] = cmc_percent(c, percent)
        except ValueError:
            plt.close(fig)
            raise ValueError(f"CMC curve {label!r} is empty or has NaN/inf") from None
    for label, y in ys.items():
        ax.plot(np.arange(1, y.size + 1), y, marker="o", markersize=3, label=f"{label} (R1 {y[0]:.2f}%)")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9 if "\n" in title else None)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
