"""The record of the files a run or an evaluation wrote (``VIEngine.outputs``, ``Evaluator.written``).

Each writer adds what it wrote when it wrote it: checkpoints, ``config.yaml``, ``train_log.jsonl``, tensorboard
event files, results JSON, ranked-list folders. A file rewritten every epoch (``latest.pth``) is listed once, in
the order of its first write. The command line logs the record at the end of a run.
"""

from __future__ import annotations

import os.path as osp
from collections.abc import Iterator
from dataclasses import dataclass, field

#: what a recorded path is
KINDS = ("checkpoint", "config", "train log", "tensorboard", "results", "pictures", "other")


@dataclass
class Outputs:
    """Ordered set of ``(path, kind)``; ``kind`` is one of :data:`KINDS` (a folder of pictures is one entry)."""

    _items: dict[str, str] = field(default_factory=dict)

    def add(self, path: str, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"Outputs.add: kind must be one of {KINDS}, got {kind!r}")
        self._items.setdefault(osp.abspath(path), kind)
        return path

    def items(self) -> list[tuple[str, str]]:
        """``[(absolute path, kind), ...]`` in the order of the first write."""
        return list(self._items.items())

    def paths(self) -> list[str]:
        return list(self._items)

    def existing(self) -> list[tuple[str, str]]:
        """:meth:`items` that are still on disk (a best checkpoint may have been replaced, a folder moved)."""
        return [(p, k) for p, k in self._items.items() if osp.exists(p)]

    def merged(self, *others: Outputs) -> Outputs:
        """A new record: this one's entries, then the others' not yet in it."""
        out = Outputs(dict(self._items))
        for o in others:
            for p, k in o._items.items():
                out._items.setdefault(p, k)
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and osp.abspath(path) in self._items
