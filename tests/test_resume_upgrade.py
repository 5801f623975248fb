"""Resuming a run whose checkpoint an older vdreid wrote: the stored configuration names VD's loss weights the old
way (``vd.vsd: -1`` for the recipe's default, a ``loss`` section for L_cls / L_metric). The resume policy compares it
after every method translated its renamed keys (``Method.upgrade_config``), so the same objective under other names
resumes, and a real change of a training key is still refused."""

from __future__ import annotations

import copy
import os.path as osp

import torch
from vdreid.cli import main

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICK = osp.join(REPO, "configs", "quickstart.yaml")


def _tiny(root: str, save: str, *extra: str) -> list[str]:
    return ["train", "--config-file", QUICK, "data.root", root, "data.save_dir", save, "model.backbone", "test_resnet",
            "vd.bottleneck_dims", "[32, 32, 16]", "data.height", "32", "data.width", "16", "sampler.num_ids", "4",
            "data.workers", "0", "test.visrank", "false", "data.sysu.num_trials", "2", *extra]


def _as_before_the_term_table(cfg: dict, **weights: float) -> dict:
    """The stored config as vdreid wrote it before VD's term table: per-term weights in ``vd`` (-1 = recipe),
    the VCD form as ``vd.vcd_form``, L_cls / L_metric in a ``loss`` section."""
    old = copy.deepcopy(cfg)
    vd = old["vd"]
    vd.pop("weights", None)
    vd.pop("term_options", None)
    for name in ("vsd", "vcd", "vml", "dml", "cml"):
        vd[name] = float(weights.get(name, -1.0))
    vd["ib_baseline"] = 0.0
    vd["vcd_form"] = "views"
    old["loss"] = {"ce": 1.0, "label_smooth": 0.1, "metric": "", "metric_weight": 1.0, "triplet_margin": 0.3}
    return old


def test_a_checkpoint_with_the_old_loss_keys_resumes(sysu_root, tmp_path, capsys):
    save = str(tmp_path / "run")
    assert main(_tiny(sysu_root, save, "train.max_epoch", "1")) == 0
    path = osp.join(save, "latest.pth")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["config"] = _as_before_the_term_table(ckpt["config"]["config"])
    torch.save(ckpt, path)
    capsys.readouterr()
    assert main(_tiny(sysu_root, save, "train.max_epoch", "2", "--resume", "latest")) == 0, capsys.readouterr().err
    # a real change of the objective under the old names is still refused
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["config"] = _as_before_the_term_table(ckpt["config"]["config"], vsd=5.0)
    torch.save(ckpt, path)
    capsys.readouterr()
    assert main(_tiny(sysu_root, save, "train.max_epoch", "3", "--resume", "latest")) == 2
    err = capsys.readouterr().err
    assert "vd.weights.vsd" in err and "cannot resume" in err
