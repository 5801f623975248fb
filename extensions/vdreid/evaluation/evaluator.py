"""Protocol runner: features of every query/gallery image once, metrics per trial, mean/std, provenance JSON.

A :class:`vdreid.data.Protocol` names the query indices, one gallery index array per trial, and through
:meth:`~vdreid.data.Protocol.eval_kwargs` everything the metrics need (CMC variant, excluded camera pairs, the
same-identity same-camera rule); the runner never looks at a dataset's name. Per trial the metrics are computed
exactly (:func:`vdreid.evaluation.evaluate_features`); the report gives per-trial values, the arithmetic mean (AGW
and DEEN average the 10 trials / RegDB splits the same way, ``docs/protocols.md``) and the population std.
"""

from __future__ import annotations

import json
import os
import os.path as osp
import platform
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vdreid.atomic import atomic_write
from vdreid.evaluation.approximate import ApproximateSearch, merge
from vdreid.evaluation.extract import extract_features
from vdreid.evaluation.ranking import evaluate_features
from vdreid.evaluation.visualize import plot_cmc
from vdreid.version import __version__

METRIC_KEYS = ("R1", "R5", "R10", "R20", "mAP", "mINP")


def _git_commit() -> str | None:
    here = osp.dirname(osp.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance_defaults() -> dict[str, Any]:
    """Package version, git commit (None outside a repository) and machine description."""
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return {"version": __version__, "git_commit": _git_commit(), "machine": machine}


def _trial_metrics(res: dict) -> dict[str, Any]:
    cmc = res["cmc"]

    def rk(k: int) -> float:
        return float(cmc[min(k, cmc.size) - 1] * 100.0)

    return {
        "R1": rk(1), "R5": rk(5), "R10": rk(10), "R20": rk(20),
        "mAP": float(res["mAP"] * 100.0), "mINP": float(res["mINP"] * 100.0),
        "num_valid_queries": int(res["num_valid_queries"]),
    }


@dataclass
class EvalReport:
    """Metrics of one protocol run, in percent. ``per_trial``: list of dicts (R1, R5, R10, R20, mAP, mINP,
    num_valid_queries); ``mean`` / ``std``: over trials (population std, ``ddof=0``); ``cmc_curves``: per trial;
    ``flip``: the features were flip test-time augmented (``extract_features(flip=True)``), recorded so such
    numbers are never compared with plain ones unflagged. ``approximate_index``: for approximate search, the index
    settings and what the indexes were built with (:func:`vdreid.evaluation.approximate.summarize`), else None."""

    protocol_name: str
    protocol_info: dict[str, Any]
    per_trial: list[dict[str, Any]]
    cmc_curves: list[np.ndarray]
    metric: str = "cosine"
    rerank: bool = False
    backend: str = "auto"
    wall_time_s: float = 0.0
    approximate: bool = False
    flip: bool = False
    approximate_index: dict[str, Any] | None = None
    mean: dict[str, float] = field(init=False)
    std: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        if not self.per_trial:
            raise ValueError("EvalReport needs at least one trial")
        self.mean = {k: float(np.mean([t[k] for t in self.per_trial])) for k in METRIC_KEYS}
        self.std = {k: float(np.std([t[k] for t in self.per_trial])) for k in METRIC_KEYS}

    @property
    def num_trials(self) -> int:
        return len(self.per_trial)

    @property
    def rank1(self) -> float:
        """Mean rank-1 over trials, percent."""
        return self.mean["R1"]

    @property
    def cmc_mean(self) -> np.ndarray:
        """Mean CMC curve over trials, percent."""
        return np.mean(np.stack(self.cmc_curves), 0) * 100.0

    def table(self) -> str:
        """Console table: one row per trial (when more than one), then mean and std; two decimals."""
        head = f"{'':>8}" + "".join(f"{k:>9}" for k in METRIC_KEYS) + f"{'valid q':>9}"
        lines = [f"protocol: {self.protocol_name} | metric={self.metric} rerank={self.rerank} flip={self.flip}",
                 head]
        if self.approximate:
            how = ""
            if self.approximate_index:
                how = " (" + ", ".join(f"{k} {v}" for k, v in self.approximate_index.items() if k != "built") + ")"
            lines.insert(1, f"APPROXIMATE: lists from a faiss HNSW/IVF index{how}, not comparable with exact metrics")
        if self.num_trials > 1:
            for i, t in enumerate(self.per_trial):
                lines.append(
                    f"{'trial ' + str(i):>8}" + "".join(f"{t[k]:9.2f}" for k in METRIC_KEYS)
                    + f"{t['num_valid_queries']:9d}"
                )
        lines.append(f"{'mean':>8}" + "".join(f"{self.mean[k]:9.2f}" for k in METRIC_KEYS))
        lines.append(f"{'std':>8}" + "".join(f"{self.std[k]:9.2f}" for k in METRIC_KEYS))
        return "\n".join(lines)

    def plot_cmc(self, path: str, title: str | None = None) -> str:
        """The mean CMC curve of this evaluation as a picture (matplotlib)."""
        return plot_cmc({self.protocol_name: self.cmc_mean}, path, title=title or f"CMC: {self.protocol_name}",
                        percent=True)

    def to_dict(self, **provenance: Any) -> dict[str, Any]:
        d: dict[str, Any] = {
            "protocol": self.protocol_name,
            "protocol_info": self.protocol_info,
            "num_trials": self.num_trials,
            "per_trial": self.per_trial,
            "mean": self.mean,
            "std": self.std,
            "cmc_mean": [float(x) for x in self.cmc_mean],
            "metric": self.metric,
            "rerank": self.rerank,
            "flip": self.flip,
            "backend": self.backend,
            "approximate": self.approximate,
            "approximate_index": self.approximate_index,
            "wall_time_s": self.wall_time_s,
        }
        prov = provenance_defaults()
        prov.update(provenance)
        d.update(prov)
        return d

    def to_json(self, path: str, **provenance: Any) -> str:
        """Write the report plus provenance (keyword arguments, e.g. feature_mode, seed, config_hash, recipe,
        model, selection, dataset, synthetic) as JSON, atomically (temporary file + rename)."""
        d = self.to_dict(**provenance)
        text = json.dumps(d, indent=2, default=_json_default)
        atomic_write(path, lambda f: f.write(text), binary=False)
        return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def run_protocol(
    protocol,
    qf,
    gf,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metric: str = "cosine",
    backend: str = "auto",
    rerank: bool = False,
    max_rank: int = 20,
    block_size: int | None = None,
    flip: bool = False,
    approximate: str | ApproximateSearch | None = None,
) -> EvalReport:
    """Evaluate every trial of ``protocol``. ``qf``/``gf`` (and ids) cover ALL of ``dataset.query`` /
    ``dataset.gallery``; ``protocol.query_of(t)`` and ``protocol.gallery_trials[t]`` index into them. The metric
    definitions come from ``protocol.eval_kwargs()``. ``flip`` only records that the features were flip
    test-time augmented (it changes no computation here). ``approximate``: None (exact), ``'hnsw'`` / ``'ivf'``
    or an :class:`~vdreid.evaluation.approximate.ApproximateSearch` with the index settings (as
    ``vdreid.builders.engine_kwargs`` builds it from the ``test.*`` keys); the report records them."""
    t0 = time.perf_counter()
    qf = qf.detach().cpu().numpy() if isinstance(qf, torch.Tensor) else np.asarray(qf)
    gf = gf.detach().cpu().numpy() if isinstance(gf, torch.Tensor) else np.asarray(gf)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    for name, arr, n in (("q_pids", q_pids, len(qf)), ("q_camids", q_camids, len(qf)),
                         ("g_pids", g_pids, len(gf)), ("g_camids", g_camids, len(gf))):
        if arr.shape != (n,):
            raise ValueError(f"run_protocol: {name} has shape {arr.shape}, expected ({n},) like its features")
    q = protocol.query
    kwargs = protocol.eval_kwargs()
    if q.size and (q.min() < 0 or q.max() >= len(qf)):
        raise ValueError(
            f"protocol {protocol.name!r}: query indices outside 0..{len(qf) - 1} (pass all of dataset.query)"
        )
    approximate = ApproximateSearch.of(approximate)
    per_trial, curves, ran, indexes = [], [], [], []
    for t, g in enumerate(protocol.gallery_trials):
        if g.min() < 0 or g.max() >= len(gf):
            raise ValueError(
                f"protocol {protocol.name!r}: gallery trial {t} indexes outside 0..{len(gf) - 1} "
                "(pass the features of the whole dataset.gallery)"
            )
        qt = protocol.query_of(t)
        res = evaluate_features(
            qf[qt], gf[g], q_pids[qt], g_pids[g], q_camids[qt], g_camids[g], metric=metric, backend=backend,
            block_size=block_size, max_rank=max_rank, rerank=rerank, approximate=approximate, **kwargs,
        )
        ran.append((res.get("backend", backend), bool(res.get("approximate", False))))
        indexes.append(res.get("approximate_index"))
        per_trial.append(_trial_metrics(res))
        curves.append(res["cmc"])
    # what actually ran (e.g. 'torch:cpu', 'faiss:cuda+torch:cuda'), and whether any list was approximate
    engines = "/".join(sorted({b for b, _ in ran}))
    return EvalReport(
        protocol.name, protocol.describe(), per_trial, curves, metric=metric, rerank=rerank,
        backend=engines, approximate=any(a for _, a in ran), wall_time_s=time.perf_counter() - t0, flip=bool(flip),
        approximate_index=merge(indexes),
    )


def evaluate_model(
    model: torch.nn.Module,
    query_loader,
    gallery_loader,
    protocol,
    device: str | torch.device = "cpu",
    ir_camids=frozenset(),
    metric: str = "cosine",
    backend: str = "auto",
    rerank: bool = False,
    amp_dtype: torch.dtype | None = None,
    flip: bool = False,
) -> EvalReport:
    """Extract the query and gallery features once (flip test-time augmented when ``flip``), then
    :func:`run_protocol` (wall time includes extraction)."""
    t0 = time.perf_counter()
    qf, qp, qc, _ = extract_features(model, query_loader, device, ir_camids, amp_dtype, desc="query features",
                                     flip=flip)
    gf, gp, gc, _ = extract_features(model, gallery_loader, device, ir_camids, amp_dtype, desc="gallery features",
                                     flip=flip)
    rep = run_protocol(protocol, qf, gf, qp, gp, qc, gc, metric=metric, backend=backend, rerank=rerank, flip=flip)
    rep.wall_time_s = time.perf_counter() - t0
    return rep
