"""VDNet: output structure, routing, gray view, feature modes, determinism, checkpoints, ONNX (issue 4).

timm's tiny ``test_resnet`` (a 0.37M-parameter timm ResNet) encoders and 64x32 inputs keep this CPU-only and quick;
the registered ``vd_resnet18`` / ``vd_resnet50*`` presets are built where their structure is checked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import vdreid  # noqa: F401  (registers the models)
from vdreid import compat
from vdreid.models import (
    FEATURE_MODES,
    BranchOutput,
    InformationBottleneck,
    VDNet,
    VDOutput,
    build_vd_net,
    gaussian_kl,
    gray_view,
)
from vdreid.models.attention import ShallowCAM

C = 5  # identities
H, W = 64, 32
DIMS = (32, 16)  # small bottleneck: one hidden layer of 32, z of 16
BACKBONE = "test_resnet"
V = 96  # test_resnet's final channel count


def small(routing: str = "official", bottleneck: str = "deterministic", seed: int = 0, **kw) -> VDNet:
    torch.manual_seed(seed)
    return build_vd_net(BACKBONE, num_classes=C, routing=routing, bottleneck=bottleneck, bottleneck_dims=DIMS, **kw)


def hand_gray(x: torch.Tensor) -> torch.Tensor:
    """Luminance written out element by element from the definition (0.2989 R + 0.5870 G + 0.1140 B)."""
    b, _, h, w = x.shape
    out = np.zeros((b, 3, h, w), dtype=np.float64)
    xn = x.double().numpy()
    for i in range(b):
        for r in range(h):
            for c in range(w):
                y = 0.2989 * xn[i, 0, r, c] + 0.5870 * xn[i, 1, r, c] + 0.1140 * xn[i, 2, r, c]
                out[i, :, r, c] = y
    return torch.from_numpy(out).float()


class InputRecorder:
    """Forward pre-hooks on each branch's encoder recording the tensors it receives."""

    def __init__(self, model: VDNet) -> None:
        self.seen: dict[str, list[torch.Tensor]] = {k: [] for k in ("ir", "vis", "shared")}
        self.handles = [
            model.branches[k].encoder.register_forward_pre_hook(self._hook(k)) for k in ("ir", "vis", "shared")
        ]

    def _hook(self, key):
        def hook(_mod, args):
            self.seen[key].append(args[0].detach().clone())

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    x = torch.randn(6, 3, H, W)
    is_ir = torch.tensor([False, True, False, True, True, False])
    return x, is_ir


# ----------------------------------------------------------------------------- registry
def test_registry_names_and_factory_signature():
    reg = compat._model_registry()
    for name in ("vd_resnet50", "vd_resnet50_official", "vd_resnet18", "vd_resnet10t"):
        assert name in reg
    m = compat.models.build_model("vd_resnet18", num_classes=C, loss="triplet", pretrained=False, use_gpu=False)
    assert isinstance(m, VDNet)
    assert m.config["backbone"] == "resnet18" and m.config["bottleneck_dims"] == (512, 256, 128)
    assert [b.encoder.classifier.out_features for b in m.branches.values()] == [C, C, C]
    # extra kwargs reach build_vd_net
    m2 = reg["vd_resnet18"](
        num_classes=3, pretrained=False, backbone=BACKBONE, routing="modality", bottleneck="gaussian"
    )
    assert m2.routing == "modality" and m2.branches["ir"].bottleneck.form == "gaussian"
    assert m2.config["backbone"] == BACKBONE and m2.config["bottleneck_dims"] == (512, 256, 128)


def test_vd_resnet10t_preset_is_timm_resnet10t_with_the_paper_bottleneck():
    """The quickstart's model: three timm ResNet-10-T encoders (one basic block per stage, 512-d output), each with
    the paper's 1024-512-256 bottleneck; parameters counted independently from timm's own model."""
    import timm

    m = compat.models.build_model("vd_resnet10t", num_classes=C, pretrained=False, use_gpu=False)
    assert m.config["backbone"] == "resnet10t" and m.config["bottleneck_dims"] == (1024, 512, 256)
    body = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    assert sum(p.numel() for p in body.parameters()) == sum(
        p.numel() for p in m.branches["shared"].encoder.body.parameters())
    assert body.num_features == 512


def _resnet50_backbone_params() -> int:
    # independent count: torchvision's ResNet-50 without its 1000-way fc
    import torchvision

    tv = torchvision.models.resnet50(weights=None)
    return sum(p.numel() for p in tv.parameters()) - (2048 * 1000 + 1000)


