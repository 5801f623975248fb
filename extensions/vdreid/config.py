"""yacs configuration of vdreid: torchreid's section names (``model``, ``data``, ``sampler``, ``train``, ``loss``,
``test``) plus a ``vd`` section for Variational Distillation (paper section 3, Eq. 16-17; implementation details of
section 4.2; the released code's recipe: docs/vd-recipes.md).

torchreid's registry package does not ship its ``default_config.py``, so the defaults live here. Config files may
name a parent with a ``_base_`` key (a path relative to the file, or a list of paths): parents are merged first, so an
ablation file states only what differs. Merge order: defaults <- ``_base_`` chain <- the file <- ``KEY VALUE`` pairs
from the command line.

We do not use yacs's own ``merge_from_file``/``merge_from_list`` for validation because their errors name neither the
file nor the closest valid key and reject ``1`` for a float; :func:`merge_dict` checks every key and type and says
what to do.
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import math
import os
import os.path as osp
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from vdreid import runtime
from vdreid.errors import ConfigError, ConfigFileNotFoundError
from vdreid.recipes import resolve_config
from vdreid.textfile import decode_text

__all__ = [
    "ConfigError",
    "get_default_config",
    "load_config",
    "merge_dict",
    "merge_from_list",
    "read_yaml_with_bases",
    "config_hash",
    "flat_keys",
    "explicit_keys",
    "set_explicit_keys",
    "NON_SEMANTIC_KEYS",
    "SectionSpec",
    "register_section",
    "register_check",
    "register_default",
    "get_key",
    "sections",
    "all_ranges",
    "free_numeric_keys",
]

Rule = tuple[Callable[[Any], bool], str]


@dataclass(frozen=True)
class SectionSpec:
    """A config section owned by a component (a dataset family, a method), registered with
    :func:`register_section`. The config machinery knows sections only through these records.

    Attributes:
        path: where the section sits in the tree, dotted (``'vd'``, ``'data.sysu'``).
        defaults: returns the section's defaults (a fresh ``CfgNode``).
        owner: who reads it, for messages (e.g. the method's or the dataset family's name).
        ranges: numeric range rules of its keys, full dotted key -> ``(test, expected)``.
        free_numeric: numeric keys with no range (any finite value).
        list_elements: element type of its list keys whose default is empty (full dotted key -> example value).
        check: value checks of the section given the whole config (raise :class:`ConfigError` naming the key).
        selected_by: ``(key, value)``: the section is read only when ``cfg[key] == value`` (a method's section is read
            only when ``model.method`` picks it); a key of an unselected section set in a file or an override is an
            error instead of being silently ignored.
    """

    path: str
    defaults: Callable[[], CN]
    owner: str = ""
    ranges: Mapping[str, Rule] = field(default_factory=dict)
    free_numeric: frozenset[str] = frozenset()
    list_elements: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[CN], None] | None = None
    selected_by: tuple[str, str] | None = None


_SECTIONS: dict[str, SectionSpec] = {}
_CHECKS: dict[str, Callable[[CN], None]] = {}
_DEFAULTS: dict[str, Any] = {}
_DEFAULT_CACHE: list[CN] = []


def register_section(spec: SectionSpec) -> SectionSpec:
    """Add (or replace, for a re-registration under the same path) a section owned by a component. Datasets and
    methods register theirs when they register themselves (``vdreid.data.register_dataset``,
    ``vdreid.methods.register``); the default config is the base tree plus every registered section."""
    parent = spec.path.rsplit(".", 1)[0] if "." in spec.path else ""
    if parent and parent not in _base_config():
        raise ValueError(f"config section '{spec.path}': its parent '{parent}' is not a base section")
    _SECTIONS[spec.path] = spec
    _DEFAULT_CACHE.clear()
    return spec


def register_default(key: str, value: Any) -> None:
    """Set the default of a base key that names a registered component (``model.method``, ``model.name``,
    ``data.sources``, ``data.targets``): the registries set them (the default method and dataset say so when they
    register), so this module names none."""
    if not _has(_base_config(), key):
        raise ValueError(f"register_default: '{key}' is not a base config key")
    _DEFAULTS[key] = copy.deepcopy(value)
    _DEFAULT_CACHE.clear()


def register_check(name: str, check: Callable[[CN], None]) -> None:
    """Add a whole-config value check run by :func:`check_values` (e.g. the selected method's own checks)."""
    _CHECKS[name] = check


def defaults_changed() -> None:
    """Forget the cached default tree: an owner's defaults changed after its section was registered (a VD loss
    term registered by a plug-in adds ``vd.weights.<term>``; ``vdreid.losses.register_term`` calls this)."""
    _DEFAULT_CACHE.clear()


def sections() -> list[SectionSpec]:
    """The registered sections, in registration order."""
    return list(_SECTIONS.values())


def _section_of(key: str) -> SectionSpec | None:
    for spec in _SECTIONS.values():
        if key == spec.path or key.startswith(spec.path + "."):
            return spec
    return None


def all_ranges() -> dict[str, Rule]:
    """Numeric range rules of every key: the base keys' (:data:`RANGES`) and each registered section's own."""
    out = dict(RANGES)
    for spec in _SECTIONS.values():
        out.update(spec.ranges)
    return out


def free_numeric_keys() -> frozenset[str]:
    """Numeric keys with no range: the base's (:data:`FREE_NUMERIC_KEYS`) and each section's."""
    out = set(FREE_NUMERIC_KEYS)
    for spec in _SECTIONS.values():
        out |= set(spec.free_numeric)
    return frozenset(out)




def get_default_config() -> CN:
    """Every valid key with its default: the base tree (torchreid's section names ``model``, ``data``, ``sampler``,
    ``train``, ``test``) plus every registered section (:func:`register_section`): one per dataset family under
    ``data`` (``data.sysu``, ...) and one or more per method (``vd`` and ``loss``, ``agw``, ...). Defaults follow VD's
    paper recipe (section 4.2) at full scale. Returns a fresh, unfrozen tree."""
    if not _DEFAULT_CACHE:
        cfg = _base_config()
        for spec in _SECTIONS.values():
            parent, _, leaf = spec.path.rpartition(".")
            (cfg[parent] if parent else cfg)[leaf] = spec.defaults()
        for key, value in _DEFAULTS.items():
            parent, _, leaf = key.rpartition(".")
            _get(cfg, parent)[leaf] = copy.deepcopy(value)
        cfg.freeze()
        _DEFAULT_CACHE.append(cfg)
    cfg = _DEFAULT_CACHE[0].clone()
    cfg.defrost()
    return cfg


def _base_config() -> CN:
    """The base tree: the keys every run reads, whatever its method and dataset."""
    cfg = CN()

    # ---------------------------------------------------------------- model
    cfg.model = CN()
    cfg.model.method = ""  # the registered method (vdreid.methods.names()); default: the registry's default method
    cfg.model.name = ""  # a registered torchreid model of that method (its preset); default: the method's default
    cfg.model.backbone = ""  # optional timm encoder name overriding the preset's backbone
    cfg.model.pretrained = True  # ImageNet weights for the encoders (from pretrained_path when given)
    cfg.model.pretrained_path = ""  # local timm/torchvision weights file (nothing downloads when this is set)
    cfg.model.load_weights = ""  # checkpoint to initialise from (weights only)
    cfg.model.resume = ""  # checkpoint to resume training from (model, optimiser, scheduler, RNG, epoch)

    # ---------------------------------------------------------------- data
    cfg.data = CN()
    cfg.data.root = "datasets"  # folder holding SYSU-MM01/, RegDB/, LLCM/
    cfg.data.sources = []  # registered dataset names; default: the dataset registry's default dataset
    cfg.data.targets = []
    cfg.data.workers = 4
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.transforms = ["random_flip"]  # paper: horizontal flip + normalisation only
    cfg.data.norm_mean = [0.485, 0.456, 0.406]
    cfg.data.norm_std = [0.229, 0.224, 0.225]
    cfg.data.random_erase_area = [0.02, 0.4]  # area range (fraction of the image) of random_erase (torchreid's)
    # filter of the resize opening the train and test transforms: bilinear (torchreid's) | lanczos (PIL's ANTIALIAS)
    cfg.data.resize_interpolation = "bilinear"
    # extra views of every drawn image of one modality, each the transforms it adds to data.transforms joined by '+'
    # (CAJ: [channel_exchange:1], every visible image also channel-exchanged); [] = one view
    cfg.data.visible_views = []
    cfg.data.infrared_views = []
    cfg.data.save_dir = "log"
    cfg.data.synthetic = False  # the root is a synthetic tree (recorded in results, kept apart on the leaderboard)

    # ---------------------------------------------------------------- sampler
    cfg.sampler = CN()
    cfg.sampler.num_ids = 16  # P identities per batch
    cfg.sampler.num_instances = 2  # K visible + K infrared images per identity (paper: 16 x (2 + 2) = 64)
    cfg.sampler.seed = 1
    # what one epoch is: identities (each training identity once: the released VD code's) | images (AGW's:
    # max(#visible, #infrared) images) | a number of iterations
    cfg.sampler.epoch = "identities"
    # balanced (identities in random permutations, images without replacement) | independent (every batch's identities
    # drawn afresh, images with replacement: the IdentitySampler of AGW's code and its descendants)
    cfg.sampler.draw = "balanced"

    # ---------------------------------------------------------------- train
    cfg.train = CN()
    cfg.train.optim = "adam"  # adam | sgd
    cfg.train.lr = 2.6e-4
    cfg.train.weight_decay = 5e-4
    cfg.train.momentum = 0.9  # sgd only
    cfg.train.nesterov = False  # sgd only
    cfg.train.max_epoch = 300
    cfg.train.start_epoch = 0
    cfg.train.lr_scheduler = "warmup_multistep"  # warmup_multistep | cosine (both with linear warm-up)
    cfg.train.stepsize = [200]  # milestones (epochs) of the x gamma decay
    cfg.train.gamma = 0.1
    cfg.train.warmup_epochs = 10
    cfg.train.warmup_factor = 0.01
    # when the per-epoch schedule steps: end (torchreid: epoch e trains with step e) | start (the released VD code,
    # and AGW's per-epoch adjustment: epoch e trains with step e + 1)
    cfg.train.scheduler_step = "end"
    cfg.train.print_freq = 20  # iterations between progress-bar loss updates and per-iteration tensorboard points
    cfg.train.seed = 1
    cfg.train.amp = "none"  # none | bf16 | fp16
    cfg.train.channels_last = False
    cfg.train.grad_clip = 0.0
    cfg.train.sync_bn = False
    cfg.train.selection = "final"  # final | val | test (the model tested: last, best on val, best on test (flagged))
    cfg.train.eval_freq = 0  # evaluate every N epochs on the selection protocol (0: only at the end)
    cfg.train.eval_start = 0  # first epoch of the periodic evaluation
    # periodic evaluation after the 1-based epochs d with d % eval_freq == eval_phase (0: torchreid's eval_freq,
    # 2 eval_freq, ...; 1 with eval_freq 2: 3, 5, ..., the epochs AGW's and CAJ's loops test after); below eval_freq
    cfg.train.eval_phase = 0
    # selection val | test also evaluates after the last epoch; false: only when it is periodic (the original loops)
    cfg.train.eval_last = True
    # flip test-time augmentation of the selection evaluations: auto (as test.flip) | true | false
    cfg.train.selection_flip = "auto"
    cfg.train.checkpoint_every = 0  # also keep epoch_NNN.pth every N epochs (0: only latest.pth and the best)
    cfg.train.use_gpu = True  # use CUDA when available
    # torch intra-op threads: auto (the cores this process may use: affinity, cgroup quota, OMP_NUM_THREADS) or N
    cfg.train.threads = "auto"
    # flush denormal floats to zero: auto (on for a CPU run) | true | false (vdreid.runtime)
    cfg.train.flush_denormal = "auto"

    # ---------------------------------------------------------------- test
    cfg.test = CN()
    cfg.test.batch_size = 128
    cfg.test.dist_metric = "cosine"  # cosine | euclidean | inner_product (raw features, DEEN test.py)
    cfg.test.backend = "auto"  # auto | faiss | torch
    cfg.test.rerank = False
    cfg.test.evaluate = False  # evaluate only (model.load_weights or model.resume names the checkpoint)
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    cfg.test.max_rank = 20
    cfg.test.feature_mode = ""  # empty: the method's recipe default (e.g. vd.feature_mode)
    cfg.test.flip = False  # flip test-time augmentation (flagged on the leaderboard)
    # "" (exact, every reported metric) | hnsw | ivf: approximate search for huge galleries, flagged as approximate
    cfg.test.approximate = ""
    # approximate index settings (docs/search-and-reranking.md), read only for the kind test.approximate names
    cfg.test.ivf_nlist = 0  # IVF lists; 0: sized to each gallery (N // 39, at most 4 sqrt(N))
    cfg.test.ivf_nprobe = 32  # IVF lists scanned per query (>= nlist: every list, exact lists)
    cfg.test.hnsw_m = 32  # HNSW links per node (faiss M)
    cfg.test.hnsw_ef_search = 256  # HNSW search beam (faiss efSearch)
    cfg.test.threads = "auto"  # torch intra-op threads of `vdreid test`: auto or N (as train.threads)

    return cfg


# Keys that do not change what is computed (paths, logging, workers); left out of config_hash.
NON_SEMANTIC_KEYS = frozenset(
    {
        "data.root",
        "data.save_dir",
        "data.workers",
        "train.print_freq",
        "model.resume",
        "model.pretrained_path",
        "test.visrank",
        "test.visrank_topk",
        "test.batch_size",
        "test.evaluate",
        "train.use_gpu",
        "train.threads",
        "test.threads",
    }
)


def flat_keys(cfg: CN, prefix: str = "") -> list[str]:
    """All leaf keys as dotted paths, e.g. ``['model.name', 'data.sysu.shots', ...]``."""
    out: list[str] = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        if isinstance(v, CN):
            out.extend(flat_keys(v, path + "."))
        else:
            out.append(path)
    return out


def _closest(key: str, candidates: list[str]) -> str:
    best = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not best:
        # compare the last component only (a typo in the leaf name under a right section)
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
        m = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.5)
        best = [by_leaf[m[0]]] if m else []
    return f"did you mean '{best[0]}'?" if best else "no similar key exists"


