"""vdreid.models.from_original / detect_original / model_from_original on state dicts with the original code's key
layout (built from the restated module trees in tests/original_reference.py)."""

from __future__ import annotations

import pytest
import torch
import vdreid  # noqa: F401  (registers the torchreid factories)
from original_reference import embed_net, ft_net, randomize_
from vdreid import compat
from vdreid.errors import CheckpointError, CheckpointMismatchError
from vdreid.models import build_agw, detect_original, from_original, model_from_original
from vdreid.models.original import original_model_kwargs


@pytest.fixture(scope="module")
def agw_state():
    with torch.device("meta"):
        return embed_net(5, arch="resnet50").state_dict()


@pytest.fixture(scope="module")
def vd_state():
    with torch.device("meta"):
        return ft_net(num_classes=7).state_dict()


def _wrap_agw(sd):
    return {"net": {f"module.{k}": v for k, v in sd.items()}, "epoch": 40, "mAP": 0.47, "mINP": 0.35}


def _meta_keys(build):
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build().state_dict().items()}


# ------------------------------------------------------------------------------------------------ AGW
def test_agw_layout_maps_completely(agw_state):
    ckpt = _wrap_agw(agw_state)
    assert detect_original(ckpt) == "agw" and detect_original(agw_state) == "agw"
    assert original_model_kwargs("agw", ckpt) == dict(
        backbone="resnet50", num_classes=5, non_local=(0, 2, 3, 0), gem=True, last_stride=1
    )
    mapped = from_original("agw", ckpt)
    expect = _meta_keys(lambda: build_agw("resnet50", num_classes=5))
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expect
    pairs = {  # original key -> vdreid key, written from the two layouts
        "visible_module.visible.conv1.weight": "stem_vis.conv1.weight",
        "thermal_module.thermal.bn1.running_var": "stem_ir.bn1.running_var",
        "base_resnet.base.layer4.2.conv3.weight": "shared.layer4.2.conv3.weight",
        "base_resnet.base.layer1.0.downsample.1.bias": "shared.layer1.0.downsample.1.bias",
        "NL_2.1.g.0.weight": "non_local.layer2.1.g.weight",
        "NL_3.2.W.1.weight": "non_local.layer3.2.w_z.1.weight",
        "NL_3.0.theta.bias": "non_local.layer3.0.theta.bias",
        "bottleneck.bias": "bnneck.bias",
        "classifier.weight": "classifier.weight",
    }
    for orig, ours in pairs.items():
        assert mapped[ours] is agw_state[orig]
    # AGW saves parts it never uses; they are dropped
    assert "visible_module.visible.layer1.0.conv1.weight" in agw_state and "base_resnet.base.conv1.weight" in agw_state
    assert len(mapped) == len(agw_state) - sum(
        k.startswith(("visible_module.visible.layer", "thermal_module.thermal.layer", "base_resnet.base.conv1.",
                      "base_resnet.base.bn1."))
        for k in agw_state
    )