def test_official_preset_architecture_and_parameter_count():
    m = compat.models.build_model("vd_resnet50_official", num_classes=395, pretrained=False)
    backbone = _resnet50_backbone_params()
    bnneck_cls = 2 * 2048 + 2048 * 395 + 395
    ib_mlp = (2048 * 1000 + 1000) + 2 * 1000 + (1000 * 500 + 500) + 2 * 500 + (500 * 512 + 512)
    ib_cls = (512 * 256 + 256) + 2 * 256 + (256 * 395 + 395)
    per_branch = backbone + 3 + bnneck_cls + ib_mlp + ib_cls  # 3 attention gammas
    counts = m.num_parameters()
    for k in ("ir", "vis", "shared"):
        assert counts[k] == per_branch
    assert counts["total"] == 3 * per_branch
    # released model: ~29.4M per branch counting ResNet-50's unused fc (2048*1000+1000)
    assert abs((per_branch + 2049000) / 1e6 - 29.4) < 0.05
    enc = m.branches["ir"].encoder
    assert [a.channels for a in enc.attention] == [256, 512, 1024]
    assert all(float(a.gamma) == 0.0 for a in enc.attention)
    cls = m.branches["ir"].bottleneck.classifier
    assert [type(l).__name__ for l in cls] == ["Linear", "BatchNorm1d", "LeakyReLU", "Dropout", "Linear"]
    assert cls[2].negative_slope == 0.1 and cls[3].p == 0.5
    assert enc.body.layer4[0].conv2.stride == (1, 1) and enc.body.layer4[0].downsample[0].stride == (1, 1)
    assert enc.body.layer4[0].conv2.dilation == (1, 1)
    assert not enc.bnneck.bias.requires_grad
    # paper preset: same encoders without attention, 1024-512-256 bottleneck with a Linear classifier on z
    from vdreid.models.vd_net import PRESETS

    paper = dict(PRESETS["vd_resnet50"])
    # ResNet-50 with torchvision's ImageNet weights (timm tag tv_in1k), as the released code's pretrained=True
    assert paper.pop("backbone") == "resnet50.tv_in1k" and "attention" not in paper
    assert PRESETS["vd_resnet50_official"]["backbone"] == "resnet50.tv_in1k"
    ib = InformationBottleneck(2048, 395, paper["bottleneck_dims"], paper["bottleneck"])
    paper_ib = (2048 * 1024 + 1024) + 2 * 1024 + (1024 * 512 + 512) + 2 * 512 + (512 * 256 + 256) + 256 * 395 + 395
    assert sum(p.numel() for p in ib.parameters()) == paper_ib


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("routing", ["official", "modality"])
@pytest.mark.parametrize("form", ["deterministic", "gaussian"])
def test_training_output_structure(batch, routing, form):
    x, is_ir = batch
    m = small(routing, form).train()
    out = m(x, is_ir)
    assert isinstance(out, VDOutput) and out.routing == routing
    assert torch.equal(out.is_ir, is_ir)
    n_ir, n_vis = int(is_ir.sum()), int((~is_ir).sum())
    expect_n = {"ir": 6, "vis": 6} if routing == "official" else {"ir": n_ir, "vis": n_vis}
    expect_idx = {
        "ir": torch.arange(6) if routing == "official" else torch.tensor([1, 3, 4]),
        "vis": torch.arange(6) if routing == "official" else torch.tensor([0, 2, 5]),
        "shared_x": torch.arange(6),
        "shared_gray": torch.arange(6),
    }
    for key, b in out.branches().items():
        assert isinstance(b, BranchOutput)
        n = expect_n.get(key, 6)
        assert b.v.shape == (n, V) and b.v_pre.shape == (n, V) and b.v_logits.shape == (n, C)
        assert b.z.shape == (n, DIMS[-1]) and b.z_logits.shape == (n, C)
        assert torch.equal(b.index, expect_idx[key])
        if form == "gaussian":
            assert b.mu.shape == (n, DIMS[-1]) and b.logvar.shape == (n, DIMS[-1])
            assert not torch.allclose(b.z, b.mu)  # a sample, not the mean
        else:
            assert b.mu is None and b.logvar is None
        assert b.v.requires_grad and b.z_logits.requires_grad
    # everything is connected to the parameters
    loss = sum(b.v_logits.sum() + b.z_logits.sum() for b in out.branches().values())
    loss.backward()
    for name in ("ir", "vis", "shared"):
        assert next(m.branches[name].encoder.body.parameters()).grad is not None


