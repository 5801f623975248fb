"""CAJ (model.method caj) against a restatement of its authors' code (tests/caj_reference.py): the adaptive weighted
triplet (values and gradients in float64, both forms, the 88 clamp, both signs of fp - cn), the channel augmentations
(seeded, bit for bit), the two-view visible batch and the epoch length, the learning-rate rule, the flip test feature,
the network (AGW's) and its original checkpoints."""

from __future__ import annotations

import json
import os.path as osp
import random

import caj_reference as R
import numpy as np
import pytest
import torch
from vdreid import builders, methods
from vdreid.cli import main
from vdreid.config import load_config
from vdreid.data.transforms import ChannelAdapGray, ChannelExchange, build_train_transform
from vdreid.losses import CAJCriterion, adaptive_weighted_triplet
from vdreid.models import NeckOutput, detect_original, from_original
from vdreid.models.original import to_original_key

TINY = ["data.height", "32", "data.width", "16", "data.workers", "0", "sampler.num_ids", "4", "sampler.num_instances",
        "2", "model.name", "caj_resnet18", "model.pretrained", "false", "data.sysu.num_trials", "2"]


def _batch(seed: int, n_ids: int = 4, per_id: int = 3, dim: int = 6, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_ids * per_id, dim, generator=g, dtype=torch.float64) * scale
    y = torch.arange(n_ids).repeat_interleave(per_id)
    return x, y


