"""Train transforms by name, with the modality-aware augmentations VI re-ID methods use for RGB -> IR transfer.

``data.transforms`` lists names; the pipeline order is fixed (as in torchreid's ``build_transforms``), whatever the
order of the list. Each name may carry one number after a colon (``'random_gray:0.2'``, ``'pad_crop:4'``).

torchreid's names keep torchreid's behaviour (the same transform classes, built in the same order):

* ``random_flip`` -- horizontal flip with probability 0.5;
* ``random_crop`` -- torchreid's ``Random2DTranslation``: with p = 0.5 enlarge by 1.125 and crop back;
* ``random_patch``, ``color_jitter`` -- torchreid's;
* ``random_erase[:p]`` -- random erasing (Zhong et al., AAAI 2020) after normalisation, filled with ``norm_mean``;
  its area range is ``random_erase_area`` (config key ``data.random_erase_area``; torchreid's 0.02-0.4, DEEN's
  SYSU-MM01 recipe 0.2-0.8). torchreid's class is the same algorithm as the erasing of DEEN's and AGW's code
  (``random_erasing.py``: p, area range, aspect ratio 0.3-3.33, 100 tries, per-channel fill), so it is reused.

Added here:

* ``pad_crop[:pixels]`` -- AGW's train crop (``train.py``: ``Pad(10)`` then ``RandomCrop(288, 144)``): zero-pad the
  resized image and crop a random window of the input size back. Without a number the padding keeps AGW's
  proportion, ``round(10 * height / 288)`` pixels (at least 1).
* ``random_gray[:p]`` -- torchvision's ``RandomGrayscale`` (default p = 0.1), every image. With ``pad_crop`` it sits
  between the padding and the crop, DEEN's order (``DEEN/train.py``: ``Pad(10)``, ``RandomGrayscale(0.5)``,
  ``RandomCrop``, flip): grayscale acts on each pixel and maps the black padding to black, so the output distribution
  is the same in any order; this order also makes seeded runs draw the random numbers in DEEN's order.
* ``channel_exchange[:p]`` -- **visible images only**: with probability p (default 0.5) replace all three channels by
  one channel (R, G or B, uniformly), after normalisation. CAJ (Ye et al., ICCV 2021, ``ChannelExchange(gray=2)`` in
  ``ICCV21_CAJ/data_loader.py``) feeds every visible image twice, once plain and once exchanged; with one view per
  image, p = 0.5 gives the same mix.
* ``channel_erase[:p]`` -- CAJ's ``ChannelRandomErasing`` (p = 0.5, area 0.02-0.4, aspect >= 0.3) on every image:
  the same algorithm as torchreid's ``RandomErasing`` with its default fill (0.4914, 0.4822, 0.4465), reused.
* ``channel_adap_gray[:p]`` -- **infrared images only**: CAJ's ``ChannelAdapGray`` (``ICCV21_CAJ/ChannelAug.py``):
  after normalisation, pick one of four outcomes uniformly: copy channel R, G or B to all three, or (with
  probability p, default 0.5) replace the channels by ``0.2989 R + 0.5870 G + 0.1140 B``.
* ``caj`` -- CAJ's whole train augmentation in one name: ``channel_erase`` + ``channel_exchange`` +
  ``channel_adap_gray`` in CAJ's order (erasing first).

Every pipeline opens with a resize to the input size; ``data.resize_interpolation`` picks its filter: ``bilinear``
(torchreid's) or ``lanczos`` (PIL's ``ANTIALIAS``, the resize of AGW's and CAJ's data preparation, which also applies
to the test transform, :func:`build_test_transform`).

The channel operations act on the normalised tensor, as in CAJ's code (after ``Normalize``), so copying a channel
also changes the image's normalised brightness; that is part of the published augmentation.

Views: ``data.visible_views`` / ``data.infrared_views`` list extra views of every drawn image of that modality; each
entry names the transforms it adds to (or re-weights in) ``data.transforms``, joined by ``+`` (``'channel_exchange:1'``:
CAJ's second visible view, always channel-exchanged; ``''``: a second plain view). The sampler puts every view of an
image in the batch (:class:`~vdreid.data.sampler.CrossModalIdentitySampler`, ``views``) and
:class:`ModalityTransformDataset` applies view ``v``'s pipeline (:func:`build_view_transforms`).

Modality-aware pipelines (``channel_exchange``, ``channel_adap_gray``, ``caj``) are called as ``transform(img,
is_ir)``: the train loader of :class:`~vdreid.data.CrossModalDataManager` wraps its dataset in
:class:`ModalityTransformDataset`, which passes each item's modality (its camid among the infrared camids).
Randomness comes from Python's ``random`` and torch's global generator, as in torchvision and torchreid.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import transforms as T

from vdreid import compat
from vdreid.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: filters of the resize that opens the train and test pipelines (config key ``data.resize_interpolation``):
#: ``bilinear`` is torchreid's (and torchvision's default); ``lanczos`` is PIL's ``ANTIALIAS``, the filter AGW's and
#: CAJ's code resize every image with once before any augmentation (``pre_process_sysu.py``, ``RegDBData``,
#: ``TestData``), so the pixels match theirs
RESIZE_INTERPOLATIONS: dict[str, T.InterpolationMode] = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "lanczos": T.InterpolationMode.LANCZOS,
}


def resize_mode(name: str, key: str = "data.resize_interpolation") -> T.InterpolationMode:
    """The torchvision interpolation mode of ``name``; an unknown name raises a ConfigError naming ``key``."""
    mode = RESIZE_INTERPOLATIONS.get(str(name).lower())
    if mode is None:
        raise ConfigError(f"{key}: {name!r} is not one of {list(RESIZE_INTERPOLATIONS)}")
    return mode

#: name -> (what it does, default number or None when it takes none)
TRANSFORM_NAMES: dict[str, tuple[str, float | None]] = {
    "random_flip": ("horizontal flip, p = 0.5 (torchreid)", None),
    "random_crop": ("enlarge x1.125 and crop back, p = 0.5 (torchreid Random2DTranslation)", None),
    "random_patch": ("torchreid RandomPatch", None),
    "color_jitter": ("torchreid colour jitter (brightness 0.2, contrast 0.15)", None),
    "random_erase": ("random erasing after normalisation, fill = norm_mean (torchreid)", 0.5),
    "pad_crop": ("AGW: zero-pad, random crop back to the input size (pixels; default 10 * height / 288)", None),
    "random_gray": ("grayscale with probability p (torchvision RandomGrayscale)", 0.1),
    "channel_exchange": ("visible only: one random channel copied to all three with probability p (CAJ)", 0.5),
    "channel_erase": ("CAJ ChannelRandomErasing: random erasing with probability p", 0.5),
    "channel_adap_gray": ("infrared only: CAJ ChannelAdapGray (channel copy or gray with probability p)", 0.5),
    "caj": ("CAJ's train augmentation: channel_erase + channel_exchange + channel_adap_gray", None),
}

ALL, VISIBLE, INFRARED = "all", "visible", "infrared"


# ------------------------------------------------------------------------------------------ CAJ channel operations


class ChannelExchange:
    """With probability ``p``: copy one uniformly chosen channel of a (3, H, W) tensor to all three (CAJ)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        # p >= 1 is CAJ's ChannelExchange(gray=2) itself: no coin is tossed, one randint(0, 2) picks the channel
        if self.p < 1 and random.uniform(0, 1) >= self.p:
            return img
        c = random.randint(0, 2)
        return img[c : c + 1].expand_as(img).clone()

    def __repr__(self) -> str:
        return f"ChannelExchange(p={self.p})"


