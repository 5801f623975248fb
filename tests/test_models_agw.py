"""AGW (models/agw.py, losses/wrt.py, losses/baseline.py) against an independent restatement of AGW's code
(tests/original_reference.py), loaded through vdreid.models.from_original('agw', ...)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import vdreid  # noqa: F401  (registers the torchreid factories)
from original_reference import batch_hard_triplet_reference, ce_reference, embed_net, randomize_, wrt_reference
from vdreid import compat
from vdreid.errors import PretrainedWeightsError
from vdreid.losses import AGWCriterion, weighted_regularized_triplet
from vdreid.models import AGWNet, NeckOutput, build_agw, from_original

# AGW's network with 5 classes: all parameters its code builds, and those receiving gradients (docs/baselines.md)
AGW_TOTAL_PARAMS = 70_567_119
AGW_TRAINED_PARAMS = 23_558_543


def _n(params) -> int:
    return sum(p.numel() for p in params)


@pytest.fixture(scope="module")
def pair():
    """AGW's network (restated, ResNet-50, 5 classes) with random weights and BN statistics, and AGWNet holding the
    same weights through from_original; both in float64."""
    torch.manual_seed(0)
    ref = randomize_(embed_net(5, arch="resnet50"), seed=1).double()
    net = build_agw("resnet50", num_classes=5, pretrained=False)
    net.load_state_dict(from_original("agw", {"net": ref.state_dict(), "epoch": 3, "mAP": 0.5}), strict=True)
    return ref, net.double()


def _batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, 3, 32, 16, generator=g, dtype=torch.float64)  # visible
    x2 = torch.randn(n, 3, 32, 16, generator=g, dtype=torch.float64)  # infrared
    return x1, x2


def test_train_outputs_equal_agw_for_a_mixed_order_batch(pair):
    ref, net = pair
    x1, x2 = _batch()
    ref.train()
    net.train()
    pool_ref, logits_ref = ref(x1, x2, 0)  # rows: vis0, vis1, ir0, ir1
    # vdreid batch order: ir0, vis0, ir1, vis1 (modalities interleaved)
    x = torch.stack([x2[0], x1[0], x2[1], x1[1]])
    is_ir = torch.tensor([True, False, True, False])
    out = net(x, is_ir)
    assert isinstance(out, NeckOutput)
    order = [2, 0, 3, 1]  # AGW's row of each vdreid row
    torch.testing.assert_close(out.pool, pool_ref[order], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.logits, logits_ref[order], rtol=1e-10, atol=1e-12)
    # BNNeck in train mode: batch statistics of the same 4 rows (channels of tiny variance amplify rounding)
    bn = ref.bottleneck
    feat_ref = F.batch_norm(pool_ref, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    torch.testing.assert_close(out.bn, feat_ref[order], rtol=1e-7, atol=1e-9)
    # every BatchNorm saw the same images: running statistics equal after the step
    torch.testing.assert_close(net.bnneck.running_mean, ref.bottleneck.running_mean)
    torch.testing.assert_close(
        net.shared.layer1[0].bn1.running_var, ref.base_resnet.base.layer1[0].bn1.running_var
    )
    torch.testing.assert_close(net.stem_ir.bn1.running_mean, ref.thermal_module.thermal.bn1.running_mean)


def test_eval_features_equal_agw_both_modes_and_modalities(pair):
    ref, net = pair
    x1, x2 = _batch(seed=1, n=3)
    ref.eval()
    net.eval()
    for modal, x, is_ir in ((1, x1, torch.zeros(3, dtype=torch.bool)), (2, x2, torch.ones(3, dtype=torch.bool))):
        pool_n, bn_n = ref(x1, x2, modal)  # AGW returns L2-normalised (POOL, FC)
        pool_raw, bn_raw = ref.features(x1, x2, modal)
        net.feature_mode = "bn"
        f_bn = net(x, is_ir)
        net.feature_mode = "pool"
        f_pool = net(x, is_ir)
        torch.testing.assert_close(f_bn, bn_raw, rtol=1e-10, atol=1e-12)  # not normalised by the model
        torch.testing.assert_close(f_pool, pool_raw, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(f_bn / f_bn.norm(dim=1, keepdim=True), bn_n, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(f_pool / f_pool.norm(dim=1, keepdim=True), pool_n, rtol=1e-10, atol=1e-12)
    # a mixed batch in eval mode gives each image its own modality's feature
    net.feature_mode = "bn"
    mixed = net(torch.stack([x1[0], x2[0], x1[1]]), torch.tensor([False, True, False]))
    torch.testing.assert_close(mixed[1], ref.features(x1, x2, 2)[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mixed[2], ref.features(x1, x2, 1)[1][1], rtol=1e-10, atol=1e-12)
    assert net.feature_dim() == net.feature_dim("pool") == 2048


def test_loss_equals_restated_wrt_plus_ce(pair):
    ref, net = pair
    x1, x2 = _batch(seed=2)
    ref.train()
    net.train()
    labels_vis = torch.tensor([0, 3])
    labels_ir = torch.tensor([0, 3])
    pool_ref, logits_ref = ref(x1, x2, 0)
    expect_wrt = wrt_reference(pool_ref, torch.cat([labels_vis, labels_ir]))
    expect_ce = ce_reference(logits_ref, torch.cat([labels_vis, labels_ir]))
    out = net(torch.cat([x1, x2]), torch.tensor([False, False, True, True]))
    total, terms = AGWCriterion()(out, torch.cat([labels_vis, labels_ir]))
    assert set(terms) == {"ce", "wrt"}
    assert terms["wrt"].item() == pytest.approx(expect_wrt, rel=1e-9)
    assert terms["ce"].item() == pytest.approx(expect_ce, rel=1e-9)
    assert total.item() == pytest.approx(expect_wrt + expect_ce, rel=1e-9)
    total.backward()
    # parameters that get gradients: everything trainable (stems, shared stages, NL, BNNeck weight, classifier)
    assert _n(p for p in net.parameters() if p.grad is not None) == AGW_TRAINED_PARAMS
    net.zero_grad(set_to_none=True)
    weighted = AGWCriterion(ce=0.5, metric_weight=2.0)(out, torch.cat([labels_vis, labels_ir]))[1]
    assert weighted["ce"].item() == pytest.approx(0.5 * expect_ce, rel=1e-9)
    assert weighted["wrt"].item() == pytest.approx(2.0 * expect_wrt, rel=1e-9)
    # AGW --method base: batch-hard triplet (OriTripletLoss, margin 0.3) instead of WRT
    base = AGWCriterion(metric="triplet")(out, torch.cat([labels_vis, labels_ir]))[1]
    expect_tri = batch_hard_triplet_reference(pool_ref, torch.cat([labels_vis, labels_ir]), margin=0.3)
    assert set(base) == {"ce", "triplet"} and base["triplet"].item() == pytest.approx(expect_tri, rel=1e-9)


def test_parameter_counts_match_agw():
    """AGW builds 70,567,119 parameters (5 classes), of which 23,558,543 receive gradients; the rest are
    the unused visible/thermal layer1-4 and base conv1/bn1 (AGWNet does not build them) and the frozen BNNeck
    bias (built, no gradient)."""
    net = build_agw("resnet50", num_classes=5, pretrained=False)
    assert _n(p for p in net.parameters() if p.requires_grad) == AGW_TRAINED_PARAMS
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ["bnneck.bias"]
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.resnet50(weights=None)
    unused = 2 * _n(p for n, p in tv.named_parameters() if n.startswith("layer"))
    unused += _n(p for n, p in tv.named_parameters() if n.startswith(("conv1.", "bn1.")))
    assert _n(net.parameters()) + unused == AGW_TOTAL_PARAMS
    # the restatement itself builds AGW's total
    with torch.device("meta"):
        assert _n(embed_net(5).parameters()) == AGW_TOTAL_PARAMS


def test_base_method_and_resnet18_clipping():
    """gem=False, non_local=(0,0,0,0) is AGW's `--method base` (average pooling, no NL); checked against the
    restatement on ResNet-18. With non-local blocks, ResNet-18's 2-block stages get 2 blocks, not 3."""
    torch.manual_seed(0)
    ref = randomize_(embed_net(4, no_local="off", gm_pool="off", arch="resnet18"), seed=3).double().eval()
    net = build_agw("resnet18", num_classes=4, non_local=(0, 0, 0, 0), gem=False).double()
    net.load_state_dict(from_original("agw", ref.state_dict(), model=net))
    net.eval()
    x1, x2 = _batch(seed=4)
    torch.testing.assert_close(net(x2, torch.ones(2, dtype=torch.bool)), ref.features(x1, x2, 2)[1], rtol=1e-10,
                               atol=1e-12)
    assert net.non_local_counts == (0, 0, 0, 0) and len(net.non_local) == 0
    clipped = build_agw("resnet18", num_classes=4)
    assert clipped.non_local_counts == (0, 2, 2, 0)
    assert [len(clipped.non_local[s]) for s in ("layer2", "layer3")] == [2, 2]


