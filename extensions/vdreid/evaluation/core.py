"""Blocked exact rank statistics: the engine behind :func:`vdreid.evaluation.evaluate` and
:func:`vdreid.evaluation.evaluate_features`.

Why our own code instead of ``argsort`` (torchreid / AGW): a full sort of every query row costs
``O(Q G log G)`` time and ``Q x G`` memory. The AGW metrics (``docs/protocols.md``, "Metrics") need much less:

* mAP and mINP need, for every positive gallery item ``k`` of a query, its 0-based rank ``r_k`` in the
  kept (non-excluded) list, which is a *count* of gallery items ranked before it. Counting can be done one
  gallery block at a time, so memory stays bounded by the block size.
* The standard CMC needs only the rank of the first positive (``min_k r_k``).
* The de-duplicated (SYSU) CMC needs the number of distinct identities ranked before the first positive,
  capped at ``max_rank``; the top ``L`` items of each row (a running top-k over blocks) answer it, with an
  exact per-row fallback when the top ``L`` do not contain enough identities.

Order (ties): gallery items are ranked by the key ``(distance, gallery index)``, i.e. ascending distance with
ties broken by the gallery index (a stable sort, like MATLAB's ``sort`` in the official SYSU kit; AGW's
``np.argsort`` is unstable; it matters only for exactly equal distances).

Exactness with approximate blocks: the blocks may be computed in float32 (GEMM, faiss, GPU). Each row carries
a band ``b`` that bounds the absolute error of a block entry with respect to the exact distance (``b = 0`` when
the blocks are the exact distances, as in :func:`evaluate`). An entry is certainly before a positive when it is
below the positive's exact distance minus ``b``, certainly after when above plus ``b``; the few entries inside a
band are recomputed with the exact (float64) distance function and compared by the exact key. So every backend
and every block size give the same ranks as a stable sort of the exact distances.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vdreid.evaluation.progress import Progress  # a bar on a terminal, log lines in a file or pipe

#: distances of the query rows ``rows`` (R,) to the allowed gallery columns ``cols[c0:c1]`` as an (R, C) tensor
BlockFn = Callable[[np.ndarray, int, int], torch.Tensor]
#: exact float64 distances of pairs ``(rows[i], cols[i])``, shape (N,)
ExactFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

DEFAULT_BLOCK_SIZE = 1 << 23  # distance entries per block (32 MiB in float32)
#: above this fraction of block entries between a row's first and last positive, count with one batched
#: ``torch.searchsorted`` over the whole block instead of the ragged path over the middle entries only
DENSE_MIDDLE_FRACTION = 0.125
_INT_SENTINEL = np.iinfo(np.int64).max


@contextlib.contextmanager
def single_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the elementwise reductions on CPU. On a shared 2-core box their OpenMP barriers
    made them ~10x slower with 2 threads (306 ms vs 33 ms for one block's reductions at load 12); the GEMMs
    (block_fn) keep the caller's thread count."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class RankStats:
    """Per valid query: sorted 0-based ranks of its positives in the kept list and its de-duplicated rank.

    ``pos_rank`` is (V, kmax) int64 padded with -1; ``num_pos`` (V,); ``dedup_rank`` (V,) is the 0-based position
    of the query identity in the de-duplicated list, capped at ``max_rank`` (= beyond the CMC), or -1 when the
    de-duplicated CMC was not asked for; ``rows`` are the query indices of the valid queries.
    """

    rows: np.ndarray
    pos_rank: np.ndarray
    num_pos: np.ndarray
    dedup_rank: np.ndarray


def _round_out(x64: np.ndarray, dtype: torch.dtype, down: bool) -> np.ndarray:
    """Round float64 thresholds to the block dtype outward (down for lower bounds), so comparisons in the
    block dtype stay conservative."""
    if dtype == torch.float64:
        return x64
    y = x64.astype(np.float32)
    if down:
        bad = y.astype(np.float64) > x64
        y[bad] = np.nextafter(y[bad], np.float32(-np.inf))
    else:
        bad = y.astype(np.float64) < x64
        y[bad] = np.nextafter(y[bad], np.float32(np.inf))
    return y


def _bsearch_le(sorted_rows: torch.Tensor, r: torch.Tensor, v: torch.Tensor, strict: bool) -> torch.Tensor:
    """Branch-free binary search on ragged selections: for each value ``v[i]`` in row ``r[i]``, the number of
    entries of ``sorted_rows[r[i]]`` that are ``<= v[i]`` (``< v[i]`` when ``strict``). ``torch.searchsorted``
    needs equal-length value rows and was ~40 ns/entry on the dev box; this runs only on the selected entries
    (flat ``take`` gathers: two-tensor advanced indexing is several times slower on CPU)."""
    kmax = sorted_rows.shape[1]
    flat = sorted_rows.reshape(-1)
    base = r * kmax
    a = torch.zeros_like(r)
    step = 1 << (kmax.bit_length() - 1) if kmax > 0 else 0
    while step:
        cand = a + step
        t = flat.take(base + (cand - 1).clamp_(max=kmax - 1))
        take = (cand <= kmax) & ((t < v) if strict else (t <= v))
        a = torch.where(take, cand, a)
        step >>= 1
    return a


def find_positives(
    rows: np.ndarray, q_pids: np.ndarray, cols: np.ndarray, g_pids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gallery indices (from ``cols``) of each row's positives, padded with -1, and their counts."""
    gp = g_pids[cols]
    order = np.argsort(gp, kind="stable")
    sp = gp[order]
    qp = q_pids[rows]
    start = np.searchsorted(sp, qp, side="left")
    stop = np.searchsorted(sp, qp, side="right")
    n = stop - start
    kmax = int(n.max()) if n.size else 0
    out = np.full((rows.size, max(kmax, 1)), -1, dtype=np.int64)
    if kmax:
        ar = np.arange(kmax)
        take = ar[None, :] < n[:, None]
        src = np.minimum(start[:, None] + ar[None, :], sp.size - 1)
        out[take] = cols[order[src[take]]]
    return out, n