class ChannelAdapGray:
    """CAJ's ``ChannelAdapGray``: one of four outcomes uniformly; 0-2 copy that channel to all three, 3 replaces the
    channels by their luma ``0.2989 R + 0.5870 G + 0.1140 B`` with probability ``p`` (else leaves the image)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        idx = random.randint(0, 3)
        if idx < 3:
            return img[idx : idx + 1].expand_as(img).clone()
        if random.uniform(0, 1) > self.p:
            return img
        g = 0.2989 * img[0] + 0.5870 * img[1] + 0.1140 * img[2]
        return g.unsqueeze(0).expand_as(img).clone()

    def __repr__(self) -> str:
        return f"ChannelAdapGray(p={self.p})"


# ------------------------------------------------------------------------------------------ the pipeline


@dataclass(frozen=True)
class Step:
    name: str
    fn: Callable[[Any], Any]
    applies_to: str = ALL  # all | visible | infrared


class VITransform:
    """A train pipeline whose steps may apply to one modality only. Call as ``transform(img, is_ir)``; ``is_ir`` may
    be omitted when no step is modality-specific (:attr:`needs_modality` is False)."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)
        self.needs_modality = any(s.applies_to != ALL for s in self.steps)

    def __call__(self, img: Any, is_ir: bool | None = None) -> Any:
        if is_ir is None and self.needs_modality:
            names = [s.name for s in self.steps if s.applies_to != ALL]
            raise TypeError(
                f"this train transform has modality-specific steps {names}: call it as transform(img, is_ir) "
                "(CrossModalDataManager's train loader does; wrap other datasets in ModalityTransformDataset)"
            )
        for s in self.steps:
            if s.applies_to == ALL or (s.applies_to == INFRARED) == bool(is_ir):
                img = s.fn(img)
        return img

    def __repr__(self) -> str:
        rows = [f"  {s.fn!r}" + ("" if s.applies_to == ALL else f"  [{s.applies_to} only]") for s in self.steps]
        return "VITransform(\n" + "\n".join(rows) + "\n)"


