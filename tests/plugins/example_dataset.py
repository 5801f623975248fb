"""A VI dataset added from outside the package: "FolderVI", a plain folder layout, registered through the public call
``vdreid.data.register_dataset`` exactly as the built-in datasets are. tests/test_plugins.py loads this file with
``--plugin`` and writes, trains on and evaluates a synthetic tree of it without any edit of vdreid's package.

Layout under ``<root>/FolderVI/``: ``train/<pid>/{vis,ir}/*.png`` and ``test/<pid>/{vis,ir}/*.png``. Protocol
``foldervi/ir2vis``: every infrared test image queries the visible test images (one trial, standard CMC); the
section ``data.foldervi`` has one option, ``max_train_ids`` (0 = all).
"""

from __future__ import annotations

import json
import os
import os.path as osp
import shutil
from typing import Any

import numpy as np
from PIL import Image
from vdreid.config import at_least
from vdreid.data import Protocol, register_dataset
from vdreid.data.base import VIImageDataset
from vdreid.data.synthetic_layout import MARKER, SyntheticLayout
from vdreid.errors import DatasetLayoutError, SyntheticTreeError
from yacs.config import CfgNode as CN

VIS, IR = 0, 1  # camids: one visible and one infrared camera


def write_foldervi(root: str, seed: int = 0, preset: str = "tiny", overwrite: bool = False, num_ids: int = 0,
                   style: str | None = None) -> str:
    """A learnable synthetic FolderVI tree: each identity is a vertical pattern of 4 coloured bands; its visible
    images show the colours, its infrared images the bands' brightness with another noise."""
    cfg = dict(PRESETS[preset])
    num_ids = num_ids or cfg["num_ids"]
    base = osp.join(root, "FolderVI")
    args = {"layout": "foldervi", "seed": seed, "num_ids": num_ids, "per_modality": cfg["per_modality"]}
    if osp.isdir(base) and os.listdir(base):
        marker = osp.join(base, MARKER)
        if not osp.isfile(marker):
            raise SyntheticTreeError(f'"{base}" exists and is not a synthetic tree; choose another root')
        if json.load(open(marker)) == args:
            return base
        if not overwrite:
            raise SyntheticTreeError(f'"{base}" holds a synthetic tree of other arguments; pass --overwrite')
        shutil.rmtree(base)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_ids, 4, 3))
    for pid in range(num_ids):
        split = "train" if pid < num_ids // 2 else "test"
        for modality in ("vis", "ir"):
            folder = osp.join(base, split, str(pid), modality)
            os.makedirs(folder, exist_ok=True)
            for k in range(cfg["per_modality"]):
                img = np.repeat(colours[pid], 8, axis=0)[:, None, :].repeat(16, axis=1).astype(np.float64)
                if modality == "ir":
                    img = img.mean(axis=2, keepdims=True).repeat(3, axis=2)
                img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(osp.join(folder, f"{k}.png"))
    with open(osp.join(base, MARKER), "w") as f:
        json.dump(args, f)
    return base


PRESETS = {"tiny": {"num_ids": 24, "per_modality": 4}, "demo": {"num_ids": 60, "per_modality": 6}}


class FolderVI(VIImageDataset):
    """The FolderVI layout (module docstring)."""

    dataset_dir = "FolderVI"
    ir_camids = frozenset({IR})
    config_section = "foldervi"
    display_name = "FolderVI"
    synthetic = SyntheticLayout(name="foldervi", write=write_foldervi, folder="FolderVI", presets=PRESETS)
    protocol_prefixes = ("foldervi",)

    @classmethod
    def config(cls) -> CN:
        node = CN()
        node.max_train_ids = 0  # 0 = every training identity
        return node

    @classmethod
    def ranges(cls) -> dict[str, Any]:
        return {"max_train_ids": at_least(0, "an integer")}

    @classmethod
    def from_config(cls, node: CN) -> dict[str, Any]:
        return {"max_train_ids": int(node.max_train_ids)}

    def __init__(self, root: str = "", max_train_ids: int = 0, **kwargs: Any) -> None:
        top = osp.join(osp.abspath(osp.expanduser(root)), self.dataset_dir)
        if not osp.isdir(top):
            raise DatasetLayoutError(f'FolderVI: "{top}" does not exist (vdreid make-synthetic --layout foldervi)')

        def items(split: str, relabel: bool) -> list[tuple[str, int, int, int]]:
            pids = sorted(int(p) for p in os.listdir(osp.join(top, split)))
            if relabel and max_train_ids:
                pids = pids[:max_train_ids]
            label = {p: i for i, p in enumerate(pids)} if relabel else {p: p for p in pids}
            out = []
            for p in pids:
                for modality, cam in (("vis", VIS), ("ir", IR)):
                    folder = osp.join(top, split, str(p), modality)
                    out += [(osp.join(folder, fn), label[p], cam, 0) for fn in sorted(os.listdir(folder))]
            return out

        train = items("train", relabel=True)
        test = items("test", relabel=False)
        query = [it for it in test if it[2] == IR]
        gallery = [it for it in test if it[2] == VIS]
        self.protocol = Protocol(name="foldervi/ir2vis/1 trial", query=np.arange(len(query)),
                                 gallery_trials=[np.arange(len(gallery))], exclude_cam_pairs=(), cmc_mode="standard",
                                 trial_seeds=(0,), info={"dataset": "foldervi", "direction": "ir2vis", "root": top})
        super().__init__(train, query, gallery, **kwargs)


register_dataset("foldervi", FolderVI)
