"""Atomic file writes: a temporary file in the target folder, flushed and fsynced, then ``os.replace``.

A reader (or a run resumed after SIGKILL) sees either the previous complete file or the new complete file, never a
torn one. Used for checkpoints and results JSON.
"""

from __future__ import annotations

import os
import os.path as osp
import tempfile
from collections.abc import Callable
from typing import IO


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> str:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``; returns the absolute path.
    On any error the temporary file is removed and ``path`` is left as it was."""
    path = osp.abspath(path)
    folder = osp.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + osp.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    return path
