"""CAJ end to end against a restatement of its authors' code: one training step of CAJ's network (AGW's
``embed_net``, restated in tests/original_reference.py, which CAJ's byte-identical ``model.py``/``resnet.py`` build)
on a CAJ batch ``net(cat(vis, vis_ca), ir)`` with labels ``cat(l_vis, l_vis, l_ir)`` and CE + ``TripletLoss_ADP``
(tests/caj_reference.py), against vdreid's CAJ model loaded from that network's random state_dict (layout 'caj') on
the same images in vdreid's batch order: loss and every parameter gradient in float64. Also testa.py's flip feature
and the dataset classes' three train pipelines, bit for bit, against the recipe's views."""

from __future__ import annotations

import caj_reference as R
import numpy as np
import pytest
import torch
from original_reference import embed_net, randomize_
from PIL import Image
from vdreid import builders, methods
from vdreid.config import load_config
from vdreid.data.transforms import build_train_transform, build_view_transforms, seeded
from vdreid.evaluation import extract_features
from vdreid.models import from_original
from vdreid.models.original import to_original_key

P, K, CLASSES = 2, 2, 7


@pytest.fixture(scope="module")
def original():
    """CAJ's network (ResNet-50, non-local, GeM) with random weights and BN statistics, float64, and its state_dict."""
    torch.manual_seed(0)
    ref = randomize_(embed_net(CLASSES, arch="resnet50"), seed=3).double()
    return ref, {k: v.clone() for k, v in ref.state_dict().items()}


def _ours(state: dict, *opts: str):
    caj = methods.get("caj")
    cfg = load_config(opts=["model.method", "caj", "model.pretrained", "false", *caj.original_overrides("caj", state),
                            *opts])
    net = builders.build_model(cfg, CLASSES)
    net.load_state_dict(from_original("caj", {"net": state, "epoch": 10}, net), strict=True)
    return cfg, net.double()


def _caj_batch(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    vis = torch.randn(P * K, 3, 32, 16, generator=g, dtype=torch.float64)
    vis_ca = vis[:, :1].expand_as(vis) + 0.05 * torch.randn(vis.shape, generator=g, dtype=torch.float64)
    ir = torch.randn(P * K, 3, 32, 16, generator=g, dtype=torch.float64)
    lab = torch.tensor([3, 3, 5, 5])  # P identities x K, the same in both modalities
    return vis, vis_ca, ir, lab


@pytest.mark.parametrize(("alpha", "gamma", "square"), [(1, 1, 1), (0.05, 1e-3, 1), (1, 5e-4, 0)])
def test_training_step_loss_and_gradients_equal_the_original(original, alpha, gamma, square):
    _, state = original
    ref = randomize_(embed_net(CLASSES, arch="resnet50"), seed=3).double()
    ref.load_state_dict(state)
    cfg, net = _ours(state, "caj.alpha", str(alpha), "caj.gamma", str(gamma), "caj.square", str(square))
    crit = builders.build_criterion(cfg, CLASSES, net)
    vis, vis_ca, ir, lab = _caj_batch()
    ref.train()
    net.train()
    # the original's step (train_ext.py): rows vis (P K), vis_ca (P K), ir (P K)
    feat, logits = ref(torch.cat((vis, vis_ca)), ir, 0)
    labels = torch.cat((lab, lab, lab))
    ce = torch.nn.functional.cross_entropy(logits, labels)
    adp = R.adp_reference(feat, labels, alpha, gamma, square)
    (ce + adp).backward()
    # vdreid's batch order (data.visible_views): per identity K visible, their K exchanged copies, K infrared
    rows = [r for p in range(P) for m in range(3) for r in range(m * P * K + p * K, m * P * K + (p + 1) * K)]
    x = torch.cat((vis, vis_ca, ir))[rows]
    is_ir = torch.tensor([r >= 2 * P * K for r in rows])
    total, terms = crit(net(x, is_ir), labels[rows])
    total.backward()
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-10)
    assert terms["adp"].item() == pytest.approx(adp.item(), rel=1e-10)
    if square == 1 and gamma == 1:
        assert adp.item() == pytest.approx(88.0)  # far-apart random features: every row at the clamp
    else:
        assert adp.item() < 80
    theirs = dict(ref.named_parameters())
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    scale = max(float(g.abs().max()) for g in grads.values())
    assert len(grads) == sum(1 for p in net.parameters() if p.requires_grad)
    for name, g in grads.items():
        # absolute tolerance on the largest gradient: the conv biases in front of a batch norm have a true gradient
        # of zero, computed as rounding noise by both networks
        torch.testing.assert_close(g, theirs[to_original_key("caj", name)].grad, rtol=1e-7, atol=1e-10 * scale,
                                   msg=name)


