"""SYSU-MM01 as a torchreid ``ImageDataset`` with AGW-exact and official-kit gallery protocols, both directions.

Layout, splits and protocol as in ``docs/protocols.md`` ("SYSU-MM01"):

* identities come from ``exp/{train,val,test}_id.txt`` only (comma-separated ids); stray single-modality folders
  on disk are ignored; the training set is train + val (395 ids on the real data) relabelled by ascending id;
* RGB cameras 1, 2, 4, 5 and IR cameras 3, 6; torchreid camid = camera number - 1 (SYSU cam3 -> 2);
* ``direction='ir2vis'`` (the published protocol): query = every cam3 and cam6 image of the test ids, in pid /
  camera / file order (both search modes); the gallery is drawn from the RGB cameras (1, 2, 4, 5) ('all') or (1, 2)
  ('indoor'). ``direction='vis2ir'``: query = every RGB image (cams 1, 2, 4, 5, both modes); the gallery is drawn
  from the IR cameras (3, 6) ('all') or (3,) ('indoor') by the same rules and seeds;
* gallery trial ``t`` (AGW's ``process_gallery_sysu``): ``rng = random.Random(t)``; for pid in the sorted 4-digit
  strings, for cam in the gallery cameras: if the folder exists, one ``rng.choice`` of the sorted, unfiltered
  listing. Official kit: positions ``rand_perm_cam{cam}{pid}(t, 1:shots)`` (1-based) in the sorted listing;
* cam2 and cam3 film the same room, so their pairs are excluded (the official kit's location rule):
  ``exclude_cam_pairs = ((2, 1),)`` (cam3 queries never see cam2) for ``ir2vis`` and ``((1, 2),)`` (cam2 queries
  never see cam3) for ``vis2ir``; ``cmc_mode`` is AGW's identity-deduplicated CMC.
"""

from __future__ import annotations

import os.path as osp
import random
import warnings
from typing import Any

import numpy as np
from yacs.config import CfgNode as CN

from vdreid.config import INT, at_least
from vdreid.data import synthetic as synthetic_trees
from vdreid.data.base import Item, VIImageDataset, preset_class
from vdreid.data.errors import DatasetLayoutError, SplitFileError, empty_folder_error, require_dir, require_file
from vdreid.data.modality import SYSU_IR_CAMIDS, SYSU_IR_CAMS, SYSU_RGB_CAMS
from vdreid.data.paths import list_inside
from vdreid.data.protocol import Protocol, canonical_direction
from vdreid.data.registry import register_dataset
from vdreid.data.splitfiles import read_id_list
from vdreid.data.synthetic_layout import SyntheticLayout
from vdreid.errors import ConfigError

SEARCH_CAMS: dict[str, tuple[int, ...]] = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
QUERY_CAMS: tuple[int, ...] = SYSU_IR_CAMS
EXCLUDE_CAM_PAIRS: tuple[tuple[int, int], ...] = ((2, 1),)  # (cam3, cam2) as 0-based camids
#: per direction: (query cameras, gallery cameras per search mode, excluded (query camid, gallery camid) pairs)
DIRECTION_CAMS: dict[str, tuple[tuple[int, ...], dict[str, tuple[int, ...]], tuple[tuple[int, int], ...]]] = {
    "ir2vis": (SYSU_IR_CAMS, SEARCH_CAMS, EXCLUDE_CAM_PAIRS),
    "vis2ir": (SYSU_RGB_CAMS, {"all": SYSU_IR_CAMS, "indoor": (3,)}, ((1, 2),)),  # (cam2, cam3)
}
MULTI_SHOT = 10
RAND_PERM_CANDIDATES = ("rand_perm_cam.mat", "exp/rand_perm_cam.mat", "evaluation/data_split/rand_perm_cam.mat")
_HINT = (
    "Expected the SYSU-MM01 layout <root>/SYSU-MM01/{cam1..cam6/<pid:04d>/*.jpg, exp/*_id.txt} "
    "(pass the folder that CONTAINS SYSU-MM01/ as root; `vdreid make-synthetic --layout sysu` writes an example)."
)