# ------------------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("square", [0, 1])
@pytest.mark.parametrize(("alpha", "gamma"), [(1, 1), (2, 3), (0.5, 1), (1, 0.25)])
def test_adaptive_triplet_values_and_gradients_equal_the_original(square, alpha, gamma):
    for seed in range(3):
        x, y = _batch(seed, scale=1.0 + seed)
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        ours = adaptive_weighted_triplet(a, y, alpha, gamma, square)
        ref = R.adp_reference(b, y, alpha, gamma, square)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        ours.backward()
        ref.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_adaptive_triplet_edge_cases():
    # rows with fp > cn and rows with fp < cn in one batch: the sign y flips per row
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.5, 0.0], [0.6, 0.0], [10.0, 0.0], [10.2, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(adaptive_weighted_triplet(x, y), R.adp_reference(x, y), rtol=1e-12, atol=1e-12)
    # far-apart identities: gamma (fp - cn)^2 beyond 88 is clamped (the loss stays finite, equal to the original's)
    far = x * 40
    big = adaptive_weighted_triplet(far, y, gamma=5)
    assert torch.isfinite(big)
    torch.testing.assert_close(big, R.adp_reference(far, y, gamma=5), rtol=1e-12, atol=1e-12)
    # fp == cn (identical features): y = +1, as the original's (fp > cn) test gives
    same = torch.zeros(4, 3, dtype=torch.float64)
    yy = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(adaptive_weighted_triplet(same, yy), R.adp_reference(same, yy), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="square"):
        adaptive_weighted_triplet(x, y, square=2)


def test_criterion_is_ce_plus_adp():
    x, y = _batch(7)
    logits = torch.randn(x.shape[0], 5, dtype=torch.float64)
    out = NeckOutput(pool=x, bn=x, logits=logits)
    total, terms = CAJCriterion()(out, y)
    assert set(terms) == {"ce", "adp"}
    torch.testing.assert_close(terms["ce"], torch.nn.functional.cross_entropy(logits, y))
    torch.testing.assert_close(terms["adp"], R.adp_reference(x, y))
    torch.testing.assert_close(total, terms["ce"] + terms["adp"])
    assert set(CAJCriterion(adp=0)(out, y)[1]) == {"ce"}


# ------------------------------------------------------------------------------------------------ augmentation
def test_channel_operations_equal_the_originals_seeded():
    from vdreid import compat

    for seed in range(100):
        img = torch.randn(3, 12, 6)
        for ours, ref in ((ChannelExchange(1.0), R.channel_exchange_reference),
                          (ChannelAdapGray(0.5), R.channel_adap_gray_reference),
                          (compat.data.transforms.RandomErasing(probability=0.5), R.channel_erasing_reference)):
            random.seed(seed)
            a = ours(img.clone())
            random.seed(seed)
            b = ref(img.clone())
            assert torch.equal(a, b), (type(ours).__name__, seed)


def test_recipe_pipelines_are_the_dataset_classes_pipelines():
    """caj_sysu's views: view 0 = pad, crop, flip, normalise, channel erasing; infrared adds ChannelAdapGray; the
    second visible view adds the (always applied) ChannelExchange, as CAJ's SYSUData / RegDBData apply them."""
    from vdreid.data.transforms import build_view_transforms

    cfg = load_config("methods/caj_sysu")
    base = build_train_transform(288, 144, list(cfg.data.transforms))
    names = [s.name for s in base.steps]
    assert names == ["resize", "pad_crop", "random_flip", "to_tensor", "normalize", "channel_erase",
                     "channel_adap_gray"]
    assert [s.applies_to for s in base.steps][-1] == "infrared"
    (view1,) = build_view_transforms(288, 144, list(cfg.data.transforms), list(cfg.data.visible_views), "v")
    assert [s.name for s in view1.steps] == names[:-1] + ["channel_exchange", "channel_adap_gray"]
    ex = next(s for s in view1.steps if s.name == "channel_exchange")
    assert ex.applies_to == "visible" and ex.fn.p == 1.0


# ------------------------------------------------------------------------------------------------ the batch
def test_two_view_batch_composition_and_epoch_length(sysu_root):
    cfg = load_config("methods/caj_sysu", ["data.root", sysu_root, *TINY])
    dm = builders.build_datamanager(cfg)
    s = dm.train_sampler
    P, K = 4, 2
    assert s.views == (2, 1) and s.batch_size == P * K * 3
    n_vis, n_ir = s.num_visible, s.num_infrared
    assert len(dm.train_loader) == R.identity_sampler_batches(n_vis, n_ir, P, K)  # CAJ's IdentitySampler count
    batch = next(iter(dm.train_loader))
    pids, camids, paths, views = batch["pid"], batch["camid"], batch["impath"], batch["view"]
    ir = torch.tensor([int(c) in dm.train_ir_camids for c in camids])
    for j in range(P):
        blk = slice(j * 3 * K, (j + 1) * 3 * K)
        assert len(set(pids[blk].tolist())) == 1  # one identity per block
        assert views[blk].tolist() == [0] * K + [1] * K + [0] * K
        assert ir[blk].tolist() == [False] * (2 * K) + [True] * K
        assert paths[blk][:K] == paths[blk][K : 2 * K]  # the same visible images, twice
    # labels as CAJ's cat(l_vis, l_vis, l_ir): each identity 2K visible + K infrared rows
    counts = {int(p): int((pids == p).sum()) for p in pids.unique()}
    assert set(counts.values()) == {3 * K}
    # the second visible view is channel-exchanged: its three channels are equal (the first view's are not)
    imgs = batch["img"]
    for j in range(P):
        second = imgs[j * 3 * K + K : j * 3 * K + 2 * K]
        assert torch.equal(second[:, 0], second[:, 1]) and torch.equal(second[:, 1], second[:, 2])
    # the batch is a function of the seeds only: the same with another worker count
    cfg2 = load_config("methods/caj_sysu", ["data.root", sysu_root, *TINY[:4], "data.workers", "1", *TINY[6:]])
    again = next(iter(builders.build_datamanager(cfg2).train_loader))
    assert torch.equal(again["img"], imgs)


def test_epoch_length_of_the_full_recipe_is_cajs():
    """CAJ's SYSU-MM01 loader: N = max(22,258 visible, 11,909 infrared) training images, 8 ids x 4 per modality."""
    from vdreid.data.sampler import iterations_per_epoch

    cfg = load_config("methods/caj_sysu")
    ours = iterations_per_epoch(cfg.sampler.epoch, 395, 22258, 11909, cfg.sampler.num_ids, cfg.sampler.num_instances)
    assert ours == R.identity_sampler_batches(22258, 11909, 8, 4) == 696


# ------------------------------------------------------------------------------------------------ the recipe
def test_learning_rates_equal_train_ext_for_every_epoch():
    cfg = load_config("methods/caj_sysu", ["model.name", "caj_resnet18", "model.pretrained", "false"])
    model = builders.build_model(cfg, 10)
    crit = builders.build_criterion(cfg, 10, model)
    opt, sched = builders.build_optim(cfg, model, crit)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["weight_decay"] == 5e-4
    assert cfg.train.max_epoch == 100
    for epoch in range(cfg.train.max_epoch):
        backbone, head = R.caj_lr(0.1, epoch)
        assert opt.param_groups[0]["lr"] == pytest.approx(backbone, rel=1e-12), epoch
        assert opt.param_groups[1]["lr"] == pytest.approx(head, rel=1e-12), epoch
        sched.step()  # the recipe steps at the end of each epoch (train.scheduler_step end)
    assert cfg.train.scheduler_step == "end" and cfg.train.selection == "test" and cfg.test.flip


def test_flip_feature_ranks_as_testa():
    """vdreid's test.flip feature n(f(x)) + n(f(flip x)) normalised is testa.py's l2((l2 f + l2 f') / 2)."""
    cfg = load_config(opts=["model.method", "caj", "model.name", "caj_resnet18", "model.pretrained", "false",
                            "data.height", "32", "data.width", "16"])
    net = builders.build_model(cfg, 5).eval()
    x = torch.randn(6, 3, 32, 16)
    mod = torch.tensor([True, False] * 3)

    class Loader(list):
        pass

    batch = {"img": x, "pid": torch.zeros(6, dtype=torch.long), "camid": mod.long(), "impath": [""] * 6}
    from vdreid.evaluation import extract_features

    feats, *_ = extract_features(net, Loader([batch]), "cpu", frozenset({1}), flip=True)
    with torch.no_grad():
        f, f_flip = net(x, modality=mod), net(torch.flip(x, dims=[3]), modality=mod)
    ours = torch.nn.functional.normalize(feats.double(), dim=1).numpy()
    np.testing.assert_allclose(ours, R.testa_feature(f.double(), f_flip.double()), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ network / checkpoints
def test_network_is_agws_and_original_checkpoints_are_read(sysu_root, tmp_path):
    caj = methods.get("caj")
    assert caj.reads_original("agw") and caj.reads_original("caj")
    assert methods.method_of_original("agw", prefer="caj") is caj
    assert methods.method_of_original("agw").name == "agw"
    cfg_c = load_config(opts=["model.method", "caj", "model.name", "caj_resnet18", "model.pretrained", "false"])
    cfg_a = load_config(opts=["model.method", "agw", "model.name", "agw_resnet18", "model.pretrained", "false"])
    net_c, net_a = builders.build_model(cfg_c, 7), builders.build_model(cfg_a, 7)
    assert list(net_c.state_dict()) == list(net_a.state_dict())
    assert [v.shape for v in net_c.state_dict().values()] == [v.shape for v in net_a.state_dict().values()]
    # a checkpoint as CAJ's train_ext.py saves it: {'net': embed_net state dict, ...} with AGW's key names
    original = {to_original_key("caj", k): v for k, v in net_c.state_dict().items()}
    assert detect_original(original) == "agw"  # the keys cannot tell CAJ from AGW
    mapped = from_original("caj", original, net_c)
    assert set(mapped) == set(net_c.state_dict())
    path = str(tmp_path / "sysu_caj_best.t")
    torch.save({"net": original, "epoch": 40, "mAP": 0.5}, path)
    save = str(tmp_path / "test")
    assert main(["test", "--checkpoint", path, "--config-file", "methods/caj_sysu", "data.root", sysu_root,
                 "data.save_dir", save, *TINY]) == 0
    res = json.load(open(osp.join(save, "results_sysu_mm01.json")))
    assert res["method"] == "caj" and res["flip"] is True


def test_one_training_epoch_through_the_cli(sysu_root, tmp_path):
    save = str(tmp_path / "run")
    assert main(["train", "--config-file", "methods/caj_sysu", "data.root", sysu_root, "data.save_dir", save,
                 "train.max_epoch", "1", "train.selection", "final", *TINY]) == 0
    log = [json.loads(ln) for ln in open(osp.join(save, "train_log.jsonl"))]
    assert {"ce", "adp"} <= set(log[0])
    res = json.load(open(osp.join(save, "results_sysu_mm01.json")))
    assert res["method"] == "caj" and res["metric"].startswith("adp(")
