"""Settings of the approximate faiss indexes (HNSW, IVF) behind ``approximate=`` search and evaluation.

Exact search is the default everywhere; an approximate index is for galleries too large for it. Two kinds:

* ``'hnsw'``: ``faiss.IndexHNSWFlat`` with ``hnsw_m`` links per node (faiss's ``M``) searched with a beam of
  ``ef_search`` (``efSearch``): a larger beam finds more true neighbours and costs more.
* ``'ivf'``: ``faiss.IndexIVFFlat`` with ``nlist`` lists (k-means cells of the gallery); a query scans the items of
  its ``nprobe`` nearest lists. ``nprobe >= nlist`` scans every list: the exact lists, at flat-index cost.

Sizing IVF to the gallery: faiss's k-means wants at least 39 training points per list (its
``ClusteringParameters.min_points_per_centroid``) and prints a warning to stderr below that. A protocol's gallery
(SYSU-MM01: about 300 items per trial and camera group) is often far smaller than one ``nlist`` suits, so
``nlist=0`` ("auto") takes ``min(N // 39, 4 sqrt(N))`` lists (at least one) for each gallery of N items. An
explicit ``nlist`` larger than that is kept (at most N): its lists are trained on fewer points than faiss asks for,
which places them roughly and may lose recall; vdreid says so once in the log instead of faiss's warning.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vdreid.errors import EvaluationInputError

logger = logging.getLogger(__name__)

APPROXIMATE = ("hnsw", "ivf")
#: training points per IVF list below which faiss's k-means warns (faiss ``ClusteringParameters``)
MIN_POINTS_PER_LIST = 39
_SETTINGS = ("nlist", "nprobe", "hnsw_m", "ef_search")
_noted: set[str] = set()


def _note(message: str, level: int = logging.WARNING) -> None:
    """Log ``message`` once per process (an evaluation builds one index per trial and camera group)."""
    if message not in _noted:
        _noted.add(message)
        logger.log(level, message)


def auto_nlist(n: int) -> int:
    """IVF lists for a gallery of ``n`` items: ``min(n // 39, 4 sqrt(n))``, at least 1 (every list trained on at
    least 39 points; about ``4 sqrt(n)`` lists for large galleries, faiss's usual starting point)."""
    return max(1, min(n // MIN_POINTS_PER_LIST, int(4 * math.sqrt(n))))


@dataclass(frozen=True)
class ApproximateSearch:
    """Which approximate index to build and how (see the module doc).

    Args:
        kind: ``'hnsw'`` or ``'ivf'`` [``test.approximate``].
        nlist: IVF lists; 0 sizes them to each gallery (:func:`auto_nlist`) [``test.ivf_nlist``].
        nprobe: IVF lists scanned per query (at most ``nlist``) [``test.ivf_nprobe``].
        hnsw_m: HNSW links per node, faiss's ``M`` [``test.hnsw_m``].
        ef_search: HNSW search beam, faiss's ``efSearch`` [``test.hnsw_ef_search``].
    """

    kind: str
    nlist: int = 0
    nprobe: int = 32
    hnsw_m: int = 32
    ef_search: int = 256

    def __post_init__(self) -> None:
        if self.kind not in APPROXIMATE:
            raise EvaluationInputError(f"approximate must be None or one of {APPROXIMATE}, got {self.kind!r}")
        lows = {"nlist": 0, "nprobe": 1, "hnsw_m": 2, "ef_search": 1}
        for name, lo in lows.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise EvaluationInputError(f"approximate index setting {name} must be an integer >= {lo}, got {v!r}")

    @classmethod
    def of(cls, value: Any, **settings: int | None) -> ApproximateSearch | None:
        """``value``: None or ``''`` (exact search: None), a kind (``'hnsw'`` / ``'ivf'``), a mapping of the fields
        or an :class:`ApproximateSearch`; ``settings`` that are not None replace its fields."""
        given = {k: v for k, v in settings.items() if v is not None}
        unknown = sorted(set(given) - set(_SETTINGS))
        if unknown:
            raise EvaluationInputError(f"unknown approximate index settings {unknown}; expected some of {_SETTINGS}")
        if value is None or value == "":
            return None
        if isinstance(value, ApproximateSearch):
            return dataclasses.replace(value, **given) if given else value
        if isinstance(value, str):
            return cls(value, **given)
        if isinstance(value, Mapping):
            fields = {f.name for f in dataclasses.fields(cls)}
            bad = sorted(set(value) - fields)
            if bad:
                raise EvaluationInputError(
                    f"unknown approximate index settings {bad}; expected some of {sorted(fields)}"
                )
            return cls(**{**value, **given})
        raise EvaluationInputError(
            f"approximate must be None, one of {APPROXIMATE}, a mapping or an ApproximateSearch, got {value!r}"
        )

    def ivf_lists(self, n: int) -> tuple[int, int]:
        """(nlist, nprobe) of an IVF index over ``n`` gallery items, explaining in the log (once) a gallery too
        small for the configured ``nlist``."""
        if self.nlist == 0:
            nlist = auto_nlist(n)
            if n < MIN_POINTS_PER_LIST:
                _note(f"IVF index over fewer than {MIN_POINTS_PER_LIST} gallery items: one list, which every query "
                      "scans (exact lists at this size)", logging.INFO)
        else:
            nlist = min(self.nlist, n)
            if nlist < self.nlist:
                _note(f"IVF nlist {self.nlist} is more than the {n} items of a gallery: {n} lists there (one item "
                      "each)")
            elif n < MIN_POINTS_PER_LIST * nlist:
                _note(f"IVF nlist {self.nlist} wants galleries of at least {MIN_POINTS_PER_LIST * self.nlist} items "
                      f"({MIN_POINTS_PER_LIST} training points per list, faiss's minimum); smaller galleries get "
                      "roughly placed lists and may lose recall (nlist 0 sizes the lists to each gallery: N // "
                      f"{MIN_POINTS_PER_LIST})")
        return nlist, min(self.nprobe, nlist)

    def settings(self) -> dict[str, Any]:
        """The settings of this kind, for provenance (``nlist: 'auto'`` when sized to each gallery)."""
        if self.kind == "hnsw":
            return {"kind": "hnsw", "hnsw_m": self.hnsw_m, "ef_search": self.ef_search}
        return {"kind": "ivf", "nlist": self.nlist or "auto", "nprobe": self.nprobe}


def summarize(settings: Mapping[str, Any] | None, built: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Provenance of the approximate indexes of an evaluation: the requested ``settings`` plus, under ``built``,
    the number of indexes and ``[min, max]`` of each value they were built with (gallery items, lists, probes, ...)."""
    if settings is None:
        return None
    keys = sorted({k for b in built for k, v in b.items() if isinstance(v, int) and not isinstance(v, bool)})
    out: dict[str, Any] = {"indexes": len(built)}
    for k in keys:
        vals = [int(b[k]) for b in built if k in b]
        out[k] = [min(vals), max(vals)]
    return {**settings, "built": out}


def merge(summaries: list[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """One :func:`summarize` record from several (the trials of a protocol): indexes added, ranges widened."""
    given = [s for s in summaries if s is not None]
    if not given:
        return None
    built: dict[str, Any] = {"indexes": sum(int(s["built"]["indexes"]) for s in given)}
    keys = sorted({k for s in given for k in s["built"] if k != "indexes"})
    for k in keys:
        ranges = [s["built"][k] for s in given if k in s["built"]]
        built[k] = [min(r[0] for r in ranges), max(r[1] for r in ranges)]
    return {**{k: v for k, v in given[0].items() if k != "built"}, "built": built}


__all__ = ["APPROXIMATE", "MIN_POINTS_PER_LIST", "ApproximateSearch", "auto_nlist", "merge", "summarize"]
