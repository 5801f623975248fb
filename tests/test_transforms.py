"""Train transforms by name (vdreid.data.transforms): torchreid parity, CAJ's channel augmentation, modality routing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from vdreid import compat
from vdreid.data import SYSUMM01, CrossModalDataManager
from vdreid.data.transforms import (
    ChannelAdapGray,
    ChannelExchange,
    ModalityTransformDataset,
    build_train_transform,
    parse_names,
)
from vdreid.errors import ConfigError


def pil(seed: int = 0, h: int = 40, w: int = 20) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def both(fn_a, fn_b, img, seed: int):
    """Outputs of two pipelines on the same image under the same Python and torch seeds."""
    random.seed(seed)
    torch.manual_seed(seed)
    a = fn_a(img)
    random.seed(seed)
    torch.manual_seed(seed)
    return a, fn_b(img)


@pytest.mark.parametrize("names", [["random_flip"], ["random_flip", "random_erase"], ["random_crop", "color_jitter"],
                                   ["random_flip", "random_crop", "random_erase"]])
def test_torchreid_names_give_torchreid_pipeline(names):
    ref, _ = compat.data.transforms.build_transforms(32, 16, transforms=list(names))
    ours = build_train_transform(32, 16, names)
    assert not ours.needs_modality
    for seed in range(12):
        a, b = both(ref, ours, pil(seed), seed)
        assert torch.equal(a, b)


def test_parse_names_and_errors():
    assert parse_names(["Random_Gray:0.25", "pad_crop:3", "caj"]) == {"random_gray": 0.25, "pad_crop": 3.0, "caj": None}
    with pytest.raises(ConfigError, match="did you mean 'channel_exchange'"):
        parse_names(["chanel_exchange"])
    with pytest.raises(ConfigError, match="probability in"):
        parse_names(["random_gray:2"])
    with pytest.raises(ConfigError, match="takes no number"):
        parse_names(["random_flip:0.3"])
    with pytest.raises(ConfigError, match="whole number of pixels"):
        parse_names(["pad_crop:1.5"])
    with pytest.raises(ConfigError, match="must be a number"):
        parse_names(["random_gray:x"])


def test_channel_exchange_copies_one_uniform_channel():
    x = torch.randn(3, 6, 4)
    random.seed(0)
    counts = [0, 0, 0]
    for _ in range(600):
        y = ChannelExchange(p=1.0)(x)
        matches = [c for c in range(3) if all(torch.equal(y[k], x[c]) for k in range(3))]
        assert len(matches) == 1
        counts[matches[0]] += 1
    # binomial(600, 1/3): mean 200, std 11.5
    assert all(150 < c < 250 for c in counts), counts
    assert torch.equal(ChannelExchange(p=0.0)(x), x)
    changed = sum(not torch.equal(ChannelExchange(p=0.5)(x), x) for _ in range(600))
    assert 240 < changed < 360  # binomial(600, 0.5): std 12


def caj_adap_gray_reference(img: torch.Tensor, probability: float) -> torch.Tensor:
    """CAJ's ChannelAdapGray (ICCV21_CAJ/ChannelAug.py) restated: in-place channel writes on a copy."""
    img = img.clone()
    idx = random.randint(0, 3)
    if idx == 0:
        img[1, :, :] = img[0, :, :]
        img[2, :, :] = img[0, :, :]
    elif idx == 1:
        img[0, :, :] = img[1, :, :]
        img[2, :, :] = img[1, :, :]
    elif idx == 2:
        img[0, :, :] = img[2, :, :]
        img[1, :, :] = img[2, :, :]
    else:
        if random.uniform(0, 1) > probability:
            img = img
        else:
            tmp_img = 0.2989 * img[0, :, :] + 0.5870 * img[1, :, :] + 0.1140 * img[2, :, :]
            img[0, :, :] = tmp_img
            img[1, :, :] = tmp_img
            img[2, :, :] = tmp_img
    return img


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_channel_adap_gray_matches_caj(p):
    x = torch.randn(3, 5, 4)
    outcomes = set()
    for seed in range(80):
        random.seed(seed)
        ref = caj_adap_gray_reference(x, p)
        random.seed(seed)
        ours = ChannelAdapGray(p)(x)
        assert torch.equal(ours, ref)
        outcomes.add(ref.sum().item())
    assert len(outcomes) == (4 if p == 0.0 else 5 if p == 0.5 else 4)  # R, G, B copies, gray and/or unchanged


