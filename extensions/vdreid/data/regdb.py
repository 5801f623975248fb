"""RegDB (Nguyen et al., Sensors 2017) as a torchreid ``ImageDataset`` (``docs/protocols.md``, "RegDB").

Layout: ``<root>/RegDB/{Visible,Thermal}/<id>/*.bmp`` and ``idx/{train,test}_{visible,thermal}_{t}.txt`` for trials
t = 1..10, each line ``<path relative to RegDB/> <int label>`` separated by one space. camid 0 = visible, 1 = thermal.

Training labels are relabelled 0..N-1 in ascending label order. Test labels restart at 0 and name *different* people
than training labels, so test pids are offset by the number of training identities (206 on the real data, the offset
the released VD code uses) to keep the two namespaces apart. Protocol: one gallery of all test images of the other
modality, no exclusions, the standard CMC. Directions are named as for the other datasets: ``vis2ir`` (visible
queries, AGW's default) and ``ir2vis`` (thermal queries, AGW's ``--tvsearch``); RegDB's usual ``v2t`` / ``t2v`` are
accepted as aliases.
"""

from __future__ import annotations

import os.path as osp
from typing import Any

import numpy as np
from yacs.config import CfgNode as CN

from vdreid.data import synthetic as synthetic_trees
from vdreid.data.base import VIImageDataset, preset_class
from vdreid.data.errors import require_dir, require_file
from vdreid.data.modality import REGDB_IR_CAMIDS
from vdreid.data.protocol import Protocol, canonical_direction
from vdreid.data.registry import register_dataset
from vdreid.data.splitfiles import read_idx_file as read_idx
from vdreid.data.synthetic_layout import SyntheticLayout

VISIBLE, THERMAL = 0, 1
TRIALS = range(1, 11)
_HINT = (
    "Expected <root>/RegDB/{Visible,Thermal,idx} with idx/{train,test}_{visible,thermal}_<trial>.txt "
    "(pass the folder that CONTAINS RegDB/ as root; `vdreid make-synthetic --layout regdb` writes an example)."
)


def read_idx_file(path: str, dataset_dir: str) -> list[tuple[str, int]]:
    """Parse a RegDB idx file into ``(absolute image path, label)``; every error names ``path:line``.

    Blank lines (e.g. a trailing newline) are skipped; anything else must be ``<relative path> <int label>`` with
    exactly one space, as AGW's ``split(' ')`` expects, the path must stay inside ``RegDB/`` and the image must exist
    (:func:`vdreid.data.splitfiles.read_idx_file`).
    """
    require_file(path, "RegDB index file", _HINT)
    return read_idx(path, dataset_dir, what="RegDB index file", example="Thermal/1/male_front_t_00007_1.bmp")