def read_id_file(path: str) -> list[int]:
    """Parse an ``exp/*_id.txt`` file: comma-separated decimal ids (AGW reads the first line, split on ',', each
    piece an int). Strictly (:func:`vdreid.data.splitfiles.read_id_list`): ids on further lines count too, items
    that ``int`` would misread (``1_4``) are errors naming ``file:line``, a byte-order mark is dropped."""
    require_file(path, "SYSU-MM01 split file", _HINT)
    return read_id_list(path, "SYSU-MM01 split file")


def load_rand_perm_cam(path: str) -> list[list[np.ndarray]]:
    """Load the official kit's ``rand_perm_cam.mat``: ``perm[cam - 1][pid - 1]`` is a ``trials x n`` array of 1-based
    positions into the sorted image list of ``cam<cam>/<pid:04d>`` (an empty array where the folder does not exist)."""
    from scipy.io import loadmat

    require_file(
        path,
        "official gallery permutation file rand_perm_cam.mat",
        "It ships with the official SYSU-MM01 evaluation kit (evaluation/data_split/rand_perm_cam.mat); pass its path "
        "as rand_perm_path, or use gallery_sampler='agw'.",
    )
    try:
        mat = loadmat(path)
    except Exception as exc:  # noqa: BLE001 - scipy raises several types; re-raised with the path named
        raise SplitFileError(f'cannot read "{path}" as a MATLAB .mat file: {exc}') from exc
    if "rand_perm_cam" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise SplitFileError(f'"{path}" has no variable "rand_perm_cam" (found {keys}); expected the official kit file')
    cams = np.asarray(mat["rand_perm_cam"], dtype=object).ravel()
    if cams.size != 6:
        raise SplitFileError(f'"{path}": rand_perm_cam has {cams.size} camera cells, expected 6 (cam1..cam6)')
    return [[np.asarray(c) for c in np.asarray(cell, dtype=object).ravel()] for cell in cams]


