"""Cross-modal identity sampler: every batch holds P identities x (K visible + K infrared) images.

Paper (Tian et al., CVPR 2021, Sec. 4.1): 16 identities x (2 visible + 2 infrared) = 64; the authors' released code
uses 16 x (4 + 4) = 128. torchreid's ``RandomIdentitySampler`` ignores modality, and AGW's ``IdentitySampler`` draws
identities with replacement across batches, so we write our own:

* identities are visited in random permutations, so an epoch covers every identity about equally often; inside a
  batch (across all ranks) identities are distinct;
* per identity, K visible and K infrared images are drawn without replacement, with replacement only where the
  identity has fewer than K images of that modality;
* ``draw='independent'`` draws as AGW's and CAJ's ``IdentitySampler`` does instead (``utils.py``: every batch
  ``np.random.choice(ids, B, replace=False)``, then ``np.random.choice(images, K)`` per modality): each batch's
  identities uniformly at random, independently of the other batches (an epoch need not cover every identity), and
  each identity's K images per modality uniformly *with* replacement (a batch may hold an image twice);
* the whole epoch is a function of ``(seed, epoch)``; ``set_epoch`` reseeds like ``DistributedSampler``, and when no
  one calls it the epoch advances by one after each pass, so plain torchreid engines still see fresh batches;
* with ``world_size > 1`` every rank draws the same global batches of ``num_ids * world_size`` identities and keeps
  its own slice, so ranks never share an identity inside a step and all ranks have the same length.

Batch layout: identity-major, for each identity its K visible indices then its K infrared indices.

How long an epoch is, is a named definition (see :func:`iterations_per_epoch` and ``docs/reproduce.md``):

* ``'images'`` -- AGW's epoch (``utils.py`` ``IdentitySampler``): with N = max(#visible, #infrared) training images,
  AGW runs ``int(N / (B * P)) + 1`` loader batches of B identities x (P visible + P infrared). Our batch of
  ``num_ids`` x (``num_instances`` + ``num_instances``) is the same batch with B = ``num_ids``, P = ``num_instances``,
  so we run exactly ``N // (num_ids * num_instances) + 1`` batches (AGW's SYSU recipe, 8 x (4 + 4): 696).
* ``'identities'`` -- the released VD code's epoch (``reid/utils/data/sampler.py`` ``CamRandomIdentitySampler``): one
  pass over the training identities in random order, each contributing ``num_instances_VD`` images (half visible,
  half infrared, so ``num_instances_VD = 2 K``), cut by a DataLoader with batch size ``B = P * 2K`` and
  ``drop_last=True``: ``floor(#ids * 2K / B) = #ids // P`` batches, every identity at most once per epoch (SYSU: 395
  identities, 16 x (4 + 4) -> 24 batches; RegDB: 206 identities, 8 x (4 + 4) -> 25 batches).
* a positive int -- that many batches per epoch.

Under ``world_size > 1`` a step consumes ``world_size`` times as many identities and images, and the counts above are
taken per global step (``num_ids * world_size`` identities).

Views (``views=(V_vis, V_ir)``): each drawn image enters the batch ``V`` times, view 0 first; a dataset applies view
``v``'s transform to it (CAJ feeds every visible image twice, plainly and channel-exchanged: ``views=(2, 1)``). The
sampler then yields ``(index, seed, view)`` triples, the batch holds ``num_ids * num_instances * (V_vis + V_ir)`` items
(per identity: its K visible images in every visible view, then its K infrared images in every infrared view), and
the epoch length is unchanged: a view adds tensors, not images drawn. View 0's seeds are those of a run without views.

``sample_seeds=True`` makes the sampler yield ``(index, seed)`` pairs instead of plain indices: ``seed`` is an int in
``[0, 2**32)``, a function of (sampler seed, epoch, position of the sample in the epoch's global batch layout) only,
so a dataset that runs its random augmentation under that seed gives the same tensors whatever the number of
DataLoader workers.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from vdreid.errors import ConfigError

logger = logging.getLogger(__name__)

#: named epoch definitions (an explicit positive int of batches is the third kind)
EPOCH_DEFINITIONS = ("images", "identities")
EpochDefinition = str | int

# third word of the augmentation-seed stream's SeedSequence entropy, so that it never equals the index stream
# ``[seed, epoch]`` (a trailing zero would not change SeedSequence's state, hence a non-zero tag)
_SEED_STREAM_TAG = 0x5EED
_SEED_BOUND = 2**32


def parse_epoch_definition(value: Any, key: str = "sampler.epoch") -> EpochDefinition:
    """``'images'`` | ``'identities'`` | a positive number of batches (an int, or a string of digits as a config file
    or command line gives it). Anything else is a :class:`~vdreid.errors.ConfigError` naming ``key``."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in EPOCH_DEFINITIONS:
            return text
        if text.isdigit() and int(text) > 0:
            return int(text)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    raise ConfigError(
        f"{key}={value!r}: expected 'images' (AGW's epoch: one pass over the larger modality), 'identities' (the "
        "released VD code's epoch: each training identity once) or a positive number of batches per epoch"
    )


