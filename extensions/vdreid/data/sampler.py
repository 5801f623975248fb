"""Cross-modal identity sampler: every batch holds P identities x (K visible + K infrared) images.

Paper (Tian et al., CVPR 2021, Sec. 4.1): 16 identities x (2 visible + 2 infrared) = 64; the official code uses
16 x (4 + 4) (spec 5.1). torchreid's ``RandomIdentitySampler`` ignores modality, and AGW's ``IdentitySampler`` draws
identities with replacement across batches, so we write our own:

* identities are visited in random permutations, so an epoch covers every identity about equally often; inside a
  batch (across all ranks) identities are distinct;
* per identity, K visible and K infrared images are drawn without replacement, with replacement only where the
  identity has fewer than K images of that modality;
* the whole epoch is a function of ``(seed, epoch)``; ``set_epoch`` reseeds like ``DistributedSampler``, and when no
  one calls it the epoch advances by one after each pass, so plain torchreid engines still see fresh batches;
* with ``world_size > 1`` every rank draws the same global batches of ``num_ids * world_size`` identities and keeps
  its own slice, so ranks never share an identity inside a step and all ranks have the same length.

Batch layout: identity-major, for each identity its K visible indices then its K infrared indices.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


def _items(data_source: Any) -> Sequence[Sequence[Any]]:
    """Accept a list of torchreid items, or a dataset exposing ``.train`` (torchreid ``Dataset``) or ``.data``."""
    if hasattr(data_source, "train") and not isinstance(data_source, (list, tuple)):
        return data_source.train
    if hasattr(data_source, "data") and not isinstance(data_source, (list, tuple)):
        return data_source.data
    return data_source


class CrossModalIdentitySampler(Sampler[int]):
    """Yield dataset indices in batches of ``num_ids * 2 * num_instances`` (see the module docstring).

    Args:
        data_source: torchreid train items ``(img_path, pid, camid, dsetid)`` (or a dataset with ``.train``).
        num_ids: identities per batch and rank (P).
        num_instances: images per identity *and modality* (K).
        ir_camids: camids of infrared cameras (e.g. ``SYSUMM01.ir_camids``); every other camid is visible.
        seed: base seed; the epoch's stream is ``numpy.random.default_rng([seed, epoch])``.
        rank, world_size: ``torch.distributed`` placement.
        num_batches: batches per epoch and rank; default
            ``ceil(max(#visible, #infrared) / (num_ids * num_instances * world_size))``, i.e. about one pass over the
            larger modality per epoch (AGW's epoch definition, spec 1.4).
    """

    def __init__(
        self,
        data_source: Any,
        num_ids: int = 16,
        num_instances: int = 2,
        ir_camids: Iterable[int] = (),
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
    ) -> None:
        for name, val in (("num_ids", num_ids), ("num_instances", num_instances), ("world_size", world_size)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"CrossModalIdentitySampler: {name} must be a positive int, got {val!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"CrossModalIdentitySampler: rank={rank} outside 0..world_size-1={world_size - 1}")
        ir = frozenset(int(c) for c in ir_camids)
        if not ir:
            raise ValueError(
                "CrossModalIdentitySampler: ir_camids is empty; pass the dataset's infrared camids "
                "(SYSUMM01.ir_camids = {2, 5}, RegDB.ir_camids = {1})"
            )
        self.num_ids, self.num_instances = num_ids, num_instances
        self.ir_camids, self.seed = ir, int(seed)
        self.rank, self.world_size = rank, world_size
        self.batch_size = num_ids * 2 * num_instances

        vis: dict[int, list[int]] = {}
        inf: dict[int, list[int]] = {}
        for i, item in enumerate(_items(data_source)):
            pid, camid = int(item[1]), int(item[2])
            (inf if camid in ir else vis).setdefault(pid, []).append(i)
        both = sorted(set(vis) & set(inf))
        dropped = sorted(set(vis) ^ set(inf))
        if dropped:
            warnings.warn(
                f"CrossModalIdentitySampler: {len(dropped)} identities have images of one modality only and are never "
                f"sampled (pids {dropped[:10]}{'...' if len(dropped) > 10 else ''})",
                stacklevel=2,
            )
        needed = num_ids * world_size
        if len(both) < needed:
            raise ValueError(
                f"CrossModalIdentitySampler: {len(both)} identities have both visible and infrared images, but a "
                f"batch needs num_ids * world_size = {needed}; lower num_ids (or check ir_camids={sorted(ir)})"
            )
        self.pids = np.asarray(both, dtype=np.int64)
        self._vis = [np.asarray(vis[p], dtype=np.int64) for p in both]
        self._ir = [np.asarray(inf[p], dtype=np.int64) for p in both]
        if num_batches is None:
            n_v = sum(len(v) for v in self._vis)
            n_i = sum(len(v) for v in self._ir)
            num_batches = max(1, math.ceil(max(n_v, n_i) / (num_ids * num_instances * world_size)))
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"CrossModalIdentitySampler: num_batches must be a positive int, got {num_batches!r}")
        self.num_batches = num_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the stream of ``epoch`` for the next pass (call it every epoch in distributed training)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def _identity_batches(self, rng: np.random.Generator) -> np.ndarray:
        """(num_batches, num_ids * world_size) positions into ``self.pids``: consecutive random permutations, cut
        into batches, where a batch that straddles two permutations never repeats an identity."""
        n, g = len(self.pids), self.num_ids * self.world_size
        out = np.empty((self.num_batches, g), dtype=np.int64)
        pool = rng.permutation(n).tolist()
        for b in range(self.num_batches):
            if len(pool) >= g:
                out[b], pool = pool[:g], pool[g:]
                continue
            head, seen = pool, set(pool)
            rest = [i for i in rng.permutation(n).tolist() if i not in seen]
            out[b] = head + rest[: g - len(head)]
            pool = rest[g - len(head) :]
        return out

    def _draw(self, rng: np.random.Generator, idx: np.ndarray) -> np.ndarray:
        return rng.choice(idx, size=self.num_instances, replace=len(idx) < self.num_instances)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._identity_batches(rng)
        lo, hi = self.rank * self.num_ids, (self.rank + 1) * self.num_ids
        out = np.empty((self.num_batches, self.num_ids, 2, self.num_instances), dtype=np.int64)
        for b in range(self.num_batches):
            # every rank draws the images of every identity of the global batch, so the streams stay aligned
            for j, p in enumerate(batches[b]):
                v, i = self._draw(rng, self._vis[p]), self._draw(rng, self._ir[p])
                if lo <= j < hi:
                    out[b, j - lo, 0], out[b, j - lo, 1] = v, i
        self.epoch += 1  # the next pass differs even if nobody calls set_epoch
        return iter(out.reshape(-1).tolist())
