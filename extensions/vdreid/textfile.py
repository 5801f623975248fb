"""Strict decoding of the text files vdreid reads (split files, index files, config files): UTF-8 with or without a
byte-order mark, or UTF-16 with one; any other byte is an error naming ``file:line`` and the column."""

from __future__ import annotations

import codecs

from vdreid.errors import SplitFileError

_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def decode_text(raw: bytes, path: str, what: str = "file", error: type[Exception] = SplitFileError) -> str:
    """``raw`` (the bytes of ``path``) decoded strictly: UTF-8 with or without a byte-order mark, or UTF-16 with
    one; anything else raises ``error`` naming ``path:line``, the column and the offending byte."""
    encoding, start = "utf-8", 0
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            encoding, start = enc, len(bom)
            break
    try:
        return raw[start:].decode(encoding)
    except UnicodeDecodeError as exc:
        if encoding != "utf-8":
            raise error(f"{path}: {what} starts with a {encoding} byte-order mark but is not valid {encoding} "
                        f"({exc.reason}); save it as UTF-8") from None
        bad = start + exc.start
        lineno = raw.count(b"\n", 0, bad) + 1
        col = bad - (raw.rfind(b"\n", 0, bad) + 1) + 1
        raise error(
            f"{path}:{lineno}: byte 0x{raw[bad]:02x} at column {col} is not valid UTF-8 ({exc.reason}); the {what} "
            "must be plain text (UTF-8 or ASCII): save it again as UTF-8"
        ) from None


__all__ = ["decode_text"]
