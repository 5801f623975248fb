"""Methods and datasets through the command line: `vdreid test` evaluates a checkpoint written by the AGW code under
vdreid's protocol (with the features the restated AGW network gives), LLCM trains and evaluates end to end in both
directions, and a registered dataset preset never silently overrides an explicit config key."""

from __future__ import annotations

import json
import os.path as osp

import numpy as np
import pytest
import torch
from vdreid.cli import main

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_preset_name_never_overrides_an_explicit_key():
    from vdreid.builders import dataset_kwargs
    from vdreid.config import load_config
    from vdreid.errors import ConfigError

    # the preset's own value, or no value at all: fine
    kw = dataset_kwargs(load_config(None, ["data.sources", "['sysu_mm01']", "data.targets", "['sysu_mm01_indoor']"]))
    assert kw["sysu_mm01_indoor"]["search_mode"] == "indoor" and kw["sysu_mm01"]["search_mode"] == "all"
    cfg = load_config(None, ["data.targets", "['sysu_mm01_indoor']", "data.sysu.search_mode", "indoor"])
    assert dataset_kwargs(cfg)["sysu_mm01_indoor"]["search_mode"] == "indoor"
    # an explicit value the preset contradicts (even the default 'all') is an error naming both
    cfg = load_config(None, ["data.targets", "['sysu_mm01_indoor']", "data.sysu.search_mode", "all"])
    with pytest.raises(ConfigError, match=r"data\.sysu\.search_mode.*sysu_mm01_indoor.*search_mode='indoor'"):
        dataset_kwargs(cfg)


def test_test_command_evaluates_a_checkpoint_of_the_agw_code(sysu_root, tmp_path):
    from original_reference import embed_net, randomize_
    from vdreid.data import SYSUMM01
    from vdreid.evaluation import run_protocol

    torch.manual_seed(0)
    ref = randomize_(embed_net(11, no_local="off", gm_pool="off", arch="resnet18"), seed=3).eval()  # --method base
    path = str(tmp_path / "agw_sysu_best.t")
    torch.save({"net": ref.state_dict(), "epoch": 40, "mAP": 0.5}, path)  # AGW's checkpoint dict
    out = str(tmp_path / "eval")
    assert main(["test", "--checkpoint", path, "--config-file", osp.join(REPO, "configs", "methods", "agw_sysu.yaml"),
                 "--save-dir", out, "data.root", sysu_root, "data.height", "32", "data.width", "16",
                 "data.workers", "0", "test.batch_size", "16"]) == 0
    res = json.load(open(osp.join(out, "results_sysu_mm01.json")))
    assert res["checkpoint_format"] == "agw" and res["method"] == "agw" and res["selected_epoch"] == 40
    # the same numbers from the restated AGW network's BN features (AGW's "FC"), ranked by vdreid's protocol
    ds = SYSUMM01(sysu_root)
    from PIL import Image

    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def feats(items, modal):
        xs = []
        for p, *_ in items:
            # AGW's TestData resizes with PIL's ANTIALIAS (= LANCZOS) filter; the recipe does the same
            # (data.resize_interpolation lanczos)
            im = Image.open(p).convert("RGB").resize((16, 32), Image.LANCZOS)
            xs.append((torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1) - mean) / std)
        x = torch.stack(xs)
        with torch.no_grad():
            return ref.features(x, x, modal)[1].numpy()

    qf, gf = feats(ds.query, 2), feats(ds.gallery, 1)  # AGW's modal 2 = thermal stem, 1 = visible stem

    def ids(items, k):
        return np.array([it[k] for it in items])

    rep = run_protocol(ds.protocol, qf, gf, ids(ds.query, 1), ids(ds.gallery, 1), ids(ds.query, 2),
                       ids(ds.gallery, 2))
    assert res["mean"]["R1"] == pytest.approx(rep.mean["R1"], abs=1e-6)
    assert res["mean"]["mAP"] == pytest.approx(rep.mean["mAP"], abs=1e-3)


@pytest.mark.parametrize("direction", ["ir2vis", "vis2ir"])
def test_llcm_trains_and_evaluates_through_the_cli(tmp_path, direction):
    from vdreid.data.synthetic import make_llcm

    root = str(tmp_path / "data")
    make_llcm(root, preset="tiny", seed=0)
    save = str(tmp_path / "run")
    assert main(["train", "--config-file", osp.join(REPO, "configs", "llcm_vd.yaml"), "data.root", root,
                 "data.save_dir", save, "model.name", "vd_resnet18", "model.backbone", "test_resnet",
                 "model.pretrained", "false", "vd.bottleneck_dims", "[32, 32, 16]", "data.height", "32",
                 "data.width", "16", "sampler.num_ids", "4", "sampler.epoch", "2", "train.max_epoch", "1",
                 "data.workers", "0", "data.llcm.direction", direction, "test.visrank", "false"]) == 0
    res = json.load(open(osp.join(save, "results_llcm.json")))
    assert res["protocol"].startswith(f"llcm/{direction}/") and res["num_trials"] == 10
    assert len(res["per_trial"]) == 10 and 0 <= res["mean"]["R1"] <= 100
