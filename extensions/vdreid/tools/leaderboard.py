"""Leaderboard: our results JSON files beside the published numbers, one table per protocol string.

A row is ranked only against rows with the *same* protocol string (dataset, search direction, search mode, shots,
gallery draws, variant, number of trials or splits) and the same data kind. :func:`rank_rows` refuses a mixed list
outright, so no caller can rank different protocols against each other: a dataset's variant protocol (a swapped
``test.py`` form, ``<dataset>/vis2ir_swapped/...``) never shares a table with the natural one. Numbers computed with
flip test-time augmentation carry the ``flip-tta`` flag and column.

Everything the leaderboard knows about a dataset it asks the dataset registry (:mod:`vdreid.data.registry`): the
current spelling of an older protocol string (the family's ``canonical_protocol``), and whether the family has several
train/test splits (``split_key`` / ``split_values``).

Synthetic data never sits beside published numbers. A run is synthetic when its results JSON says so (the trainer
records ``synthetic: true`` for a tree written by ``vdreid make-synthetic``: the tree holds the generator's marker
file), or when a results JSON written before that rule says ``synthetic: false`` but the dataset folder it records
(``protocol_info.root``, or ``data.root`` of its config) still holds the marker: it is then read as synthetic and
flagged ``synthetic-by-marker``. Synthetic rows go to tables of their own (``synthetic data: <protocol>``), which
published rows never join (:func:`rank_rows` refuses such a table). A run whose config declared a marked tree real
(``data.synthetic false`` set explicitly; the results JSON records ``synthetic_override``) is ranked as real data and
flagged ``synthetic-override``.

Datasets with several train/test splits need one training per split. Results that differ only in the split (the
``trial`` provenance field and the split number in the protocol string) and share a config group are averaged into
one row: mean +/- std over the splits (population std, ``ddof=0``, as numpy and the AGW evaluator's averaging use),
protocol ``<dataset>/<dir>/N splits``.

Seeds: runs whose configuration differs only in ``train.seed`` / ``sampler.seed`` share the ``seed_group`` provenance
field (the config hash without the seeds and the split index). Such runs with the same protocol string, test set and
setting (test feature, re-ranking, recipe, model, flip, approximate search, selection; synthetic data root) form one
row: the mean over runs of each run's mean metric, +/- the population std over runs (the seed spread, not the
gallery-draw spread), with "N seeds (s1,s2,...)" in the trials column. For datasets with splits, seeds that each have
the same set of splits form one row: mean +/- std over seeds of each seed's split mean. Results without
``seed_group`` (written before it existed) stay rows of their own.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import os.path as osp
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from vdreid.data import registry as data_registry
from vdreid.data.base import VIImageDataset
from vdreid.data.synthetic_layout import is_synthetic_tree
from vdreid.errors import LeaderboardError

METRICS = ("R1", "R5", "R10", "R20", "mAP", "mINP")
_SPLIT_RE = re.compile(r"(?:split|trial)[ =_-]?(\d+)$")
FLIP_FLAG = "flip-tta"
#: a run of ours whose ranked lists came from an approximate index (HNSW/IVF): its numbers may be lower than exact
APPROX_FLAG = "approx-search"
#: a run of ours ranked by another distance than the default cosine (``test.dist_metric``): ``dist-<metric>``
METRIC_FLAG = "dist-"
#: a row of synthetic data whose results JSON said ``synthetic: false`` (written before the marker was read) while the
#: dataset folder it records holds the synthetic generator's marker
MARKER_FLAG = "synthetic-by-marker"
#: a run whose config declared a tree holding the synthetic marker real data (``data.synthetic false``, explicitly)
OVERRIDE_FLAG = "synthetic-override"
#: the title prefix of the tables of synthetic-data rows (never shared with published numbers)
SYNTHETIC_TABLE = "synthetic data: "


@dataclass
class Row:
    """One leaderboard line: a run of ours (``kind='ours'``) or a published number (``kind='published'``)."""

    method: str
    protocol: str
    kind: str  # ours | published
    mean: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    trials: str = ""
    feature_mode: str = ""
    rerank: bool = False
    recipe: str = ""
    model: str = ""
    commit: str = ""
    selection: str = ""
    synthetic: bool = False
    flags: list[str] = field(default_factory=list)
    source: str = ""
    #: features of the image and its horizontal flip combined (test-time augmentation); None: the source does not say
    flip: bool | None = False
    #: seeds of the runs averaged into this row (``train.seed``, or ``train/sampler`` when they differ); empty: one run
    seeds: list[str] = field(default_factory=list)

    @property
    def table_key(self) -> str:
        """The table a row belongs to: its protocol string, prefixed with ``synthetic data: `` for synthetic data.
        Published rows are never synthetic, so a synthetic row never shares a table with a published number."""
        return (SYNTHETIC_TABLE if self.synthetic else "") + self.protocol


# ------------------------------------------------------------------------------------------------ reading
def _as_percent(values: dict[str, Any], path: str) -> dict[str, float]:
    out = {}
    for k in METRICS:
        if k in values and values[k] is not None:
            v = float(values[k])
            if not math.isfinite(v) or v < 0 or v > 100:
                raise LeaderboardError(f'{path}: metric {k}={v} is not a percentage in [0, 100]')
            out[k] = v
    return out


def is_results_json(d: Any) -> bool:
    return isinstance(d, dict) and {"protocol", "mean", "per_trial"} <= set(d)


def find_results(paths: list[str]) -> list[dict[str, Any]]:
    """Every results JSON under the given files/folders (recursively); other JSON files are skipped."""
    found: list[dict[str, Any]] = []
    for p in paths:
        files = [p] if osp.isfile(p) else sorted(glob.glob(osp.join(p, "**", "*.json"), recursive=True))
        for fpath in files:
            try:
                with open(fpath, encoding="utf-8") as f:
                    d = json.load(f)
            except (OSError, json.JSONDecodeError):
                continue
            if is_results_json(d):
                d["_path"] = fpath
                found.append(d)
    return found


def _family(protocol: str) -> type[VIImageDataset] | None:
    """The registered dataset family that writes ``protocol`` (None for a protocol no registered dataset writes)."""
    return data_registry.family_of_protocol(protocol)


def _split_of(d: dict[str, Any]) -> int | None:
    """The split index of a result of a dataset family with several train/test splits (the family declares a
    ``split_key``): the ``trial`` provenance field (the trainer records the split index there), else the number
    ending the protocol string (``.../trial-3``). None for a family without splits."""
    fam = _family(str(d["protocol"]))
    if fam is None or not fam.split_key:
        return None
    if d.get("trial") is not None:
        return int(d["trial"])
    m = _SPLIT_RE.search(d["protocol"])
    return int(m.group(1)) if m else None


def _base_protocol(protocol: str) -> str:
    return _SPLIT_RE.sub("", protocol).rstrip("/")


def _splits_label(splits: list[int], family: type[VIImageDataset] | None) -> str:
    """``N splits`` when ``splits`` are every split the family declares (``split_values``), else the splits named."""
    s = sorted(splits)
    if family is not None and family.split_values and s == sorted(family.split_values):
        return f"{len(s)} splits"
    if len(s) > 1 and s == list(range(s[0], s[-1] + 1)):
        return f"splits {s[0]}-{s[-1]}"
    return "split " + ",".join(map(str, s)) if len(s) == 1 else "splits " + ",".join(map(str, s))


def _method_label(d: dict[str, Any]) -> str:
    """``ours: <model> <recipe>``; synthetic runs also name their data root (two synthetic trees are two test sets,
    and the table title cannot tell them apart)."""
    bits = [str(d.get("model") or "model?"), str(d.get("recipe") or "")]
    label = "ours: " + " ".join(b for b in bits if b)
    cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
    root = (cfg.get("data") or {}).get("root") if isinstance(cfg.get("data"), dict) else None
    return label + (f" (data: {root})" if d.get("synthetic") and root else "")


def _seed_of(d: dict[str, Any]) -> tuple[int | None, int | None]:
    """``(train.seed, sampler.seed)`` of a run (from its recorded config; ``seed`` provenance as a fallback)."""
    cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    sampler = cfg.get("sampler") if isinstance(cfg.get("sampler"), dict) else {}
    return train.get("seed", d.get("seed")), sampler.get("seed")


def _seed_label(seed: tuple[int | None, int | None]) -> str:
    t, s = seed
    return str(t) if s is None or s == t else f"{t}/{s}"


def _seed_sort(seed: tuple[int | None, int | None]) -> tuple[int, int]:
    return tuple(-1 if v is None else int(v) for v in seed)  # type: ignore[return-value]


def _setting_key(d: dict[str, Any]) -> tuple:
    """What must agree, besides the protocol and the config group, for runs to share one row: the test feature,
    re-ranking, recipe, model and method, data kind (and a synthetic override), flip test-time augmentation,
    approximate search, the distance (``metric``), the selection rule, and for synthetic data the data root (two
    synthetic trees are two test sets)."""
    cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    return (
        d.get("feature_mode"),
        bool(d.get("rerank")),
        d.get("recipe"),
        d.get("model"),
        d.get("method"),
        bool(d.get("synthetic")),
        bool(d.get("synthetic_override")),
        bool(d.get("flip")),
        bool(d.get("approximate")),
        d.get("metric") or "cosine",
        d.get("selection"),
        data.get("root") if d.get("synthetic") else None,
    )


def _test_set_key(d: dict[str, Any]) -> tuple:
    """The size of the test set a run of several gallery draws was evaluated on (queries, gallery size of each
    trial)."""
    info = d.get("protocol_info") if isinstance(d.get("protocol_info"), dict) else {}
    return info.get("num_query"), tuple(info.get("gallery_sizes") or ())


def _newest(ds: list[dict[str, Any]], key) -> dict[Any, dict[str, Any]]:
    """``{key(d): d}``, keeping the newest file where a key occurs twice (a run evaluated again)."""
    out: dict[Any, dict[str, Any]] = {}
    for d in ds:
        k = key(d)
        if k not in out or osp.getmtime(d["_path"]) >= osp.getmtime(out[k]["_path"]):
            out[k] = d
    return out


def _mean_std(per: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population std (``ddof=0``) of each metric every entry has."""
    common = [k for k in METRICS if all(k in p for p in per)]
    return ({k: float(np.mean([p[k] for p in per])) for k in common},
            {k: float(np.std([p[k] for p in per])) for k in common})


