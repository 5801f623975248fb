"""LLCM (Zhang & Wang, CVPR 2023: low-light cross-modality) as a torchreid ``ImageDataset`` with DEEN's protocol.

Layout and protocol as in ``docs/protocols.md`` ("LLCM"), following the authors' DEEN code (ZYK100/LLCM
``DEEN/data_manager.py``, ``data_loader.py``, ``eval_metrics.py``, ``test.py``, ``train.py``)::

    LLCM/idx/test_id.txt                   comma-separated test person ids
    LLCM/idx/train_vis.txt, train_nir.txt  "<path relative to LLCM/> <int label>" per line
    LLCM/vis/<pid>/..., nir/<pid>/...      the images (<pid:04d>_c<cam:02d>_s<...>_f<frame>_<vis|nir>.jpg)
    LLCM/test_vis/cam1..cam9/<pid:04d>/    test images by camera (visible)
    LLCM/test_nir/cam1..cam9/<pid:04d>/    (near-infrared; cam3 is empty in the release and never read)

* Training: the lines of ``idx/train_vis.txt`` then ``idx/train_nir.txt``, never a folder listing; the label column
  is the identity (contiguous 0..N-1 on the real data, then used as is; otherwise relabelled in ascending order).
* Cameras: visible cameras 1..9 and near-infrared cameras 1, 2, 4..9 (DEEN leaves out the empty NIR cam3). VIS cam k
  and NIR cam k are one physical camera. vdreid reads the modality of an image from its camid (``ir_camids``), so the
  camids differ by modality: VIS cam k -> ``k - 1``, NIR cam k -> ``9 + k - 1``; ``protocol.physical_camera`` maps
  both to ``k - 1`` for the evaluation rule below (without it the rule would never fire).
* Queries and galleries: DEEN's ``process_query_llcm`` / ``process_gallery_llcm``: pids in sorted 4-digit order, the
  cameras of a modality inside, every existing ``<cam>/<pid>`` folder, full paths sorted as strings (so ``f10000``
  sorts before ``f9000``); the query takes every image, gallery trial ``t`` one ``random.Random(t).choice`` per
  existing folder (the same draws as DEEN's global ``random.seed(t); random.choice``). Pids are the original ids,
  read from the folder names of the relative path (DEEN parses the absolute path, which breaks under a root that
  contains ``cam``).
* Directions: ``'ir2vis'`` (DEEN's default ``[1, 2]``: all NIR test images against a seeded VIS gallery),
  ``'vis2ir'`` (``[2, 1]`` as DEEN's ``train.py`` evaluates it: all VIS images against a seeded NIR gallery) and
  ``'vis2ir_swapped'``, the form of the authors' ``test.py`` scripts, which swap the roles: the seeded NIR draws are
  the probes (re-drawn each trial) and all VIS test images the gallery. It is a different protocol (higher rank-1,
  lower mAP) with its own name and ``protocol.info['swapped_roles'] = True``.
* Evaluation (DEEN's ``eval_llcm``): identity-deduplicated CMC, AP / INP on the full list, and for each query the
  gallery items with the same pid AND the same physical camera removed; 10 trials, seeds 0..9.
"""

from __future__ import annotations

import logging
import os.path as osp
import random
import re
from typing import Any

import numpy as np
from yacs.config import CfgNode as CN

from vdreid.config import INT, at_least
from vdreid.data import synthetic as synthetic_trees
from vdreid.data.base import Item, VIImageDataset, preset_class
from vdreid.data.errors import DatasetLayoutError, SplitFileError, empty_folder_error, require_dir, require_file
from vdreid.data.paths import list_inside
from vdreid.data.protocol import Protocol, canonical_direction
from vdreid.data.registry import register_dataset
from vdreid.data.splitfiles import read_id_list, read_idx_file
from vdreid.data.synthetic_layout import SyntheticLayout

logger = logging.getLogger(__name__)

