"""Common base of the VI datasets: a torchreid ``ImageDataset`` that knows its infrared cameras and protocol."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

from yacs.config import CfgNode as CN

from vdreid import compat
from vdreid.data.errors import read_image_rgb
from vdreid.data.protocol import Protocol
from vdreid.data.synthetic_layout import SyntheticLayout
from vdreid.data.transforms import seeded

logger = logging.getLogger(__name__)

Item = tuple[str, int, int, int]


class VIImageDataset(compat.ImageDataset):
    """torchreid ``ImageDataset`` with ``ir_camids`` (class attribute) and ``protocol`` (instance attribute).

    Items are torchreid 4-tuples ``(img_path, pid, camid, dsetid)`` with 0-based camids. ``__getitem__`` returns
    torchreid's dict but reads images strictly: an unreadable file raises :class:`~vdreid.data.errors.ImageReadError`
    naming the path (torchreid's reader would retry forever).
    """

    ir_camids: frozenset[int] = frozenset()
    protocol: Protocol
    #: keyword defaults of a registered preset (e.g. ``sysu_mm01_indoor``); empty for the plain classes
    preset_defaults: dict[str, Any] = {}

    # ---- what a dataset family declares (vdreid.data.registry asks these; docs/adding-a-dataset.md)
    #: the config section the family owns, ``data.<config_section>`` ("" = no options)
    config_section: ClassVar[str] = ""
    #: the family's name in messages ("SYSU-MM01")
    display_name: ClassVar[str] = ""
    #: its synthetic layout writer (``vdreid make-synthetic --layout``), or None
    synthetic: ClassVar[SyntheticLayout | None] = None
    #: a key of the section selecting one of several train/test splits (``vdreid train --split N``), and its values
    split_key: ClassVar[str] = ""
    split_values: ClassVar[tuple[int, ...]] = ()
    #: keys of the section that may change when a run resumes (evaluation-only options)
    resume_may_change: ClassVar[tuple[str, ...]] = ()
    #: fnmatch patterns of the first component of the protocol strings it writes (``'sysu'``, ``'sysu-val'``)
    protocol_prefixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def config(cls) -> CN:
        """Defaults of the family's config section (empty: the family has no options)."""
        return CN()

    @classmethod
    def from_config(cls, node: CN) -> dict[str, Any]:
        """Constructor keyword arguments from the family's config section (checked; errors name the key)."""
        return {k: v for k, v in node.items()}

    @classmethod
    def ranges(cls) -> dict[str, tuple[Callable[[Any], bool], str]]:
        """Numeric range rules of the section's keys, by key *within* the section (``{'trial': rule}``)."""
        return {}

    @classmethod
    def free_numeric_keys(cls) -> frozenset[str]:
        """Numeric keys of the section with no range, by key within the section."""
        return frozenset()

    @classmethod
    def canonical_protocol(cls, protocol: str) -> str:
        """The current spelling of a protocol string this family wrote (older spellings translated)."""
        return protocol

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """torchreid's item dict. ``index`` is an int, or an ``(index, seed)`` pair from a sampler that yields
        augmentation seeds (``CrossModalIdentitySampler(sample_seeds=True)``): the random transform then runs under
        ``seed`` (:func:`vdreid.data.transforms.seeded`), so an image's augmentation depends on (sampler seed, epoch,
        position) only, and not on which DataLoader worker (or how many workers) produced it."""
        seed = None
        if isinstance(index, (tuple, list)):
            if len(index) != 2:
                raise TypeError(f"{type(self).__name__}[...]: expected an int or an (index, seed) pair, got {index!r}")
            index, seed = int(index[0]), int(index[1])
        img_path, pid, camid, dsetid = self.data[index]
        img = read_image_rgb(img_path)
        if self.transform is not None:
            if seed is None:
                img = self._transform_image(self.transform, self.k_tfm, img)
            else:
                with seeded(seed):
                    img = self._transform_image(self.transform, self.k_tfm, img)
        return {"img": img, "pid": pid, "camid": camid, "impath": img_path, "dsetid": dsetid}

    def __add__(self, other: Any) -> Any:
        """torchreid's sum of training sets (pids, camids and dsetids of ``other`` offset), kept a
        :class:`VIImageDataset` so that the combined set also reads images strictly and accepts ``(index, seed)``
        keys (torchreid's ``__add__`` returns its plain ``ImageDataset``)."""
        out = super().__add__(other)
        if isinstance(out, compat.ImageDataset) and not isinstance(out, VIImageDataset):
            out = VIImageDataset(out.train, out.query, out.gallery, transform=out.transform, k_tfm=self.k_tfm,
                                 mode=out.mode, combineall=False, verbose=False)
        return out

    def modality_counts(self, items: list[Item]) -> tuple[int, int]:
        """(#visible, #infrared) images in ``items``."""
        n_ir = sum(1 for it in items if it[2] in self.ir_camids)
        return len(items) - n_ir, n_ir

    def show_summary(self) -> None:
        def row(name: str, items: list[Item]) -> str:
            v, i = self.modality_counts(items)
            return f"  {name:<9}| {self.get_num_pids(items):5d} | {len(items):8d} | {v:7d} | {i:8d}"

        sizes = sorted({int(g.size) for g in self.protocol.gallery_trials})
        rule = "  ---------------------------------------------------"
        logger.info("\n".join([
            f"=> Loaded {self.__class__.__name__} ({self.protocol.name})", rule,
            "  subset   | # ids | # images | visible | infrared", rule,
            row("train", self.train), row("query", self.query), row("gallery", self.gallery),
            f"  gallery per trial: {sizes if len(sizes) > 1 else sizes[0]} images, {self.protocol.num_trials} trials",
            rule,
        ]))


def preset_class(base: type[VIImageDataset], name: str, doc: str, **defaults: Any) -> type[VIImageDataset]:
    """A subclass of ``base`` whose constructor defaults to ``defaults`` (registered torchreid names such as
    ``sysu_mm01_indoor``: torchreid's data manager passes only its own keywords, so options live in the class)."""

    def __init__(self: VIImageDataset, root: str = "", **kwargs: Any) -> None:
        base.__init__(self, root, **{**defaults, **kwargs})

    init: Callable[..., None] = __init__
    return type(name, (base,), {"__init__": init, "preset_defaults": dict(defaults), "__doc__": doc})
