"""Progress of long loops: a tqdm bar on a terminal, plain periodic log lines anywhere else.

A tqdm bar redraws itself with carriage returns. On a terminal that is one line; written to a file or a pipe (a
cluster job's log, ``vdreid train ... | tee log``) every redraw stays in the file, and a 20-epoch run fills its log
with thousands of frames. So a bar is drawn only when its stream is a terminal (``isatty()``); otherwise
:class:`Progress` writes a log line at most every ``interval_s`` seconds (none for a loop shorter than that). The
training loop's own progress (:class:`vdreid.engine.hooks.ProgressHook`) uses :func:`is_terminal` the same way and
logs every ``print_freq`` iterations instead.

This lives with the evaluation because feature extraction and blockwise ranking are its long loops; the engine and
the tools use it too (lower rooms may not import higher ones).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: seconds between two log lines of a loop whose stream is not a terminal
LOG_INTERVAL_S = 30.0


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is an interactive terminal; False for files, pipes, captured
    streams and objects without ``isatty``."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class Progress:
    """``total`` steps of a loop named ``desc``: a tqdm bar (``leave=False``) when ``stream`` is a terminal, else a
    log line (``log``, default this module's logger) at most every ``interval_s`` seconds: ``desc: i/total (x/s)``.
    ``enabled=False`` shows nothing. Use as a context manager or call :meth:`close`."""

    def __init__(self, total: int | None, desc: str, stream: TextIO | None = None, enabled: bool = True,
                 interval_s: float = LOG_INTERVAL_S, log: logging.Logger | None = None, unit: str = "it") -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.interval_s = float(interval_s)
        self.log = log or logger
        self._t0 = self._last = time.monotonic()
        stream = sys.stderr if stream is None else stream
        self.bar = (tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=stream, unit=unit)
                    if enabled and is_terminal(stream) else None)
        self._logging = enabled and self.bar is None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self._logging and now - self._last >= self.interval_s:
            self._last = now
            rate = self.n / max(now - self._t0, 1e-9)
            of = f"/{self.total}" if self.total is not None else ""
            self.log.info("%s: %d%s %s (%.1f %s/s)", self.desc, self.n, of, self.unit, rate, self.unit)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iterate(iterable: Iterable[T], desc: str, total: int | None = None, stream: TextIO | None = None,
            enabled: bool = True, interval_s: float = LOG_INTERVAL_S, log: logging.Logger | None = None,
            unit: str = "it") -> Iterator[T]:
    """``for x in iterate(loader, "test query features"): ...``: :class:`Progress` around an iterable (``total``
    defaults to ``len(iterable)`` when it has one)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, stream=stream, enabled=enabled, interval_s=interval_s, log=log, unit=unit) as p:
        for item in iterable:
            yield item
            p.update(1)