def parse_names(names: str | Sequence[str] | None, key: str = "data.transforms") -> dict[str, float | None]:
    """``{name: number or None}`` from the config list; unknown names raise :class:`ConfigError` naming ``key``."""
    if names is None:
        return {}
    if isinstance(names, str):
        names = [names]
    out: dict[str, float | None] = {}
    for raw in names:
        text = str(raw).strip().lower()
        name, _, num = text.partition(":")
        if name not in TRANSFORM_NAMES:
            close = difflib.get_close_matches(name, list(TRANSFORM_NAMES), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{key}: unknown transform '{raw}'{hint}; valid names: {', '.join(TRANSFORM_NAMES)}")
        value: float | None = None
        if num:
            try:
                value = float(num)
            except ValueError:
                raise ConfigError(f"{key}: '{raw}': the part after ':' must be a number") from None
            if name == "pad_crop":
                if value < 0 or value != int(value):
                    raise ConfigError(f"{key}: '{raw}': pad_crop takes a whole number of pixels >= 0")
            elif TRANSFORM_NAMES[name][1] is None:
                raise ConfigError(f"{key}: '{raw}': '{name}' takes no number")
            elif not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key}: '{raw}': a probability in [0, 1] expected")
        out[name] = value
    return out


def build_train_transform(
    height: int,
    width: int,
    transforms: str | Sequence[str] | None = ("random_flip",),
    norm_mean: Sequence[float] | None = None,
    norm_std: Sequence[float] | None = None,
    random_erase_area: Sequence[float] = (0.02, 0.4),
    interpolation: str = "bilinear",
) -> VITransform:
    """The train pipeline for ``transforms`` (see the module docstring for names and order); ``random_erase_area``
    is the ``(min, max)`` area fraction of ``random_erase``; ``interpolation`` the filter of the first resize
    (:data:`RESIZE_INTERPOLATIONS`)."""
    tr = compat.data.transforms
    opts = parse_names(transforms)
    sl, sh = _erase_area(random_erase_area)
    if "caj" in opts:
        for n in ("channel_erase", "channel_exchange", "channel_adap_gray"):
            opts.setdefault(n, None)
    mean = list(norm_mean) if norm_mean is not None and norm_std is not None else list(IMAGENET_MEAN)
    std = list(norm_std) if norm_mean is not None and norm_std is not None else list(IMAGENET_STD)

    def p(name: str) -> float:
        v = opts[name]
        return float(TRANSFORM_NAMES[name][1] if v is None else v)  # type: ignore[arg-type]

    steps = [Step("resize", T.Resize((height, width), interpolation=resize_mode(interpolation)))]
    if "pad_crop" in opts:
        pad = int(opts["pad_crop"]) if opts["pad_crop"] is not None else max(1, round(10 * height / 288))
        gray = [T.RandomGrayscale(p=p("random_gray"))] if "random_gray" in opts else []
        steps += [Step("pad_crop", T.Compose([T.Pad(pad), *gray, T.RandomCrop((height, width))]))]
    # torchreid's order: flip, random_crop, random_patch, color_jitter
    if "random_flip" in opts:
        steps.append(Step("random_flip", T.RandomHorizontalFlip()))
    if "random_crop" in opts:
        steps.append(Step("random_crop", tr.Random2DTranslation(height, width)))
    if "random_patch" in opts:
        steps.append(Step("random_patch", tr.RandomPatch()))
    if "color_jitter" in opts:
        steps.append(Step("color_jitter", T.ColorJitter(brightness=0.2, contrast=0.15, saturation=0, hue=0)))
    if "random_gray" in opts and "pad_crop" not in opts:
        steps.append(Step("random_gray", T.RandomGrayscale(p=p("random_gray"))))
    steps += [Step("to_tensor", T.ToTensor()), Step("normalize", T.Normalize(mean=mean, std=std))]
    if "random_erase" in opts:
        steps.append(Step("random_erase", tr.RandomErasing(probability=p("random_erase"), sl=sl, sh=sh, mean=mean)))
    if "channel_erase" in opts:  # CAJ's ChannelRandomErasing is Zhong's erasing with these defaults
        steps.append(Step("channel_erase", tr.RandomErasing(probability=p("channel_erase"))))
    if "channel_exchange" in opts:
        steps.append(Step("channel_exchange", ChannelExchange(p("channel_exchange")), VISIBLE))
    if "channel_adap_gray" in opts:
        steps.append(Step("channel_adap_gray", ChannelAdapGray(p("channel_adap_gray")), INFRARED))
    out = VITransform(steps)
    logger.info("train transform: %r", out)
    return out