def test_gray_view_matches_hand_computation():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 3)
    g = gray_view(x)
    assert g.shape == x.shape
    assert torch.allclose(g, hand_gray(x), atol=1e-6)
    # a pure-red pixel maps to 0.2989 in every channel
    r = torch.zeros(1, 3, 1, 1)
    r[0, 0] = 1.0
    assert torch.allclose(gray_view(r).flatten(), torch.full((3,), 0.2989))


def test_official_routing_feeds_every_image_to_every_encoder(batch):
    x, is_ir = batch
    m = small("official").train()
    rec = InputRecorder(m)
    m(x, is_ir)
    rec.remove()
    g = hand_gray(x)
    assert len(rec.seen["ir"]) == 1 and torch.allclose(rec.seen["ir"][0], g, atol=1e-5)
    assert len(rec.seen["vis"]) == 1 and torch.equal(rec.seen["vis"][0], x)
    assert len(rec.seen["shared"]) == 2
    assert torch.allclose(rec.seen["shared"][0], g, atol=1e-5) and torch.equal(rec.seen["shared"][1], x)
    # without modality the official forward still runs (modality does not enter it)
    rec = InputRecorder(m)
    out = m(x)
    rec.remove()
    assert out.ir.v.shape[0] == 6 and not out.is_ir.any()


def test_modality_routing_feeds_only_matching_images(batch):
    x, is_ir = batch
    m = small("modality").train()
    rec = InputRecorder(m)
    m(x, is_ir)
    rec.remove()
    assert len(rec.seen["ir"]) == 1 and torch.equal(rec.seen["ir"][0], x[[1, 3, 4]])
    assert len(rec.seen["vis"]) == 1 and torch.equal(rec.seen["vis"][0], x[[0, 2, 5]])
    assert len(rec.seen["shared"]) == 2
    assert torch.allclose(rec.seen["shared"][0], hand_gray(x), atol=1e-5) and torch.equal(rec.seen["shared"][1], x)
    # eval, specific branch per image
    m.eval().feature_mode = "v_specific"
    rec = InputRecorder(m)
    m(x, is_ir)
    rec.remove()
    assert torch.equal(rec.seen["ir"][0], x[[1, 3, 4]]) and torch.equal(rec.seen["vis"][0], x[[0, 2, 5]])
    assert rec.seen["shared"] == []


def test_modality_errors(batch):
    x, is_ir = batch
    m = small("modality").train()
    with pytest.raises(ValueError, match="modality"):
        m(x)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        m(x, is_ir[:4])
    with pytest.raises(ValueError, match="bool"):
        m(x, is_ir.float())
    with pytest.raises(ValueError, match="at least 2 infrared"):
        m(x, torch.tensor([True, False, False, False, False, False]))
    out = m(x, is_ir.long())  # 0/1 integers are accepted
    assert torch.equal(out.is_ir, is_ir)
    m.eval()
    for mode in ("obs_concat", "z_concat", "v_specific"):
        m.feature_mode = mode
        with pytest.raises(ValueError, match="modality"):
            m(x)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m(x[:, :1])


# ----------------------------------------------------------------------------- eval features
def test_eval_feature_modes_official(batch):
    x, is_ir = batch
    m = small("official", z_classifier_hidden=8).eval()
    feats = {}
    with torch.no_grad():
        for mode in FEATURE_MODES:
            m.feature_mode = mode
            f = m(x, is_ir)
            assert f.shape == (6, m.feature_dim(mode)), mode
            assert torch.equal(f, m(x, is_ir)), f"{mode} not deterministic"
            feats[mode] = f
        # shared branch on the gray view, computed from the hand-made gray image
        m.feature_mode = "shared_v"
        shared_gray_v = m(hand_gray(x))
        m.feature_mode = "shared_z"
        shared_gray_z = m(hand_gray(x))
    assert m.feature_dim("obs_concat") == 4 * V and m.feature_dim("z_concat") == 4 * DIMS[-1]
    obs = torch.cat([feats["v_ir"], shared_gray_v, feats["v_vis"], feats["shared_v"]], 1)
    assert torch.allclose(feats["obs_concat"], obs, atol=1e-5)
    zc = torch.cat([feats["z_ir"], shared_gray_z, feats["z_vis"], feats["shared_z"]], 1)
    assert torch.allclose(feats["z_concat"], zc, atol=1e-5)
    # specific: IR rows from the ir branch (on gray), visible rows from the vis branch
    spec = torch.where(is_ir[:, None], feats["v_ir"], feats["v_vis"])
    assert torch.allclose(feats["v_specific"], spec, atol=1e-5)
    # eval v is the BNNeck of the pooled feature with running statistics (not L2-normalised)
    assert not torch.allclose(feats["shared_v"].norm(dim=1), torch.ones(6))
    with pytest.raises(ValueError, match="feature_mode must be one of"):
        m.feature_mode = "bogus"
    with pytest.raises(ValueError, match="feature mode must be one of"):
        m.feature_dim("bogus")