def test_non_local_block_is_identity_at_init_and_matches_agw():
    from original_reference import Non_local
    from vdreid.models import NonLocalBlock

    torch.manual_seed(0)
    blk = NonLocalBlock(8)
    x = torch.randn(2, 8, 4, 3)
    torch.testing.assert_close(blk.eval()(x), x)
    ref = randomize_(Non_local(8), seed=5).eval()
    blk.g.load_state_dict(ref.g[0].state_dict())
    blk.theta.load_state_dict(ref.theta.state_dict())
    blk.phi.load_state_dict(ref.phi.state_dict())
    blk.w_z.load_state_dict(ref.W.state_dict())
    torch.testing.assert_close(blk(x), ref(x), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(blk(x), x)


def test_gem_eps_after_mean():
    from vdreid.models import gem_pool

    x = torch.zeros(1, 2, 3, 3)
    x[0, 1] = 2.0
    out = gem_pool(x)
    assert out[0, 0].item() == pytest.approx(1e-4, rel=1e-6)  # (0 + 1e-12) ** (1/3), not 0 or clamp(eps) ** 3
    assert out[0, 1].item() == pytest.approx(2.0, rel=1e-6)


def test_modality_argument_checks():
    net = build_agw("resnet18", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 16)
    with pytest.raises(ValueError, match="`modality` is missing"):
        net(x)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        net(x, torch.tensor([True]))
    with pytest.raises(ValueError, match="bool"):
        net(x, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(net(x, torch.tensor([0, 1])), net(x, torch.tensor([False, True])))
    with pytest.raises(ValueError, match="feature_mode"):
        net.feature_mode = "obs_concat"
    with pytest.raises(ValueError, match="non_local"):
        build_agw("resnet18", num_classes=3, non_local=(0, 2, 3))
    with pytest.raises(ValueError, match="ResNet-family"):
        build_agw("mobilenetv3_small_050", num_classes=3)


# ------------------------------------------------------------------------------------------------ WRT
def test_wrt_matches_reference_random_and_normalised():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 6, generator=g, dtype=torch.float64) * 2
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 3, 3, 3])
    assert weighted_regularized_triplet(feats, labels).item() == pytest.approx(wrt_reference(feats, labels), rel=1e-12)
    got = weighted_regularized_triplet(feats, labels, normalize_feature=True).item()
    assert got == pytest.approx(wrt_reference(feats, labels, normalize_feature=True), rel=1e-12)
    # float32 and bf16 inputs are computed in float32
    f32 = weighted_regularized_triplet(feats.float(), labels)
    assert f32.dtype == torch.float32 and f32.item() == pytest.approx(wrt_reference(feats, labels), rel=1e-5)
    assert weighted_regularized_triplet(feats.bfloat16(), labels).dtype == torch.float32