def _sources(paths: list[str]) -> str:
    """Several result files in one cell: ``parent/{a,b,c}/name`` when they differ only in their folder."""
    rel = [osp.relpath(p) for p in paths]
    names = {osp.basename(p) for p in rel}
    parents = {osp.dirname(osp.dirname(p)) for p in rel}
    if len(rel) > 1 and len(names) == 1 and len(parents) == 1:
        folders = ",".join(osp.basename(osp.dirname(p)) for p in rel)
        return osp.join(parents.pop(), "{" + folders + "}", names.pop())
    return ", ".join(rel)


def recorded_dataset_dirs(d: dict[str, Any]) -> list[str]:
    """The dataset folders a results JSON records: ``protocol_info.root`` (the evaluator's dataset folder), and the
    recorded config's ``data.root`` joined with the folder of each target dataset's family (``data.targets``, or the
    ``dataset`` provenance field). A relative ``data.root`` is read from the current folder."""
    dirs: list[str] = []
    info = d.get("protocol_info") if isinstance(d.get("protocol_info"), dict) else {}
    if info.get("root"):
        dirs.append(str(info["root"]))
    cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    root = data.get("root")
    if root:
        names = data.get("targets") or str(d.get("dataset") or "").split(",")
        for name in names:
            fam = data_registry.family_of(str(name))
            if fam is not None and fam.dataset_dir:
                dirs.append(osp.join(osp.expanduser(str(root)), fam.dataset_dir))
    return list(dict.fromkeys(dirs))