def _where(source: str) -> str:
    return f"in {source}" if source else ""


def _parse_scalar_text(text: str) -> Any:
    """A command-line value: Python literal, else YAML, else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text



_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _list_element(key: str) -> Any:
    """The element type (an example value) of a list key whose default is empty, from its section's owner."""
    spec = _section_of(key)
    if spec is None:
        return _BASE_LIST_ELEMENTS.get(key)
    return spec.list_elements.get(key)


#: element type of the base tree's list keys whose default is empty
_BASE_LIST_ELEMENTS: dict[str, Any] = {"data.visible_views": "", "data.infrared_views": "", "data.sources": "",
                                       "data.targets": ""}


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Return ``value`` converted to the type of ``default`` or raise :class:`ConfigError` saying what was expected."""

    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"config key '{key}' {_where(source)}: expected {expected}, got {value!r} ({type(value).__name__}); "
            f"default is {default!r}"
        )

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad("a boolean (true/false)")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise bad("an integer")
    if isinstance(default, float):
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad("a number")
    if isinstance(default, str):
        if value is None:
            return ""
        if isinstance(value, bool):  # YAML `attention: true`
            return "true" if value else "false"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            return value
        raise bad("a string")
    if isinstance(default, (list, tuple)):
        if isinstance(value, str):
            parsed = _parse_scalar_text(value)
            value = parsed if isinstance(parsed, (list, tuple)) else [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]  # a single item for a list key
        elem = default[0] if default else _list_element(key.split("[")[0])
        if elem is not None:
            return [_coerce(f"{key}[{i}]", v, elem, source) for i, v in enumerate(value)]
        return list(value)
    return value


def merge_dict(cfg: CN, data: dict[str, Any], source: str = "", prefix: str = "") -> None:
    """Merge a nested dict into ``cfg`` in place, checking every key and value type.

    Raises :class:`ConfigError` naming the key, ``source`` (file or 'command line') and the closest valid key.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source) or 'config'}: expected a mapping of sections, got {type(data).__name__}")
    default = get_default_config()
    all_keys = flat_keys(default) + _section_paths(default)
    for k, v in data.items():
        path = f"{prefix}{k}"
        if k not in cfg:
            raise ConfigError(f"unknown config key '{path}' {_where(source)}: {_closest(path, all_keys)}")
        cur = cfg[k]
        if isinstance(cur, CN):
            if not isinstance(v, dict):
                raise ConfigError(
                    f"config key '{path}' {_where(source)} is a section; give a mapping of its keys, got {v!r}"
                )
            merge_dict(cur, v, source, path + ".")
        else:
            if isinstance(v, dict):
                raise ConfigError(f"config key '{path}' {_where(source)} is a value, not a section; got a mapping")
            was_frozen = cfg.is_frozen()
            cfg.defrost()
            cfg[k] = _coerce(path, v, cur, source)
            if was_frozen:
                cfg.freeze()


