"""CMC (standard and identity-deduplicated), mAP and mINP from a distance matrix (AGW definitions).

Definitions (``docs/protocols.md``, "Metrics"; AGW ``eval_metrics.py`` ``eval_sysu`` / ``eval_regdb``, DEEN
``eval_metrics.py`` ``eval_llcm``):

* The gallery of a query is ranked by ascending distance; ties are broken by gallery index (stable; AGW's
  ``np.argsort`` is unstable, MATLAB's official kit is stable).
* ``exclude_cam_pairs``: pairs ``(query_camid, gallery_camid)`` (0-based camera ids): gallery items of that
  camera are removed from the list of a query of that camera (SYSU: ``((2, 1),)``, cam3 queries never see cam2).
* ``remove_same_pid_same_cam`` (LLCM, DEEN's ``eval_llcm``): gallery items of the query's identity seen by the
  query's camera are removed from its list (they are positives, so they leave the positive set, the ranks of the
  other positives and the de-duplicated list). ``physical_camera`` maps camids to the camera compared by this rule
  (LLCM: the visible and near-infrared camids of one camera); camids it does not list map to themselves.
* ``cmc_mode='dedup'`` (SYSU): the kept list keeps only the first occurrence of each identity; CMC[k] is the
  fraction of valid queries whose identity appears in the first k+1 entries of that list. ``'standard'``
  (RegDB): the first positive of the kept list is within the first k+1 entries. A CMC shorter than
  ``max_rank`` (small gallery) is padded with its last value (AGW's code would fail with an inhomogeneous array).
* AP = (1/n) sum_k k / rank_k over the n positives of the kept, non-deduplicated list; INP = n / rank_last
  (1-based ranks). A query without a positive in its kept list is not counted anywhere.

Returned values are fractions (0..1), not percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from vdreid.evaluation.core import DEFAULT_BLOCK_SIZE, RankStats, aggregate, rank_statistics

CMC_MODES = ("dedup", "standard")


def _ids(x, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integers (person / camera ids), got dtype {a.dtype}")
    if n is not None and a.size != n:
        raise ValueError(f"{name} has {a.size} entries but the matrix/features have {n} rows; they must match")
    return a.astype(np.int64, copy=False)


def check_common(
    num_q: int,
    num_g: int,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int,
    cmc_mode: str,
    exclude_cam_pairs: Sequence[Sequence[int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[tuple[int, int], ...]]:
    """Validate ids, ``max_rank``, ``cmc_mode`` and ``exclude_cam_pairs``; raise ``ValueError`` naming the argument."""
    if num_q == 0:
        raise ValueError("query set is empty (0 queries): nothing to evaluate")
    if num_g == 0:
        raise ValueError("gallery set is empty (0 gallery items): nothing to rank")
    qp = _ids(q_pids, "q_pids", num_q)
    gp = _ids(g_pids, "g_pids", num_g)
    qc = _ids(q_camids, "q_camids", num_q)
    gc = _ids(g_camids, "g_camids", num_g)
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    if cmc_mode not in CMC_MODES:
        raise ValueError(f"cmc_mode must be one of {CMC_MODES}, got {cmc_mode!r}")
    try:
        pairs = tuple((int(a), int(b)) for a, b in exclude_cam_pairs)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"exclude_cam_pairs must be a sequence of (query_camid, gallery_camid) integer pairs, got "
            f"{exclude_cam_pairs!r}"
        ) from exc
    return qp, gp, qc, gc, pairs


def same_camera_removal(
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    remove_same_pid_same_cam: bool,
    physical_camera: Mapping[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(q_cam, g_cam)``: the physical camera of every query and gallery item for the same-pid-same-camera rule
    (``None`` when the rule is off); ``physical_camera`` maps camids, unlisted camids map to themselves."""
    if not isinstance(remove_same_pid_same_cam, (bool, np.bool_)):
        raise ValueError(f"remove_same_pid_same_cam must be True or False, got {remove_same_pid_same_cam!r}")
    if physical_camera is not None and not isinstance(physical_camera, Mapping):
        raise ValueError(f"physical_camera must be a mapping camid -> camera (or None), got {physical_camera!r}")
    if not remove_same_pid_same_cam:
        return None
    if not physical_camera:
        return q_camids, g_camids
    try:
        table = {int(k): int(v) for k, v in physical_camera.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"physical_camera must map integer camids to integer cameras, got {physical_camera!r}"
        ) from exc

    def phys(c: np.ndarray) -> np.ndarray:
        return np.array([table.get(int(x), int(x)) for x in c], dtype=np.int64) if c.size else c

    # map the distinct camids only (a handful), then broadcast back
    uq, iq = np.unique(q_camids, return_inverse=True)
    ug, ig = np.unique(g_camids, return_inverse=True)
    return phys(uq)[iq].reshape(q_camids.shape), phys(ug)[ig].reshape(g_camids.shape)


