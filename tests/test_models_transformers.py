"""timm transformer encoders (ViT, DeiT incl. distilled, Swin) in VD, the BNNeck baseline and AGW's two-stream
layout (models/backbones.py, docs/encoders.md); the ConvNeXt last-stride fix.

Pooling is checked twice: against timm's own ``forward_head(pre_logits=True)`` on a separately created timm model
holding the same weights, and against the pooling written out from its definition (class token, mean of class and
distillation tokens, mean of the final Swin map, mean of patch tokens + LayerNorm). Encoders are shrunk through timm
keyword arguments (depth, width) to keep CPU time low; inputs are 64x32 (4x2 patches of 16, 16x8 of 4).
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import vdreid  # noqa: F401  (registers the methods and their config sections)
from timm.layers import resample_abs_pos_embed
from vdreid import builders
from vdreid.config import load_config
from vdreid.errors import ConfigError
from vdreid.models import AGWNet, build_agw, build_bnneck, build_vd_net
from vdreid.models.agw import EmbeddedPatches
from vdreid.models.backbones import (
    HEAD,
    Encoder,
    describe_encoder,
    encoder_layout,
    is_fixed_size,
    set_last_stride_one,
)
from vdreid.models.outputs import VDOutput

H, W = 64, 32
C = 5
SMALL_SWIN = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
FAMILIES = {  # name: (timm name, shrinking kwargs)
    "vit": ("vit_tiny_patch16_224", dict(depth=2)),
    "deit": ("deit_tiny_patch16_224", dict(depth=2)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(depth=2)),
    "swin": ("swin_tiny_patch4_window7_224", SMALL_SWIN),
}
WIDTH = {"vit": 192, "deit": 192, "deit_distilled": 192, "swin": 192}  # Swin: 24 * 2 ** 3


def _x(n=4, seed=0, h=H, w=W):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


MOD = torch.tensor([False, True, False, True])


def _definition_pool(family: str, body: torch.nn.Module, f: torch.Tensor) -> torch.Tensor:
    """The pooled feature written from each family's definition, on ``forward_features``' output."""
    if family in ("vit", "deit"):
        return f[:, 0]  # the class token (ViT/DeiT: global_pool 'token', no fc_norm)
    if family == "deit_distilled":
        return (f[:, 0] + f[:, 1]) / 2  # DeiT: mean of the class and distillation tokens
    if family == "swin":
        return f.mean(dim=(1, 2))  # Swin: mean over the final (B, H, W, C) token map
    raise AssertionError(family)


def _timm_twin(name: str, kw: dict, body: torch.nn.Module, **size) -> torch.nn.Module:
    """A separately created timm model (its own default head) holding ``body``'s weights."""
    twin = timm.create_model(name, pretrained=False, num_classes=0, **kw, **size)
    twin.load_state_dict(body.state_dict(), strict=True)
    return twin.eval()