def test_eval_feature_modes_modality_routing(batch):
    x, is_ir = batch
    m = small("modality", bottleneck="gaussian").eval()
    with torch.no_grad():
        got = {}
        for mode in ("obs_concat", "v_ir", "v_vis", "shared_v", "z_specific", "z_ir", "z_vis"):
            m.feature_mode = mode
            got[mode] = m(x, is_ir)
        m.feature_mode = "shared_v"
        sg = m(hand_gray(x))
    assert m.feature_dim("obs_concat") == 3 * V
    spec = torch.where(is_ir[:, None], got["v_ir"], got["v_vis"])
    assert torch.allclose(got["obs_concat"], torch.cat([spec, sg, got["shared_v"]], 1), atol=1e-5)
    assert torch.allclose(got["z_specific"], torch.where(is_ir[:, None], got["z_ir"], got["z_vis"]), atol=1e-5)
    # in modality routing the ir branch sees x itself, so ir and the official-gray ir feature differ
    m.feature_mode = "v_ir"
    with torch.no_grad():
        assert not torch.allclose(m(x), m(hand_gray(x)))


def test_gaussian_eval_uses_mean_and_training_samples(batch):
    x, _ = batch
    m = small("official", bottleneck="gaussian")
    m.train()
    torch.manual_seed(0)
    a = m(x)
    b = m(x)
    assert torch.allclose(a.shared_x.mu, b.shared_x.mu, atol=1e-5)  # same batch, same BN statistics
    assert not torch.allclose(a.shared_x.z, b.shared_x.z)
    # reparameterisation: z = mu + exp(logvar/2) * eps, so (z - mu) / std is standard normal
    eps = (a.shared_x.z - a.shared_x.mu) / torch.exp(0.5 * a.shared_x.logvar)
    assert abs(float(eps.mean())) < 0.3 and abs(float(eps.std()) - 1) < 0.3
    m.eval().feature_mode = "shared_z"
    ib = m.branches["shared"].bottleneck
    with torch.no_grad():
        v = m.branches["shared"].encoder(x)[1]
        mu = ib.mlp(v)[:, : DIMS[-1]]
        assert torch.allclose(m(x), mu, atol=1e-5)


def test_gaussian_kl_against_torch_distributions():
    torch.manual_seed(3)
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    ).sum(1)
    assert torch.allclose(gaussian_kl(mu, logvar, reduction="none"), ref, atol=1e-5)
    assert torch.allclose(gaussian_kl(mu, logvar), ref.mean(), atol=1e-5)
    assert torch.allclose(gaussian_kl(mu, logvar, reduction="sum"), ref.sum(), atol=1e-4)
    assert float(gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4))) == 0.0
    # one dimension with mu=1, var=1: KL = 0.5
    assert math.isclose(float(gaussian_kl(torch.tensor([[1.0]]), torch.tensor([[0.0]]))), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        gaussian_kl(mu, logvar[:, :3])
    with pytest.raises(ValueError, match="reduction"):
        gaussian_kl(mu, logvar, reduction="batchmean")


def test_shallow_cam_matches_definition():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 2, 2)
    cam = ShallowCAM(3)
    assert torch.equal(cam(x), x)  # gamma starts at 0: identity
    with torch.no_grad():
        cam.gamma.fill_(0.7)
    xn = x.double().numpy().reshape(2, 3, 4)
    ref = np.empty_like(xn)
    for b in range(2):
        e = xn[b] @ xn[b].T
        e = e.max(axis=1, keepdims=True) - e
        a = np.exp(e - e.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)
        ref[b] = 0.7 * (a @ xn[b]) + xn[b]
    assert np.allclose(cam(x).detach().numpy().reshape(2, 3, 4), ref, atol=1e-5)