def iterations_per_epoch(
    definition: EpochDefinition,
    num_identities: int,
    num_visible: int,
    num_infrared: int,
    num_ids: int,
    num_instances: int,
    world_size: int = 1,
) -> int:
    """Batches per epoch and rank under ``definition`` (see the module docstring for the derivations).

    Args:
        definition: ``'images'``, ``'identities'`` or a positive int (see :func:`parse_epoch_definition`).
        num_identities: training identities that have images of both modalities (the ones the sampler draws).
        num_visible, num_infrared: training images of each modality (of those identities).
        num_ids, num_instances: P identities per batch and rank, K images per identity and modality.
        world_size: number of ranks; one step draws ``num_ids * world_size`` identities.
    """
    definition = parse_epoch_definition(definition)
    if isinstance(definition, int):
        return definition
    if definition == "images":
        # AGW utils.py IdentitySampler: int(N / (batch_size * num_pos)) + 1 with N = max(#visible, #infrared)
        return int(max(num_visible, num_infrared) // (num_ids * num_instances * world_size)) + 1
    # released VD code: len(sampler) = #ids * num_instances_VD, DataLoader(batch_size=B, drop_last=True) with
    # num_instances_VD = 2K and B = P * 2K  ->  floor(#ids * 2K / (P * 2K)) = #ids // P
    n = num_identities // (num_ids * world_size)
    if n < 1:
        raise ConfigError(
            f"sampler.epoch='identities': {num_identities} identities give no full batch of num_ids * world_size = "
            f"{num_ids * world_size} identities; lower sampler.num_ids"
        )
    return n


def _items(data_source: Any) -> Sequence[Sequence[Any]]:
    """Accept a list of torchreid items, or a dataset exposing ``.train`` (torchreid ``Dataset``) or ``.data``."""
    if hasattr(data_source, "train") and not isinstance(data_source, (list, tuple)):
        return data_source.train
    if hasattr(data_source, "data") and not isinstance(data_source, (list, tuple)):
        return data_source.data
    return data_source


#: how a batch's identities and images are drawn (config key ``sampler.draw``; module docstring)
DRAWS = ("balanced", "independent")


class CrossModalIdentitySampler(Sampler):
    """Yield dataset indices in batches of ``num_ids * 2 * num_instances`` (see the module docstring).

    Args:
        data_source: torchreid train items ``(img_path, pid, camid, dsetid)`` (or a dataset with ``.train``).
        num_ids: identities per batch and rank (P).
        num_instances: images per identity *and modality* (K).
        ir_camids: camids of infrared cameras (e.g. ``SYSUMM01.ir_camids``); every other camid is visible.
        seed: base seed; the epoch's stream is ``numpy.random.default_rng([seed, epoch])``.
        rank, world_size: ``torch.distributed`` placement.
        epoch_definition: ``'images'`` (default; AGW's epoch), ``'identities'`` (the released VD code's epoch) or a
            positive int of batches per epoch and rank (:func:`iterations_per_epoch`).
        num_batches: the same as ``epoch_definition=<int>`` (kept for existing callers); give one of the two.
        sample_seeds: yield ``(index, augmentation seed)`` pairs instead of plain indices.
        views: ``(visible views, infrared views)`` of every drawn image (module docstring); more than one yields
            ``(index, seed, view)`` triples (seeds are drawn whatever ``sample_seeds`` says).
        draw: ``'balanced'`` (identities in permutations, images without replacement) or ``'independent'`` (AGW's
            and CAJ's sampling law; module docstring).
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
        epoch_definition: EpochDefinition = "images",
        sample_seeds: bool = False,
        views: tuple[int, int] = (1, 1),
        draw: str = "balanced",
    ) -> None:
        for name, val in (("num_ids", num_ids), ("num_instances", num_instances), ("world_size", world_size)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ConfigError(f"CrossModalIdentitySampler: {name} must be a positive int, got {val!r}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"CrossModalIdentitySampler: rank={rank} outside 0..world_size-1={world_size - 1}")
        ir = frozenset(int(c) for c in ir_camids)
        if not ir:
            raise ConfigError(
                "CrossModalIdentitySampler: ir_camids is empty; pass the dataset's infrared camids "
                "(SYSUMM01.ir_camids = {2, 5}, RegDB.ir_camids = {1})"
            )
        if num_batches is not None:
            if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
                raise ConfigError(f"CrossModalIdentitySampler: num_batches must be a positive int, got {num_batches!r}")
            if epoch_definition != "images" and epoch_definition != num_batches:
                raise ConfigError(
                    f"CrossModalIdentitySampler: num_batches={num_batches} and epoch_definition={epoch_definition!r} "
                    "both set the epoch length; give one of them"
                )
            epoch_definition = num_batches
        views = tuple(views)
        if len(views) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in views):
            raise ConfigError(f"CrossModalIdentitySampler: views must be (visible views, infrared views), each a "
                              f"positive int, got {views!r}")
        self.views: tuple[int, int] = (int(views[0]), int(views[1]))
        self.epoch_definition = parse_epoch_definition(epoch_definition, "epoch_definition")
        self.num_ids, self.num_instances = num_ids, num_instances
        self.ir_camids, self.seed = ir, int(seed)
        self.rank, self.world_size = rank, world_size
        self.batch_size = num_ids * num_instances * sum(self.views)
        self.sample_seeds = bool(sample_seeds)
        if draw not in DRAWS:
            raise ConfigError(f"CrossModalIdentitySampler: draw (config key 'sampler.draw') must be one of "
                              f"{list(DRAWS)}, got {draw!r}")
        self.draw = draw

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
            raise ConfigError(
                f"CrossModalIdentitySampler: {len(both)} identities have both visible and infrared images, but a "
                f"batch needs num_ids * world_size = {needed}; lower num_ids (or check ir_camids={sorted(ir)})"
            )
        self.pids = np.asarray(both, dtype=np.int64)
        self._vis = [np.asarray(vis[p], dtype=np.int64) for p in both]
        self._ir = [np.asarray(inf[p], dtype=np.int64) for p in both]
        self.num_visible = int(sum(len(v) for v in self._vis))
        self.num_infrared = int(sum(len(v) for v in self._ir))
        self.num_batches = iterations_per_epoch(
            self.epoch_definition, len(both), self.num_visible, self.num_infrared, num_ids, num_instances, world_size
        )
        self.epoch = 0
        logger.debug(
            "CrossModalIdentitySampler: epoch=%r -> %d batches of %d (%d ids, %d visible, %d infrared images)",
            self.epoch_definition, self.num_batches, self.batch_size, len(both), self.num_visible, self.num_infrared,
        )

    @property
    def num_identities(self) -> int:
        """Training identities the sampler draws (those with images of both modalities)."""
        return len(self.pids)

    def set_epoch(self, epoch: int) -> None:
        """Use the stream of ``epoch`` for the next pass (call it every epoch in distributed training)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def _identity_batches(self, rng: np.random.Generator) -> np.ndarray:
        """(num_batches, num_ids * world_size) positions into ``self.pids``: consecutive random permutations, cut
        into batches, where a batch that straddles two permutations never repeats an identity (``draw='balanced'``),
        or distinct positions drawn afresh for every batch (``'independent'``)."""
        n, g = len(self.pids), self.num_ids * self.world_size
        out = np.empty((self.num_batches, g), dtype=np.int64)
        if self.draw == "independent":  # AGW's / CAJ's IdentitySampler: g distinct identities per batch, afresh
            for b in range(self.num_batches):
                out[b] = rng.choice(n, size=g, replace=False)
            return out
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
        replace = self.draw == "independent" or len(idx) < self.num_instances
        return rng.choice(idx, size=self.num_instances, replace=replace)

    def augmentation_seeds(self, epoch: int) -> np.ndarray:
        """Seeds of every position of epoch ``epoch``'s *global* layout, shape
        ``(num_batches, num_ids * world_size, 2, num_instances)`` (batch, identity slot, visible/infrared, instance).

        Position ``p`` of the flattened layout gets the ``p``-th draw of ``default_rng([seed, epoch, 0x5EED])``, so a
        seed depends on (sampler seed, epoch, position) only."""
        g = self.num_ids * self.world_size
        rng = np.random.default_rng([self.seed, int(epoch), _SEED_STREAM_TAG])
        return rng.integers(0, _SEED_BOUND, size=(self.num_batches, g, 2, self.num_instances), dtype=np.int64)

    def view_seeds(self, epoch: int, view: int) -> np.ndarray:
        """Seeds of the extra view ``view`` (>= 1) of every position of epoch ``epoch``'s global layout (the shape of
        :meth:`augmentation_seeds`), from ``default_rng([seed, epoch, 0x5EED, view])``."""
        g = self.num_ids * self.world_size
        rng = np.random.default_rng([self.seed, int(epoch), _SEED_STREAM_TAG, int(view)])
        return rng.integers(0, _SEED_BOUND, size=(self.num_batches, g, 2, self.num_instances), dtype=np.int64)

    def _with_views(self, out: np.ndarray, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """``(index, seed, view)`` per position: per identity, every view of its visible images, then every view of
        its infrared images."""
        vmax = max(self.views)
        seeds = [self.augmentation_seeds(self.epoch)[:, lo:hi]]
        seeds += [self.view_seeds(self.epoch, v)[:, lo:hi] for v in range(1, vmax)]
        items: list[tuple[int, int, int]] = []
        for b in range(out.shape[0]):
            for j in range(out.shape[1]):
                for m, nviews in enumerate(self.views):
                    for v in range(nviews):
                        items += [(int(i), int(sd), v) for i, sd in zip(out[b, j, m], seeds[v][b, j, m])]
        return items

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]] | Iterator[tuple[int, int, int]]:
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
        if self.views != (1, 1):
            items = self._with_views(out, lo, hi)
            self.epoch += 1
            return iter(items)
        indices = out.reshape(-1).tolist()
        if self.sample_seeds:
            seeds = self.augmentation_seeds(self.epoch)[:, lo:hi].reshape(-1).tolist()
            self.epoch += 1
            return iter(list(zip(indices, seeds)))
        self.epoch += 1  # the next pass differs even if nobody calls set_epoch
        return iter(indices)