def test_wrt_collapse_quirk_with_far_negatives():
    """All negatives beyond ~14: exp(-d) << 1e-6, so AGW's closest_negative collapses to ~0 (not the nearest
    negative distance); the loss is then ~log(1 + exp(fp)) and differs from a textbook softmax weighting."""
    feats = torch.zeros(4, 2, dtype=torch.float64)
    feats[1, 0] = 0.5  # positive of 0 at distance 0.5
    feats[2:, 1] = 40.0  # identity 1 at distance ~40
    feats[3, 0] = 0.3
    labels = torch.tensor([0, 0, 1, 1])
    ours = weighted_regularized_triplet(feats, labels).item()
    assert ours == pytest.approx(wrt_reference(feats, labels), rel=1e-12)
    # textbook: softmax(-d) over negatives without the 1e-6, which weights the nearest negative (~40)
    d = torch.cdist(feats, feats)
    textbook = 0.0
    for i in range(4):
        pos, neg = labels == labels[i], labels != labels[i]
        fp = (torch.softmax(d[i][pos], 0) * d[i][pos]).sum()
        cn = (torch.softmax(-d[i][neg], 0) * d[i][neg]).sum()
        textbook += F.softplus(-(cn - fp)).item() / 4
    assert textbook < 1e-6 < ours  # the textbook loss vanishes, AGW's does not
    assert ours == pytest.approx(float(torch.log1p(torch.exp(torch.tensor(0.0)))), rel=0.3)


