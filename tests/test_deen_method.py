"""DEEN as a vdreid method (methods/deen.py) and its recipes (configs/methods/deen_*.yaml, configs/llcm_deen.yaml):
the schedule, sampler, epoch and augmentation against restatements of DEEN's train.py, utils.py and
random_erasing.py (tests/deen_reference.py), the plug-in's builders, and one run through the command line."""

from __future__ import annotations

import json
import os.path as osp
import random

import numpy as np
import pytest
import torch
import vdreid  # noqa: F401
from deen_reference import RandomErasing, embed_net, identity_sampler_batches
from original_reference import randomize_
from PIL import Image
from torchvision import transforms as T
from vdreid import builders, methods
from vdreid.config import load_config
from vdreid.data.sampler import iterations_per_epoch
from vdreid.data.transforms import build_train_transform
from vdreid.errors import ConfigError
from vdreid.losses import DEENCriterion
from vdreid.models.deen import DEENNet

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
RECIPES = {name: osp.join(REPO, "configs", path) for name, path in (
    ("sysu", "methods/deen_sysu.yaml"), ("regdb", "methods/deen_regdb.yaml"), ("llcm", "llcm_deen.yaml"))}


def deen_lr(epoch: int, lr: float = 0.1) -> float:
    """DEEN train.py adjust_learning_rate, applied at the start of epoch ``epoch`` (its last branch, >= 120, is never
    reached: the >= 80 branch comes first)."""
    if epoch < 10:
        return lr * (epoch + 1) / 10
    if epoch < 20:
        return lr
    if epoch < 80:
        return lr * 0.1
    return lr * 0.01


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipes_follow_deens_train_py(recipe):
    cfg = load_config(RECIPES[recipe])
    assert cfg.model.method == "deen" and cfg.model.name == ("deen_regdb" if recipe == "regdb" else "deen")
    assert (cfg.data.height, cfg.data.width) == (384, 144)
    assert (cfg.sampler.num_ids, cfg.sampler.num_instances, cfg.sampler.epoch) == (6, 4, "images")
    assert cfg.train.max_epoch == 151 and cfg.train.optim == "sgd" and cfg.train.nesterov
    assert (cfg.train.momentum, cfg.train.weight_decay, cfg.train.lr) == (0.9, 5e-4, 0.1)
    spec = builders.schedule_spec(cfg)
    for e in range(151):
        assert cfg.train.lr * spec.epoch_factor(e) == pytest.approx(deen_lr(e), rel=1e-12, abs=0), e
    d = cfg.deen
    assert (d.ce, d.triplet, d.triplet_margin, d.cpm, d.cpm_margin, d.ort, d.dropout) == (1, 1, 0.3, 0.8, 0.2, 0.01,
                                                                                          0.01)
    assert d.backbone_lr_mult == 0.1 and methods.get("deen").feature_mode(cfg) == "all"
    assert list(cfg.data.transforms) == ["pad_crop:10", "random_gray:0.5", "random_flip", "random_erase:0.5"]
    assert list(cfg.data.random_erase_area) == ([0.2, 0.8] if recipe == "sysu" else [0.02, 0.4])
    assert builders.datamanager_kwargs(cfg)["random_erase_area"] == list(cfg.data.random_erase_area)
    assert (cfg.train.selection, cfg.train.eval_freq, cfg.train.eval_start) == ("test", 1, 2)  # DEEN: epoch > 0
    assert cfg.test.flip


@pytest.mark.parametrize("n_vis, n_ir", [(22258, 11909), (2060, 2060), (16946, 13975), (24, 5), (23, 23), (48, 71)])
def test_iterations_per_epoch_equal_deens_sampler(n_vis, n_ir):
    """DEEN's IdentitySampler + DataLoader(6 * 4, drop_last) run int(N / 24) + 1 batches; vdreid's 'images' epoch with
    6 ids x 4 instances runs the same number (SYSU-MM01 928, RegDB 86)."""
    ours = iterations_per_epoch("images", 395, n_vis, n_ir, num_ids=6, num_instances=4)
    assert ours == identity_sampler_batches(n_vis, n_ir, batch_size=6, num_pos=4)
    if (n_vis, n_ir) == (22258, 11909):
        assert ours == 928
    if n_vis == 2060:
        assert ours == 86