def test_modality_routing_and_missing_modality():
    t = build_train_transform(32, 16, ["channel_exchange:1", "channel_adap_gray:1"])
    assert t.needs_modality
    with pytest.raises(TypeError, match="is_ir"):
        t(pil())
    plain = build_train_transform(32, 16, [])
    for seed in range(20):
        img = pil(seed)
        vis = t(img, False)
        assert torch.equal(vis[0], vis[1]) and torch.equal(vis[1], vis[2])  # exchanged
        random.seed(seed)
        ir = t(img, True)
        random.seed(seed)
        ref = caj_adap_gray_reference(plain(img), 1.0)  # infrared: CAJ's adaptive gray only
        assert torch.equal(ir, ref)
    caj = build_train_transform(32, 16, ["caj"])
    assert [s.name for s in caj.steps][-3:] == ["channel_erase", "channel_exchange", "channel_adap_gray"]


def test_pad_crop_is_a_window_of_the_padded_image():
    img = pil(3, 32, 16)
    plain = build_train_transform(32, 16, [])(img)
    t = build_train_transform(32, 16, ["pad_crop:3"])
    padded = torch.nn.functional.pad(plain, (3, 3, 3, 3), value=0.0)
    # the zero padding is normalised like the image: pad in pixel space, i.e. with (0 - mean) / std
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    border = torch.ones_like(padded, dtype=torch.bool)
    border[:, 3:-3, 3:-3] = False
    padded = torch.where(border, (0 - mean) / std, padded)
    offsets = set()
    for seed in range(30):
        torch.manual_seed(seed)
        out = t(img)
        assert out.shape == (3, 32, 16)
        hits = [(i, j) for i in range(7) for j in range(7) if torch.allclose(out, padded[:, i : i + 32, j : j + 16])]
        assert hits, f"seed {seed}: output is no window of the padded image"
        offsets.add(hits[0])
    assert len(offsets) > 5
    assert [s.name for s in build_train_transform(288, 144, ["pad_crop"]).steps][1] == "pad_crop"
    assert build_train_transform(288, 144, ["pad_crop"]).steps[1].fn.transforms[0].padding == 10  # AGW's 10 px
    assert build_train_transform(64, 32, ["pad_crop"]).steps[1].fn.transforms[0].padding == 2


def test_random_gray_is_torchvision_grayscale():
    t = build_train_transform(32, 16, ["random_gray:1"])
    out = t(pil(1))
    assert torch.allclose(out[0] * 0.229 + 0.485, out[1] * 0.224 + 0.456, atol=1e-6)


def test_datamanager_passes_each_items_modality(sysu_root):
    dm = CrossModalDataManager(root=sysu_root, sources="sysu_mm01", height=32, width=16, workers=0, num_ids=3,
                               num_instances=2, batch_size_test=8, transforms=["channel_exchange:1"])
    assert isinstance(dm.train_loader.dataset, ModalityTransformDataset)
    assert dm.train_loader.dataset.num_train_pids == dm.num_train_pids  # attributes reach the wrapped dataset
    batch = next(iter(dm.train_loader))
    is_ir = torch.isin(batch["camid"], torch.tensor(sorted(dm.train_ir_camids)))
    imgs = batch["img"]
    equal = (imgs[:, 0] == imgs[:, 1]).flatten(1).all(1) & (imgs[:, 1] == imgs[:, 2]).flatten(1).all(1)
    assert equal[~is_ir].all(), "visible images: one channel copied to all three"
    assert not equal[is_ir].any(), "infrared images untouched (three normalised channels differ)"
    plain = CrossModalDataManager(root=sysu_root, sources="sysu_mm01", height=32, width=16, workers=0, num_ids=3,
                                  num_instances=2, batch_size_test=8)
    assert isinstance(plain.train_loader.dataset, SYSUMM01)  # no modality-specific step: no wrapper
    with pytest.raises(ConfigError, match="data.transforms"):
        CrossModalDataManager(root=sysu_root, sources="sysu_mm01", height=32, width=16, workers=0, num_ids=3,
                              num_instances=2, batch_size_test=8, transforms=["random_flp"])


def test_seeded_keys_repeat_the_augmentation(sysu_root):
    ds = SYSUMM01(sysu_root, verbose=False)
    ds.transform = None
    t = build_train_transform(32, 16, ["random_flip", "pad_crop:2", "random_erase:0.7", "caj"])
    wrapped = ModalityTransformDataset(ds, t, ds.ir_camids)
    a, b = wrapped[(0, 7)]["img"], wrapped[(0, 7)]["img"]
    assert torch.equal(a, b)
    assert any(not torch.equal(a, wrapped[(0, s)]["img"]) for s in range(8, 14))
    state = random.getstate()
    wrapped[(1, 3)]
    assert random.getstate() == state  # the caller's random stream is left as it was


