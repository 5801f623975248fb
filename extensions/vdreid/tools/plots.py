"""Plots from run outputs: CMC curves of several runs on one figure, training curves of every logged loss term.

Inputs are the files the engine and evaluator write: results JSON (``cmc_mean``: fractions 0..1 or percent, one
value per rank) and ``train_log.jsonl`` (one JSON object per epoch: ``epoch``, ``lr``, one key per loss term, ...).
"""

from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from vdreid.evaluation.visualize import plot_cmc  # noqa: E402

# keys of a train_log.jsonl line that are not loss terms
_NON_LOSS = {"epoch", "lr", "images_per_s", "time_s", "iterations", "iters", "num_images"}


def plot_cmc_runs(results: dict[str, str | Sequence[float]], path: str, title: str = "CMC",
                  percent: bool | None = None) -> str:
    """One figure with a CMC curve per run. ``results``: ``{label: results JSON path or CMC values}``; the runs'
    protocols are named under the title (with a warning when they differ). Drawn by the one CMC plotter,
    :func:`vdreid.evaluation.plot_cmc` (``percent``: as there; None guesses fractions or percent per curve)."""
    if not results:
        raise ValueError("plot_cmc_runs: no runs given")
    curves: dict[str, Sequence[float]] = {}
    protocols = set()
    for label, src in results.items():
        if isinstance(src, str):
            with open(src, encoding="utf-8") as f:
                d = json.load(f)
            if "cmc_mean" not in d:
                raise ValueError(f'plot_cmc_runs: "{src}" has no "cmc_mean" (not a vdreid results JSON?)')
            curves[label] = d["cmc_mean"]
            protocols.add(d.get("protocol", "?"))
        else:
            curves[label] = src
    sub = f"\n{'; '.join(sorted(protocols))}" if protocols else ""
    if len(protocols) > 1:
        sub += "  [different protocols: not comparable]"
    return plot_cmc(curves, path, title=title + sub, percent=percent)


def read_train_log(path: str) -> list[dict]:
    """The epochs of a ``train_log.jsonl`` (blank lines skipped; a malformed line is an error naming it)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not a JSON line ({exc})") from exc
    if not rows:
        raise ValueError(f"{path}: no epochs logged")
    return rows


def loss_terms(rows: list[dict]) -> list[str]:
    """Loss-term keys of the log: numeric, not bookkeeping, not evaluation metrics (``val/...``, ``test/...``)."""
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k in _NON_LOSS or "/" in k or k in keys:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    return keys


def plot_training_curves(log_path: str, path: str) -> str:
    """Every loss term per epoch (one panel each), plus the learning rate and any logged evaluation metric."""
    rows = read_train_log(log_path)
    terms = loss_terms(rows)
    metrics = sorted({k for r in rows for k in r if "/" in k})
    panels = terms + (["lr"] if any("lr" in r for r in rows) else []) + metrics
    n = len(panels)
    cols = min(4, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.5 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        pts = [(r.get("epoch", i + 1), r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