def view_names(base: str | Sequence[str] | None, extra: str, key: str) -> list[str]:
    """The transform names of one extra view: ``base`` (``data.transforms``) with the ``+``-joined names of ``extra``
    added, a name already in ``base`` taking ``extra``'s number. Unknown names raise a ConfigError naming ``key``."""
    base_list = [base] if isinstance(base, str) else list(base or [])
    added = [t for t in str(extra).split("+") if t.strip()]
    parse_names(added, key)
    names = {str(n).strip().lower().partition(":")[0]: str(n) for n in base_list}
    for t in added:
        names[t.strip().lower().partition(":")[0]] = t.strip()
    return list(names.values())


def build_view_transforms(
    height: int,
    width: int,
    transforms: str | Sequence[str] | None,
    views: Sequence[str],
    key: str,
    norm_mean: Sequence[float] | None = None,
    norm_std: Sequence[float] | None = None,
    random_erase_area: Sequence[float] = (0.02, 0.4),
    interpolation: str = "bilinear",
) -> list[VITransform]:
    """The pipelines of the extra views ``views`` (view 1, 2, ...) of one modality (:func:`view_names`)."""
    return [build_train_transform(height, width, view_names(transforms, v, f"{key}[{i}]"), norm_mean, norm_std,
                                  random_erase_area, interpolation) for i, v in enumerate(views)]


