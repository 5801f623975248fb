"""Containment: every image a dataset reader uses lies inside the dataset's root folder.

Split and index files name images by paths relative to the dataset folder (``RegDB/``, ``LLCM/``, ...), and the
SYSU-MM01 reader lists ``cam<c>/<pid>/`` folders. A path that leaves the folder (``../``), an absolute path, or a
symbolic link whose target lies outside would let a split file pull images from anywhere on the machine into training
or into the ranked-list pictures; a symbolic-link loop would make a folder silently count as missing. Each is refused
here with one line naming the file (and line) or the path. Symbolic links that stay inside the dataset folder keep
working, and so does a dataset folder that is itself a link (``datasets/RegDB -> /mnt/big/RegDB``): containment is
checked against the resolved dataset folder. See ``docs/run-folders.md`` ("Dataset folders") for the rules in words.
"""

from __future__ import annotations

import errno
import os
import os.path as osp

from vdreid.errors import DatasetLayoutError, SplitFileError

__all__ = ["inside_root", "list_inside", "where"]


def where(source: str | None, lineno: int | None) -> str:
    """``"file:line: "`` (or ``"file: "`` / ``""``) prefix for messages about a line of ``source``."""
    if not source:
        return ""
    return f"{source}:{lineno}: " if lineno is not None else f"{source}: "


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_resolves_inside(full: str, root: str, real_root: str, prefix: str, shown: str) -> None:
    """Refuse ``full`` if it is (or passes through) a symbolic-link loop or resolves outside ``real_root``."""
    try:
        os.stat(full)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DatasetLayoutError(
                f'{prefix}"{full}" is a symbolic-link loop (it never resolves to a file or folder); '
                "replace the link by the real folder or a link to it"
            ) from None
        # a missing file (or a dangling link) is the caller's to report, with its own message
    real = osp.realpath(full)
    if not _within(real, real_root):
        raise DatasetLayoutError(
            f'{prefix}{shown} resolves to "{real}", outside the dataset folder "{root}" (through a symbolic '
            "link); only files inside the dataset folder are used. Copy the files into it, or link the whole "
            "dataset folder instead of parts of it"
        )


def inside_root(path: str, root: str, source: str | None = None, lineno: int | None = None) -> str:
    """The absolute path of ``path`` (relative to the dataset folder ``root``), after checking it stays inside.

    Args:
        path: a path as written in a split/index file, relative to ``root`` (``Thermal/1/x.bmp``).
        root: the dataset folder (``<data root>/RegDB``); it may itself be a symbolic link.
        source, lineno: the file and 1-based line the path comes from, for the message.

    Returns:
        ``os.path.normpath(os.path.join(root, path))`` with ``root`` made absolute: the path as named, inside
        ``root`` (links inside the folder are kept, so file names in results stay the dataset's). Whether the file
        exists is not checked: the caller reports a missing file with its own hint.

    Raises:
        SplitFileError: ``path`` is absolute or its ``..`` components leave ``root`` (a malformed line).
        DatasetLayoutError: ``path`` resolves outside ``root`` through a symbolic link, or runs into a link loop.
    """
    prefix = where(source, lineno)
    root = osp.abspath(root)
    if osp.isabs(path):
        raise SplitFileError(
            f'{prefix}absolute path "{path}": paths must be relative to the dataset folder "{root}" '
            "(e.g. Thermal/1/x.bmp) and stay inside it"
        )
    full = osp.normpath(osp.join(root, path))
    if not _within(full, root):
        raise SplitFileError(
            f'{prefix}path "{path}" leaves the dataset folder "{root}" (it names "{full}"); paths must stay inside '
            "the dataset folder"
        )
    _check_resolves_inside(full, root, osp.realpath(root), prefix, f'path "{path}"')
    return full


def list_inside(folder: str, root: str) -> list[str] | None:
    """Sorted full paths of the entries of ``folder`` (a folder inside the dataset folder ``root``), unfiltered; None
    when ``folder`` does not exist.

    ``folder`` and every entry that is a symbolic link must resolve inside ``root``; a link loop or a link whose
    target is missing, where a folder is expected, is an error naming it (it would otherwise count as missing and
    change the gallery draws). Plain entries need no system call beyond the listing itself.

    Raises:
        DatasetLayoutError: ``folder`` is a link loop, a dangling link, not a folder, or resolves outside ``root``;
            or one of its entries is a link that loops or resolves outside ``root``.
    """
    root = osp.abspath(root)
    folder = osp.abspath(folder)
    if not _within(folder, root):
        raise DatasetLayoutError(f'"{folder}" is not inside the dataset folder "{root}"')
    if not osp.lexists(folder):
        return None
    real_root = osp.realpath(root)
    _check_resolves_inside(folder, root, real_root, "", f'folder "{folder}"')
    if not osp.isdir(folder):
        what = ("a symbolic link to a missing target" if osp.islink(folder) and not osp.exists(folder)
                else "not a folder")
        raise DatasetLayoutError(f'"{folder}" is {what}; expected a folder of images. Restore or remove it')
    names = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_symlink():  # plain entries of a folder that resolves inside the root are inside too
                _check_resolves_inside(entry.path, root, real_root, "", f'"{entry.path}"')
            names.append(entry.name)
    return sorted(osp.join(folder, n) for n in names)
