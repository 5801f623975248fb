"""Dataset registry: a VI dataset registers like a method, with one public call.

``@register_dataset("name")`` (or ``register_dataset("name", cls)``) on a :class:`~vdreid.data.base.VIImageDataset`
subclass makes the name usable in ``data.sources`` / ``data.targets`` and with torchreid (its
``register_image_dataset``), and, the first time a dataset family (its ``config_section``) is seen, adds the family's
config section ``data.<section>`` with its ranges and checks (:func:`vdreid.config.register_section`). Everything the
rest of vdreid needs to know about a dataset it asks the class (``docs/adding-a-dataset.md``):

* ``config_section``, ``config()``, ``from_config(node)``, ``ranges()``, ``free_numeric_keys()``: its config;
* ``synthetic``: its synthetic layout writer (``vdreid make-synthetic --layout``);
* ``split_key`` and ``split_values``: a dataset with several train/test splits (``vdreid train --split N``,
  ``--all-splits``; results carry the split, the leaderboard averages over splits);
* ``resume_may_change``: keys of its section that may change when a run resumes (evaluation-only options);
* ``protocol_prefixes`` and ``canonical_protocol``: the protocol strings it writes (its leaderboard tables).

Built-in datasets register in their own modules; a user's module does the same and is loaded with ``--plugin``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from vdreid import compat, config
from vdreid.data.base import VIImageDataset
from vdreid.errors import ConfigError

T = TypeVar("T", bound=type)

#: every registered dataset name -> class (torchreid names; presets included)
DATASET_REGISTRY: dict[str, type[VIImageDataset]] = {}
#: the config section of each dataset family -> the family's class (the class that declares ``config_section``)
_FAMILIES: dict[str, type[VIImageDataset]] = {}


def _family_class(cls: type[VIImageDataset]) -> type[VIImageDataset]:
    """The class in ``cls``'s MRO that declares its ``config_section`` (a preset's base)."""
    for k in cls.__mro__:
        if "config_section" in vars(k):
            return k
    return cls


def register_dataset(name: str, cls: type | None = None, default: bool = False) -> Any:
    """Register a VI dataset class under ``name``; usable as ``@register_dataset("name")`` or a call.

    ``default``: the dataset a config that names none trains and tests on (``data.sources``/``data.targets``).
    Idempotent for the same class; another class under a taken name replaces it only when both come from the same
    module (a reloaded module), otherwise it is an error.
    """

    def add(klass: T) -> T:
        if not (isinstance(klass, type) and issubclass(klass, VIImageDataset)):
            raise TypeError(f"register_dataset({name!r}): {klass!r} is not a vdreid.data.base.VIImageDataset subclass")
        old = DATASET_REGISTRY.get(name)
        if old is not None and old is not klass and old.__module__ != klass.__module__:
            raise ValueError(f"dataset name {name!r} is taken by {old.__module__}.{old.__qualname__}")
        DATASET_REGISTRY[name] = klass
        family = _family_class(klass)
        section = family.config_section
        if section and _FAMILIES.get(section) not in (None, family) and \
                _FAMILIES[section].__module__ != family.__module__:
            raise ValueError(f"dataset config section 'data.{section}' is owned by {_FAMILIES[section].__qualname__}")
        if section and _FAMILIES.get(section) is not family:
            _FAMILIES[section] = family
            path = f"data.{section}"
            config.register_section(config.SectionSpec(
                path=path,
                defaults=family.config,
                owner=f"the {family.display_name or family.__name__} dataset family",
                ranges={f"{path}.{k}": rule for k, rule in family.ranges().items()},
                free_numeric=frozenset(f"{path}.{k}" for k in family.free_numeric_keys()),
                check=_section_check(family, section),
            ))
        if default:
            config.register_default("data.sources", [name])
            config.register_default("data.targets", [name])
        compat.register_image_dataset(name, klass)
        return klass

    return add(cls) if cls is not None else add


def _section_check(family: type[VIImageDataset], section: str) -> Callable[[Any], None]:
    def check(cfg: Any) -> None:
        family.from_config(cfg.data[section])  # raises a ConfigError naming the key

    return check


def get_dataset(name: str) -> type[VIImageDataset] | None:
    """The class registered as ``name`` (None for another torchreid dataset)."""
    return DATASET_REGISTRY.get(name)


def families() -> list[type[VIImageDataset]]:
    """The registered dataset families (one class per config section), in registration order."""
    return list(_FAMILIES.values())


def family_of(name: str) -> type[VIImageDataset] | None:
    """The family class of the dataset registered as ``name`` (None for another torchreid dataset)."""
    cls = DATASET_REGISTRY.get(name)
    return _family_class(cls) if cls is not None else None


def synthetic_layouts() -> dict[str, Any]:
    """``make-synthetic --layout`` names -> the family's :class:`~vdreid.data.synthetic_layout.SyntheticLayout`."""
    return {fam.synthetic.name: fam.synthetic for fam in _FAMILIES.values() if fam.synthetic is not None}


def split_families(names: list[str]) -> list[type[VIImageDataset]]:
    """The families among the datasets ``names`` that have train/test splits (``split_key``), each once."""
    out: list[type[VIImageDataset]] = []
    for n in names:
        fam = family_of(n)
        if fam is not None and fam.split_key and fam not in out:
            out.append(fam)
    return out


def split_config_key(names: list[str], what: str = "--split") -> str:
    """The one config key holding the split index of the datasets ``names`` (``data.<section>.<split_key>``);
    a :class:`ConfigError` when none or several of them have splits."""
    names = list(dict.fromkeys(names))
    fams = split_families(names)
    if not fams:
        with_splits = [f.display_name or f.__name__ for f in _FAMILIES.values() if f.split_key]
        raise ConfigError(f"{what} is for {' or '.join(with_splits) or 'datasets'} (datasets with several train/test "
                          f"splits); this config uses {names}, which have none")
    if len(fams) > 1:
        raise ConfigError(f"{what}: {names} include several datasets with splits "
                          f"({[f.config_section for f in fams]}); train them in separate runs")
    return f"data.{fams[0].config_section}.{fams[0].split_key}"


def resume_may_change_keys() -> tuple[str, ...]:
    """Dotted keys (fnmatch patterns) of the dataset sections that may change when a run resumes."""
    return tuple(f"data.{fam.config_section}.{k}" for fam in _FAMILIES.values() for k in fam.resume_may_change)


def family_of_protocol(protocol: str) -> type[VIImageDataset] | None:
    """The family whose protocol strings start with the first component of ``protocol`` (``sysu/...``)."""
    head = protocol.split("/", 1)[0]
    for fam in _FAMILIES.values():
        if any(fnmatch.fnmatchcase(head, pat) for pat in fam.protocol_prefixes):
            return fam
    return None


def canonical_protocol(protocol: str) -> str:
    """The current spelling of a protocol string (older spellings a family wrote are translated by the family)."""
    fam = family_of_protocol(protocol)
    return fam.canonical_protocol(protocol) if fam is not None else protocol


def names() -> list[str]:
    return sorted(DATASET_REGISTRY)


def register_datasets() -> None:
    """(Re-)register every dataset with torchreid (idempotent; :func:`register_dataset` already does this)."""
    for name, cls in DATASET_REGISTRY.items():
        compat.register_image_dataset(name, cls)

__all__ = [
    "DATASET_REGISTRY",
    "canonical_protocol",
    "families",
    "family_of",
    "family_of_protocol",
    "get_dataset",
    "names",
    "register_dataset",
    "register_datasets",
    "resume_may_change_keys",
    "split_config_key",
    "split_families",
    "synthetic_layouts",
]