class SYSUMM01(VIImageDataset):
    """SYSU-MM01 (Wu et al., ICCV 2017) for VI-ReID with the AGW / official-kit test protocols.

    Args:
        root: folder that contains ``SYSU-MM01/``.
        search_mode: ``'all'`` (gallery cams 1, 2, 4, 5) or ``'indoor'`` (cams 1, 2). torchreid's own ``mode`` keyword
            means train/query/gallery, hence the name. With ``direction='vis2ir'``: IR gallery cams 3, 6 / 3.
        shots: 1 (single-shot) or 10 (multi-shot: 10 images per (id, camera) folder).
        gallery_sampler: ``'agw'`` (bit-exact AGW ``random.choice`` draws, seeds 0..num_trials-1; multi-shot, which AGW
            lacks, uses ``rng.sample(files, 10)`` on the same stream) or ``'official'`` (``rand_perm_cam.mat``).
            Multi-shot takes every image of a folder that holds fewer than 10.
        rand_perm_path: path of ``rand_perm_cam.mat``; default: the first of ``SYSU-MM01/{rand_perm_cam.mat,
            exp/rand_perm_cam.mat, evaluation/data_split/rand_perm_cam.mat}`` that exists.
        val_for_selection: train on the train ids only and expose the val ids as ``val_query``, ``val_gallery`` and
            ``val_protocol`` (same rules) for model selection without the test set.
        num_trials: gallery re-samplings (10 in every published protocol).
        direction: ``'ir2vis'`` (IR queries, RGB gallery: the published protocol) or ``'vis2ir'`` (RGB queries, IR
            gallery drawn by the same rules and seeds).
        **kwargs: torchreid's (``transform``, ``mode``, ``combineall``, ``verbose``, ...).
    """

    dataset_dir = "SYSU-MM01"
    ir_camids = SYSU_IR_CAMIDS
    #: the config section this class owns: ``data.sysu``
    config_section = "sysu"
    display_name = "SYSU-MM01"
    synthetic = SyntheticLayout(name="sysu", write=synthetic_trees.make_sysu, folder="SYSU-MM01",
                                presets=synthetic_trees.SYSU_PRESETS, options=("num_ids", "style"))
    resume_may_change = ("search_mode", "shots", "gallery_sampler", "rand_perm_path")
    protocol_prefixes = ("sysu", "sysu-val")

    @classmethod
    def ranges(cls) -> dict[str, Any]:
        return {"num_trials": at_least(1, INT)}

    @classmethod
    def free_numeric_keys(cls) -> frozenset[str]:
        return frozenset({"shots"})  # a choice (1 or 10), checked by from_config

    @classmethod
    def canonical_protocol(cls, protocol: str) -> str:
        """``sysu/all/...`` and ``sysu-val/indoor/...`` (written before SYSU-MM01 had two directions) are the
        published IR -> RGB protocol, ``sysu/ir2vis/...``."""
        parts = protocol.split("/")
        if len(parts) > 1 and parts[1] in SEARCH_CAMS:
            parts.insert(1, "ir2vis")
        return "/".join(parts)

    @classmethod
    def config(cls) -> CN:
        """Defaults of the ``data.sysu`` config section (a yacs ``CfgNode``)."""
        node = CN()
        node.search_mode = "all"  # all | indoor
        node.shots = 1  # 1 (single-shot) | 10 (multi-shot)
        node.gallery_sampler = "agw"  # agw (random.seed(0..9) draws) | official (rand_perm_cam.mat)
        node.rand_perm_path = ""  # official sampler: path of rand_perm_cam.mat ("" = look under SYSU-MM01/)
        node.val_for_selection = False  # train on the train ids only, select on the val ids
        node.num_trials = 10
        node.direction = "ir2vis"  # ir2vis (IR queries, the published protocol) | vis2ir
        return node

    @classmethod
    def from_config(cls, node: Any) -> dict[str, Any]:
        """Constructor keyword arguments from a ``data.sysu`` section (values checked, errors name the key)."""
        for key, value, choices in (("search_mode", node.search_mode, tuple(SEARCH_CAMS)),
                                    ("shots", node.shots, (1, 10)),
                                    ("gallery_sampler", node.gallery_sampler, ("agw", "official"))):
            if value not in choices:
                raise ConfigError(f"config key 'data.sysu.{key}': {value!r} is not one of {list(choices)}")
        if int(node.num_trials) < 1:
            raise ConfigError(f"config key 'data.sysu.num_trials': must be >= 1, got {node.num_trials}")
        return {
            "search_mode": node.search_mode,
            "shots": int(node.shots),
            "gallery_sampler": node.gallery_sampler,
            "rand_perm_path": node.rand_perm_path or None,
            "val_for_selection": bool(node.val_for_selection),
            "num_trials": int(node.num_trials),
            "direction": canonical_direction(node.direction, "data.sysu.direction"),
        }

    def __init__(
        self,
        root: str = "",
        search_mode: str = "all",
        shots: int = 1,
        gallery_sampler: str = "agw",
        rand_perm_path: str | None = None,
        val_for_selection: bool = False,
        num_trials: int = 10,
        direction: str = "ir2vis",
        **kwargs: Any,
    ) -> None:
        self.direction = canonical_direction(direction, "SYSUMM01")
        if search_mode not in SEARCH_CAMS:
            raise ValueError(f"SYSUMM01: unknown search_mode={search_mode!r}; expected 'all' or 'indoor'")
        if isinstance(shots, bool) or shots not in (1, MULTI_SHOT):
            raise ValueError(f"SYSUMM01: unknown shots={shots!r}; expected 1 (single-shot) or 10 (multi-shot)")
        if gallery_sampler not in ("agw", "official"):
            raise ValueError(f"SYSUMM01: unknown gallery_sampler={gallery_sampler!r}; expected 'agw' or 'official'")
        if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
            raise ValueError(f"SYSUMM01: num_trials must be a positive int, got {num_trials!r}")
        self.search_mode, self.shots, self.gallery_sampler = search_mode, shots, gallery_sampler
        self.num_trials = num_trials
        self.val_for_selection = bool(val_for_selection)

        self.root = osp.abspath(osp.expanduser(root))
        self.dataset_dir = osp.join(self.root, self.dataset_dir)
        require_dir(self.dataset_dir, "SYSU-MM01 folder", _HINT)
        for c in range(1, 7):
            require_dir(osp.join(self.dataset_dir, f"cam{c}"), f"SYSU-MM01 camera folder cam{c}", _HINT)
        exp = require_dir(osp.join(self.dataset_dir, "exp"), "SYSU-MM01 split folder exp", _HINT)
        self._listing: dict[tuple[int, int], list[str] | None] = {}

        split_files = {s: osp.join(exp, f"{s}_id.txt") for s in ("train", "val", "test")}
        splits = {s: read_id_file(p) for s, p in split_files.items()}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = sorted(set(splits[a]) & set(splits[b]))
            if both:
                raise SplitFileError(
                    f"{split_files[a]} and {split_files[b]} share ids {both[:10]}; the splits must be disjoint"
                )
        for s, ids in splits.items():
            for pid in ids:
                if not any(self._files(c, pid) for c in range(1, 7)):
                    raise DatasetLayoutError(
                        f"{split_files[s]}: id {pid} has no images in any camera folder "
                        f"({osp.join(self.dataset_dir, 'cam{1..6}', f'{pid:04d}')} missing); restore its folders or "
                        "remove the id from the split file"
                    )
        self.split_ids = {s: sorted(ids) for s, ids in splits.items()}

        perm = None
        if gallery_sampler == "official":
            self.rand_perm_path = self._find_rand_perm(rand_perm_path)
            perm = load_rand_perm_cam(self.rand_perm_path)
        else:
            self.rand_perm_path = None

        train_ids = self.split_ids["train"] + ([] if self.val_for_selection else self.split_ids["val"])
        train = self._train_items(sorted(train_ids))
        query, gallery, self.protocol = self._test_protocol(self.split_ids["test"], perm, "sysu", search_mode)
        if self.val_for_selection:
            self.val_query, self.val_gallery, self.val_protocol = self._val_protocol(perm)
        super().__init__(train, query, gallery, **kwargs)

    # ------------------------------------------------------------------ layout helpers

    def _files(self, cam: int, pid: int) -> list[str] | None:
        """Sorted, unfiltered full paths in ``cam<cam>/<pid:04d>`` (None if the folder does not exist; a link loop,
        a link leaving SYSU-MM01/ or an empty folder is an error); cached."""
        key = (cam, pid)
        if key not in self._listing:
            d = osp.join(self.dataset_dir, f"cam{cam}", f"{pid:04d}")
            files = list_inside(d, self.dataset_dir)  # links must stay inside SYSU-MM01/; a link loop is an error
            if files == []:
                raise empty_folder_error(d)
            self._listing[key] = files
        return self._listing[key]

    def _find_rand_perm(self, path: str | None) -> str:
        if path:
            return osp.abspath(osp.expanduser(path))
        for cand in RAND_PERM_CANDIDATES:
            p = osp.join(self.dataset_dir, cand)
            if osp.isfile(p):
                return p
        tried = ", ".join(osp.join(self.dataset_dir, c) for c in RAND_PERM_CANDIDATES)
        raise DatasetLayoutError(
            f"gallery_sampler='official' needs rand_perm_cam.mat (from the official SYSU-MM01 evaluation kit); "
            f"none found at {tried}. Pass rand_perm_path=... or use gallery_sampler='agw'."
        )

    def _train_items(self, ids: list[int]) -> list[Item]:
        """AGW's training lists (``pre_process_sysu.py``): all RGB images (pid-major, cams 1, 2, 4, 5), then all IR
        (cams 3, 6); label = rank of the pid among the training ids in ascending order."""
        label = {pid: i for i, pid in enumerate(ids)}
        items: list[Item] = []
        for cams in (SYSU_RGB_CAMS, SYSU_IR_CAMS):
            for pid in ids:
                for c in cams:
                    items += [(p, label[pid], c - 1, 0) for p in self._files(c, pid) or ()]
        return items

    def _query_items(self, ids: list[int], cams: tuple[int, ...]) -> list[Item]:
        """Every image of ``ids`` in the query cameras ``cams`` (AGW's ``process_query_sysu``: cam3, cam6),
        pid-major, then camera, then file name."""
        return [(p, pid, c - 1, 0) for pid in sorted(ids) for c in cams for p in self._files(c, pid) or ()]

    def _draw_agw(self, ids: list[int], cams: tuple[int, ...], trial: int) -> list[tuple[str, int, int]]:
        """AGW's ``process_gallery_sysu``: seed = trial, pids as sorted 4-digit strings, cameras inside."""
        rng = random.Random(trial)
        out = []
        for pid_s in sorted(f"{i:04d}" for i in ids):
            pid = int(pid_s)
            for c in cams:
                files = self._files(c, pid)
                if files is None:
                    continue
                if self.shots == 1:
                    out.append((rng.choice(files), pid, c))
                else:  # multi-shot is not in AGW; same stream, 10 distinct images (all if fewer)
                    out += [(p, pid, c) for p in rng.sample(files, min(MULTI_SHOT, len(files)))]
        return out

    def _draw_official(
        self, ids: list[int], cams: tuple[int, ...], row: int, perm: list[list[np.ndarray]]
    ) -> list[tuple[str, int, int]]:
        """The official kit: positions ``rand_perm_cam{cam}{pid}(row, 1:shots)`` into the sorted list."""
        out = []
        for pid in sorted(ids):
            for c in cams:
                files = self._files(c, pid)
                if files is None:
                    continue
                cells = perm[c - 1]
                where = f'{self.rand_perm_path}: rand_perm_cam{{{c}}}{{{pid}}}'
                if pid > len(cells) or cells[pid - 1].size == 0:
                    raise SplitFileError(
                        f"{where} is missing (cam{c} has {len(cells)} cells) but folder "
                        f'"{osp.dirname(files[0])}" exists; was the .mat made for this copy of the data?'
                    )
                m = np.asarray(cells[pid - 1])
                if m.ndim != 2 or m.shape[0] <= row or m.shape[1] != len(files):
                    raise SplitFileError(
                        f"{where} has shape {m.shape}; expected (>= {row + 1} trials, {len(files)} images in "
                        f'"{osp.dirname(files[0])}"); was the .mat made for this copy of the data?'
                    )
                # multi-shot: the first 10 positions; a folder with fewer images gives all of them (the official
                # Python port assumes >= 10, true on the real data where the minimum is 13)
                pos = m[row, : self.shots]
                if not np.all((pos == np.round(pos)) & (pos >= 1) & (pos <= len(files))):
                    raise SplitFileError(f"{where}: row {row + 1} has positions outside 1..{len(files)}: {pos}")
                out += [(files[int(p) - 1], pid, c) for p in pos]
        return out

    def _build(
        self, ids: list[int], perm: list[list[np.ndarray]] | None, cams: tuple[int, ...], name: str, mode: str
    ) -> tuple[list[Item], list[Item], Protocol]:
        query_cams, _, pairs = DIRECTION_CAMS[self.direction]
        query = self._query_items(ids, query_cams)
        trials, seeds = [], []
        for t in range(self.num_trials):
            trials.append(self._draw_agw(ids, cams, t) if perm is None else self._draw_official(ids, cams, t, perm))
            seeds.append(t if perm is None else t + 1)
        union = sorted({d for tr in trials for d in tr}, key=lambda d: (d[1], d[2], d[0]))
        index = {d[0]: i for i, d in enumerate(union)}
        gallery = [(p, pid, c - 1, 0) for p, pid, c in union]
        if not query or not gallery:
            what = f"query (cams {query_cams})" if not query else f"gallery (cams {cams})"
            raise DatasetLayoutError(f"{name}: the {what} is empty for ids {ids[:10]}...; check the camera folders")
        shot = "single-shot" if self.shots == 1 else "multi-shot"
        sampler = "agw" if perm is None else "official"
        protocol = Protocol(
            name=f"{name}/{self.direction}/{mode}/{shot}/{sampler}/{self.num_trials} trials",
            query=np.arange(len(query)),
            gallery_trials=[np.array([index[d[0]] for d in tr], dtype=np.int64) for tr in trials],
            exclude_cam_pairs=pairs,
            cmc_mode="dedup",
            trial_seeds=tuple(seeds),
            info={
                "dataset": "sysu_mm01",
                "direction": self.direction,
                "query_cams": list(query_cams),
                "gallery_cams": list(cams),
                "search_mode": mode,
                "shots": self.shots,
                "gallery_sampler": sampler,
                "rand_perm_path": self.rand_perm_path,
                "trial_seed_meaning": "random.Random(seed)" if perm is None else "rand_perm_cam.mat row (1-based)",
                "root": self.dataset_dir,
            },
        )
        return query, gallery, protocol

    def _test_protocol(
        self, ids: list[int], perm: list[list[np.ndarray]] | None, name: str, search_mode: str
    ) -> tuple[list[Item], list[Item], Protocol]:
        return self._build(ids, perm, DIRECTION_CAMS[self.direction][1][search_mode], name, search_mode)

    def _val_protocol(self, perm: list[list[np.ndarray]] | None) -> tuple[list[Item], list[Item], Protocol]:
        ids = self.split_ids["val"]
        mode = self.search_mode
        cams = DIRECTION_CAMS[self.direction][1][mode]
        if not any(self._files(c, pid) for pid in ids for c in cams):
            # the real val ids (334..433) never appear in cam1/cam2, so an indoor val gallery would be empty
            warnings.warn(
                f"SYSUMM01: the val ids have no images in the indoor gallery cameras {cams}; the validation "
                "protocol uses all-search instead",
                stacklevel=3,
            )
            mode = "all"
            cams = DIRECTION_CAMS[self.direction][1][mode]
        return self._build(ids, perm, cams, "sysu-val", mode)