class RegDB(VIImageDataset):
    """RegDB visible-thermal dataset, one of the ten official splits.

    Args:
        root: folder that contains ``RegDB/``.
        trial: split index 1..10 (each split needs its own trained model).
        direction: ``'vis2ir'`` (alias ``'v2t'``: query visible, gallery thermal) or ``'ir2vis'`` (alias ``'t2v'``:
            roles swapped); ``self.direction`` and the protocol string use the first names.
        **kwargs: torchreid's (``transform``, ``mode``, ``combineall``, ``verbose``, ...).
    """

    dataset_dir = "RegDB"
    ir_camids = REGDB_IR_CAMIDS
    #: the config section this class owns: ``data.regdb``
    config_section = "regdb"
    display_name = "RegDB"
    synthetic = SyntheticLayout(name="regdb", write=synthetic_trees.make_regdb, folder="RegDB",
                                presets=synthetic_trees.REGDB_PRESETS, options=("num_ids", "style"))
    split_key = "trial"
    split_values = tuple(TRIALS)
    protocol_prefixes = ("regdb",)

    @classmethod
    def ranges(cls) -> dict[str, Any]:
        return {"trial": ((lambda v: v in TRIALS), "an integer in 1..10 (RegDB has splits 1..10)")}

    @classmethod
    def canonical_protocol(cls, protocol: str) -> str:
        """RegDB's ``v2t`` / ``t2v`` (older protocol strings) are ``vis2ir`` / ``ir2vis``."""
        parts = protocol.split("/")
        if len(parts) > 1 and parts[1] in ("v2t", "t2v"):
            parts[1] = canonical_direction(parts[1], "protocol")
        return "/".join(parts)

    @classmethod
    def config(cls) -> CN:
        """Defaults of the ``data.regdb`` config section (a yacs ``CfgNode``)."""
        node = CN()
        node.trial = 1  # split 1..10 (each split needs its own training)
        node.direction = "vis2ir"  # vis2ir (= v2t: visible queries, thermal gallery) | ir2vis (= t2v)
        return node

    @classmethod
    def from_config(cls, node: Any) -> dict[str, Any]:
        """Constructor keyword arguments from a ``data.regdb`` section."""
        return {"trial": int(node.trial), "direction": canonical_direction(node.direction, "data.regdb.direction")}

    def __init__(self, root: str = "", trial: int = 1, direction: str = "vis2ir", **kwargs: Any) -> None:
        if isinstance(trial, bool) or not isinstance(trial, (int, np.integer)) or int(trial) not in TRIALS:
            raise ValueError(f"RegDB: unknown trial={trial!r}; expected an int in 1..10")
        direction = canonical_direction(direction, "RegDB")
        self.trial, self.direction = int(trial), direction
        self.root = osp.abspath(osp.expanduser(root))
        self.dataset_dir = osp.join(self.root, self.dataset_dir)
        require_dir(self.dataset_dir, "RegDB folder", _HINT)
        for sub in ("Visible", "Thermal", "idx"):
            require_dir(osp.join(self.dataset_dir, sub), f"RegDB {sub} folder", _HINT)

        def idx(split: str, modality: str) -> list[tuple[str, int]]:
            path = osp.join(self.dataset_dir, "idx", f"{split}_{modality}_{self.trial}.txt")
            return read_idx_file(path, self.dataset_dir)

        tr_v, tr_t, te_v, te_t = idx("train", "visible"), idx("train", "thermal"), idx("test", "visible"), idx(
            "test", "thermal"
        )
        labels = sorted({lb for _, lb in tr_v + tr_t})
        relabel = {lb: i for i, lb in enumerate(labels)}
        train = [(p, relabel[lb], VISIBLE, 0) for p, lb in tr_v] + [(p, relabel[lb], THERMAL, 0) for p, lb in tr_t]
        offset = len(labels)  # test label k -> pid k + #train ids: a different person than train label k
        vis = [(p, lb + offset, VISIBLE, 0) for p, lb in te_v]
        thr = [(p, lb + offset, THERMAL, 0) for p, lb in te_t]
        query, gallery = (vis, thr) if direction == "vis2ir" else (thr, vis)
        self.test_pid_offset = offset
        self.protocol = Protocol(
            name=f"regdb/{direction}/trial-{self.trial}",
            query=np.arange(len(query)),
            gallery_trials=[np.arange(len(gallery))],
            exclude_cam_pairs=(),
            cmc_mode="standard",
            trial_seeds=(self.trial,),
            info={"dataset": "regdb", "direction": direction, "trial": self.trial, "test_pid_offset": offset,
                  "root": self.dataset_dir},
        )
        super().__init__(train, query, gallery, **kwargs)


RegDBT2V = preset_class(RegDB, "RegDBT2V", "RegDB trial 1, thermal -> visible.", direction="ir2vis")

#: registered torchreid names (``regdb_ir2vis`` is ``regdb_t2v`` under the direction name used elsewhere)
register_dataset("regdb", RegDB)
register_dataset("regdb_t2v", RegDBT2V)
register_dataset("regdb_ir2vis", RegDBT2V)
