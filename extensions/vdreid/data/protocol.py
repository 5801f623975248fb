"""Evaluation protocols as data (DESIGN principle 2).

A :class:`Protocol` says which images of ``dataset.query`` are queries, which images of ``dataset.gallery``
form the gallery of each trial, which gallery items are removed for a query (camera pairs, the same-identity
same-camera rule) and which CMC variant applies. Loaders build it; the evaluator takes
:meth:`Protocol.eval_kwargs` and never needs to know dataset names. ``docs/protocols.md`` describes the
protocols of SYSU-MM01, RegDB and LLCM.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from vdreid.errors import ConfigError

CMCMode = Literal["dedup", "standard"]

#: search directions, named by the query modality first: ``ir2vis`` = infrared queries, visible gallery
DIRECTIONS: tuple[str, ...] = ("ir2vis", "vis2ir")
#: other spellings accepted on input (RegDB's ``v2t`` / ``t2v``, the thermal camera being its infrared one)
DIRECTION_ALIASES: dict[str, str] = {"v2t": "vis2ir", "t2v": "ir2vis", "rgb2ir": "vis2ir", "ir2rgb": "ir2vis"}


def canonical_direction(value: str, owner: str, extra: Iterable[str] = ()) -> str:
    """``value`` as one of :data:`DIRECTIONS` (or of ``extra``, a dataset's own variants); aliases are mapped.

    Raises :class:`~vdreid.errors.ConfigError` (a ``ValueError``) naming ``owner`` and the accepted values otherwise.
    """
    extra = tuple(extra)
    v = DIRECTION_ALIASES.get(value, value) if isinstance(value, str) else value
    if v not in DIRECTIONS + extra:
        accepted = list(DIRECTIONS + extra) + sorted(DIRECTION_ALIASES)
        raise ConfigError(f"{owner}: unknown direction={value!r}; expected one of {accepted}")
    return v


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    Attributes:
        name: human-readable protocol string, ``<dataset>/<direction>/...``, e.g.
            ``"sysu/ir2vis/all/single-shot/agw/10 trials"``; results are only ever compared under equal strings.
        query: indices into ``dataset.query`` (int64, 1-D): the queries of every trial, or, with ``query_trials``,
            the union of the per-trial query sets (what must be extracted).
        gallery_trials: one int64 index array into ``dataset.gallery`` per trial.
        exclude_cam_pairs: 0-based ``(query_camid, gallery_camid)`` pairs whose gallery items are removed
            for that query (SYSU: ``((2, 1),)`` = cam3 queries never see cam2).
        cmc_mode: ``'dedup'`` (SYSU, LLCM: first occurrence of each identity only) or ``'standard'``.
        trial_seeds: what identifies each trial (AGW seed, official permutation row, RegDB split), for provenance.
        info: free-form provenance (direction, search mode, shots, sampler, ...), copied into results JSON.
        remove_same_pid_same_cam: for each query, gallery items of the same identity seen by the same camera are
            removed (LLCM; ``docs/protocols.md``, "LLCM").
        physical_camera: camid -> physical camera, for the rule above only (LLCM: the visible and near-infrared
            sensor of one camera have different camids but are one camera); camids not listed map to themselves.
        query_trials: one query index array per trial when the queries are re-drawn per trial (LLCM's swapped
            "test.py" variant); ``None``: ``query`` in every trial.
    """

    name: str
    query: np.ndarray
    gallery_trials: list[np.ndarray]
    exclude_cam_pairs: tuple[tuple[int, int], ...] = ()
    cmc_mode: CMCMode = "dedup"
    trial_seeds: tuple[int, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    remove_same_pid_same_cam: bool = False
    physical_camera: Mapping[int, int] | None = None
    query_trials: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.cmc_mode not in ("dedup", "standard"):
            raise ValueError(f"Protocol.cmc_mode must be 'dedup' or 'standard', got {self.cmc_mode!r}")
        object.__setattr__(self, "query", self._indices(self.query, "query"))
        if len(self.gallery_trials) == 0:
            raise ValueError(f"Protocol {self.name!r}: needs at least one gallery trial")
        trials = [self._indices(g, f"gallery trial {t}") for t, g in enumerate(self.gallery_trials)]
        object.__setattr__(self, "gallery_trials", trials)
        pairs = tuple((int(a), int(b)) for a, b in self.exclude_cam_pairs)
        object.__setattr__(self, "exclude_cam_pairs", pairs)
        if self.trial_seeds and len(self.trial_seeds) != len(trials):
            raise ValueError(f"Protocol {self.name!r}: {len(self.trial_seeds)} trial seeds for {len(trials)} trials")
        object.__setattr__(self, "remove_same_pid_same_cam", bool(self.remove_same_pid_same_cam))
        if self.physical_camera is not None:
            phys = {int(k): int(v) for k, v in dict(self.physical_camera).items()}
            object.__setattr__(self, "physical_camera", phys)
        if self.query_trials is not None:
            qt = [self._indices(q, f"query trial {t}") for t, q in enumerate(self.query_trials)]
            if len(qt) != len(trials):
                raise ValueError(f"Protocol {self.name!r}: {len(qt)} query trials for {len(trials)} gallery trials")
            if not np.all(np.isin(np.concatenate(qt), self.query)):
                raise ValueError(f"Protocol {self.name!r}: query must hold every index of query_trials")
            object.__setattr__(self, "query_trials", qt)

    def _indices(self, x: Any, what: str) -> np.ndarray:
        a = np.asarray(x)
        if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(
                f"Protocol {self.name!r}: {what} must be a non-empty 1-D integer array, got {a.shape} {a.dtype}"
            )
        return a.astype(np.int64)

    @property
    def num_trials(self) -> int:
        return len(self.gallery_trials)

    @property
    def direction(self) -> str | None:
        """The search direction (``'ir2vis'``, ``'vis2ir'``, or a dataset's own variant), from ``info``."""
        return self.info.get("direction")

    def query_of(self, trial: int) -> np.ndarray:
        """Query indices of trial ``trial``."""
        return self.query if self.query_trials is None else self.query_trials[trial]

    def eval_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`vdreid.evaluation.evaluate` / :func:`~vdreid.evaluation.evaluate_features`
        that define this protocol's metrics: CMC variant, camera-pair exclusions, the same-pid-same-camera rule."""
        return {
            "cmc_mode": self.cmc_mode,
            "exclude_cam_pairs": self.exclude_cam_pairs,
            "remove_same_pid_same_cam": self.remove_same_pid_same_cam,
            "physical_camera": None if self.physical_camera is None else dict(self.physical_camera),
        }

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for provenance records."""
        out = {
            "name": self.name,
            "num_query": int(self.query.size),
            "num_trials": self.num_trials,
            "gallery_sizes": [int(g.size) for g in self.gallery_trials],
            "exclude_cam_pairs": [list(p) for p in self.exclude_cam_pairs],
            "cmc_mode": self.cmc_mode,
            "remove_same_pid_same_cam": self.remove_same_pid_same_cam,
            "trial_seeds": list(self.trial_seeds),
            **self.info,
        }
        if self.physical_camera is not None:
            out["physical_camera"] = {str(k): v for k, v in sorted(self.physical_camera.items())}
        if self.query_trials is not None:
            out["query_sizes"] = [int(q.size) for q in self.query_trials]
        return out