def _section_paths(cfg: CN, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        if isinstance(v, CN):
            out.append(prefix + k)
            out.extend(_section_paths(v, prefix + k + "."))
    return out


def read_yaml_with_bases(path: str, _seen: tuple[str, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """Read ``path`` (a file, or a shipped recipe name such as ``quickstart``) and its ``_base_`` parents; return
    ``[(file, dict), ...]`` in merge order (parents first).

    A ``_base_`` entry is a path relative to the file when such a file exists, else a shipped recipe name
    (``_base_: quickstart`` works in a config outside the checkout)."""
    path = resolve_config(path)
    if path in _seen:
        raise ConfigError(f"'_base_' cycle: {' -> '.join(_seen + (path,))}")
    with open(path, "rb") as f:  # a byte-order mark is dropped; other bytes that are not UTF-8 name file:line
        text = decode_text(f.read(), path, "config file", error=ConfigError)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f'config file "{path}" is not valid YAML: {exc}'.replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise ConfigError(f'config file "{path}": expected a mapping of sections at the top, got {type(data).__name__}')
    bases = data.pop("_base_", None)
    out: list[tuple[str, dict[str, Any]]] = []
    if bases:
        for b in [bases] if isinstance(bases, str) else list(bases):
            if not isinstance(b, str):
                raise ConfigError(f'config file "{path}": _base_ entries must be paths, got {b!r}')
            rel = osp.join(osp.dirname(path), osp.expanduser(b))
            try:
                parent = rel if osp.isfile(rel) else resolve_config(b)
            except ConfigFileNotFoundError as exc:
                raise ConfigFileNotFoundError(f'config file "{path}": _base_ {b!r} is neither a file next to it nor '
                                              f"a shipped recipe: {exc}") from None
            out.extend(read_yaml_with_bases(parent, _seen + (path,)))
    out.append((path, data))
    return out


def merge_from_list(cfg: CN, opts: list[str], source: str = "command line") -> None:
    """Merge ``KEY VALUE`` pairs (torchreid's ``opts``) into ``cfg`` with key and type checks."""
    if len(opts) % 2:
        raise ConfigError(
            f"{source}: overrides come in KEY VALUE pairs, got an odd number of items: {opts!r} "
            f"(last key '{opts[-1]}' has no value)"
        )
    valid = flat_keys(get_default_config())
    for key, raw in zip(opts[0::2], opts[1::2]):
        if key not in valid:
            raise ConfigError(f"unknown config key '{key}' in {source}: {_closest(key, valid)}")
        nested: Any = _parse_scalar_text(raw) if isinstance(raw, str) else raw
        for part in reversed(key.split(".")):
            nested = {part: nested}
        merge_dict(cfg, nested, f"{source} ('{key} {raw}')")


def load_config(config_file: str | None = None, opts: list[str] | None = None, freeze: bool = True) -> CN:
    """Defaults <- ``config_file`` (with its ``_base_`` chain) <- ``opts``; validated; frozen unless asked.

    The keys set by a file or an override are remembered (:func:`explicit_keys`), so that a component can tell a
    value the user wrote from a default (a registered dataset preset must never silently override the former).

    A key of a section the config does not select (another method's), set in the file itself or on the command line,
    is an error; set only in a ``_base_`` parent (a recipe of another method inherited for its data and schedule), it
    is reset to its default: the parent's choices for another method mean nothing here.
    """
    cfg = get_default_config()
    explicit: set[str] = set()
    inherited: set[str] = set()
    if config_file:
        chain = read_yaml_with_bases(config_file)
        for i, (path, data) in enumerate(chain):
            merge_dict(cfg, data, f'"{os.path.relpath(path)}"')
            keys = _dict_keys(data)
            explicit |= keys
            inherited = (inherited | keys) if i < len(chain) - 1 else inherited - keys
    if opts:
        merge_from_list(cfg, list(opts))
        explicit |= set(opts[0::2])
        inherited -= set(opts[0::2])
    dropped = _unselected_keys(cfg, inherited)
    if dropped:
        default = get_default_config()
        for key in dropped:
            parent, _, leaf = key.rpartition(".")
            get_key(cfg, parent)[leaf] = copy.deepcopy(get_key(default, key))
        explicit -= dropped
    set_explicit_keys(cfg, explicit)
    check_values(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def _dict_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in data.items():
        if isinstance(v, dict):
            out |= _dict_keys(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def set_explicit_keys(cfg: CN, keys: set[str] | frozenset[str]) -> None:
    """Remember which keys of ``cfg`` were set explicitly (kept by ``cfg.clone()``; not a config key itself)."""
    object.__setattr__(cfg, "_explicit_keys", frozenset(keys))


def explicit_keys(cfg: CN) -> frozenset[str]:
    """Keys set by a config file or a command-line override; for a config not made by :func:`load_config`, the keys
    whose value differs from the default."""
    keys = getattr(cfg, "_explicit_keys", None)
    if keys is not None:
        return keys
    default = get_default_config()
    return frozenset(k for k in flat_keys(cfg) if k not in flat_keys(default) or _get(cfg, k) != _get(default, k))


_CHOICES: dict[str, tuple[Any, ...]] = {
    "train.amp": ("none", "bf16", "fp16"),
    "train.selection": ("final", "val", "test"),
    "train.optim": ("adam", "sgd"),
    "train.lr_scheduler": ("warmup_multistep", "cosine"),
    "train.scheduler_step": ("end", "start"),
    "train.selection_flip": ("auto", "true", "false"),
    "test.dist_metric": ("cosine", "euclidean", "inner_product"),
    "data.resize_interpolation": ("bilinear", "lanczos"),
    "sampler.draw": ("balanced", "independent"),
    "test.backend": ("auto", "faiss", "torch"),
    "test.approximate": ("", "hnsw", "ivf"),
    "train.flush_denormal": runtime.FLUSH_CHOICES,
}


def get_key(cfg: CN, dotted: str) -> Any:
    """The value of the dotted key ``dotted`` (``'data.regdb.trial'``) in ``cfg``."""
    node: Any = cfg
    for p in dotted.split("."):
        node = node[p]
    return node


_get = get_key


def check_values(cfg: CN) -> None:
    """Value-level checks (choices, ranges) with a message naming the key."""
    for key, choices in _CHOICES.items():
        v = _get(cfg, key)
        if v not in choices:
            raise ConfigError(f"config key '{key}': {v!r} is not one of {list(choices)}")
    for key in ("data.height", "data.width", "sampler.num_ids", "sampler.num_instances", "train.max_epoch"):
        if _get(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {_get(cfg, key)}")
    if not cfg.data.sources:
        raise ConfigError("config key 'data.sources': name at least one training dataset")
    epoch = str(cfg.sampler.epoch)
    if epoch not in ("identities", "images") and not (epoch.isdigit() and int(epoch) > 0):
        raise ConfigError(f"config key 'sampler.epoch': {epoch!r}; expected 'identities' (each training identity "
                          "once per epoch), 'images' (AGW: max(#visible, #infrared) images) or a number of iterations")
    for key in ("train.threads", "test.threads"):
        runtime.parse_threads(_get(cfg, key), key)
    if cfg.test.rerank and cfg.test.dist_metric == "inner_product":
        raise ConfigError("config keys 'test.rerank' and 'test.dist_metric': k-reciprocal re-ranking needs "
                          "non-negative distances ('cosine' or 'euclidean'), not 'inner_product'; set test.rerank "
                          "false or test.dist_metric cosine")
    for check in _CHECKS.values():
        check(cfg)
    _check_selected_sections(cfg)
    for spec in _SECTIONS.values():
        if spec.check is not None and _has(cfg, spec.path) and _is_selected(cfg, spec):
            spec.check(cfg)
    check_ranges(cfg)


def _is_selected(cfg: CN, spec: SectionSpec) -> bool:
    return spec.selected_by is None or _get(cfg, spec.selected_by[0]) == spec.selected_by[1]


def _unselected_keys(cfg: CN, keys: set[str]) -> set[str]:
    """The keys among ``keys`` that lie in a section ``cfg`` does not select."""
    out = set()
    for spec in _SECTIONS.values():
        if not _is_selected(cfg, spec):
            out |= {k for k in keys if k.startswith(spec.path + ".")}
    return out


def _check_selected_sections(cfg: CN) -> None:
    """A key set explicitly in a section that the config does not select (another method's section) is an error
    naming the key and what selects the section, never silently ignored."""
    explicit = getattr(cfg, "_explicit_keys", ())
    for spec in _SECTIONS.values():
        if _is_selected(cfg, spec):
            continue
        stray = sorted(k for k in explicit if k.startswith(spec.path + "."))
        if stray:
            key, value = spec.selected_by  # type: ignore[misc]
            own = sorted(o.path for o in _SECTIONS.values() if o.selected_by and o.selected_by[0] == key
                         and _is_selected(cfg, o))
            raise ConfigError(
                f"config key '{stray[0]}' belongs to {spec.owner or spec.path} (read when {key} is {value!r}), but "
                f"{key} is {_get(cfg, key)!r}, which reads {own}; remove it"
                + (f" (and {len(stray) - 1} more: {stray[1:4]})" if len(stray) > 1 else ""))


def at_least(lo: float, what: str = "") -> tuple[Callable[[float], bool], str]:
    """A range rule (test, expected) for :data:`RANGES` and owners' ``ranges()``: ``v >= lo``."""
    return (lambda v: v >= lo), f"{what or 'a number'} >= {lo}"


def positive(what: str = "a number") -> tuple[Callable[[float], bool], str]:
    """A range rule: ``v > 0``."""
    return (lambda v: v > 0), f"{what} > 0"


def or_recipe(rule: tuple[Callable[[float], bool], str]) -> tuple[Callable[[float], bool], str]:
    return (lambda v: v == -1 or rule[0](v)), f"{rule[1]}, or -1 for the recipe's default"


INT = "an integer"
_SEED = ((lambda v: 0 <= v < 2**31), "an integer in 0..2147483647 (numpy seeds must be non-negative)")
#: numeric keys and their valid ranges: key -> (test, expected). A list key applies the test to every element.
#: Keys absent from a config (a method section not built) are skipped.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "data.workers": at_least(0, INT),
    "data.height": at_least(1, INT),
    "data.width": at_least(1, INT),
    "data.norm_mean": ((lambda v: True), "a finite number"),
    "data.norm_std": positive(),
    "data.random_erase_area": ((lambda v: 0 < v <= 1), "a fraction of the image area in (0, 1]"),
    "sampler.num_ids": at_least(1, INT),
    "sampler.num_instances": at_least(1, INT),
    "sampler.seed": _SEED,
    "train.lr": positive(),
    "train.weight_decay": at_least(0),
    "train.momentum": ((lambda v: 0 <= v < 1), "a number in [0, 1)"),
    "train.max_epoch": at_least(1, INT),
    "train.start_epoch": at_least(0, INT),
    "train.stepsize": at_least(1, "an epoch number"),
    "train.gamma": positive(),
    "train.warmup_epochs": at_least(0, INT),
    "train.warmup_factor": ((lambda v: 0 < v <= 1), "a number in (0, 1]"),
    "train.print_freq": at_least(0, "an integer (0: no per-iteration output)"),
    "train.seed": _SEED,
    "train.grad_clip": at_least(0, "a number (0: no clipping)"),
    "train.eval_freq": at_least(0, "an integer (0: only at the end)"),
    "train.eval_start": at_least(0, INT),
    "train.eval_phase": at_least(0, "an integer below train.eval_freq"),
    "train.checkpoint_every": at_least(0, "an integer (0: only latest.pth and the best)"),
    "test.batch_size": at_least(1, INT),
    "test.visrank_topk": at_least(1, INT),
    "test.max_rank": at_least(1, INT),
    "test.ivf_nlist": at_least(0, "an integer (0: sized to each gallery)"),
    "test.ivf_nprobe": at_least(1, INT),
    "test.hnsw_m": at_least(2, INT),
    "test.hnsw_ef_search": at_least(1, INT),
}
#: numeric keys with no range to check (any finite value is valid); every other int/float key must be in RANGES
FREE_NUMERIC_KEYS: frozenset[str] = frozenset()


def _has(cfg: CN, dotted: str) -> bool:
    node: Any = cfg
    for p in dotted.split("."):
        if not isinstance(node, CN) or p not in node:
            return False
        node = node[p]
    return True


def check_ranges(cfg: CN) -> None:
    """Numeric range checks (:data:`RANGES`): every int/float must be finite and in its range, otherwise one
    :class:`ConfigError` naming the key, what was expected and the value (torch's own error would name its argument,
    e.g. ``batch_size should be a positive integer``, or nothing at all for a negative learning rate)."""
    for key, (ok, expected) in all_ranges().items():
        if not _has(cfg, key):
            continue
        value = _get(cfg, key)
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, v in items:
            name = key if i is None else f"{key}[{i}]"
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ConfigError(f"config key '{name}': expected {expected}, got {v!r}")
    if cfg.train.eval_freq > 0 and cfg.train.eval_phase >= cfg.train.eval_freq:
        raise ConfigError(f"config key 'train.eval_phase': expected an integer below train.eval_freq "
                          f"({cfg.train.eval_freq}), got {cfg.train.eval_phase}")
    if cfg.train.start_epoch >= cfg.train.max_epoch:
        raise ConfigError(f"config key 'train.start_epoch': expected an epoch below train.max_epoch "
                          f"({cfg.train.max_epoch}), got {cfg.train.start_epoch}")
    for key in ("data.norm_mean", "data.norm_std"):
        if len(_get(cfg, key)) != 3:
            raise ConfigError(f"config key '{key}': expected 3 values (R, G, B), got {list(_get(cfg, key))}")


#: keys added after runs were recorded, with the value that reproduces what those runs did: hashed only when set to
#: another value, so that a setting keeps the hash (and the leaderboard group) of its earlier runs
HASHED_WHEN_SET: dict[str, Any] = {"train.eval_phase": 0, "train.eval_last": True, "train.selection_flip": "auto"}


def config_hash(cfg: CN, length: int = 12) -> str:
    """Stable hash of the dumped config, leaving out :data:`NON_SEMANTIC_KEYS` (paths, logging, workers) and the
    keys of :data:`HASHED_WHEN_SET` at their earlier behaviour's value."""
    d = _to_dict(cfg)
    dropped = [k for k, v in HASHED_WHEN_SET.items() if _has(cfg, k) and _get(cfg, k) == v]
    for key in [*NON_SEMANTIC_KEYS, *dropped]:
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    text = yaml.safe_dump(d, sort_keys=True, default_flow_style=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _to_dict(cfg: CN) -> dict[str, Any]:
    return {k: _to_dict(v) if isinstance(v, CN) else copy.deepcopy(v) for k, v in cfg.items()}


def to_dict(cfg: CN) -> dict[str, Any]:
    """Plain nested dict (for JSON provenance and checkpoints)."""
    return _to_dict(cfg)