SYSUMM01Indoor = preset_class(SYSUMM01, "SYSUMM01Indoor", "SYSU-MM01, indoor search.", search_mode="indoor")
SYSUMM01MultiShot = preset_class(SYSUMM01, "SYSUMM01MultiShot", "SYSU-MM01, all search, multi-shot.", shots=10)
SYSUMM01IndoorMultiShot = preset_class(
    SYSUMM01, "SYSUMM01IndoorMultiShot", "SYSU-MM01, indoor search, multi-shot.", search_mode="indoor", shots=10
)
SYSUMM01Official = preset_class(
    SYSUMM01, "SYSUMM01Official", "SYSU-MM01, all search, official rand_perm_cam.mat.", gallery_sampler="official"
)
SYSUMM01IndoorOfficial = preset_class(
    SYSUMM01,
    "SYSUMM01IndoorOfficial",
    "SYSU-MM01, indoor search, official rand_perm_cam.mat.",
    search_mode="indoor",
    gallery_sampler="official",
)
SYSUMM01VisToIR = preset_class(
    SYSUMM01, "SYSUMM01VisToIR", "SYSU-MM01, all search, RGB queries against IR galleries.", direction="vis2ir"
)
SYSUMM01IndoorVisToIR = preset_class(
    SYSUMM01, "SYSUMM01IndoorVisToIR", "SYSU-MM01, indoor search, RGB queries against cam3 galleries.",
    search_mode="indoor", direction="vis2ir",
)
SYSUMM01Val = preset_class(
    SYSUMM01, "SYSUMM01Val", "SYSU-MM01, all search, train ids only; val ids as val_protocol.", val_for_selection=True
)

#: registered torchreid names (the plain name is the default dataset of a config that names none)
register_dataset("sysu_mm01", SYSUMM01, default=True)
register_dataset("sysu_mm01_indoor", SYSUMM01Indoor)
register_dataset("sysu_mm01_multishot", SYSUMM01MultiShot)
register_dataset("sysu_mm01_indoor_multishot", SYSUMM01IndoorMultiShot)
register_dataset("sysu_mm01_official", SYSUMM01Official)
register_dataset("sysu_mm01_indoor_official", SYSUMM01IndoorOfficial)
register_dataset("sysu_mm01_val", SYSUMM01Val)
register_dataset("sysu_mm01_vis2ir", SYSUMM01VisToIR)
register_dataset("sysu_mm01_indoor_vis2ir", SYSUMM01IndoorVisToIR)