NUM_CAMERAS = 9
VIS_CAMS: tuple[int, ...] = tuple(range(1, 10))
NIR_CAMS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 8, 9)  # DEEN's list: NIR cam3 is empty in the release
NIR_CAMID_OFFSET = NUM_CAMERAS
#: camids of the near-infrared images (modality is read from the camid everywhere in vdreid)
LLCM_IR_CAMIDS: frozenset[int] = frozenset(range(NIR_CAMID_OFFSET, NIR_CAMID_OFFSET + NUM_CAMERAS))
#: camid -> physical camera for the same-pid-same-camera rule: NIR cam k and VIS cam k are one camera
PHYSICAL_CAMERA: dict[int, int] = {NIR_CAMID_OFFSET + k: k for k in range(NUM_CAMERAS)}
SWAPPED = "vis2ir_swapped"
MODALITY_FOLDER = {"vis": "test_vis", "nir": "test_nir"}
_CAM_IN_NAME = re.compile(r"_c(\d+)_")
_HINT = (
    "Expected the LLCM layout <root>/LLCM/{idx/test_id.txt, idx/train_vis.txt, idx/train_nir.txt, "
    "test_vis/cam1..cam9/<pid:04d>/, test_nir/cam1..cam9/<pid:04d>/} (pass the folder that CONTAINS LLCM/ as root; "
    "`vdreid make-synthetic --layout llcm` writes an example)."
)


def camid_of(modality: str, cam: int) -> int:
    """0-based camid of camera ``cam`` (1..9) of ``modality`` (``'vis'`` or ``'nir'``)."""
    return cam - 1 + (NIR_CAMID_OFFSET if modality == "nir" else 0)