def test_last_stride_one_by_stride_not_dilation():
    m1 = small("official")
    m2 = small("official", last_stride=2)
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        f1 = m1.branches["vis"].encoder.eval().feature_map(x)
        f2 = m2.branches["vis"].encoder.eval().feature_map(x)
    assert f1.shape[-2:] == (H // 16, W // 16) and f2.shape[-2:] == (H // 32, W // 32)
    l4 = m1.branches["vis"].encoder.body.layer4
    assert all(mod.dilation == (1, 1) for mod in l4.modules() if isinstance(mod, torch.nn.Conv2d))


# ----------------------------------------------------------------------------- checkpoints, engines, export
def test_state_dict_round_trip_through_torchreid_helpers(tmp_path, batch):
    x, is_ir = batch
    a = small("official", bottleneck="gaussian", seed=0, z_classifier_hidden=8)
    a.train()
    a(x, is_ir)  # move BN running statistics away from their initial values
    a.eval()
    compat.save_checkpoint({"state_dict": a.state_dict(), "epoch": 3, "rank1": 0.1}, str(tmp_path))
    path = tmp_path / "model.pth.tar-3"
    assert path.is_file()
    b = small("official", bottleneck="gaussian", seed=1, z_classifier_hidden=8).eval()
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
        b.load_state_dict(compat.load_checkpoint(str(path))["state_dict"], strict=True)
        assert torch.equal(a(x), b(x))
        c = small("official", bottleneck="gaussian", seed=2, z_classifier_hidden=8).eval()
        compat.utils.load_pretrained_weights(c, str(path))
        assert torch.equal(a(x), c(x))


def test_channels_last_and_syncbn_conversion(batch):
    x, _ = batch
    m = small("official", attention=True).eval()
    with torch.no_grad():
        ref = m(x)
        m_cl = m.to(memory_format=torch.channels_last)
        out = m_cl(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-4)
    s = torch.nn.SyncBatchNorm.convert_sync_batchnorm(m)
    assert isinstance(s.branches["ir"].encoder.bnneck, torch.nn.SyncBatchNorm)
    assert not s.branches["ir"].encoder.bnneck.bias.requires_grad
    assert all(isinstance(mod, torch.nn.Module) for mod in m.branches.values())


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = small("official", attention=True, z_classifier_hidden=8).eval()
    with torch.no_grad():
        for cam in m.modules():
            if isinstance(cam, ShallowCAM):
                cam.gamma.fill_(0.5)  # make the attention path count
    f = tmp_path / "vd.onnx"
    torch.onnx.export(
        m,
        (torch.randn(2, 3, H, W),),
        str(f),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["features"],
        dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
    )
    x = torch.randn(3, 3, H, W)
    got = ort.InferenceSession(str(f)).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = m(x).numpy()
    assert got.shape == (3, 4 * V)
    assert np.allclose(got, ref, atol=1e-4)
    assert np.allclose(F.normalize(torch.from_numpy(got), dim=1), F.normalize(torch.from_numpy(ref), dim=1), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(routing="by_camera"), "routing must be one of"),
        (dict(bottleneck="vae"), "bottleneck must be one of"),
        (dict(feature_mode="v"), "feature_mode must be one of"),
        (dict(num_classes=0), "num_classes must be a positive int"),
        (dict(num_classes=True), "num_classes must be a positive int"),
        (dict(bottleneck_dims=(32, 0)), "bottleneck_dims must be positive"),
        (dict(z_classifier_hidden=-1), "z_classifier_hidden"),
        (dict(last_stride=3), "last_stride must be 1 or 2"),
        (dict(backbone="resnet_does_not_exist"), "not a timm model"),
        (dict(backbone="mobilenetv3_small_050", attention=True, last_stride=2), "ResNet-family"),
        (dict(backbone="mobilenetv3_small_050", last_stride=1), "use last_stride=2"),
        (dict(pretrained=False, pretrained_path="/x/resnet18.pth"), "pretrained=False but pretrained_path"),
        (dict(pretrained="/x/a.pth", pretrained_path="/x/b.pth"), "name different files"),
    ],
)
def test_build_errors(kwargs, match):
    args = dict(backbone=BACKBONE, num_classes=C, bottleneck_dims=DIMS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_vd_net(**args)