def build_test_transform(
    height: int,
    width: int,
    norm_mean: Sequence[float] | None = None,
    norm_std: Sequence[float] | None = None,
    interpolation: str = "bilinear",
) -> T.Compose:
    """torchreid's test transform (resize, tensor, normalisation) with the resize filter ``interpolation``."""
    mean = list(norm_mean) if norm_mean is not None and norm_std is not None else list(IMAGENET_MEAN)
    std = list(norm_std) if norm_mean is not None and norm_std is not None else list(IMAGENET_STD)
    return T.Compose([T.Resize((height, width), interpolation=resize_mode(interpolation)), T.ToTensor(),
                      T.Normalize(mean=mean, std=std)])


# ------------------------------------------------------------------------------------------ dataset wrapper


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with Python's ``random`` and torch's CPU generator seeded by ``seed``; restore both after."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        # the CPU generator only, the one fork_rng saves (torch.manual_seed would also seed every accelerator's
        # generators, several times the cost of the rest of this function: benchmarks/RESULTS.md, "Seeded transforms")
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


class ModalityTransformDataset(torch.utils.data.Dataset):
    """Apply a modality-aware train transform to the items of ``dataset`` (built with ``transform=None``).

    ``dataset[key]`` must return torchreid's item dict with the untransformed image under ``'img'``; the image's
    modality is ``item['camid'] in ir_camids``. A key ``(index, seed)`` (a sampler yielding augmentation seeds) runs
    the transform under that seed (:func:`seeded`); a key ``(index, seed, view)`` runs view ``view``'s pipeline
    (``view_transforms[modality][view - 1]`` for views >= 1; view 0 is ``transform``) and puts ``'view'`` in the item.
    Every other attribute (``train``, ``num_train_pids``, ...) is the wrapped dataset's.
    """

    def __init__(self, dataset: Any, transform: VITransform, ir_camids: frozenset[int] | set[int], k_tfm: int = 1,
                 view_transforms: dict[str, Sequence[VITransform]] | None = None):
        self.dataset = dataset
        self.transform = transform
        self.ir_camids = frozenset(int(c) for c in ir_camids)
        self.k_tfm = k_tfm
        self.view_transforms = {m: list(v) for m, v in (view_transforms or {}).items()}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): avoid recursing through __getattr__
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _apply(self, img: Any, is_ir: bool, view: int = 0) -> Any:
        tf = self.transform
        if view:
            views = self.view_transforms.get(INFRARED if is_ir else VISIBLE, [])
            if view > len(views):
                raise IndexError(f"view {view} of {'an infrared' if is_ir else 'a visible'} image: only "
                                 f"{len(views)} extra view(s) are configured")
            tf = views[view - 1]
        out = [tf(img, is_ir) for _ in range(self.k_tfm)]
        return out[0] if len(out) == 1 else out

    def __getitem__(self, key: Any) -> dict[str, Any]:
        seed, view = None, None
        if isinstance(key, (tuple, list)) and len(key) == 3:  # (index, seed, view)
            key, seed, view = int(key[0]), int(key[1]), int(key[2])
        elif isinstance(key, (tuple, list)) and len(key) == 2:  # (index, seed): the wrapped dataset needs no seed,
            key, seed = int(key[0]), int(key[1])  # its transform is None
        item = dict(self.dataset[key])
        is_ir = int(item["camid"]) in self.ir_camids
        if seed is None:
            item["img"] = self._apply(item["img"], is_ir)
        else:
            with seeded(seed):
                item["img"] = self._apply(item["img"], is_ir, view or 0)
        if view is not None:
            item["view"] = view
        return item


def _erase_area(area: Sequence[float], key: str = "data.random_erase_area") -> tuple[float, float]:
    """``(min, max)`` area fraction of random erasing, checked: two numbers with ``0 < min <= max <= 1``."""
    values = [float(v) for v in area]
    if len(values) != 2 or not 0 < values[0] <= values[1] <= 1:
        raise ConfigError(f"{key}: two area fractions [min, max] with 0 < min <= max <= 1 expected, got {list(area)}")
    return values[0], values[1]
