"""Evaluation protocols as data (DESIGN principle 2).

A :class:`Protocol` says which images of ``dataset.query`` are queries, which images of ``dataset.gallery``
form the gallery of each trial, which (query camera, gallery camera) pairs are excluded, and which CMC
variant applies. Loaders build it; the evaluator consumes it and never needs to know dataset names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

CMCMode = Literal["dedup", "standard"]


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    Attributes:
        name: human-readable protocol string, e.g. ``"sysu/all/single-shot/agw/10 trials"``.
        query: indices into ``dataset.query`` (int64, 1-D).
        gallery_trials: one int64 index array into ``dataset.gallery`` per trial.
        exclude_cam_pairs: 0-based ``(query_camid, gallery_camid)`` pairs whose gallery items are removed
            for that query (SYSU: ``((2, 1),)`` = cam3 queries never see cam2).
        cmc_mode: ``'dedup'`` (SYSU: first occurrence of each identity only) or ``'standard'``.
        trial_seeds: what identifies each trial (AGW seed, official permutation row, RegDB split), for provenance.
        info: free-form provenance (search mode, shots, sampler, ...), copied into results JSON.
    """

    name: str
    query: np.ndarray
    gallery_trials: list[np.ndarray]
    exclude_cam_pairs: tuple[tuple[int, int], ...] = ()
    cmc_mode: CMCMode = "dedup"
    trial_seeds: tuple[int, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cmc_mode not in ("dedup", "standard"):
            raise ValueError(f"Protocol.cmc_mode must be 'dedup' or 'standard', got {self.cmc_mode!r}")
        q = np.asarray(self.query)
        if q.ndim != 1 or q.size == 0 or not np.issubdtype(q.dtype, np.integer):
            raise ValueError(
                f"Protocol {self.name!r}: query must be a non-empty 1-D integer array, got {q.shape} {q.dtype}"
            )
        object.__setattr__(self, "query", q.astype(np.int64))
        if len(self.gallery_trials) == 0:
            raise ValueError(f"Protocol {self.name!r}: needs at least one gallery trial")
        trials = []
        for t, g in enumerate(self.gallery_trials):
            g = np.asarray(g)
            if g.ndim != 1 or g.size == 0 or not np.issubdtype(g.dtype, np.integer):
                raise ValueError(f"Protocol {self.name!r}: gallery trial {t} must be a non-empty 1-D integer array")
            trials.append(g.astype(np.int64))
        object.__setattr__(self, "gallery_trials", trials)
        pairs = tuple((int(a), int(b)) for a, b in self.exclude_cam_pairs)
        object.__setattr__(self, "exclude_cam_pairs", pairs)
        if self.trial_seeds and len(self.trial_seeds) != len(trials):
            raise ValueError(f"Protocol {self.name!r}: {len(self.trial_seeds)} trial seeds for {len(trials)} trials")

    @property
    def num_trials(self) -> int:
        return len(self.gallery_trials)

    def gallery_union(self) -> np.ndarray:
        """Sorted indices of every gallery image used by any trial (extract each once)."""
        return np.unique(np.concatenate(self.gallery_trials))

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for provenance records."""
        return {
            "name": self.name,
            "num_query": int(self.query.size),
            "num_trials": self.num_trials,
            "gallery_sizes": [int(g.size) for g in self.gallery_trials],
            "exclude_cam_pairs": [list(p) for p in self.exclude_cam_pairs],
            "cmc_mode": self.cmc_mode,
            "trial_seeds": list(self.trial_seeds),
            **self.info,
        }
