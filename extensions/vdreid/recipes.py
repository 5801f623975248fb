"""Shipped recipes: the ``configs/`` tree and ``benchmarks/published.yaml`` travel with the installed package.

A wheel built from the repository (``pip wheel .``) copies them into ``vdreid/_shipped/`` (``setup.py``); an editable
install or a checkout reads them from the repository root. So ``vdreid train --config-file official/sysu_all`` works
from any folder: :func:`resolve_config` takes a path (which wins when the file exists) or a recipe name, i.e. the
path under ``configs/`` without ``.yaml`` (``quickstart``, ``sysu_all``, ``official/sysu_all``,
``ablation/row12_full_vd``; ``configs/quickstart.yaml`` is accepted too). ``_base_`` parents are relative to the file,
so a shipped recipe's parents resolve inside the shipped tree.
"""

from __future__ import annotations

import difflib
import logging
import os
import os.path as osp

from vdreid.errors import ConfigError, ConfigFileNotFoundError

logger = logging.getLogger(__name__)

_PKG_DIR = osp.dirname(osp.abspath(__file__))
#: where setup.py's build step puts the shipped files inside the package
SHIPPED_DIR = osp.join(_PKG_DIR, "_shipped")
_REPO_ROOT = osp.dirname(osp.dirname(_PKG_DIR))  # extensions/vdreid -> repository root
_SUFFIXES = (".yaml", ".yml")


def data_root() -> str:
    """The folder holding ``configs/`` and ``benchmarks/published.yaml``: the package's ``_shipped/`` in a wheel
    install, else the repository root of an editable install or checkout."""
    for root in (SHIPPED_DIR, _REPO_ROOT):
        if osp.isdir(osp.join(root, "configs")):
            return root
    raise ConfigError(
        f'vdreid has no shipped configs: neither "{osp.join(SHIPPED_DIR, "configs")}" nor '
        f'"{osp.join(_REPO_ROOT, "configs")}" exists; reinstall vdreid from a wheel built with `pip wheel .` in the '
        "repository, or pass a config file path"
    )


def configs_dir() -> str:
    """The shipped ``configs/`` folder."""
    return osp.join(data_root(), "configs")


def published_path() -> str:
    """The shipped ``benchmarks/published.yaml`` (published numbers for the leaderboard)."""
    path = osp.join(data_root(), "benchmarks", "published.yaml")
    if not osp.isfile(path):
        raise ConfigError(f'published numbers not found at "{path}"; reinstall vdreid or pass --published FILE')
    return path


def list_recipes(include_bases: bool = False) -> list[str]:
    """Names of the shipped recipes (``configs/`` paths without ``.yaml``, ``/``-separated, sorted). Files whose name
    starts with ``_`` (shared parents such as ``ablation/_base``) are left out unless ``include_bases``."""
    top = configs_dir()
    names = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for fn in filenames:
            stem, ext = osp.splitext(fn)
            if ext not in _SUFFIXES or (stem.startswith("_") and not include_bases):
                continue
            rel = osp.relpath(osp.join(dirpath, stem), top)
            names.append(rel.replace(os.sep, "/"))
    return sorted(names)


def _as_name(text: str) -> str:
    name = text.strip().replace(os.sep, "/")
    while name.startswith("./"):
        name = name[2:]
    if name.startswith("configs/"):
        name = name[len("configs/") :]
    for suf in _SUFFIXES:
        if name.endswith(suf):
            name = name[: -len(suf)]
    return name


def resolve_config(name_or_path: str) -> str:
    """Absolute path of a config: an existing file as given, else the shipped recipe of that name.

    Raises :class:`~vdreid.errors.ConfigError` (listing the shipped names) when it is neither.
    """
    if not name_or_path or not str(name_or_path).strip():
        raise ConfigError("no config given: pass a config file path or a shipped recipe name such as official/sysu_all")
    given = osp.expanduser(str(name_or_path))
    if osp.isfile(given):
        return osp.abspath(given)
    name = _as_name(given)
    top = configs_dir()
    for suf in _SUFFIXES:
        cand = osp.join(top, *name.split("/")) + suf
        if osp.isfile(cand):
            logger.debug("config %r -> shipped recipe %s", name_or_path, cand)
            return cand
    names = list_recipes(include_bases=True)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigFileNotFoundError(
        f'config "{name_or_path}" is neither an existing file nor a shipped recipe.{hint} Shipped recipes '
        f"(in {top}): {', '.join(list_recipes())}"
    )


__all__ = ["configs_dir", "data_root", "list_recipes", "published_path", "resolve_config", "SHIPPED_DIR"]