@pytest.mark.parametrize("mode", ["bn", "pool"])
def test_flip_test_feature_equals_testa(original, mode):
    """testa.py: feature = l2((net(x) + net(flip x)) / 2) with the network's own L2-normalised outputs; vdreid's
    test.flip extraction, L2-normalised as the evaluator ranks it, is the same vector."""
    ref, state = original
    _, net = _ours(state)
    ref.eval()
    net.eval()
    net.feature_mode = mode
    x = torch.randn(5, 3, 32, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    pick = 1 if mode == "bn" else 0  # the original returns (POOL, FC)
    for modal, ir in ((1, False), (2, True)):
        with torch.no_grad():
            a = ref(x, x, modal)[pick]
            b = ref(x.flip(3), x.flip(3), modal)[pick]
        expect = (a + b) / 2
        expect = expect / expect.norm(dim=1, keepdim=True)
        batch = {"img": x, "pid": torch.zeros(5, dtype=torch.long), "camid": torch.full((5,), int(ir)),
                 "impath": [""] * 5}
        feats, *_ = extract_features(net, [batch], "cpu", frozenset({1}), flip=True)
        ours = torch.nn.functional.normalize(feats.double(), dim=1)
        torch.testing.assert_close(ours, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recipe", ["methods/caj_sysu", "methods/caj_regdb", "llcm_caj"])
def test_recipe_views_are_the_dataset_classes_pipelines_bit_for_bit(recipe):
    """Under the same seeds, from a raw image of any size: view 0 of a visible image is transform_color of the image
    CAJ's data preparation resized (PIL ANTIALIAS to 144x288), view 1 transform_color1, an infrared image
    transform_thermal; the test transform is testa.py's transform_test of TestData's resized image."""
    from vdreid.data.transforms import build_test_transform

    cfg = load_config(recipe)
    assert (cfg.data.height, cfg.data.width) == (288, 144)
    assert cfg.sampler.draw == "independent"  # utils.py IdentitySampler's law (tests/test_sampler.py)
    kw = dict(norm_mean=list(cfg.data.norm_mean), norm_std=list(cfg.data.norm_std),
              random_erase_area=list(cfg.data.random_erase_area), interpolation=cfg.data.resize_interpolation)
    view0 = build_train_transform(288, 144, list(cfg.data.transforms), **kw)
    views = build_view_transforms(288, 144, list(cfg.data.transforms), list(cfg.data.visible_views), "v", **kw)
    assert len(views) == 1 and list(cfg.data.infrared_views) == []
    ref = R.dataset_pipelines()
    test_ours = build_test_transform(288, 144, kw["norm_mean"], kw["norm_std"], kw["interpolation"])
    test_ref = R.test_pipeline()
    rng = np.random.default_rng(0)
    sizes = [(288, 144), (400, 170), (128, 64), (301, 99)]  # SYSU-like crops, RegDB's 64x128, odd sizes
    for seed in range(24):
        h, w = sizes[seed % len(sizes)]
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        prepared = R.prepared_image(arr)
        for ours, is_ir, theirs in ((view0, False, "transform_color"), (views[0], False, "transform_color1"),
                                    (view0, True, "transform_thermal")):
            with seeded(seed):
                a = ours(Image.fromarray(arr), is_ir)
            with seeded(seed):
                b = ref[theirs](prepared)
            assert torch.equal(a, b), (recipe, theirs, seed, (h, w))
        assert torch.equal(test_ours(Image.fromarray(arr)), test_ref(prepared)), (recipe, (h, w))
