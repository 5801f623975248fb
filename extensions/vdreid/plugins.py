"""Plug-ins: a user's module that adds methods, datasets or VD loss terms through the same public calls the built-in
ones use (``vdreid.methods.register``, ``vdreid.data.register_dataset``, ``vdreid.losses.register_term``).

Two ways to load one (``docs/adding-a-method.md``):

* ``vdreid train|test|export|tsne|demo --plugin FILE_OR_MODULE`` (repeatable) imports a ``.py`` file or an importable
  module before the config is built (:func:`load_plugin`); from Python, call :func:`load_plugin` yourself or import
  the module.
* an installed package declares an entry point in the group ``vdreid.plugins`` (pyproject:
  ``[project.entry-points."vdreid.plugins"] mymethod = "mypkg.vdreid_plugin"``); ``import vdreid`` loads every such
  entry point (:func:`load_entry_points`; ``VDREID_NO_PLUGINS=1`` skips them), as pytest loads its plug-ins.

A run records the plug-ins it loaded (its results and checkpoints say where a method came from), so testing its
checkpoint later asks for the same ``--plugin``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import os.path as osp
import re
import sys
import warnings
from types import ModuleType

from vdreid.errors import PluginError

logger = logging.getLogger(__name__)

#: the entry point group installed packages declare their vdreid plug-ins in
ENTRY_POINT_GROUP = "vdreid.plugins"
_LOADED: dict[str, ModuleType] = {}


def _module_name_for_file(path: str) -> str:
    stem = re.sub(r"\W", "_", osp.splitext(osp.basename(path))[0])
    return f"vdreid_plugin_{stem}"


def load_plugin(spec: str) -> ModuleType:
    """Import the plug-in ``spec``: a path to a ``.py`` file (its folder is put on ``sys.path`` so it can import its
    neighbours) or a dotted module name. Loading the same plug-in twice imports it once.

    Raises :class:`~vdreid.errors.PluginError` when the file or module does not exist; an exception raised by the
    plug-in's own code propagates with a note naming the plug-in (it is a bug to see with its traceback).
    """
    if not spec or not str(spec).strip():
        raise PluginError("--plugin needs a .py file or an importable module name")
    spec = str(spec).strip()
    is_file = spec.endswith(".py") or os.sep in spec or osp.isfile(spec)
    key = osp.realpath(osp.expanduser(spec)) if is_file else spec
    if key in _LOADED:
        return _LOADED[key]
    try:
        if is_file:
            module = _load_file(key, spec)
        else:
            try:
                module = importlib.import_module(spec)
            except ModuleNotFoundError as exc:
                if exc.name is None or not spec.startswith(exc.name) and not exc.name.startswith(spec.split(".")[0]):
                    raise  # a module the plug-in itself imports is missing: the plug-in's own error
                raise PluginError(f'plug-in "{spec}" is neither a .py file nor an importable module ({exc}); give '
                                  "the path of the file or install the package that provides the module") from None
    except PluginError:
        raise
    except Exception as exc:
        exc.add_note(f'(raised while loading the vdreid plug-in "{spec}")')
        raise
    _LOADED[key] = module
    logger.debug("loaded plug-in %s", spec)
    return module


def _load_file(path: str, given: str) -> ModuleType:
    if not osp.isfile(path):
        raise PluginError(f'plug-in file "{given}" does not exist (resolved to "{path}")')
    if not path.endswith(".py"):
        raise PluginError(f'plug-in file "{given}" is not a .py file')
    folder = osp.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = _module_name_for_file(path)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise PluginError(f'plug-in file "{given}" cannot be imported as a Python module')
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_entry_points() -> list[str]:
    """Import every plug-in installed packages declare in :data:`ENTRY_POINT_GROUP` (skipped when the environment
    sets ``VDREID_NO_PLUGINS=1``). A plug-in that fails to load is reported as a warning naming it and its error, so
    one broken package does not make vdreid unusable. Returns the names loaded."""
    if os.environ.get("VDREID_NO_PLUGINS", "").strip() not in ("", "0"):
        return []
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {ep.name} = {ep.value}"
        if key in _LOADED:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - reported, vdreid stays usable
            text = (f"vdreid plug-in '{ep.name}' ({ep.value}, group {ENTRY_POINT_GROUP}) failed to load: "
                    f"{type(exc).__name__}: {exc}; its methods, datasets or loss terms are not available "
                    "(VDREID_NO_PLUGINS=1 skips installed plug-ins)")
            warnings.warn(text, RuntimeWarning, stacklevel=2)
            logger.warning("%s", text)
            continue
        _LOADED[key] = obj if isinstance(obj, ModuleType) else sys.modules.get(getattr(obj, "__module__", ""), obj)
        loaded.append(ep.name)
    return loaded


def loaded() -> list[str]:
    """The plug-ins loaded in this process (file paths, module names, ``entry point NAME = VALUE``)."""
    return list(_LOADED)


__all__ = ["ENTRY_POINT_GROUP", "load_entry_points", "load_plugin", "loaded"]