def test_agw_missing_extra_and_wrong_shape_keys_are_named(agw_state):
    sd = dict(agw_state)
    del sd["base_resnet.base.layer3.2.conv2.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"lacks: 1 .*base_resnet\.base\.layer3\.2\.conv2\.weight"):
        from_original("agw", sd)
    sd = dict(agw_state, **{"NL_2.0.extra.weight": torch.zeros(1), "foo.bar": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match=r"not part of the agw layout: 2 .*NL_2\.0\.extra\.weight"):
        from_original("agw", sd)
    sd = dict(agw_state, **{"bottleneck.weight": torch.zeros(10)})
    with pytest.raises(CheckpointMismatchError, match=r"bottleneck\.weight: checkpoint \(10,\) vs model \(2048,\)"):
        from_original("agw", sd)
    # a model given explicitly is the reference (here: a different number of identities)
    with torch.device("meta"):
        other = build_agw("resnet50", num_classes=9)
    with pytest.raises(CheckpointMismatchError, match=r"classifier\.weight: checkpoint \(5, 2048\) vs model \(9, 2048"):
        from_original("agw", agw_state, model=other)
    # checkpoints without BatchNorm counters (PyTorch < 0.4.1) load with zero counters
    old = {k: v for k, v in agw_state.items() if not k.endswith("num_batches_tracked")}
    assert from_original("agw", old)["bnneck.num_batches_tracked"].item() == 0


def test_agw_model_from_original_gives_agw_features():
    """AGW --method base on ResNet-18 (no NL blocks, so gem is read as off): the loaded model's features equal the
    restated network's."""
    torch.manual_seed(0)
    ref = randomize_(embed_net(3, no_local="off", gm_pool="off", arch="resnet18"), seed=2).eval()
    model, kind = model_from_original(_wrap_agw(ref.state_dict()), feature_mode="pool")
    assert kind == "agw" and not model.training and model.config["gem"] is False
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        pool, feat = ref.features(x, x, 1)
        torch.testing.assert_close(model(x, torch.zeros(2, dtype=torch.bool)), pool, rtol=1e-5, atol=1e-6)
        model.feature_mode = "bn"
        torch.testing.assert_close(model(x, torch.zeros(2, dtype=torch.bool)), feat, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ released VD code
def test_vd_layout_maps_completely(vd_state):
    ckpt = {"model": {f"module.{k}": v for k, v in vd_state.items()}, "epoch": 600}
    assert detect_original(ckpt) == "vd_official"
    kw = original_model_kwargs("vd_official", ckpt)
    assert kw["backbone"] == "resnet50" and kw["num_classes"] == 7 and kw["attention"] is True
    assert kw["bottleneck_dims"] == (1000, 500, 512) and kw["z_classifier_hidden"] == 256
    mapped = from_original("vd_official", ckpt)
    expect = _meta_keys(lambda: compat.models.build_model("vd_resnet50_official", 7, pretrained=False))
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expect
    pairs = {
        "IR_backbone.base.conv1.weight": "branches.ir.encoder.body.conv1.weight",
        "RGB_backbone.base.layer4.0.downsample.0.weight": "branches.vis.encoder.body.layer4.0.downsample.0.weight",
        "RGB_backbone.cam_512._cam_module.gamma": "branches.vis.encoder.attention.1.gamma",
        "shared_backbone.cam_1024._cam_module.gamma": "branches.shared.encoder.attention.2.gamma",
        "IR_backbone.bottleneck.running_mean": "branches.ir.encoder.bnneck.running_mean",
        "IR_backbone.classifier.0.bias": "branches.ir.encoder.classifier.bias",
        "shared_Bottleneck.bottleneck.model.6.weight": "branches.shared.bottleneck.mlp.6.weight",
        "RGB_Bottleneck.bottleneck.model.4.running_var": "branches.vis.bottleneck.mlp.4.running_var",
        "shared_Bottleneck.classifier.4.weight": "branches.shared.bottleneck.classifier.4.weight",
    }
    for orig, ours in pairs.items():
        assert mapped[ours] is vd_state[orig]
    assert not any(".fc." in k for k in mapped)  # ResNet-50's unused ImageNet classifier is dropped


def test_vd_missing_and_extra_keys_are_named(vd_state):
    sd = dict(vd_state, **{"IR_MIE.block.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match=r"IR_MIE\.block\.0\.weight"):
        from_original("vd_official", sd)
    sd = {k: v for k, v in vd_state.items() if not k.startswith("RGB_backbone.cam_256.")}
    with pytest.raises(CheckpointMismatchError, match=r"RGB_backbone\.cam_256\._cam_module\.gamma"):
        from_original("vd_official", sd)


def test_vd_model_from_original_gives_released_features():
    """The released extract_feature.py feature (i_obs, i_ms_obs, v_obs, v_ms_obs post-BN, concatenated) equals the
    loaded VDNet's obs_concat feature (before the L2 normalisation both apply)."""
    torch.manual_seed(0)
    ref = randomize_(ft_net(num_classes=3), seed=4).double().eval()
    model, kind = model_from_original({"model": ref.state_dict()})
    assert kind == "vd_official" and model.feature_mode == "obs_concat"
    model.double()
    x = torch.randn(2, 3, 32, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.extract(x), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------ other inputs
def test_not_an_original_checkpoint():
    with torch.device("meta"):
        ours = build_agw("resnet18", num_classes=3).state_dict()
    assert detect_original(ours) is None and detect_original({"epoch": 3}) is None
    with pytest.raises(CheckpointError, match="not a checkpoint of the AGW code or the released VD code"):
        model_from_original(ours)
    with pytest.raises(CheckpointError, match="no state dict"):
        from_original("agw", {"epoch": 3})
    with pytest.raises(ValueError, match="kind"):
        from_original("ddag", ours)
