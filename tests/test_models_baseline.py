"""The plain BNNeck baseline (models/baseline.py, losses/baseline.py): outputs, criterion against definitions,
torchreid's engines training it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import vdreid  # noqa: F401  (registers the torchreid factories)
from original_reference import batch_hard_triplet_reference, ce_reference
from vdreid import compat
from vdreid.losses import BNNeckCriterion
from vdreid.models import BNNeckNet, NeckOutput, build_bnneck


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_bnneck("resnet18", num_classes=4, pretrained=False)


def _x(n=4, seed=0):
    return torch.randn(n, 3, 32, 16, generator=torch.Generator().manual_seed(seed))


def test_train_output_is_gap_bnneck_classifier(net):
    net.train()
    x = _x()
    out = net(x, torch.tensor([True, False, True, False]))
    assert isinstance(out, NeckOutput)
    enc = net.encoder
    fmap = enc.body.forward_features(x)
    assert fmap.shape[-2:] == (2, 1)  # 32x16 input, last stride 1: /16, not /32
    pool = fmap.mean(dim=(2, 3))
    mu, var = pool.mean(0), pool.var(0, unbiased=False)
    bn = (pool - mu) / torch.sqrt(var + enc.bnneck.eps) * enc.bnneck.weight  # bias frozen at 0
    torch.testing.assert_close(out.pool, pool, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.bn, bn, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logits, bn @ enc.classifier.weight.t() + enc.classifier.bias, rtol=1e-4, atol=1e-6)
    assert not enc.bnneck.bias.requires_grad and float(enc.bnneck.bias.abs().sum()) == 0.0


def test_eval_feature_modes_and_modality_ignored(net):
    net.eval()
    x = _x(seed=1)
    net.feature_mode = "bn"
    f_bn = net(x)
    torch.testing.assert_close(f_bn, net(x, torch.tensor([True, True, False, False])))
    net.feature_mode = "pool"
    f_pool = net(x)
    torch.testing.assert_close(f_pool, net.encoder.body.forward_features(x).mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    bn = net.encoder.bnneck
    expect = (f_pool - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight
    torch.testing.assert_close(f_bn, expect, rtol=1e-5, atol=1e-6)
    assert f_bn.shape == (4, 512) and net.feature_dim() == net.feature_dim("bn") == 512
    assert not torch.allclose(f_bn.norm(dim=1), torch.ones(4))  # not L2-normalised by the model
    net.feature_mode = "bn"
    with pytest.raises(ValueError, match="feature_mode"):
        net.feature_mode = "shared_z"


def test_criterion_equals_definitions():
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(8, 6, generator=g, dtype=torch.float64)
    logits = torch.randn(8, 5, generator=g, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = NeckOutput(pool=pool, bn=pool, logits=logits)
    total, terms = BNNeckCriterion()(out, pids)
    ce = ce_reference(logits, pids, eps=0.1)
    tri = batch_hard_triplet_reference(pool, pids, margin=0.3)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-9)
    assert terms["triplet"].item() == pytest.approx(tri, rel=1e-9)
    assert total.item() == pytest.approx(ce + tri, rel=1e-9)
    total2, terms2 = BNNeckCriterion(ce=2.0, triplet=0.0, label_smooth=0.0)(out, pids)
    assert set(terms2) == {"ce"} and total2.item() == pytest.approx(2 * ce_reference(logits, pids), rel=1e-9)
    with pytest.raises(ValueError, match="label_smooth"):
        BNNeckCriterion(label_smooth=1.0)
    with pytest.raises(ValueError, match="pids"):
        BNNeckCriterion()(out, pids[:3])


def test_torchreid_contracts_by_loss():
    soft = compat.models.build_model("bnneck_resnet18", 4, loss="softmax", pretrained=False)
    trip = compat.models.build_model("bnneck_resnet18", 4, loss="triplet", pretrained=False)
    assert isinstance(soft, BNNeckNet) and soft.loss == "softmax"
    x = _x()
    y = soft.train()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (4, 4)
    logits, feats = trip.train()(x)
    assert logits.shape == (4, 4) and feats.shape == (4, 512)
    assert isinstance(build_bnneck("resnet18", 4).train()(x), NeckOutput)  # vdreid's default
    with pytest.raises(ValueError, match="loss"):
        build_bnneck("resnet18", 4, loss="arcface")


@pytest.mark.parametrize("engine_name", ["ImageSoftmaxEngine", "ImageTripletEngine"])
def test_torchreid_engine_trains_it(engine_name):
    loss = "softmax" if engine_name == "ImageSoftmaxEngine" else "triplet"
    torch.manual_seed(0)
    model = compat.models.build_model("bnneck_resnet18", 4, loss=loss, pretrained=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dm = SimpleNamespace(train_loader=None, test_loader=None, num_train_pids=4)
    engine = getattr(compat.engine, engine_name)(dm, model, opt, use_gpu=False)
    before = model.encoder.classifier.weight.detach().clone()
    model.train()
    summary = engine.forward_backward({"img": _x(8), "pid": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])})
    assert all(torch.isfinite(torch.tensor(v)) for v in summary.values())
    assert not torch.equal(before, model.encoder.classifier.weight)


def test_pretrained_file_and_hub_tag(tmp_path, monkeypatch):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    net = compat.models.build_model("bnneck_resnet18", 3, pretrained=str(path))
    torch.testing.assert_close(net.encoder.body.layer2[0].conv1.weight, tv.state_dict()["layer2.0.conv1.weight"])
    monkeypatch.setattr("vdreid.models.weights.cached_hub_file", lambda model: None)
    with pytest.raises(vdreid.errors.PretrainedWeightsError, match=r"bnneck_resnet18: .*resnet18\.tv_in1k"):
        compat.models.build_model("bnneck_resnet18", 3, pretrained=True)


# ------------------------------------------------------------------------------------------------ method plug-in
def test_bnneck_method():
    from vdreid import methods
    from vdreid.config import get_default_config
    from vdreid.errors import ConfigError

    m = methods.get("bnneck")
    cfg = get_default_config()
    cfg.model.method, cfg.model.name, cfg.model.pretrained = "bnneck", "bnneck_resnet18", False
    m.check_config(cfg)
    net = m.build_model(cfg, 5)
    assert isinstance(net, BNNeckNet) and net.loss == "vdreid" and net.feature_mode == "bn"
    crit = m.build_criterion(cfg, 5, net)
    assert isinstance(crit, BNNeckCriterion) and (crit.label_smooth, crit.triplet_margin) == (0.1, 0.3)
    out = net.train()(_x(4))
    total, terms = crit(out, torch.tensor([0, 0, 1, 1]))
    assert set(terms) == {"ce", "triplet"}
    groups = m.param_groups(cfg, net, crit)
    assert len(groups) == 1 and groups[0]["lr_mult"] == 1.0
    assert m.provenance(cfg) == {"method": "bnneck", "backbone": "bnneck_resnet18", "feature_mode": "bn"}
    cfg.model.backbone = "resnet34"  # a timm name overrides the preset's CNN
    assert m.build_model(cfg, 5).config["backbone"] == "resnet34"
    cfg.bnneck.label_smooth = 1.0
    with pytest.raises(ConfigError, match="bnneck.label_smooth"):
        m.check_config(cfg)