def test_train_augmentation_equals_deens_under_the_same_seeds():
    """data.transforms [pad_crop:P, random_gray:0.5, random_flip, random_erase:0.5] with data.random_erase_area is
    DEEN's transform_sysu / transform_llcm (Pad, RandomGrayscale, RandomCrop, flip, ToTensor, Normalize,
    RandomErasing with the ImageNet mean as fill), image for image under the same Python and torch seeds."""
    h, w, pad = 48, 24, 4
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for area in ((0.2, 0.8), (0.02, 0.4)):
        ours = build_train_transform(h, w, ["pad_crop:4", "random_gray:0.5", "random_flip", "random_erase:0.5"],
                                     random_erase_area=area)
        deen = T.Compose([T.ToPILImage(), T.Pad(pad), T.RandomGrayscale(p=0.5), T.RandomCrop((h, w)),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean=mean, std=std),
                          RandomErasing(probability=0.5, sl=area[0], sh=area[1], r1=0.3, mean=mean)])
        grays = erased = 0
        for seed in range(40):
            arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)  # DEEN's pre-resized array
            random.seed(seed)
            torch.manual_seed(seed)
            a = ours(Image.fromarray(arr))
            random.seed(seed)
            torch.manual_seed(seed)
            b = deen(arr)
            assert torch.equal(a, b), (area, seed)
            filled = (a[0] == mean[0]) & (a[1] == mean[1]) & (a[2] == mean[2])
            r, g = (a[0] * std[0] + mean[0])[~filled], (a[1] * std[1] + mean[1])[~filled]
            grays += bool(torch.allclose(r, g, atol=1e-6))
            erased += bool(filled.any())
        assert 8 < grays < 32 and 8 < erased < 36  # both random steps fire about half of the time
    with pytest.raises(ConfigError, match="data.random_erase_area"):
        build_train_transform(h, w, ["random_erase"], random_erase_area=(0.5, 0.2))


def _cfg(*opts):
    return load_config(None, ["model.method", "deen", "model.name", "deen_resnet18", "model.pretrained", "false",
                              *opts])


def test_method_builds_model_criterion_and_param_groups():
    m = methods.get("deen")
    assert methods.method_of_model("deen_regdb") is m and m.feature_modes == ("all", "weighted", "bn", "pool")
    cfg = _cfg("test.feature_mode", "weighted", "deen.ort", "0.02")
    m.check_config(cfg)
    net = m.build_model(cfg, num_classes=6)
    assert isinstance(net, DEENNet) and net.feature_mode == "weighted" and net.dee_stage == 3
    assert net.config["backbone"] == "resnet18" and net.dee.dropout.p == 0.01
    crit = m.build_criterion(cfg, 6, net)
    assert isinstance(crit, DEENCriterion) and (crit.cpm, crit.ort, crit.cpm_margin) == (0.8, 0.02, 0.2)
    groups = m.param_groups(cfg, net, crit)
    names = {id(p): n for n, p in net.named_parameters()}
    assert [g["lr_mult"] for g in groups] == [0.1, 1.0]
    assert sorted(names[id(p)] for p in groups[1]["params"]) == ["bnneck.weight", "classifier.weight"]
    assert any(names[id(p)].startswith("dee.") for p in groups[0]["params"])
    assert any(names[id(p)].startswith("mfa.") for p in groups[0]["params"])
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable and len(trainable) == len(names) - 1
    prov = m.provenance(cfg)
    assert prov["method"] == "deen" and prov["dee_stage"] == 3 and prov["feature_mode"] == "weighted"
    assert set(m.resume_keys) - {"model", "num_classes"} <= set(prov)
    regdb = _cfg("model.name", "deen_regdb", "model.backbone", "resnet18")
    net = m.build_model(regdb, 4)
    assert net.dee_stage == 2 and net.out_dim == 256 and m.provenance(regdb)["dee_stage"] == 2
    # one training step with the method's parts, batch in vdreid's order
    net.train()
    out = net(torch.randn(8, 3, 32, 16), torch.tensor([False, False, True, True] * 2))
    total, terms = m.build_criterion(regdb, 4)(out, torch.tensor([0, 0, 0, 0, 3, 3, 3, 3]))
    total.backward()
    assert set(terms) == {"ce", "triplet", "cpm", "ort"} and net.dee.branch2.conv_d3.weight.grad is not None


