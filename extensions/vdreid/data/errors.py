"""Errors raised by the VI dataset loaders, and a strict image reader.

Every error names the offending path (and line, for split files), says what was expected and what to do.
"""

from __future__ import annotations

import os
import os.path as osp

from PIL import Image

from vdreid.errors import DatasetLayoutError, ImageReadError, SplitFileError

__all__ = ["DatasetLayoutError", "ImageReadError", "SplitFileError", "empty_folder_error", "list_folder",
           "read_image_rgb", "require_dir", "require_file"]


def require_dir(path: str, what: str, hint: str) -> str:
    """Return ``path`` if it is a directory, otherwise raise :class:`DatasetLayoutError`."""
    if not osp.isdir(path):
        raise DatasetLayoutError(f'{what} not found: "{path}" is not a directory. {hint}')
    return path


def require_file(path: str, what: str, hint: str) -> str:
    """Return ``path`` if it is a file, otherwise raise :class:`DatasetLayoutError`."""
    if not osp.isfile(path):
        raise DatasetLayoutError(f'{what} not found: "{path}" is not a file. {hint}')
    return path


def empty_folder_error(folder: str) -> DatasetLayoutError:
    """The error for an identity folder without images: AGW's ``random.choice`` would fail on it, and an empty
    identity folder is never part of the released data."""
    return DatasetLayoutError(
        f'identity folder "{folder}" is empty: expected image files (e.g. 0001.jpg). '
        "Remove the empty folder or restore its images."
    )


def list_folder(folder: str) -> list[str]:
    """Sorted full paths of ``os.listdir(folder)`` with no filtering (AGW's rule for gallery draws).

    Raises :class:`DatasetLayoutError` on an empty folder (:func:`empty_folder_error`). Dataset readers list folders
    through :func:`vdreid.data.paths.list_inside`, which also keeps symbolic links inside the dataset folder.
    """
    names = os.listdir(folder)
    if not names:
        raise empty_folder_error(folder)
    return sorted(osp.join(folder, n) for n in names)


def read_image_rgb(path: str) -> Image.Image:
    """Open ``path`` as an RGB PIL image; raise :class:`ImageReadError` naming the path if it cannot be decoded.

    torchreid's ``read_image`` retries forever on an ``IOError`` (it prints "Will redo"), so a corrupt file would hang
    training; we fail fast instead.
    """
    if not osp.isfile(path):
        raise ImageReadError(f'image "{path}" does not exist (listed by the dataset split but missing on disk)')
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises several types; re-raised with the path named
        raise ImageReadError(
            f'cannot read image "{path}": {type(exc).__name__}: {exc}. Replace or remove the corrupt file.'
        ) from exc