def synthetic_status(d: dict[str, Any]) -> tuple[bool, list[str]]:
    """``(synthetic, flags)`` of a results JSON.

    * ``synthetic: true``: synthetic data.
    * ``synthetic_override`` (the run's config declared a tree that holds the synthetic generator's marker real data,
      with an explicit ``data.synthetic false``): real data, flagged :data:`OVERRIDE_FLAG`.
    * otherwise, when a dataset folder the JSON records (:func:`recorded_dataset_dirs`) holds the marker (a results
      JSON written before the trainer read the marker says ``synthetic: false``): synthetic, flagged
      :data:`MARKER_FLAG`.
    """
    if d.get("synthetic"):
        return True, []
    if d.get("synthetic_override"):
        return False, [OVERRIDE_FLAG]
    if any(is_synthetic_tree(p) for p in recorded_dataset_dirs(d)):
        return True, [MARKER_FLAG]
    return False, []


def rows_from_results(results: list[dict[str, Any]]) -> list[Row]:
    """Our results as leaderboard rows.

    * A result of a dataset without splits (one run gives all the protocol's trials) is one row, mean +/- std over
      its trials; runs that differ only in their seeds (same ``seed_group``, protocol, test set and setting) form one
      row instead: the mean over runs of each run's mean metric +/- the population std over runs (the seed spread),
      "N seeds".
    * Results of a dataset with several train/test splits (one run per split) of one setting are averaged over their
      splits. Several seeds with the same set of splits form one row: mean +/- std over seeds of each seed's split
      mean.

    Whether a result is synthetic is read by :func:`synthetic_status` (a results JSON that said ``synthetic: false``
    for a tree holding the generator's marker is synthetic). Results written before ``seed_group`` existed stay rows
    of their own (split results: grouped by ``config_group``)."""
    rows: list[Row] = []
    seeded: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    split_groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for d in results:
        d["protocol"] = data_registry.canonical_protocol(str(d["protocol"]))
        d["synthetic"], d["_synthetic_flags"] = synthetic_status(d)
        if _split_of(d) is None:
            if d.get("seed_group"):
                seeded[(d["protocol"], d["seed_group"], _test_set_key(d), _setting_key(d))].append(d)
            else:
                rows.append(_single_row(d))
            continue
        group = d.get("seed_group") or d.get("config_group") or d.get("config_hash")
        split_groups[(_base_protocol(d["protocol"]), group, _setting_key(d))].append(d)
    for ds in seeded.values():
        by_seed = _newest(ds, _seed_of)
        seeds = sorted(by_seed, key=_seed_sort)
        if len(seeds) == 1:
            rows.append(_single_row(by_seed[seeds[0]]))
            continue
        runs = [by_seed[s] for s in seeds]
        mean, std = _mean_std([_as_percent(r["mean"], r["_path"]) for r in runs])
        n_trials = runs[-1].get("num_trials", len(runs[-1]["per_trial"]))
        trials = f"{len(seeds)} seeds ({','.join(map(_seed_label, seeds))}) × {n_trials} trials"
        rows.append(_row(runs[-1], mean, std, trials, runs[-1]["protocol"], runs=runs, seeds=seeds))
    for (base, _, _), ds in split_groups.items():
        by_seed_split = _newest(ds, lambda d: (_seed_of(d), _split_of(d)))
        by_seed: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
        for (seed, split), d in by_seed_split.items():
            by_seed[seed][split] = d
        # seeds with the same set of splits are averaged together; another set of splits is another protocol
        by_splits: dict[tuple[int, ...], list[tuple]] = defaultdict(list)
        for seed, per_split in by_seed.items():
            by_splits[tuple(sorted(per_split))].append(seed)
        for splits, seeds in by_splits.items():
            seeds = sorted(seeds, key=_seed_sort)
            protocol = f"{base}/{_splits_label(list(splits), _family(base))}"
            split_list = f"{len(splits)} splits ({','.join(map(str, splits))})"
            split_means = []
            for seed in seeds:
                split_means.append(_mean_std([_as_percent(by_seed[seed][s]["mean"], by_seed[seed][s]["_path"])
                                              for s in splits]))
            last = by_seed[seeds[-1]][splits[-1]]
            if len(seeds) == 1:
                rows.append(_row(last, *split_means[0], split_list, protocol))
                continue
            mean, std = _mean_std([m for m, _ in split_means])
            runs = [by_seed[seed][s] for seed in seeds for s in splits]
            trials = f"{len(seeds)} seeds ({','.join(map(_seed_label, seeds))}) × {split_list}"
            rows.append(_row(last, mean, std, trials, protocol, runs=runs, seeds=seeds))
    return rows


