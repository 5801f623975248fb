"""Method registry: ``vdreid.methods.get(name)`` returns the registered :class:`~vdreid.methods.base.Method`,
``vdreid.methods.names()`` lists them. The config key ``model.method`` picks one.

Adding a method is one new module in this package that defines a :class:`Method` subclass and calls
:func:`register` on an instance (``docs/adding-a-method.md``): every module here is imported when the package is, so
nothing else needs editing.
"""

from __future__ import annotations

from vdreid.errors import ConfigError
from vdreid.methods.base import Method

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` under ``method.name`` (idempotent for the same class; a different class under a taken name is
    an error)."""
    if not method.name or not method.section:
        raise ValueError(f"{type(method).__name__}: a method needs a name and a config section")
    old = _REGISTRY.get(method.name)
    if old is not None and type(old).__qualname__ != type(method).__qualname__:
        raise ValueError(f"method name '{method.name}' is taken by {type(old).__name__}")
    _REGISTRY[method.name] = method
    return method


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


def method_of_original(kind: str) -> Method:
    """The method whose original code writes checkpoints of layout ``kind`` ('agw', 'vd_official')."""
    for m in _REGISTRY.values():
        if kind in m.original_kinds:
            return m
    raise ConfigError(f"no method maps original checkpoints of kind {kind!r}; known: "
                      f"{sorted(k for m in _REGISTRY.values() for k in m.original_kinds)}")


__all__ = ["Method", "all_methods", "get", "method_of_model", "method_of_original", "names", "register"]



def _import_methods() -> None:
    """Import every module of this package (each registers its method)."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_methods()
