"""What a dataset family declares about its synthetic tree: the writer ``vdreid make-synthetic --layout NAME`` calls,
its presets, the folder it writes, and the marker file that tells a synthetic tree from a real one.

Every tree the generator writes holds :data:`MARKER` (the generator's arguments, as JSON) in the dataset folder, so a
run on it is recorded as synthetic without any flag (:func:`is_synthetic_tree`) and the leaderboard keeps it apart
from published numbers.
"""

from __future__ import annotations

import os.path as osp
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: the file the synthetic generator leaves in every dataset folder it writes (its arguments, as JSON)
MARKER = ".vdreid_synthetic.json"


@dataclass(frozen=True)
class SyntheticLayout:
    """A dataset family's synthetic writer.

    Attributes:
        name: the ``--layout`` value (``vdreid make-synthetic --layout NAME``).
        write: ``write(root, seed=0, preset=..., overwrite=False, **options) -> path of the dataset folder``.
        folder: the dataset folder the writer creates under the data root (the family's ``dataset_dir``).
        presets: preset name -> generator options (``style``, sizes, ...).
        options: extra command-line options the writer takes (``num_ids``, ``style``), for the CLI's help.
    """

    name: str
    write: Callable[..., str]
    folder: str
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    options: tuple[str, ...] = ()

    def style_of(self, preset: str, style: str | None = None) -> str:
        """The generator style a preset writes (``style`` when given)."""
        return style or str(self.presets.get(preset, {}).get("style", "classic"))


def is_synthetic_tree(dataset_dir: str) -> bool:
    """Whether ``dataset_dir`` (e.g. ``<root>/SYSU-MM01``) was written by the synthetic generator."""
    return osp.isfile(osp.join(dataset_dir, MARKER))
