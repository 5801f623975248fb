"""Method registry: ``vdreid.methods.get(name)`` returns the registered :class:`~vdreid.methods.base.Method`,
``vdreid.methods.names()`` lists them. The config key ``model.method`` picks one.

Adding a method is one module that defines a :class:`Method` subclass and calls :func:`register` on an instance
(``docs/adding-a-method.md``). Inside the package, every module of this folder is imported when the package is; from
outside, a user's module does the same and is loaded with ``vdreid train --plugin FILE_OR_MODULE`` or the
``vdreid.plugins`` entry point group (:mod:`vdreid.plugins`). :func:`register` is the one public call for both: it adds
the method's config sections (:func:`vdreid.config.register_section`), its value checks and its torchreid model
factories (``torchreid.models.build_model(name, ...)``).
"""

from __future__ import annotations

import importlib
import pkgutil

from yacs.config import CfgNode as CN

from vdreid import compat, config
from vdreid.errors import ConfigError
from vdreid.methods.base import Method

_REGISTRY: dict[str, Method] = {}
_SELECTOR = "model.method"


def register(method: Method, default: bool = False) -> Method:
    """Add ``method`` under ``method.name`` and register its config sections, checks and torchreid model factories.

    Idempotent for the same class; a different class under a taken name is an error. ``default``: the method a
    config that names none trains (``model.method``'s default, with the method's first model name).
    """
    if not method.name or not method.section:
        raise ValueError(f"{type(method).__name__}: a method needs a name and a config section")
    old = _REGISTRY.get(method.name)
    if old is not None and type(old).__qualname__ != type(method).__qualname__:
        raise ValueError(f"method name '{method.name}' is taken by {type(old).__name__}")
    taken = {s: m.name for m in _REGISTRY.values() if m.name != method.name for s in (m.section, *m.extra_sections)}
    clash = [s for s in (method.section, *method.extra_sections) if s in taken]
    if clash:
        raise ValueError(f"method '{method.name}': config section {clash[0]!r} is owned by method '{taken[clash[0]]}'")
    _REGISTRY[method.name] = method
    owner = f"method '{method.name}'"
    ranges = dict(method.ranges())
    free = frozenset(method.free_numeric_keys())
    elements = dict(method.list_elements())
    for path, make in ((method.section, method.config), *method.extra_config().items()):
        own = {k: v for k, v in ranges.items() if k.startswith(path + ".")}
        config.register_section(config.SectionSpec(
            path=path,
            defaults=make if callable(make) else (lambda node=make: node.clone()),
            owner=owner,
            ranges=own,
            free_numeric=frozenset(k for k in free if k.startswith(path + ".")),
            list_elements={k: v for k, v in elements.items() if k.startswith(path + ".")},
            selected_by=(_SELECTOR, method.name),
        ))
    if default:
        config.register_default(_SELECTOR, method.name)
        if method.model_names:
            config.register_default("model.name", method.model_names[0])
    for name, factory in method.model_factories().items():
        compat.register_model(name, factory)
    return method


def _check_selected_method(cfg: CN) -> None:
    get(cfg.model.method).check_config(cfg)


config.register_check("selected method", _check_selected_method)


def get(name: str) -> Method:
    """The method registered as ``name``; a :class:`~vdreid.errors.ConfigError` lists the names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"config key 'model.method': unknown method {name!r}; registered: {names()}") from None


def names() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def all_methods() -> list[Method]:
    return [_REGISTRY[n] for n in names()]


def method_of_model(model_name: str) -> Method | None:
    """The method that registers the torchreid model ``model_name`` (None for a model of another library)."""
    for m in _REGISTRY.values():
        if model_name in m.model_names:
            return m
    return None


def method_of_original(kind: str, prefer: str | None = None) -> Method:
    """The method that reads original-code checkpoints of layout ``kind`` (``vdreid.models.original_kinds()``).

    ``prefer``: a method name (the config's ``model.method``) chosen when it reads ``kind`` too: several methods may
    share a network and so a layout (:attr:`Method.reads_layouts`)."""
    if prefer in _REGISTRY and _REGISTRY[prefer].reads_original(kind):
        return _REGISTRY[prefer]
    for m in _REGISTRY.values():
        if kind in m.original_kinds:
            return m
    raise ConfigError(f"no method maps original checkpoints of kind {kind!r}; known: "
                      f"{sorted(k for m in _REGISTRY.values() for k in m.original_kinds)}")


def original_checkpoint_kinds() -> frozenset[str]:
    """Every original-code checkpoint layout some registered method reads."""
    return frozenset(k for m in _REGISTRY.values() for k in (*m.original_kinds, *m.reads_layouts))


def register_models() -> None:
    """(Re-)register every method's models with torchreid's model factory (idempotent; :func:`register` already
    does this for each method, e.g. after torchreid's registry was reset)."""
    for method in _REGISTRY.values():
        for name, factory in method.model_factories().items():
            compat.register_model(name, factory)


__all__ = ["Method", "all_methods", "get", "method_of_model", "method_of_original", "names",
           "original_checkpoint_kinds", "register", "register_models"]


def _import_methods() -> None:
    """Import every module of this package (each registers its method)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_methods()