# --------------------------------------------------------------------------------------------- layout and pooling
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("mode", ["img_size", "dynamic"])
def test_pooling_is_the_family_head(family, mode):
    name, kw = FAMILIES[family]
    size = (H, W) if mode == "img_size" else None
    torch.manual_seed(0)
    enc = Encoder(name, C, input_size=size, **kw).eval()
    assert enc.layout.fixed_size and enc.layout.pooling == HEAD and enc.layout.input_mode == mode
    assert enc.out_dim == WIDTH[family] == enc.bnneck.num_features == enc.classifier.in_features
    x = _x()
    with torch.no_grad():
        v_pre, v, logits = enc(x)
        f = enc.body.forward_features(x)
        twin = _timm_twin(name, kw, enc.body, **({"img_size": size} if size else {"dynamic_img_size": True}))
        timm_pool = twin.forward_head(twin.forward_features(x), pre_logits=True)
    assert v_pre.shape == (4, WIDTH[family]) and logits.shape == (4, C)
    torch.testing.assert_close(v_pre, timm_pool, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v_pre, _definition_pool(family, enc.body, f), rtol=1e-5, atol=1e-6)
    if family.startswith(("vit", "deit")):
        prefix = 2 if family == "deit_distilled" else 1
        assert f.shape == (4, prefix + (H // 16) * (W // 16), WIDTH[family])  # 4x2 patches + prefix tokens
    else:
        assert f.shape == (4, H // 32, W // 32, WIDTH[family])  # the final Swin stage: 2x1 at 64x32
    bn = enc.bnneck
    torch.testing.assert_close(v, (v_pre - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight)


def test_mean_of_patch_tokens_pooling():
    """A ViT asked for global_pool 'avg' (timm then norms after pooling: fc_norm): the mean of the patch tokens,
    the class token left out, then LayerNorm."""
    kw = dict(depth=1, global_pool="avg")
    enc = Encoder("vit_tiny_patch16_224", C, input_size=(H, W), **kw).eval()
    assert enc.layout.global_pool == "avg" and enc.layout.prefix_tokens == 1
    x = _x()
    with torch.no_grad():
        f = enc.body.forward_features(x)
        assert f.shape[1] == 1 + 8
        ln = enc.body.fc_norm
        ref = F.layer_norm(f[:, 1:].mean(dim=1), (192,), ln.weight, ln.bias, ln.eps)
        torch.testing.assert_close(enc(x)[0], ref, rtol=1e-5, atol=1e-6)
    assert "mean over the patch tokens (prefix tokens left out)" in enc.describe()


def test_cnn_layout_is_gap_and_unchanged():
    enc = Encoder("resnet18", C, last_stride=1)
    layout = enc.layout
    assert not layout.fixed_size and layout.pooling == "gap" and layout.input_mode == "any"
    assert layout.feature_format == "NCHW" and enc.out_dim == enc.body.num_features == 512
    assert all(type(m) is torch.nn.Conv2d for m in enc.body.layer4.modules() if isinstance(m, torch.nn.Conv2d))
    assert not is_fixed_size("resnet18") and is_fixed_size("vit_tiny_patch16_224")


# ------------------------------------------------------------------------------------------- the three methods' models
@pytest.mark.parametrize("family", list(FAMILIES))
def test_vd_bnneck_agw_train_and_eval(family):
    name, kw = FAMILIES[family]
    d = WIDTH[family]
    x = _x()
    torch.manual_seed(0)
    vd = build_vd_net(name, num_classes=C, bottleneck_dims=(16, 8), input_size=(H, W), **kw)
    out = vd(x, MOD)
    assert isinstance(out, VDOutput) and vd.v_dim == d
    assert out.shared_x.v.shape == (4, d) and out.shared_x.z.shape == (4, 8) and out.ir.v_logits.shape == (4, C)
    total = sum(o.v_logits.sum() + o.z_logits.sum() for o in (out.ir, out.vis, out.shared_x, out.shared_gray))
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in vd.branches["shared"].encoder.body.parameters() if p.requires_grad)
    vd.eval()
    with torch.no_grad():
        assert vd(x).shape == (4, 4 * d) == (4, vd.feature_dim())
        vd.feature_mode = "shared_z"
        assert vd(x).shape == (4, 8)

    bn = build_bnneck(name, num_classes=C, input_size=(H, W), **kw)
    o = bn(x)
    assert o.pool.shape == o.bn.shape == (4, d) and o.logits.shape == (4, C)
    bn.eval()
    with torch.no_grad():
        assert bn(x).shape == (4, d) == (4, bn.feature_dim())

    agw = build_agw(name, num_classes=C, input_size=(H, W), non_local=(0, 0, 0, 0), gem=False, **kw)
    assert isinstance(agw, AGWNet) and agw.token_encoder and agw.out_dim == d
    o = agw(x, MOD)
    assert o.pool.shape == o.bn.shape == (4, d) and o.logits.shape == (4, C)
    o.logits.sum().backward()
    for stem in (agw.stem_vis, agw.stem_ir):  # both stems are used by a mixed batch
        assert all(p.grad is not None for p in stem.parameters())
    agw.eval()
    with torch.no_grad():
        assert agw(x, MOD).shape == (4, d)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_agw_two_stream_is_modality_patch_embedding_and_shared_blocks(family):
    """Each image's pooled feature is that of a plain timm model made of its modality's patch embedding and the
    shared blocks (independent of the other images and of the order of the batch)."""
    name, kw = FAMILIES[family]
    torch.manual_seed(1)
    net = build_agw(name, num_classes=C, input_size=(H, W), non_local=(0, 0, 0, 0), gem=False, feature_mode="pool",
                    **kw).eval()
    assert isinstance(net.shared.patch_embed, EmbeddedPatches)
    assert not list(net.shared.patch_embed.parameters())
    assert not torch.equal(net.stem_vis.patch_embed.proj.weight, net.stem_ir.patch_embed.proj.weight)
    shared = {k: v for k, v in net.shared.state_dict().items()}
    refs = {}
    for key, stem in (("vis", net.stem_vis), ("ir", net.stem_ir)):
        ref = timm.create_model(name, pretrained=False, num_classes=0, img_size=(H, W), **kw)
        ref.load_state_dict({**shared, **stem.state_dict()}, strict=True)
        refs[key] = ref.eval()
    x = _x(6, seed=3)
    is_ir = torch.tensor([True, False, False, True, True, False])
    with torch.no_grad():
        got = net(x, is_ir)
        want = torch.stack([refs["ir" if m else "vis"].forward_head(refs["ir" if m else "vis"].forward_features(
            x[i:i + 1]), pre_logits=True)[0] for i, m in enumerate(is_ir.tolist())])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert "two-stream: modality-specific patch embeddings" in net.describe_encoder()


def test_agw_dynamic_vit_two_stream_keeps_position_interpolation():
    name, kw = FAMILIES["vit"]
    net = build_agw(name, num_classes=C, non_local=(0, 0, 0, 0), gem=False, feature_mode="pool", **kw).eval()
    assert net.shared.patch_embed.grid_size == (14, 14)  # read by timm's dynamic position embedding
    with torch.no_grad():
        for h, w in ((64, 32), (96, 48)):
            assert net(_x(2, h=h, w=w), torch.tensor([True, False])).shape == (2, 192)


# --------------------------------------------------------------------------------------------- weights
def _timm_file(tmp_path, name, kw, seed=0):
    torch.manual_seed(seed)
    src = timm.create_model(name, pretrained=False, **kw)  # 224x224 with its 1000-way head, as timm saves it
    path = tmp_path / f"{name}.pth"
    torch.save(src.state_dict(), path)
    return src.state_dict(), str(path)


def test_vit_weights_file_resampled_to_the_input_size(tmp_path):
    name, kw = FAMILIES["vit"]
    sd, path = _timm_file(tmp_path, name, kw)
    pos = resample_abs_pos_embed(sd["pos_embed"], new_size=(H // 16, W // 16), num_prefix_tokens=1)
    vd = build_vd_net(name, num_classes=C, bottleneck_dims=(16, 8), input_size=(H, W), pretrained_path=path,
                      pretrained=True, **kw)
    for b in ("ir", "vis", "shared"):
        body = vd.branches[b].encoder.body
        torch.testing.assert_close(body.pos_embed, pos)
        torch.testing.assert_close(body.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
        torch.testing.assert_close(body.cls_token, sd["cls_token"])
    dyn = build_bnneck(name, num_classes=C, pretrained=path, **kw)  # dynamic: the 14x14 table kept as it is
    torch.testing.assert_close(dyn.encoder.body.pos_embed, sd["pos_embed"])
    agw = build_agw(name, num_classes=C, input_size=(H, W), non_local=(0, 0, 0, 0), gem=False, pretrained=path, **kw)
    for stem in (agw.stem_vis, agw.stem_ir):
        torch.testing.assert_close(stem.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    torch.testing.assert_close(agw.shared.pos_embed, pos)
    torch.testing.assert_close(agw.shared.norm.weight, sd["norm.weight"])


def test_swin_weights_file_loads_with_windows_fitted_to_the_input(tmp_path):
    name, kw = FAMILIES["swin"]
    sd, path = _timm_file(tmp_path, name, kw)
    net = build_bnneck(name, num_classes=C, input_size=(H, W), pretrained=path, **kw)
    body = net.encoder.body
    # at 64x32 the third stage's grid is 4x2, so timm fits its 7x7 window to 4x2 and resizes the bias table
    assert body.layers[2].blocks[0].attn.relative_position_bias_table.shape[0] == (2 * 4 - 1) * (2 * 2 - 1)
    torch.testing.assert_close(body.layers[2].blocks[0].mlp.fc1.weight, sd["layers.2.blocks.0.mlp.fc1.weight"])
    torch.testing.assert_close(body.patch_embed.proj.weight, sd["patch_embed.proj.weight"])


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "name, kw, size, match",
    [
        ("vit_tiny_patch16_224", {}, (66, 34), r"16x16 patches .* multiples of 16x16 .* 64x32 or 80x48"),
        ("swin_tiny_patch4_window7_224", {}, (66, 34), r"4x4 patches .* 64x32 or 68x36"),
        ("eva02_tiny_patch14_224", {}, (288, 144), r"multiples of 14x14 .* 280x140 or 294x154"),
        ("beit_base_patch16_224", {}, None, r"no dynamic-size mode: give the input size"),
        ("efficientformer_l1", {}, (64, 32), r"does not run on 64x32 images .* pretrained size is 224x224"),
        ("mvitv2_tiny", {}, (64, 32), r"timm cannot build backbone 'mvitv2_tiny' for 64x32"),
        ("vit_tiny_patch16_224", {}, (0, 32), r"two positive integers"),
        ("vit_tiny_patch16_224", {"img_size": (96, 48)}, (64, 32), r"contradicts"),
    ],
)
def test_impossible_encoder_configs_are_one_line_config_errors(name, kw, size, match):
    for build in (lambda: encoder_layout(name, 1, size, **kw), lambda: describe_encoder(name, 1, size, **kw)):
        with pytest.raises(ConfigError, match=match) as e:
            build()
        assert "\n" not in str(e.value)


def test_model_builders_raise_config_errors_before_building():
    with pytest.raises(ConfigError, match="multiples of 16x16"):
        build_vd_net("vit_tiny_patch16_224", num_classes=C, input_size=(66, 34))
    with pytest.raises(ConfigError, match="no dynamic-size mode"):
        build_bnneck("beit_base_patch16_224", num_classes=C)
    with pytest.raises(ValueError, match="ResNet-family"):
        build_vd_net("vit_tiny_patch16_224", num_classes=C, attention=True, depth=1)
    with pytest.raises(ConfigError, match=r"agw.non_local \[0, 0, 0, 0\].*agw.gem false") as e:
        build_agw("vit_tiny_patch16_224", num_classes=C)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="ResNet-family backbone .* or a transformer with a patch embedding"):
        build_agw("mobilenetv3_small_050", num_classes=C)
    with pytest.raises(ConfigError, match="no patch_embed"):
        build_agw("coatnet_nano_rw_224", num_classes=C, input_size=(H, W), non_local=(0, 0, 0, 0), gem=False)


def test_wrong_image_size_at_forward_is_a_config_error():
    name, kw = FAMILIES["vit"]
    fixed = Encoder(name, C, input_size=(H, W), **kw).eval()
    dynamic = Encoder(name, C, **kw).eval()
    with torch.no_grad():
        with pytest.raises(ConfigError, match=r"built for 64x32 images .* got 96x48"):
            fixed(_x(2, h=96, w=48))
        assert dynamic(_x(2, h=96, w=48))[0].shape == (2, 192)  # any multiple of 16
        with pytest.raises(ConfigError, match=r"cannot take 66x34"):
            dynamic(_x(2, h=66, w=34))
    agw = build_agw(name, num_classes=C, input_size=(H, W), non_local=(0, 0, 0, 0), gem=False, **kw).eval()
    with torch.no_grad(), pytest.raises(ConfigError, match=r"built for 64x32"):
        agw(_x(2, h=96, w=48), torch.tensor([True, False]))


def test_onnx_export_of_encoders_built_for_the_input_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    for family in ("vit", "swin"):
        name, kw = FAMILIES[family]
        net = build_bnneck(name, num_classes=C, input_size=(H, W), **kw).eval()
        path = tmp_path / f"{family}.onnx"
        torch.onnx.export(net, (_x(2),), str(path), dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["features"], dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        x = _x(3, seed=9)
        got = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), net(x), rtol=1e-4, atol=1e-4)


def test_layout_falls_back_to_a_cpu_copy_when_the_meta_device_cannot_build(monkeypatch):
    from vdreid.models import backbones

    real = backbones._create

    def no_meta(name, kwargs, meta):
        if meta:
            raise backbones._MetaUnsupported("Tensor.item() cannot be called on meta tensors")
        return real(name, kwargs, meta)

    want = encoder_layout("resnet18", 1, (H, W))
    torch.manual_seed(0)
    first_draw = torch.rand(1)
    monkeypatch.setattr(backbones, "_create", no_meta)
    torch.manual_seed(0)
    got = backbones._plan("resnet18", 1, (H, W), {})[0]  # built and run on the CPU (not the remembered layout)
    assert torch.equal(torch.rand(1), first_draw)  # the CPU copy's initialisation drew no random numbers for good
    assert got == want and got.final_size == (H // 16, W // 16)


# --------------------------------------------------------------------------------------------- descriptions
def test_describe_encoder_lines():
    r = describe_encoder("resnet18", 1, (256, 128))
    assert "last stride 1" in r and "final map 16x8 at 256x128, 8x4 with last stride 2" in r
    assert "global average" in r
    assert "final map 8x4 at 256x128" in describe_encoder("resnet18", 2, (256, 128))
    v = describe_encoder("vit_tiny_patch16_224", 1, (288, 144))
    assert "last stride has no meaning" in v and "18x9 patches at 288x144 + 1 prefix token" in v
    assert "the class token" in v and "built for 288x144" in v
    assert "any multiple of 16x16" in describe_encoder("vit_tiny_patch16_224", 2)
    assert "mean of the class and distillation tokens" in describe_encoder("deit_tiny_distilled_patch16_224", 1,
                                                                           (H, W))
    s = describe_encoder("swin_tiny_patch4_window7_224", 1, (H, W))
    assert "4x4 patches" in s and "final map 2x1 at 64x32" in s and "last_stride=1 ignored" in s
    assert "attention pooling" in describe_encoder("vit_base_patch16_siglip_224", 1, (H, W))
    name, kw = FAMILIES["deit_distilled"]
    enc = Encoder(name, C, input_size=(H, W), **kw)
    assert enc.describe() == describe_encoder(name, 1, (H, W), **kw)
    assert "\n" not in enc.describe()


# --------------------------------------------------------------------------------------------- ConvNeXt last stride
def test_convnext_last_stride_one_doubles_the_map_without_losing_a_row():
    """ConvNeXt downsamples with a 2x2 convolution of stride 2 and no padding; at stride 1 it would return H-1 x W-1
    (the shortfall); last stride 1 pads one zero row and column at the bottom and right instead ('SAME')."""
    kw = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    torch.manual_seed(0)
    two = timm.create_model("convnext_atto", pretrained=False, num_classes=0, global_pool="", **kw).eval()
    one = timm.create_model("convnext_atto", pretrained=False, num_classes=0, global_pool="", **kw).eval()
    one.load_state_dict(two.state_dict())
    down = one.stages[3].downsample[1]
    assert down.kernel_size == (2, 2) and down.stride == (2, 2) and down.padding == (0, 0)
    set_last_stride_one(one, "convnext_atto")
    assert one.state_dict().keys() == two.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values()))
    for h, w in ((64, 32), (256, 128), (288, 144)):
        x = _x(1, h=h, w=w)
        with torch.no_grad():
            f2, f1 = two.forward_features(x), one.forward_features(x)
            assert tuple(f1.shape[-2:]) == (h // 16, w // 16) and tuple(f2.shape[-2:]) == (h // 32, w // 32)
            pre = one.stages[3].downsample[0](one.stages[2](one.stages[1](one.stages[0](one.stem(x)))))
            weight, bias = down.weight, down.bias
            unpadded = F.conv2d(pre, weight, bias, stride=1)  # the plain stride change: one row and column short
            assert tuple(unpadded.shape[-2:]) == (h // 16 - 1, w // 16 - 1)
            torch.testing.assert_close(down(pre), F.conv2d(F.pad(pre, (0, 1, 0, 1)), weight, bias, stride=1))
    assert "final map 16x8 at 256x128, 8x4 with last stride 2" in describe_encoder("convnext_atto", 1, (256, 128))


# --------------------------------------------------------------------------------------------- through the builders
def _cfg(method: str, *extra: str):
    opts = ["model.method", method, "model.backbone", "vit_tiny_patch16_224", "model.pretrained", "False",
            "data.height", str(H), "data.width", str(W), *extra]
    return load_config(None, opts)


@pytest.mark.parametrize("method, extra", [
    ("vd", ()),
    ("bnneck", ()),
    ("agw", ("agw.non_local", "[0, 0, 0, 0]", "agw.gem", "False")),
])
def test_one_training_step_through_the_builders(method, extra):
    cfg = _cfg(method, *extra)
    torch.manual_seed(0)
    model = builders.build_model(cfg, num_classes=4)
    criterion = builders.build_criterion(cfg, 4, model)
    optimizer, _ = builders.build_optim(cfg, model, criterion)
    x = _x(8, seed=5)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    is_ir = torch.tensor([False, True] * 4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    total, terms = criterion(model(x, is_ir), pids)
    assert torch.isfinite(total) and terms
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any("blocks.11" in n for n in moved) and any("patch_embed" in n for n in moved)
    model.eval()
    with torch.no_grad():
        feats = model(x, is_ir)
    assert feats.shape == (8, model.feature_dim())


def test_agw_config_with_non_local_blocks_and_a_transformer_is_a_config_error():
    with pytest.raises(ConfigError, match="agw.non_local"):
        builders.build_model(_cfg("agw"), num_classes=4)
