"""``CrossModalDataManager``: torchreid's ``ImageDataManager`` with the cross-modal sampler and protocol access.

torchreid has no hook for a custom train sampler and passes only its own keywords to datasets, so this subclass
builds the datasets itself (with the protocol options in ``dataset_kwargs``), wires
:class:`~vdreid.data.sampler.CrossModalIdentitySampler` into ``train_loader``, and exposes each target's
:class:`~vdreid.data.protocol.Protocol`. Everything an engine reads from an ``ImageDataManager`` (``train_loader``,
``test_loader``, ``test_dataset``, ``sources``, ``targets``, ``height``, ``width``, ``data_type``,
``num_train_pids``, ``num_train_cams``, ``transform_tr``/``transform_te``, ``fetch_test_loaders``) is present.

Each vdreid dataset is scanned once and shared by its train / query / gallery views (torchreid would scan it three
times). Multi-source training uses torchreid's ``Dataset.__add__``, which offsets pids and camids of later sources;
``train_ir_camids`` follows those offsets. Limits of multi-source: the merged set is a plain torchreid
``ImageDataset`` (torchreid's image reader, no ``protocol``), and identities of different sources may share a batch.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from typing import Any

import torch

from vdreid import compat
from vdreid.data.base import VIImageDataset
from vdreid.data.protocol import Protocol
from vdreid.data.sampler import CrossModalIdentitySampler
from vdreid.data.transforms import (
    INFRARED,
    VISIBLE,
    ModalityTransformDataset,
    build_test_transform,
    build_train_transform,
    build_view_transforms,
    resize_mode,
)
from vdreid.errors import ConfigError

logger = logging.getLogger(__name__)
_TORCHREID_DATASET_KWARGS = ("split_id", "cuhk03_labeled", "cuhk03_classic_split", "market1501_500k")
_IGNORED_SAMPLERS = (None, "RandomSampler", "CrossModalIdentitySampler")


def dataset_class(name: str) -> type:
    """The class torchreid has registered under ``name`` (raises with the list of names if unknown)."""
    reg = compat._image_dataset_registry()
    if name not in reg:
        raise ConfigError(f"config key 'data.sources'/'data.targets': unknown dataset {name!r}; "
                          f"registered: {sorted(reg)}")
    return reg[name]


def _option_names(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is VIImageDataset:
            break
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {p for p in inspect.signature(init).parameters if p not in ("self", "root", "kwargs")}
    return names


class CrossModalDataManager(compat.ImageDataManager):
    """Image data manager whose train loader yields P identities x (K visible + K infrared) per batch.

    Args:
        root: data root holding ``SYSU-MM01/`` and/or ``RegDB/``.
        sources, targets: registered dataset names (``sysu_mm01``, ``sysu_mm01_indoor``, ``regdb``, ``regdb_t2v``, ...).
        height, width, transforms, norm_mean, norm_std: as torchreid's (``transforms`` default: random flip, the
            official VD recipe: resize + flip, docs/vd-recipes.md section 4); ``transforms`` also takes the VI
            augmentations of
            :mod:`vdreid.data.transforms` (``pad_crop``, ``random_gray``, ``channel_exchange``, ``caj``, ...).
        random_erase_area: ``(min, max)`` area fraction of ``random_erase`` (torchreid's 0.02-0.4).
        resize_interpolation: filter of the resize opening the train and test transforms: ``'bilinear'``
            (torchreid's) or ``'lanczos'`` (PIL's ANTIALIAS, as AGW's and CAJ's data preparation resizes).
        visible_views, infrared_views: extra views of every drawn image of that modality, each the transform names it
            adds to ``transforms`` joined by ``+`` (:mod:`vdreid.data.transforms`, "Views"): CAJ's
            ``visible_views=['channel_exchange:1']`` feeds every visible image plainly and channel-exchanged.
        batch_size_test, workers: test batch size and loader workers.
        num_ids, num_instances: P and K; the train batch size is ``num_ids * num_instances * (V_vis + V_ir)`` (one view
            each: ``num_ids * 2 * num_instances``).
        seed: sampler seed (batches are a function of seed and epoch).
        epoch_definition: epoch length of the train sampler: ``'images'`` (AGW's), ``'identities'`` (the released VD
            code's) or a number of batches (see :func:`vdreid.data.sampler.iterations_per_epoch`).
        sample_seeds: the train sampler yields ``(index, augmentation seed)`` pairs (the dataset must accept them).
        sampler_draw: how the train sampler draws identities and images: ``'balanced'`` or ``'independent'`` (AGW's
            and CAJ's law; :class:`~vdreid.data.sampler.CrossModalIdentitySampler`).
        dataset_kwargs: protocol options for the vdreid datasets, e.g. ``{'search_mode': 'indoor', 'shots': 10}`` or
            ``{'trial': 3}``; either one dict for every vdreid dataset, or ``{name: {...}}`` per dataset name.
        rank, world_size: ``torch.distributed`` placement of the train sampler.
        **kwargs: the other ``ImageDataManager`` keywords (``use_gpu``, ``k_tfm``, ``combineall``, ``split_id``, ...).
            ``batch_size_train`` must equal the train batch size if given; ``load_train_targets`` is not
            supported.
    """

    def __init__(
        self,
        root: str = "",
        sources: str | list[str] | None = None,
        targets: str | list[str] | None = None,
        height: int = 256,
        width: int = 128,
        transforms: str | list[str] | tuple[str, ...] | None = ("random_flip",),
        norm_mean: list[float] | None = None,
        norm_std: list[float] | None = None,
        random_erase_area: tuple[float, float] | list[float] = (0.02, 0.4),
        resize_interpolation: str = "bilinear",
        visible_views: list[str] | tuple[str, ...] = (),
        infrared_views: list[str] | tuple[str, ...] = (),
        batch_size_test: int = 64,
        workers: int = 2,
        num_ids: int = 16,
        num_instances: int = 2,
        seed: int = 0,
        epoch_definition: str | int = "images",
        sample_seeds: bool = False,
        sampler_draw: str = "balanced",
        dataset_kwargs: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        **kwargs: Any,
    ) -> None:
        use_gpu = kwargs.pop("use_gpu", True)
        k_tfm = kwargs.pop("k_tfm", 1)
        combineall = kwargs.pop("combineall", False)
        views = (1 + len(visible_views), 1 + len(infrared_views))
        batch_size = num_ids * num_instances * sum(views)
        bst = kwargs.pop("batch_size_train", None)
        if bst is not None and bst != batch_size:
            raise ValueError(
                f"CrossModalDataManager: batch_size_train={bst} but num_ids * "
                f"{'2' if views == (1, 1) else f'{sum(views)} views'} * num_instances = {batch_size}; "
                "set num_ids / num_instances instead (or drop batch_size_train)"
            )
        sampler_name = kwargs.pop("train_sampler", None)
        if sampler_name not in _IGNORED_SAMPLERS:
            warnings.warn(
                f"CrossModalDataManager always uses CrossModalIdentitySampler; train_sampler={sampler_name!r} ignored",
                stacklevel=2,
            )
        for key in ("train_sampler_t", "num_cams", "num_datasets"):
            kwargs.pop(key, None)  # torchreid sampler options with no meaning here
        if kwargs.pop("load_train_targets", False):
            raise ValueError("CrossModalDataManager: load_train_targets=True (domain adaptation) is not supported")
        tr_kwargs = {k: kwargs.pop(k) for k in _TORCHREID_DATASET_KWARGS if k in kwargs}
        if kwargs:
            raise TypeError(f"CrossModalDataManager: unexpected keyword arguments {sorted(kwargs)}")
        if isinstance(transforms, tuple):
            transforms = list(transforms)  # torchreid's build_transforms accepts str or list only

        # DataManager.__init__ (parent of ImageDataManager): sources/targets, transforms, use_gpu
        super(compat.ImageDataManager, self).__init__(
            sources=sources, targets=targets, height=height, width=width, transforms=transforms,
            norm_mean=norm_mean, norm_std=norm_std, use_gpu=use_gpu,
        )
        self.root = root
        self._tr_kwargs = tr_kwargs
        self._combineall = combineall
        self._per_name = self._split_dataset_kwargs(dataset_kwargs or {})
        self._instances: dict[str, Any] = {}

        # train transform from vdreid.data.transforms: torchreid's names keep their behaviour, and unknown names are
        # an error (torchreid ignores them); modality-specific steps get each item's modality through a wrapper
        resize_mode(resize_interpolation, "CrossModalDataManager: resize_interpolation")
        self.transform_tr = build_train_transform(height, width, transforms, norm_mean, norm_std, random_erase_area,
                                                  resize_interpolation)
        self.view_transforms = {
            VISIBLE: build_view_transforms(height, width, transforms, list(visible_views), "data.visible_views",
                                           norm_mean, norm_std, random_erase_area, resize_interpolation),
            INFRARED: build_view_transforms(height, width, transforms, list(infrared_views), "data.infrared_views",
                                            norm_mean, norm_std, random_erase_area, resize_interpolation),
        }
        if resize_interpolation != "bilinear":  # torchreid's test transform (built above) resizes bilinearly
            self.transform_te = build_test_transform(height, width, norm_mean, norm_std, resize_interpolation)
        modal = self.transform_tr.needs_modality or views != (1, 1)
        logger.info("=> Loading train (source) dataset")
        trainsets = [self._view(name, "train", None if modal else self.transform_tr, k_tfm) for name in self.sources]
        trainset = sum(trainsets)
        self._num_train_pids = trainset.num_train_pids
        self._num_train_cams = trainset.num_train_cams
        self.train_ir_camids = self._merged_ir_camids(trainsets)
        if modal:
            trainset = ModalityTransformDataset(trainset, self.transform_tr, self.train_ir_camids, k_tfm,
                                                view_transforms=self.view_transforms)
        self.train_sampler = CrossModalIdentitySampler(
            trainset.train, num_ids=num_ids, num_instances=num_instances, ir_camids=self.train_ir_camids, seed=seed,
            rank=rank, world_size=world_size, epoch_definition=epoch_definition, sample_seeds=sample_seeds,
            draw=sampler_draw,
            views=views,
        )
        self.train_loader = torch.utils.data.DataLoader(
            trainset, sampler=self.train_sampler, batch_size=batch_size, shuffle=False, num_workers=workers,
            pin_memory=self.use_gpu, drop_last=True,
        )
        self.train_loader_t = None

        logger.info("=> Loading test (target) dataset")
        self.test_loader: dict[str, dict[str, torch.utils.data.DataLoader]] = {}
        self.test_dataset: dict[str, dict[str, list]] = {}
        self.protocols: dict[str, Protocol] = {}
        self.val_protocols: dict[str, Protocol] = {}
        self.val_loader: dict[str, dict[str, torch.utils.data.DataLoader]] = {}
        self.val_dataset: dict[str, dict[str, list]] = {}

        def loader(ds: Any) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(
                ds, batch_size=batch_size_test, shuffle=False, num_workers=workers, pin_memory=self.use_gpu,
                drop_last=False,
            )

        for name in self.targets:
            q, g = self._view(name, "query", self.transform_te), self._view(name, "gallery", self.transform_te)
            self.test_loader[name] = {"query": loader(q), "gallery": loader(g)}
            self.test_dataset[name] = {"query": q.query, "gallery": g.gallery}
            if hasattr(q, "protocol"):
                self.protocols[name] = q.protocol
        for name in dict.fromkeys(list(self.sources) + list(self.targets)):
            ds = self._instances.get(name)
            if ds is not None and getattr(ds, "val_protocol", None) is not None:
                vq, vg = self._view(name, "query", self.transform_te), self._view(name, "gallery", self.transform_te)
                vq.data, vg.data = ds.val_query, ds.val_gallery
                self.val_protocols[name] = ds.val_protocol
                self.val_loader[name] = {"query": loader(vq), "gallery": loader(vg)}
                self.val_dataset[name] = {"query": ds.val_query, "gallery": ds.val_gallery}

        summary = [
            "  **************** Summary ****************",
            f"  source            : {self.sources}",
            f"  # source ids      : {self.num_train_pids}",
            f"  # source images   : {len(trainset)}  (infrared camids {sorted(self.train_ir_camids)})",
            f"  train batches     : {len(self.train_loader)} x {batch_size} ({num_ids} ids x ({num_instances} vis"
            f"{f' x {views[0]} views' if views[0] > 1 else ''} + {num_instances} ir"
            f"{f' x {views[1]} views' if views[1] > 1 else ''}))",
            f"  target            : {self.targets}",
        ]
        summary += [f"  protocol          : {name}: {p.name}" for name, p in self.protocols.items()]
        summary += [f"  val protocol      : {name}: {p.name}" for name, p in self.val_protocols.items()]
        logger.info("\n".join(summary + ["  *****************************************"]))

    # ------------------------------------------------------------------ helpers

    def _split_dataset_kwargs(self, dataset_kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        names = set(self.sources) | set(self.targets)
        by_name = bool(dataset_kwargs) and set(dataset_kwargs) <= names
        by_name = by_name and all(isinstance(v, dict) for v in dataset_kwargs.values())
        per_name: dict[str, dict[str, Any]] = {}
        for n in sorted(names):
            opts = dict(dataset_kwargs.get(n, {})) if by_name else dict(dataset_kwargs)
            cls = dataset_class(n)
            if not (isinstance(cls, type) and issubclass(cls, VIImageDataset)):
                if by_name and opts:
                    raise ValueError(f"dataset_kwargs for {n!r}: only vdreid datasets take protocol options")
                per_name[n] = {}  # a flat dict applies to the vdreid datasets only
                continue
            per_name[n] = opts
            unknown = set(opts) - _option_names(cls)
            if unknown:
                raise ValueError(
                    f"dataset_kwargs: {sorted(unknown)} are not options of {cls.__name__} ({n!r}); "
                    f"valid: {sorted(_option_names(cls))}"
                )
        return per_name

    def _view(self, name: str, mode: str, transform: Any, k_tfm: int = 1) -> Any:
        """The ``mode`` view of dataset ``name``. vdreid datasets are built once and shallow-copied per mode."""
        cls = dataset_class(name)
        common = dict(combineall=self._combineall, root=self.root, **self._tr_kwargs)
        if not (isinstance(cls, type) and issubclass(cls, VIImageDataset)):
            return compat.data.datasets.init_image_dataset(
                name, transform=transform, k_tfm=k_tfm, mode=mode, verbose=mode != "gallery", **common
            )
        if name not in self._instances:
            self._instances[name] = cls(mode="train", verbose=True, **common, **self._per_name.get(name, {}))
        view = copy.copy(self._instances[name])
        view.mode, view.transform, view.k_tfm = mode, transform, k_tfm
        view.data = {"train": view.train, "query": view.query, "gallery": view.gallery}[mode]
        return view

    @staticmethod
    def _merged_ir_camids(trainsets: list[Any]) -> frozenset[int]:
        """Infrared camids of ``sum(trainsets)``: torchreid's ``__add__`` offsets a later source's camids by the
        accumulated set's ``num_train_cams``."""
        acc = trainsets[0]
        ir = set(getattr(acc, "ir_camids", ()))
        for ds in trainsets[1:]:
            ir |= {c + acc.num_train_cams for c in getattr(ds, "ir_camids", ())}
            acc = acc + ds
        return frozenset(ir)

    def ir_camids_of(self, name: str) -> frozenset[int]:
        """Infrared camids of dataset ``name`` as its query/gallery items use them (empty for RGB-only datasets)."""
        return frozenset(getattr(dataset_class(name), "ir_camids", frozenset()))