def rank_statistics(
    rows: np.ndarray,
    cols: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    block_fn: BlockFn,
    exact_fn: ExactFn,
    band: np.ndarray,
    block_dtype: torch.dtype,
    device: torch.device,
    max_rank: int,
    dedup: bool,
    block_size: int | None = None,
    progress: str = "",
    removal: tuple[np.ndarray, np.ndarray] | None = None,
) -> RankStats:
    """Exact rank statistics of queries ``rows`` against the allowed gallery columns ``cols`` (ascending).

    ``band[i]`` bounds ``|block entry - exact distance|`` for row ``rows[i]`` (0 for exact blocks).

    ``removal = (q_cam, g_cam)`` (physical camera of every query / gallery item) applies the same-identity
    same-camera rule: a positive seen by the query's camera leaves the query's list. Such items are positives, so
    they are ranked with the other positives and then taken out of the positive set, out of the number of items
    before each kept positive, and out of the de-duplicated list (see :func:`_drop_removed`).
    """
    block_size = int(block_size or DEFAULT_BLOCK_SIZE)
    pos_g, npos = find_positives(rows, q_pids, cols, g_pids)
    valid = npos > 0
    if removal is not None:
        removed = _removed_positives(rows, pos_g, removal)
        valid &= npos > removed.sum(1)  # at least one positive left after the removal
    rows, pos_g, npos, band = rows[valid], pos_g[valid], npos[valid], band[valid]
    V, kmax = pos_g.shape
    empty = RankStats(rows, np.zeros((0, kmax), np.int64), npos, np.zeros(0, np.int64))
    if V == 0:
        return empty
    # exact distances of the positives, sorted by the key (distance, gallery index)
    pr, pk = np.nonzero(pos_g >= 0)
    pos_d = np.full(pos_g.shape, np.inf)
    pos_d[pr, pk] = exact_fn(rows[pr], pos_g[pr, pk])
    g_key = np.where(pos_g >= 0, pos_g, _INT_SENTINEL)
    order = np.lexsort((g_key, pos_d), axis=-1)
    pos_d = np.take_along_axis(pos_d, order, 1)
    pos_g = np.take_along_axis(pos_g, order, 1)
    padm = pos_g < 0
    removed = _removed_positives(rows, pos_g, removal) if removal is not None else np.zeros(pos_g.shape, bool)
    # the first positive that stays in the list: the identity's place in the de-duplicated list is decided by it
    first = np.argmax(~removed & ~padm, axis=1)
    ar_v = np.arange(V)
    lo = _round_out(np.where(padm, np.inf, pos_d - band[:, None]), block_dtype, down=True)
    hi = _round_out(np.where(padm, np.inf, pos_d + band[:, None]), block_dtype, down=False)

    G = cols.size
    L = min(G, max(4 * max_rank, 32)) if dedup else 0
    rb = max(1, min(V, block_size // max(1, min(G, 65536))))
    cb = max(1, min(G, block_size // rb))
    pos_rank = np.zeros((V, kmax), np.int64)
    dedup_rank = np.full(V, -1, np.int64)
    n_blocks = ((V + rb - 1) // rb) * ((G + cb - 1) // cb)
    bar = None
    if n_blocks >= 16 and V * G >= 50_000_000:
        bar = Progress(n_blocks, progress or "ranking blocks", unit="block")
    tdt = block_dtype
    for r0 in range(0, V, rb):
        r1 = min(V, r0 + rb)
        R = r1 - r0
        lo_t = torch.as_tensor(lo[r0:r1], device=device, dtype=tdt)
        hi_t = torch.as_tensor(hi[r0:r1], device=device, dtype=tdt)
        n_t = torch.as_tensor(npos[r0:r1], device=device)
        lo_min = lo_t[:, :1]
        hi_max = hi_t.gather(1, (n_t - 1)[:, None])
        cnt_all = torch.zeros(R, dtype=torch.int64, device=device)
        cnt_pos = torch.zeros((R, kmax), dtype=torch.int64, device=device)
        top_v = top_c = None
        row_ids = rows[r0:r1]
        amb_rows, amb_cols, amb_k0, amb_k1 = [], [], [], []  # resolved per row chunk: bounded memory
        for c0 in range(0, G, cb):
            c1 = min(G, c0 + cb)
            ccols = cols[c0:c1]
            x = block_fn(row_ids, c0, c1)
            with single_thread(device):
                x = x.to(tdt).contiguous()
                below = x < lo_min
                mid = (~below) & (x <= hi_max)
                n_mid = int(torch.count_nonzero(mid))  # ~15x faster than a bool .sum() on CPU
                if n_mid > x.numel() * DENSE_MIDDLE_FRACTION:
                    # dense middle (weak features, deep positives): one batched binary search per entry is ~3x
                    # cheaper than the ragged path below (measured on this box)
                    # int32 positions when the histogram index fits: bincount over int32 was ~3x faster than int64
                    i32 = R * (kmax + 1) < 2**31
                    a_full = torch.searchsorted(lo_t, x, right=True, out_int32=i32)  # positives with lo <= x
                    off = torch.arange(R, device=device, dtype=a_full.dtype)[:, None] * (kmax + 1)
                    hist = torch.bincount((a_full + off).reshape(-1), minlength=R * (kmax + 1)).view(R, kmax + 1)
                    cnt_pos += hist.cumsum(1)[:, :kmax]
                    amb_m = (a_full > 0) & (x <= hi_t.gather(1, (a_full - 1).clamp_(min=0).long()))
                    flat_idx = amb_m.reshape(-1).nonzero().squeeze(1)
                    r, c = flat_idx // x.shape[1], flat_idx % x.shape[1]
                    v = x.reshape(-1).take(flat_idx)
                    a = a_full.reshape(-1).take(flat_idx).long()
                    amb = torch.ones_like(r, dtype=torch.bool)
                    del a_full, amb_m
                else:
                    cnt_all += below.sum(1)
                    flat_idx = mid.reshape(-1).nonzero().squeeze(1)
                    r, c = flat_idx // x.shape[1], flat_idx % x.shape[1]
                    v = x.reshape(-1).take(flat_idx)
                    a = _bsearch_le(lo_t, r, v, strict=False)  # number of positives with lo <= v
                    hist = torch.bincount(r * (kmax + 1) + a, minlength=R * (kmax + 1)).view(R, kmax + 1)
                    cnt_pos += hist.cumsum(1)[:, :kmax]
                    amb = (a > 0) & (v <= hi_t.reshape(-1).take(r * kmax + (a - 1).clamp(min=0)))
                if r.numel() and bool(amb.any()):
                    ra, ca, va, aa = r[amb], c[amb], v[amb], a[amb]
                    a0 = _bsearch_le(hi_t, ra, va, strict=True)  # positives whose band ends below v
                    amb_rows.append(ra.cpu().numpy() + r0)
                    amb_cols.append(ccols[ca.cpu().numpy()])
                    amb_k0.append(a0.cpu().numpy())
                    amb_k1.append(aa.cpu().numpy())
                if dedup:
                    k = min(L, c1 - c0)
                    bv, bi = torch.topk(x, k, dim=1, largest=False, sorted=False)
                    bc = torch.as_tensor(ccols, device=device)[bi]
                    if top_v is None:
                        top_v, top_c = bv, bc
                    else:
                        top_v, top_c = torch.cat([top_v, bv], 1), torch.cat([top_c, bc], 1)
                        if top_v.shape[1] > L:
                            top_v, ti = torch.topk(top_v, L, dim=1, largest=False, sorted=False)
                            top_c = top_c.gather(1, ti)
            del x
            if bar is not None:
                bar.update(1)
        pos_rank[r0:r1] = (cnt_all[:, None] + cnt_pos).cpu().numpy()
        _resolve_band(pos_rank, rows, pos_d, pos_g, exact_fn, amb_rows, amb_cols, amb_k0, amb_k1)
        if dedup:
            f, a = first[r0:r1], ar_v[r0:r1]
            dedup_rank[r0:r1] = _dedup_block(
                r0, row_ids, top_v.cpu().numpy(), top_c.cpu().numpy(), G, lo[a, f], hi[a, f],
                pos_d[a, f], pos_g[a, f], q_pids, g_pids, cols, exact_fn, max_rank,
            )
    if bar is not None:
        bar.close()
    pos_rank[padm] = -1
    if removed.any():
        pos_rank, npos = _drop_removed(pos_rank, removed, padm)
    return RankStats(rows, pos_rank, npos, dedup_rank)


def _removed_positives(rows: np.ndarray, pos_g: np.ndarray, removal: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(V, kmax) bool: positive ``pos_g[i, k]`` is seen by the same camera as query ``rows[i]`` (padding: False)."""
    q_cam, g_cam = removal
    return (pos_g >= 0) & (g_cam[np.maximum(pos_g, 0)] == q_cam[rows][:, None])


def _drop_removed(pos_rank: np.ndarray, removed: np.ndarray, padm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the kept positives in the list without the removed items.

    ``pos_rank`` holds exact ranks of every positive (removed ones included) in the list that still contains the
    removed items, in the exact order (distance, gallery index). A kept positive's rank drops by the number of
    removed positives before it, which is the number of removed entries to its left in that order. The kept ranks
    are then packed to the left (padding -1) and counted."""
    keep = ~removed & ~padm
    shifted = pos_rank - np.cumsum(removed, axis=1)
    n_keep = keep.sum(1)
    out = np.full((pos_rank.shape[0], max(int(n_keep.max()), 1)), -1, np.int64)
    r, k = np.nonzero(keep)
    out[r, (np.cumsum(keep, axis=1) - 1)[r, k]] = shifted[r, k]
    return out, n_keep


def _resolve_band(
    pos_rank: np.ndarray, rows: np.ndarray, pos_d: np.ndarray, pos_g: np.ndarray, exact_fn: ExactFn,
    amb_rows: list, amb_cols: list, amb_k0: list, amb_k1: list,
) -> None:
    """Entries inside a positive's band: compare by the exact key (distance, gallery index), add to the ranks."""
    if amb_rows:
        ar, ac = np.concatenate(amb_rows), np.concatenate(amb_cols)
        k0, k1 = np.concatenate(amb_k0), np.concatenate(amb_k1)
        w = k1 - k0
        rep = np.repeat(np.arange(ar.size), w)
        kk = k0[rep] + (np.arange(rep.size) - np.repeat(np.cumsum(w) - w, w))
        rr = ar[rep]
        pd, pg = pos_d[rr, kk], pos_g[rr, kk]
        other = ac[rep] != pg  # a positive is always inside its own band: no re-computation for itself
        rep, rr, kk, pd, pg = rep[other], rr[other], kk[other], pd[other], pg[other]
        if rep.size:
            need = np.unique(rep)
            d = np.empty(ar.size)
            d[need] = exact_fn(rows[ar[need]], ac[need])
            d = d[rep]
            before = (d < pd) | ((d == pd) & (ac[rep] < pg))
            np.add.at(pos_rank, (rr[before], kk[before]), 1)


def _dedup_block(
    r0: int, row_ids: np.ndarray, top_v: np.ndarray, top_c: np.ndarray, G: int, lo0: np.ndarray, hi0: np.ndarray,
    d0: np.ndarray, g0: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, cols: np.ndarray,
    exact_fn: ExactFn, max_rank: int,
) -> np.ndarray:
    """0-based position of the query identity in the de-duplicated ranked list (capped at ``max_rank``):
    the number of distinct identities among the items ranked before the first positive that stays in the list
    (``lo0``, ``hi0``, ``d0``, ``g0`` describe it), not counting the query's own identity (items of it ranked
    earlier are removed by the same-camera rule, so they are not in the list)."""
    R, L = top_v.shape
    before = top_v < lo0[:, None]
    amb = (~before) & (top_v <= hi0[:, None]) & (top_c != g0[:, None])  # the first positive is not before itself
    if amb.any():
        ar, ak = np.nonzero(amb)
        d = exact_fn(row_ids[ar], top_c[ar, ak])
        before[ar, ak] = (d < d0[ar]) | ((d == d0[ar]) & (top_c[ar, ak] < g0[ar]))
    # items of the query's identity before its first kept positive can only be removed positives: not in the list
    q_of_row = q_pids[row_ids][:, None]
    pids = np.where(before & (g_pids[top_c] != q_of_row), g_pids[top_c], _INT_SENTINEL)
    pids.sort(axis=1)
    distinct = (pids[:, :1] != _INT_SENTINEL).sum(1) + (
        (pids[:, 1:] != pids[:, :-1]) & (pids[:, 1:] != _INT_SENTINEL)
    ).sum(1)
    complete = np.full(R, L >= G) | (top_v.max(1) > hi0)
    out = np.minimum(distinct, max_rank).astype(np.int64)
    need = np.nonzero(~complete & (distinct < max_rank))[0]
    for i in need:  # rare: top-L holds too few identities; exact scan of this row
        chunk = 1 << 16
        cnt = set()
        for c0 in range(0, G, chunk):
            cc = cols[c0 : c0 + chunk]
            d = exact_fn(np.full(cc.size, row_ids[i]), cc)
            bm = (d < d0[i]) | ((d == d0[i]) & (cc < g0[i]))
            bm &= g_pids[cc] != q_pids[row_ids[i]]
            cnt.update(np.unique(g_pids[cc[bm]]).tolist())
        out[i] = min(len(cnt), max_rank)
    return out


def aggregate(stats_list: list[RankStats], num_queries: int, max_rank: int, cmc_mode: str) -> dict:
    """CMC / mAP / mINP (fractions) from rank statistics, AGW definitions (``docs/protocols.md``, "Metrics")."""
    ap, inp, first, dd = [], [], [], []
    for s in stats_list:
        if s.rows.size == 0:
            continue
        n = s.num_pos
        ranks = s.pos_rank.astype(np.float64)
        k = np.arange(1, ranks.shape[1] + 1, dtype=np.float64)[None, :]
        valid = s.pos_rank >= 0
        prec = np.where(valid, k / np.where(valid, ranks + 1.0, 1.0), 0.0)
        ap.append(prec.sum(1) / n)
        last = s.pos_rank[np.arange(n.size), n - 1]
        inp.append(n / (last + 1.0))
        first.append(s.pos_rank[:, 0])
        dd.append(s.dedup_rank)
    nvalid = int(sum(a.size for a in ap))
    if nvalid == 0:
        raise ValueError(
            f"no valid query: none of the {num_queries} queries has a matching identity in its (kept) gallery; "
            "check q_pids/g_pids and exclude_cam_pairs"
        )
    ranks0 = np.concatenate(dd if cmc_mode == "dedup" else first)
    hist = np.bincount(np.minimum(ranks0, max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(hist) / nvalid
    return {
        "cmc": cmc.astype(np.float64),
        "mAP": float(np.concatenate(ap).mean()),
        "mINP": float(np.concatenate(inp).mean()),
        "num_valid_queries": nvalid,
    }