def _selected_on_test(d: dict[str, Any]) -> bool:
    """A run whose checkpoint was chosen on the test protocol: the trainer records ``selected_on_test`` and a
    ``test-selected ...`` selection; published entries say ``selection: test``."""
    sel = str(d.get("selection") or "")
    return bool(d.get("selected_on_test")) or sel == "test" or sel.startswith("test-selected")


def _single_row(d: dict[str, Any]) -> Row:
    return _row(d, _as_percent(d["mean"], d["_path"]), _as_percent(d.get("std") or {}, d["_path"]),
                f"{d.get('num_trials', len(d['per_trial']))} trials", d["protocol"])


def _row(d: dict[str, Any], mean: dict[str, float], std: dict[str, float], trials: str, protocol: str,
         runs: list[dict[str, Any]] | None = None, seeds: list[tuple] | None = None) -> Row:
    """A row of ours described by ``d`` (the newest run); ``runs``: every run averaged into it (seed rows)."""
    runs = runs or [d]
    flags = []
    if any(_selected_on_test(r) for r in runs):
        flags.append("selected-on-test")
    if d.get("flip"):
        flags.append(FLIP_FLAG)
    if any(r.get("approximate") for r in runs):
        flags.append(APPROX_FLAG)
    if (d.get("metric") or "cosine") != "cosine":
        flags.append(METRIC_FLAG + str(d["metric"]))
    flags += [f for f in (MARKER_FLAG, OVERRIDE_FLAG) if any(f in r.get("_synthetic_flags", ()) for r in runs)]
    commits = list(dict.fromkeys(str(r.get("git_commit") or "")[:10] for r in runs if r.get("git_commit")))
    return Row(
        method=_method_label(d),
        protocol=protocol,
        kind="ours",
        mean=mean,
        std=std,
        trials=trials,
        feature_mode=str(d.get("feature_mode") or ""),
        rerank=bool(d.get("rerank")),
        recipe=str(d.get("recipe") or ""),
        model=str(d.get("model") or ""),
        commit=",".join(commits),
        selection=str(d.get("selection") or ""),
        synthetic=bool(d.get("synthetic")),
        flags=flags,
        source=_sources([r["_path"] for r in runs]) if all("_path" in r for r in runs) else "",
        flip=bool(d.get("flip")),
        seeds=[_seed_label(s) for s in seeds] if seeds else [],
    )