# ------------------------------------------------------------------------------------------ views
def test_view_names_add_or_reweight_the_base_names():
    from vdreid.data.transforms import view_names

    base = ["random_flip", "channel_exchange:0.5", "pad_crop"]
    assert view_names(base, "channel_exchange:1", "k") == ["random_flip", "channel_exchange:1", "pad_crop"]
    assert view_names(base, "random_gray:0.3+channel_erase", "k") == base + ["random_gray:0.3", "channel_erase"]
    assert view_names(base, "", "k") == base  # a second plain view
    assert view_names("random_flip", " Random_Gray ", "k") == ["random_flip", "Random_Gray"]
    with pytest.raises(ConfigError, match=r"data.visible_views\[1\]: unknown transform 'chanel_exchange'"):
        view_names(base, "random_flip+chanel_exchange", "data.visible_views[1]")
    with pytest.raises(ConfigError, match=r"data.infrared_views\[0\].*probability"):
        view_names(base, "channel_adap_gray:2", "data.infrared_views[0]")


def test_each_view_runs_its_own_pipeline_under_its_seed(sysu_root):
    from vdreid.data.transforms import build_view_transforms, seeded

    ds = SYSUMM01(sysu_root, verbose=False)
    ds.transform = None
    names = ["random_flip", "pad_crop:2", "channel_erase", "channel_adap_gray"]
    base = build_train_transform(32, 16, names)
    vis_views = build_view_transforms(32, 16, names, ["channel_exchange:1", ""], "data.visible_views")
    assert [s.name for s in vis_views[0].steps][-2:] == ["channel_exchange", "channel_adap_gray"]
    assert [s.name for s in vis_views[1].steps] == [s.name for s in base.steps]
    wrapped = ModalityTransformDataset(ds, base, ds.ir_camids, view_transforms={"visible": vis_views})
    i_vis = next(k for k, it in enumerate(ds.train) if it[2] not in ds.ir_camids)
    i_ir = next(k for k, it in enumerate(ds.train) if it[2] in ds.ir_camids)
    raw = ds[i_vis]["img"]
    for seed in range(6):
        v0, v1, v2 = (wrapped[(i_vis, seed, v)] for v in range(3))
        assert [v0["view"], v1["view"], v2["view"]] == [0, 1, 2]
        assert torch.equal(v0["img"], wrapped[(i_vis, seed)]["img"])  # view 0 is the (index, seed) item
        with seeded(seed):
            expect = vis_views[0](raw, False)
        assert torch.equal(v1["img"], expect)
        img = v1["img"]
        assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # always channel-exchanged
        with seeded(seed):
            assert torch.equal(v2["img"], base(raw, False))  # the plain second view: view 0's pipeline
        assert "view" not in wrapped[(i_vis, seed)]
    with pytest.raises(IndexError, match="view 1 of an infrared image: only 0 extra view"):
        wrapped[(i_ir, 0, 1)]
    with pytest.raises(IndexError, match="view 3 of a visible image: only 2 extra view"):
        wrapped[(i_vis, 0, 3)]


# ------------------------------------------------------------------------------------------ resize filter
def test_resize_interpolation_lanczos_is_pils_antialias():
    from vdreid.data.transforms import build_test_transform

    img = pil(3, h=75, w=31)
    norm = T.Compose([T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    for mode, pil_filter in (("lanczos", Image.LANCZOS), ("bilinear", Image.BILINEAR)):
        expect = norm(img.resize((16, 40), pil_filter))  # PIL's (width, height)
        assert torch.equal(build_test_transform(40, 16, interpolation=mode)(img), expect)
        train = build_train_transform(40, 16, [], interpolation=mode)  # resize, tensor, normalisation only
        assert torch.equal(train(img), expect)
    a = build_test_transform(40, 16, interpolation="lanczos")(img)
    b = build_test_transform(40, 16)(img)
    assert not torch.equal(a, b)  # the two filters give different pixels
    # the default is torchreid's test transform
    _, te = compat.build_transforms(40, 16)
    assert torch.equal(te(img), b)
    with pytest.raises(ConfigError, match=r"resize_interpolation: 'cubic' is not one of \['bilinear', 'lanczos'\]"):
        build_train_transform(40, 16, interpolation="cubic")