def test_wrt_single_identity_and_input_errors():
    feats = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([5, 5, 5])  # no negatives: closest_negative = 0
    assert weighted_regularized_triplet(feats, labels).item() == pytest.approx(wrt_reference(feats, labels), rel=1e-12)
    with pytest.raises(ValueError, match="features"):
        weighted_regularized_triplet(torch.randn(3), labels)
    with pytest.raises(TypeError, match="integer"):
        weighted_regularized_triplet(feats, labels.double())
    with pytest.raises(TypeError, match="NeckOutput"):
        AGWCriterion()((torch.randn(3, 4),), labels)
    with pytest.raises(ValueError, match="weight"):
        AGWCriterion(ce=0, metric_weight=0)
    with pytest.raises(ValueError, match="metric"):
        AGWCriterion(metric="ranked_list")


# ------------------------------------------------------------------------------------------------ factories, weights
def test_torchreid_factories_and_local_imagenet_file(tmp_path):
    import torchvision

    assert isinstance(compat.models.build_model("agw_resnet18", 7, pretrained=False), AGWNet)
    tv = torchvision.models.resnet18(weights=None)  # a torchvision-format ImageNet file (with its fc)
    path = tmp_path / "resnet18-tv.pth"
    torch.save(tv.state_dict(), path)
    net = compat.models.build_model("agw_resnet18", 7, pretrained=str(path))
    sd = tv.state_dict()
    for stem in (net.stem_vis, net.stem_ir):
        torch.testing.assert_close(stem.conv1.weight, sd["conv1.weight"])
        torch.testing.assert_close(stem.bn1.running_var, sd["bn1.running_var"])
    torch.testing.assert_close(net.shared.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    assert net.shared.layer4[0].conv1.stride == (1, 1)  # last stride 1 kept after loading
    assert net.config["pretrained_path"] == str(path)


def test_offline_error_names_the_torchvision_weights(monkeypatch):
    monkeypatch.setattr("vdreid.models.weights.cached_hub_file", lambda model: None)
    with pytest.raises(PretrainedWeightsError, match=r"resnet18\.tv_in1k"):
        compat.models.build_model("agw_resnet18", 3, pretrained=True)


# ------------------------------------------------------------------------------------------------ method plug-in
def _agw_cfg(**over):
    from vdreid.config import get_default_config

    cfg = get_default_config()
    cfg.model.method, cfg.model.name, cfg.model.pretrained = "agw", "agw_resnet18", False
    for k, v in over.items():
        sec, key = k.split("__")
        cfg[sec][key] = v
    return cfg


def test_agw_method_builds_model_criterion_and_param_groups():
    from vdreid import methods
    from vdreid.errors import ConfigError

    m = methods.get("agw")
    assert methods.method_of_model("agw") is m and m.feature_modes == ("bn", "pool")
    cfg = _agw_cfg(test__feature_mode="pool")
    m.check_config(cfg)
    net = m.build_model(cfg, num_classes=6)
    assert isinstance(net, AGWNet) and net.feature_mode == "pool" and net.non_local_counts == (0, 2, 2, 0)
    crit = m.build_criterion(cfg, 6, net)
    assert isinstance(crit, AGWCriterion) and crit.metric == "wrt" and crit.ce == 1.0
    groups = m.param_groups(cfg, net, crit)
    names = {id(p): n for n, p in net.named_parameters()}
    assert [g["lr_mult"] for g in groups] == [0.1, 1.0]
    assert sorted(names[id(p)] for p in groups[1]["params"]) == ["bnneck.weight", "classifier.weight"]
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable and len(trainable) == len(names) - 1
    prov = m.provenance(cfg)
    assert prov["method"] == "agw" and prov["non_local"] == [0, 2, 3, 0] and prov["feature_mode"] == "pool"
    assert set(m.resume_keys) - {"model", "num_classes"} <= set(prov)
    # one training step with the method's parts
    out = net.train()(torch.randn(4, 3, 32, 16), torch.tensor([False, True, False, True]))
    total, terms = crit(out, torch.tensor([0, 0, 1, 1]))
    total.backward()
    assert set(terms) == {"ce", "wrt"} and net.stem_ir.conv1.weight.grad is not None
    # AGW --method base from config
    base = _agw_cfg(agw__non_local=[0, 0, 0, 0], agw__gem=False, agw__metric="triplet")
    net = m.build_model(base, 3)
    assert len(net.non_local) == 0 and m.build_criterion(base, 3).metric == "triplet"
    for key, value, match in (("agw__metric", "rll", "agw.metric"), ("agw__non_local", [0, 1], "agw.non_local"),
                              ("test__feature_mode", "obs_concat", "test.feature_mode"),
                              ("model__name", "vd_resnet50", "model.name")):
        with pytest.raises(ConfigError, match=match):
            m.check_config(_agw_cfg(**{key: value}))
            m.feature_mode(_agw_cfg(**{key: value}))
