"""Strict readers of the text files that define dataset splits.

Two formats appear in the VI-ReID datasets:

* *id lists* (SYSU-MM01 ``exp/{train,val,test}_id.txt``, LLCM ``idx/test_id.txt``): comma-separated decimal person
  ids. The released files hold one line; AGW's loader (``pre_process_sysu.py``, ``data_manager.py``) reads only the
  first line, so ids written on a second line vanished without a word. Here every line counts (a warning says that
  the authors' loaders would read only the first);
* *index files* (RegDB ``idx/{train,test}_{visible,thermal}_<t>.txt``, LLCM ``idx/{train,test}_{vis,nir}.txt``): one
  ``<path relative to the dataset folder> <int label>`` per line, separated by one space, as AGW's ``split(' ')``
  expects.

Strict means: a number is ASCII decimal digits only (Python's ``int()`` also reads ``1_4`` as 14, ``+5``, `` 5`` and
non-ASCII digits such as ``'٣'``); a UTF-8 byte-order mark is accepted and dropped (Windows editors write one), as is
UTF-16 with its byte-order mark; any other undecodable byte is an error naming ``file:line``. Paths of index files
must stay inside the dataset folder (:func:`vdreid.data.paths.inside_root`).
"""

from __future__ import annotations

import logging
import os.path as osp
import re

from vdreid.data.paths import inside_root, where
from vdreid.errors import DatasetLayoutError, SplitFileError
from vdreid.textfile import decode_text

logger = logging.getLogger(__name__)

__all__ = ["decode_text", "parse_decimal", "read_id_list", "read_idx_file", "read_text_lines"]

_DECIMAL = re.compile(r"-?[0-9]+")


def read_text_lines(path: str, what: str = "file") -> list[str]:
    """The lines of a text file (without line endings ``\\n`` / ``\\r\\n``), decoded strictly.

    UTF-8, with or without a byte-order mark, and UTF-16 with a byte-order mark are read; anything else raises
    :class:`~vdreid.errors.SplitFileError` naming ``path:line`` and the offending byte (:func:`decode_text`). Lines
    are split on ``\\n`` only (``str.splitlines`` would also split on form feeds and Unicode separators and shift
    line numbers).
    """
    with open(path, "rb") as f:
        text = decode_text(f.read(), path, what)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def parse_decimal(token: str) -> int | None:
    """``int(token)`` for an optionally negative string of ASCII digits; None for anything else (``1_4``, ``+5``,
    ``' 5'``, ``'٣'``, ``''``), which Python's ``int`` would read with another meaning or accept silently."""
    return int(token) if _DECIMAL.fullmatch(token) else None


def read_id_list(path: str, what: str = "split file", max_id: int = 9999) -> list[int]:
    """Person ids of a comma-separated id file (SYSU-MM01 ``exp/*_id.txt``, LLCM ``idx/test_id.txt``).

    Every non-blank line holds ids ``1..max_id`` separated by ``,`` (spaces around an id are allowed, as ``int``
    allows them in the authors' loaders; leading zeros too; a comma at the end of a line is ignored). Returns the
    ids in file order. Raises :class:`~vdreid.errors.SplitFileError` naming ``path:line`` for an empty file, an
    item that is not a decimal id, an id out of range, or an id listed twice.
    """
    lines = read_text_lines(path, what)
    ids: list[int] = []
    first_line: dict[int, int] = {}
    used_lines = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        used_lines.append(lineno)
        items = line.split(",")
        if len(items) > 1 and not items[-1].strip():
            items.pop()  # a trailing comma ends the list; it does not add an empty item
        for k, tok in enumerate(items, 1):
            pid = parse_decimal(tok.strip())
            if pid is None:
                raise SplitFileError(
                    f"{path}:{lineno}: item {k} is {tok.strip()!r}, not an integer id; expected comma-separated "
                    'decimal ids like "1,2,4"'
                )
            if not 0 < pid <= max_id:
                raise SplitFileError(f"{path}:{lineno}: id {pid} out of range 1..{max_id} (folders are named with "
                                     f"{len(str(max_id))} digits)")
            if pid in first_line:
                raise SplitFileError(f"{path}:{lineno}: ids listed more than once: [{pid}] (first on line "
                                     f"{first_line[pid]}); list each id once")
            first_line[pid] = lineno
            ids.append(pid)
    if not ids:
        raise SplitFileError(f'{path}:1: empty {what}; expected one line of comma-separated ids, e.g. "1,2,4"')
    if len(used_lines) > 1:
        logger.warning("%s: ids on lines %s are all used (the authors' loaders read only line %d; the released files "
                       "hold one line)", path, ", ".join(map(str, used_lines)), used_lines[0])
    return ids


def read_idx_file(path: str, root: str, what: str = "index file", example: str = "Thermal/1/x.bmp"
                  ) -> list[tuple[str, int]]:
    """Parse an index file of ``<relative image path> <int label>`` lines into ``(absolute image path, label)``.

    Used for RegDB and LLCM. Blank lines (e.g. a trailing newline) are skipped; anything else must be exactly two
    fields separated by one space (AGW's ``split(' ')``), the label a non-negative decimal integer, the path
    relative to the dataset folder ``root``, inside it (:func:`~vdreid.data.paths.inside_root`), and the image must
    exist. Every error names ``path:line``.
    """
    out = []
    for lineno, line in enumerate(read_text_lines(path, what), 1):
        if not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0]:
            raise SplitFileError(
                f"{path}:{lineno}: expected '<relative image path> <int label>' separated by one space, got {line!r}"
            )
        label = parse_decimal(parts[1])
        if label is None:
            raise SplitFileError(f"{path}:{lineno}: label {parts[1]!r} is not an integer (line {line!r})")
        if label < 0:
            raise SplitFileError(f"{path}:{lineno}: negative label {label}")
        img = inside_root(parts[0], root, source=path, lineno=lineno)
        if not osp.isfile(img):
            raise DatasetLayoutError(
                f'{where(path, lineno)}image "{img}" not found (paths are relative to "{osp.abspath(root)}", '
                f"e.g. {example})"
            )
        out.append((img, label))
    if not out:
        raise SplitFileError(f"{path}: no entries; expected lines '<relative image path> <int label>'")
    return out