def camera_groups(
    q_camids: np.ndarray, g_camids: np.ndarray, pairs: tuple[tuple[int, int], ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split queries by the gallery they may see: [(query rows, allowed gallery columns ascending)].
    Exclusion is a property of the query camera, so each group has one fixed gallery subset."""
    all_cols = np.arange(g_camids.size, dtype=np.int64)
    out: dict[tuple[int, ...], list[np.ndarray]] = {}
    groups = []
    for cam in np.unique(q_camids):
        banned = sorted({g for q, g in pairs if q == cam})
        rows = np.nonzero(q_camids == cam)[0]
        out.setdefault(tuple(banned), []).append(rows)
    for banned, rows_list in out.items():
        cols = all_cols if not banned else all_cols[~np.isin(g_camids, banned)]
        groups.append((np.sort(np.concatenate(rows_list)), cols))
    return groups


def evaluate(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 20,
    cmc_mode: str = "dedup",
    exclude_cam_pairs: Sequence[Sequence[int]] = (),
    block_size: int | None = None,
    remove_same_pid_same_cam: bool = False,
    physical_camera: Mapping[int, int] | None = None,
) -> dict:
    """AGW-exact CMC / mAP / mINP from a (Q, G) distance matrix (smaller = closer).

    Returns ``{'cmc': np.ndarray (max_rank,), 'mAP': float, 'mINP': float, 'num_valid_queries': int}``
    (fractions). ``distmat`` may be a numpy array or a torch tensor; it is read in blocks of ``block_size``
    entries (default ``2**23``) and never sorted as a whole.
    """
    if isinstance(distmat, torch.Tensor):
        distmat = distmat.detach().cpu().numpy()
    dm = np.asarray(distmat)
    if dm.ndim != 2:
        raise ValueError(f"distmat must be a 2-D (num_query, num_gallery) matrix, got shape {dm.shape}")
    if not np.issubdtype(dm.dtype, np.floating):
        dm = dm.astype(np.float64)
    if dm.dtype not in (np.float32, np.float64):
        dm = dm.astype(np.float64)
    qp, gp, qc, gc, pairs = check_common(
        dm.shape[0], dm.shape[1], q_pids, g_pids, q_camids, g_camids, max_rank, cmc_mode, exclude_cam_pairs
    )
    if not np.all(np.isfinite(dm)):
        bad = int((~np.isfinite(dm)).sum())
        raise ValueError(f"distmat contains {bad} NaN/inf entries; fix the features or distances first")
    removal = same_camera_removal(qc, gc, remove_same_pid_same_cam, physical_camera)
    tdt = torch.float32 if dm.dtype == np.float32 else torch.float64

    def exact_fn(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return dm[r, c].astype(np.float64)

    stats: list[RankStats] = []
    for rows, cols in camera_groups(qc, gc, pairs):
        contiguous = cols.size == dm.shape[1]

        def block_fn(r: np.ndarray, c0: int, c1: int, _cols: np.ndarray = cols, _contig: bool = contiguous):
            r_sl = slice(int(r[0]), int(r[-1]) + 1) if r[-1] - r[0] + 1 == r.size else r
            if _contig:
                return torch.from_numpy(np.ascontiguousarray(dm[r_sl, c0:c1]))
            return torch.from_numpy(dm[r_sl][:, _cols[c0:c1]])

        stats.append(
            rank_statistics(
                rows, cols, qp, gp, block_fn, exact_fn, np.zeros(rows.size), tdt, torch.device("cpu"),
                max_rank, cmc_mode == "dedup", block_size or DEFAULT_BLOCK_SIZE, removal=removal,
            )
        )
    return aggregate(stats, dm.shape[0], max_rank, cmc_mode)