class LLCM(VIImageDataset):
    """LLCM for VI-ReID with DEEN's query lists, seeded galleries and ``eval_llcm`` rule.

    Args:
        root: folder that contains ``LLCM/``.
        direction: ``'ir2vis'`` (default, the published IR -> VIS protocol), ``'vis2ir'`` (VIS queries against the
            seeded NIR gallery, DEEN's ``train.py`` form) or ``'vis2ir_swapped'`` (the authors' ``test.py`` form:
            seeded NIR probes against all VIS images; never compare it with ``'vis2ir'``).
        num_trials: gallery (or, swapped, probe) re-drawings with seeds ``0..num_trials-1`` (10 in DEEN).
        **kwargs: torchreid's (``transform``, ``mode``, ``combineall``, ``verbose``, ...).
    """

    dataset_dir = "LLCM"
    ir_camids = LLCM_IR_CAMIDS
    #: the config section this class owns: ``data.llcm``
    config_section = "llcm"
    display_name = "LLCM"
    synthetic = SyntheticLayout(name="llcm", write=synthetic_trees.make_llcm, folder="LLCM",
                                presets=synthetic_trees.LLCM_PRESETS, options=("num_ids", "style"))
    protocol_prefixes = ("llcm",)

    @classmethod
    def ranges(cls) -> dict[str, Any]:
        return {"num_trials": at_least(1, INT)}

    @classmethod
    def config(cls) -> CN:
        """Defaults of the ``data.llcm`` config section (a yacs ``CfgNode``)."""
        node = CN()
        node.direction = "ir2vis"  # ir2vis (published default) | vis2ir | vis2ir_swapped (the authors' test.py form)
        node.num_trials = 10
        return node

    @classmethod
    def from_config(cls, node: Any) -> dict[str, Any]:
        """Constructor keyword arguments from a ``data.llcm`` section."""
        return {
            "direction": canonical_direction(node.direction, "data.llcm.direction", extra=(SWAPPED,)),
            "num_trials": int(node.num_trials),
        }

    def __init__(self, root: str = "", direction: str = "ir2vis", num_trials: int = 10, **kwargs: Any) -> None:
        self.direction = canonical_direction(direction, "LLCM", extra=(SWAPPED,))
        if isinstance(num_trials, bool) or not isinstance(num_trials, (int, np.integer)) or num_trials < 1:
            raise ValueError(f"LLCM: num_trials must be a positive int, got {num_trials!r}")
        self.num_trials = int(num_trials)
        self.root = osp.abspath(osp.expanduser(root))
        self.dataset_dir = osp.join(self.root, self.dataset_dir)
        require_dir(self.dataset_dir, "LLCM folder", _HINT)
        idx = require_dir(osp.join(self.dataset_dir, "idx"), "LLCM index folder idx", _HINT)
        for modality, cams in (("vis", VIS_CAMS), ("nir", NIR_CAMS)):
            top = require_dir(osp.join(self.dataset_dir, MODALITY_FOLDER[modality]),
                              f"LLCM test folder {MODALITY_FOLDER[modality]}", _HINT)
            for c in cams:
                require_dir(osp.join(top, f"cam{c}"), f"LLCM camera folder {MODALITY_FOLDER[modality]}/cam{c}", _HINT)
        self._listing: dict[tuple[str, int, int], list[str] | None] = {}

        id_file = require_file(osp.join(idx, "test_id.txt"), "LLCM test id file", _HINT)
        self.test_ids = sorted(read_id_list(id_file, "LLCM test id file"))
        missing = [p for p in self.test_ids if not any(self._files(m, c, p) for m, cs in
                                                        (("vis", VIS_CAMS), ("nir", NIR_CAMS)) for c in cs)]
        if missing:
            logger.warning("%s: %d test ids have no folder under test_vis/ or test_nir/ (e.g. %s); they take no part "
                           "in the evaluation", id_file, len(missing), missing[:5])
        train = self._train_items(osp.join(idx, "train_vis.txt"), osp.join(idx, "train_nir.txt"))
        query, gallery, self.protocol = self._test_protocol()
        super().__init__(train, query, gallery, **kwargs)

    # ------------------------------------------------------------------ layout helpers

    def _files(self, modality: str, cam: int, pid: int) -> list[str] | None:
        """Sorted, unfiltered full paths in ``test_<modality>/cam<cam>/<pid:04d>`` (None if the folder does not
        exist; a link leaving LLCM/, a link loop or an empty folder is an error); cached."""
        key = (modality, cam, pid)
        if key not in self._listing:
            d = osp.join(self.dataset_dir, MODALITY_FOLDER[modality], f"cam{cam}", f"{pid:04d}")
            files = list_inside(d, self.dataset_dir)
            if files == []:  # DEEN's random.choice would fail on it
                raise empty_folder_error(d)
            self._listing[key] = files
        return self._listing[key]

    def _train_items(self, vis_file: str, nir_file: str) -> list[Item]:
        """DEEN's training lists: every line of ``train_vis.txt`` then ``train_nir.txt`` (``load_data``)."""
        example = {"vis": "vis/0351/0351_c06_s200656_f4830_vis.jpg", "nir": "nir/0351/0351_c06_s200656_f4830_nir.jpg"}
        lists = {}
        for modality, path in (("vis", vis_file), ("nir", nir_file)):
            require_file(path, f"LLCM training index {osp.basename(path)}", _HINT)
            entries = read_idx_file(path, self.dataset_dir, what="LLCM index file", example=example[modality])
            lists[modality] = [(img, label, self._camera_of(img, path, modality)) for img, label in entries]
        vis_labels = {lb for _, lb, _ in lists["vis"]}
        nir_labels = {lb for _, lb, _ in lists["nir"]}
        if vis_labels != nir_labels:
            only_v, only_n = sorted(vis_labels - nir_labels)[:10], sorted(nir_labels - vis_labels)[:10]
            raise SplitFileError(
                f"{vis_file} and {nir_file} must list the same training labels (every identity needs images of both "
                f"modalities, DEEN's sampler draws both): only visible {only_v}, only near-infrared {only_n}"
            )
        labels = sorted(vis_labels)
        self.train_labels_contiguous = labels == list(range(len(labels)))
        if not self.train_labels_contiguous:
            logger.warning("%s: training labels are not 0..%d; relabelled in ascending order", vis_file,
                           len(labels) - 1)
        relabel = {lb: i for i, lb in enumerate(labels)}
        return [(img, relabel[lb], camid_of(m, cam), 0) for m in ("vis", "nir") for img, lb, cam in lists[m]]

    @staticmethod
    def _camera_of(img: str, source: str, modality: str) -> int:
        """Camera number 1..9 from the ``_c<cam>_`` part of the file name."""
        m = _CAM_IN_NAME.search(osp.basename(img))
        cam = int(m.group(1)) if m else 0
        if not 1 <= cam <= NUM_CAMERAS:
            raise SplitFileError(
                f'{source}: image "{img}" has no camera number 1..{NUM_CAMERAS} in its name; expected LLCM file '
                f"names like 0351_c06_s200656_f4830_{modality}.jpg"
            )
        return cam

    def _all_images(self, modality: str) -> list[tuple[str, int, int]]:
        """DEEN's ``process_query_llcm``: every image, pid-major, cameras inside, sorted paths."""
        cams = VIS_CAMS if modality == "vis" else NIR_CAMS
        return [(p, pid, c) for pid in self.test_ids for c in cams for p in self._files(modality, c, pid) or ()]

    def _draw(self, modality: str, trial: int) -> list[tuple[str, int, int]]:
        """DEEN's ``process_gallery_llcm``: ``random.seed(trial)``, one choice per existing (pid, camera) folder.
        ``self.test_ids`` is sorted as ints, which for 4-digit folder names is DEEN's string order."""
        rng = random.Random(trial)
        cams = VIS_CAMS if modality == "vis" else NIR_CAMS
        out = []
        for pid in self.test_ids:
            for c in cams:
                files = self._files(modality, c, pid)
                if files is not None:
                    out.append((rng.choice(files), pid, c))
        return out

    def _test_protocol(self) -> tuple[list[Item], list[Item], Protocol]:
        query_mod, gallery_mod = ("nir", "vis") if self.direction == "ir2vis" else ("vis", "nir")
        seeds = tuple(range(self.num_trials))
        if self.direction == SWAPPED:  # probes: the seeded NIR draws; gallery: every VIS image
            draws = [self._draw("nir", t) for t in seeds]
            fixed, fixed_mod, drawn_mod = self._all_images("vis"), "vis", "nir"
        else:
            draws = [self._draw(gallery_mod, t) for t in seeds]
            fixed, fixed_mod, drawn_mod = self._all_images(query_mod), query_mod, gallery_mod
        union = sorted({d for tr in draws for d in tr}, key=lambda d: (d[1], d[2], d[0]))
        index = {d[0]: i for i, d in enumerate(union)}
        drawn_items = [(p, pid, camid_of(drawn_mod, c), 0) for p, pid, c in union]
        fixed_items = [(p, pid, camid_of(fixed_mod, c), 0) for p, pid, c in fixed]
        if not fixed_items or not drawn_items:
            what = MODALITY_FOLDER[fixed_mod if not fixed_items else drawn_mod]
            raise DatasetLayoutError(
                f"LLCM: no test images under {osp.join(self.dataset_dir, what)}/cam*/<pid> for the ids of "
                f"idx/test_id.txt ({self.test_ids[:10]}...); check the test folders"
            )
        trials = [np.array([index[d[0]] for d in tr], dtype=np.int64) for tr in draws]
        if self.direction == SWAPPED:
            query, gallery = drawn_items, fixed_items
            q_all, q_trials, g_trials = np.arange(len(query)), trials, [np.arange(len(gallery))] * len(seeds)
        else:
            query, gallery = fixed_items, drawn_items
            q_all, q_trials, g_trials = np.arange(len(query)), None, trials
        protocol = Protocol(
            name=f"llcm/{self.direction}/deen/{self.num_trials} trials",
            query=q_all,
            gallery_trials=g_trials,
            exclude_cam_pairs=(),
            cmc_mode="dedup",
            trial_seeds=seeds,
            remove_same_pid_same_cam=True,
            physical_camera=PHYSICAL_CAMERA,
            query_trials=q_trials,
            info={
                "dataset": "llcm",
                "direction": self.direction,
                "variant": "swapped" if self.direction == SWAPPED else "natural",
                "swapped_roles": self.direction == SWAPPED,
                "query_modality": "nir" if self.direction in ("ir2vis", SWAPPED) else "vis",
                "nir_cams": list(NIR_CAMS),
                "camids": "visible cam k -> k-1, near-infrared cam k -> 8+k (one physical camera)",
                "trial_seed_meaning": "random.Random(seed)",
                "root": self.dataset_dir,
            },
        )
        return query, gallery, protocol


LLCMVisToIR = preset_class(LLCM, "LLCMVisToIR", "LLCM, visible queries against seeded NIR galleries.",
                           direction="vis2ir")
LLCMVisToIRSwapped = preset_class(
    LLCM, "LLCMVisToIRSwapped", "LLCM, the authors' test.py 'VIS->IR': seeded NIR probes against all VIS images.",
    direction=SWAPPED,
)

#: registered torchreid names
register_dataset("llcm", LLCM)
register_dataset("llcm_vis2ir", LLCMVisToIR)
register_dataset("llcm_vis2ir_swapped", LLCMVisToIRSwapped)