def test_config_errors_name_the_key():
    for opts, match in ((("deen.dropout", "1.5"), "deen.dropout"), (("deen.cpm", "-1"), "deen.cpm"),
                        (("model.name", "agw"), "model.name"), (("test.feature_mode", "shared_z"), "feature_mode")):
        with pytest.raises(ConfigError, match=match):
            cfg = _cfg(*opts)
            m = methods.get("deen")
            m.check_config(cfg)
            m.feature_mode(cfg)
    with pytest.raises(ConfigError, match="nothing would be trained"):
        methods.get("deen").check_config(_cfg("deen.ce", "0", "deen.triplet", "0", "deen.cpm", "0", "deen.ort", "0"))
    with pytest.raises(ConfigError, match="deen"):
        load_config(None, ["model.method", "agw", "model.name", "agw_resnet18", "deen.cpm", "0.5"])


@pytest.mark.parametrize("dataset, name", [("sysu", "deen"), ("regdb", "deen_regdb")])
def test_original_overrides_describe_the_checkpoint(dataset, name):
    with torch.device("meta"):
        sd = embed_net(9, dataset, arch="resnet50").state_dict()
    m = methods.get("deen")
    assert methods.method_of_original("deen") is m and m.reads_original("deen")
    over = m.original_overrides("deen", {"net": sd})
    assert over == ["model.method", "deen", "model.name", name, "model.backbone", "resnet50"]
    cfg = load_config(None, over + ["model.pretrained", "false"])
    with torch.device("meta"):
        built = m.build_model(cfg, 9)
    assert built.dee_stage == (3 if dataset == "sysu" else 2)


def test_trains_and_tests_through_the_cli(sysu_root, tmp_path):
    """The SYSU-MM01 recipe on the tiny synthetic tree (ResNet-18, 32x16 inputs, two iterations): training,
    selection on the test set, flip TTA and the 'all' feature reach the results file; the checkpoint of the authors'
    code loads through `vdreid test`."""
    from vdreid.cli import main

    save = str(tmp_path / "run")
    common = ["data.root", sysu_root, "model.name", "deen_resnet18", "model.pretrained", "false", "data.height", "32",
              "data.width", "16", "sampler.num_ids", "3", "sampler.epoch", "2", "train.max_epoch", "1",
              "data.workers", "0", "test.visrank", "false", "data.sysu.num_trials", "2"]
    assert main(["train", "--config-file", RECIPES["sysu"], "data.save_dir", save, *common]) == 0
    res = json.load(open(osp.join(save, "results_sysu_mm01.json")))
    assert res["method"] == "deen" and res["flip"] is True and res["feature_mode"] == "all"
    assert res["selected_on_test"] and 0 <= res["mean"]["R1"] <= 100
    log = [json.loads(line) for line in open(osp.join(save, "train_log.jsonl"))]
    # the selected checkpoint, tested again under another feature mode (docs/reproduce.md, DEEN commands)
    again = str(tmp_path / "again")
    assert main(["test", "--checkpoint", osp.join(save, "best_test.pth"), "--config-file", RECIPES["sysu"],
                 "data.save_dir", again, *common, "test.feature_mode", "weighted"]) == 0
    assert json.load(open(osp.join(again, "results_sysu_mm01.json")))["feature_mode"] == "weighted"
    assert {"ce", "triplet", "cpm", "ort"} <= set(log[-1].get("losses", log[-1]))
    # a checkpoint written by DEEN's own code (restated), evaluated with the recipe
    torch.manual_seed(0)
    ref = randomize_(embed_net(11, "sysu", arch="resnet18"), seed=3).eval()
    path = str(tmp_path / "sysu_deen_p4_n6_lr_0.1_seed_0_best.t")
    torch.save({"net": ref.state_dict(), "cmc": None, "mAP": 0.1, "mINP": 0.1, "epoch": 40}, path)
    ev = str(tmp_path / "eval")
    assert main(["test", "--checkpoint", path, "--config-file", RECIPES["sysu"], "data.save_dir", ev, *common,
                 "model.name", "deen", "model.backbone", "resnet18"]) == 0
    res = json.load(open(osp.join(ev, "results_sysu_mm01.json")))
    assert res["method"] == "deen" and res["checkpoint_format"] == "deen"
