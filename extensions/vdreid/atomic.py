"""Atomic file writes: a temporary file in the target folder, flushed and fsynced, then ``os.replace``.

A reader (or a run resumed after SIGKILL) sees either the previous complete file or the new complete file, never a
torn one. Used for checkpoints and results JSON.

Two machine faults get a clear message instead of a library traceback:

* *disk full* (``ENOSPC``, or ``EDQUOT`` for a full quota): :class:`~vdreid.errors.DiskFullError` naming the path and
  "no space left"; the temporary file is removed and the previous file at the path is left intact. ``torch.save``
  turns a failed write into its own ``RuntimeError`` ("inline_container.cc ... unexpected pos"), which names neither
  the path nor the cause, so the file object handed to the writer records the ``OSError`` it saw;
* the temporary file is created with ``os.open(..., 0o666)``, so the process umask applies exactly as for every other
  output (``tempfile.mkstemp`` would give 0600 and make checkpoints and results unreadable to the group).
"""

from __future__ import annotations

import errno
import logging
import os
import os.path as osp
import secrets
from collections.abc import Callable
from typing import IO, Any

from vdreid.errors import DiskFullError

logger = logging.getLogger(__name__)

__all__ = ["TEMP_SUFFIX", "atomic_write", "is_temp_name", "remove_temp_files"]

#: suffix of the temporary files of :func:`atomic_write` (their names are ``.<target name>.<random>.tmp``)
TEMP_SUFFIX = ".tmp"
#: errno values that mean "no space left" (device full, or the user's quota exhausted)
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_temp_name(name: str) -> bool:
    """True for a file name that :func:`atomic_write` uses for its temporary files (left behind only by a kill)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3


def remove_temp_files(folder: str) -> list[str]:
    """Delete the temporary files a killed :func:`atomic_write` left in ``folder`` (never loaded by anything);
    returns the removed paths. Call it only while holding the folder's run lock (another process's save in
    progress would lose its temporary file)."""
    removed = []
    if not osp.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = osp.join(folder, name)
        if is_temp_name(name) and osp.isfile(path):
            os.remove(path)
            removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) of an interrupted save in %s", len(removed), folder)
    return removed


def _open_temp(folder: str, name: str) -> tuple[int, str]:
    """Create a new, empty temporary file next to ``folder/name`` (mode 0o666 minus the umask); ``(fd, path)``."""
    while True:
        tmp = osp.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


class _RecordingFile:
    """A file object that remembers the first ``OSError`` its ``write`` raised (``torch.save`` replaces it by a
    ``RuntimeError`` that does not say why the write failed)."""

    def __init__(self, f: IO) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _no_space(exc: BaseException | None) -> OSError | None:
    """The ``OSError`` meaning "no space left" in ``exc`` or its cause/context chain, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> str:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``; returns the absolute path.

    On any error the temporary file is removed and ``path`` is left as it was. A full disk raises
    :class:`~vdreid.errors.DiskFullError` naming ``path``.
    """
    path = osp.abspath(path)
    folder = osp.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _open_temp(folder, osp.basename(path))
    rec: _RecordingFile | None = None
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            rec = _RecordingFile(f)
            write(rec)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if osp.exists(tmp):
            os.remove(tmp)
        full = _no_space(exc) or (rec.error if rec is not None and rec.error is not None
                                  and rec.error.errno in _NO_SPACE else None)
        if full is not None:
            reason = "no space left on the device" if full.errno == errno.ENOSPC else "no space left in the disk quota"
            raise DiskFullError(
                f'cannot write "{path}": {reason}; '
                f"{'the previous file is intact' if osp.exists(path) else 'nothing was written'}. "
                f'Free space on the disk that holds "{folder}" or choose another output folder (data.save_dir).'
            ) from exc
        raise
    return path