def load_published(path: str) -> list[Row]:
    """Rows of ``published.yaml`` (``entries``: method, source, protocol, metrics, flags, note, and ``flip``:
    true / false when the source says whether flip test-time augmentation was used)."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise LeaderboardError(f'{path}: expected a list under "entries"')
    rows = []
    for i, e in enumerate(entries):
        missing = {"method", "source", "protocol", "metrics"} - set(e or {})
        if missing:
            raise LeaderboardError(f"{path}: entry {i} lacks {sorted(missing)}")
        unknown = set(e["metrics"]) - set(METRICS)
        if unknown:
            raise LeaderboardError(f"{path}: entry {i} ({e['method']}): unknown metrics {sorted(unknown)}")
        protocol = data_registry.canonical_protocol(str(e["protocol"]))
        trials = _trials_of_protocol(protocol)
        flags = list(e.get("flags") or [])
        flip = e.get("flip", True if FLIP_FLAG in flags else None)
        if flip not in (True, False, None) or (flip is False and FLIP_FLAG in flags):
            raise LeaderboardError(f"{path}: entry {i} ({e['method']}): flip={flip!r} contradicts its flags {flags}")
        if flip and FLIP_FLAG not in flags:
            flags.append(FLIP_FLAG)
        rows.append(
            Row(
                method=e["method"],
                protocol=protocol,
                kind="published",
                mean=_as_percent(e["metrics"], path),
                trials=trials,
                flags=flags,
                source=e["source"] + (f" ({e['note']})" if e.get("note") else ""),
                flip=flip,
            )
        )
    return rows


def _trials_of_protocol(protocol: str) -> str:
    return protocol.rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------------------ ranking
def rank_rows(rows: list[Row], metric: str = "R1") -> list[Row]:
    """Rows sorted best first by ``metric`` (then mAP). Refuses rows from different protocols or data kinds, and
    synthetic-data rows beside published numbers (published numbers are real-data numbers)."""
    keys = sorted({r.table_key for r in rows})
    if len(keys) > 1:
        raise LeaderboardError(
            f"refusing to rank rows from different protocols against each other: {keys}; "
            "use group_by_protocol() and rank each table separately"
        )
    synthetic = [r.method for r in rows if r.synthetic]
    published = [r.method for r in rows if r.kind == "published"]
    if synthetic and published:
        raise LeaderboardError(
            f"refusing to rank synthetic-data rows {synthetic} beside published numbers {published}: synthetic "
            "data gets tables of its own"
        )

    def score(r: Row) -> tuple[float, float]:
        return (r.mean.get(metric, -1.0), r.mean.get("mAP", -1.0))

    return sorted(rows, key=score, reverse=True)


def group_by_protocol(rows: list[Row]) -> dict[str, list[Row]]:
    """``{table key: rows}``: one table per protocol string (synthetic-data runs in their own tables)."""
    out: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        out[r.table_key].append(r)
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------ writing
def _fmt(r: Row, k: str) -> str:
    if k not in r.mean:
        return "-"
    s = f"{r.mean[k]:.2f}"
    if k in r.std:
        s += f" ± {r.std[k]:.2f}"
    return s


_COLUMNS = ["#", "method", "R1", "R10", "R20", "mAP", "mINP", "trials", "feature", "re-rank", FLIP_FLAG, "recipe",
            "commit", "flags", "source"]


def _split_datasets() -> str:
    """The registered datasets with several train/test splits, for the legend (their display names)."""
    return ", ".join(f.display_name or f.__name__ for f in data_registry.families() if f.split_key) or "none"


def render_markdown(rows: list[Row], title: str = "Leaderboard") -> str:
    lines = [
        f"# {title}",
        "",
        "Generated by `vdreid leaderboard` (benchmarks/leaderboard.py); do not edit by hand. Metrics in percent,",
        "mean ± std over the protocol's trials (gallery draws) or, for datasets with several train/test splits",
        f"({_split_datasets()}: one model per split), over the splits. Rows whose trials column says \"N seeds\"",
        "average N trainings that differ only in their seeds (`train.seed`, `sampler.seed`): mean over the runs of",
        "each run's mean, ± the std over the runs (the seed spread; for split datasets the std over seeds of each",
        "seed's split mean).",
        "Each table holds one protocol string (dataset/direction/...); rows of different protocols are never",
        "ranked against each other, and a variant of a protocol (such as a swapped `test.py` form, `vis2ir_swapped`)",
        "has its own table.",
        f"Synthetic data (trees written by `vdreid make-synthetic`) has tables of its own (`{SYNTHETIC_TABLE}...`),",
        "never beside published numbers. Synthetic-data rows name their data root: rows on different synthetic",
        "trees were tested on different people; compare rows of one tree only.",
        "The `flip-tta` column says whether features of the image and its flip were combined (test-time",
        "augmentation; `-` where a published source does not say).",
        f"Flags: `{FLIP_FLAG}` flip test-time augmentation, `selected-on-test` checkpoint chosen on the test protocol,",
        f"`{APPROX_FLAG}` our ranked lists came from an approximate (HNSW/IVF) index, `{METRIC_FLAG}<metric>` our",
        "run ranked by another distance than cosine (`test.dist_metric`, e.g. DEEN's inner product of flipped",
        f"sums), `{MARKER_FLAG}` the results",
        "JSON said real data but its dataset folder holds the synthetic generator's marker (ranked as synthetic),",
        f"`{OVERRIDE_FLAG}` the run's config declared a marked synthetic tree real (`data.synthetic false`), so it",
        "is ranked beside real-data numbers: check it. Flags of published rows (`input-HxW` larger input than",
        "256x128, `approx` the source prints `~`, and caveats of one entry) are explained in the header of",
        "benchmarks/published.yaml and in the entry's note (in the source column).",
        "Published numbers come from benchmarks/published.yaml (sources there).",
        "",
    ]
    for key, table in group_by_protocol(rows).items():
        lines += [f"## {key}", "", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        for i, r in enumerate(rank_rows(table), 1):
            cells = [
                str(i),
                ("**" + r.method + "**") if r.kind == "ours" else r.method,
                _fmt(r, "R1"),
                _fmt(r, "R10"),
                _fmt(r, "R20"),
                _fmt(r, "mAP"),
                _fmt(r, "mINP"),
                r.trials,
                r.feature_mode or "-",
                ("yes" if r.rerank else "no") if r.kind == "ours" else "-",
                {True: "yes", False: "no", None: "-"}[r.flip],
                r.recipe or "-",
                r.commit or "-",
                ", ".join(r.flags) or "-",
                r.source.replace("|", "/"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: str) -> None:
    fields = ["protocol", "rank", "kind", "method", "trials", "seeds"]
    fields += [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]
    fields += ["feature_mode", "rerank", "flip_tta", "recipe", "model", "selection", "commit", "synthetic", "flags",
               "source"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for key, table in group_by_protocol(rows).items():
            for i, r in enumerate(rank_rows(table), 1):
                rec: dict[str, Any] = {
                    "protocol": key, "rank": i, "kind": r.kind, "method": r.method, "trials": r.trials,
                    "seeds": ";".join(r.seeds),
                    "feature_mode": r.feature_mode, "rerank": r.rerank, "flip_tta": r.flip, "recipe": r.recipe,
                    "model": r.model,
                    "selection": r.selection, "commit": r.commit, "synthetic": r.synthetic,
                    "flags": ";".join(r.flags), "source": r.source,
                }
                for k in METRICS:
                    rec[f"{k}_mean"] = f"{r.mean[k]:.2f}" if k in r.mean else ""
                    rec[f"{k}_std"] = f"{r.std[k]:.2f}" if k in r.std else ""
                w.writerow(rec)


def build_leaderboard(
    run_paths: list[str],
    published: str | None,
    out_md: str,
    out_csv: str | None = None,
    include_published: bool = True,
    title: str = "Leaderboard",
) -> list[Row]:
    """Gather results JSON under ``run_paths``, add ``published``, write ``out_md`` (and ``out_csv``)."""
    rows = rows_from_results(find_results(run_paths))
    if include_published and published:
        rows += load_published(published)
    os.makedirs(osp.dirname(osp.abspath(out_md)), exist_ok=True)
    with open(out_md, "w", encoding="utf-8") as f:
        f.write(render_markdown(rows, title))
    if out_csv:
        write_csv(rows, out_csv)
    return rows
