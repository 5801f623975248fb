"""CrossModalDataManager and the torchreid registrations."""

from __future__ import annotations

import pytest
import torch
import vdreid
from vdreid import compat
from vdreid.data import SYSUMM01, CrossModalDataManager, RegDB


def make(root, **kw):
    base = dict(root=root, height=32, width=16, workers=0, num_ids=3, num_instances=2, batch_size_test=8)
    base.update(kw)
    return CrossModalDataManager(**base)


def test_registration_is_idempotent():
    vdreid.register_datasets()
    vdreid.register_datasets()
    reg = compat._image_dataset_registry()
    for name, cls in vdreid.data.DATASET_REGISTRY.items():
        assert reg[name] is cls
    assert reg["sysu_mm01"] is SYSUMM01 and reg["regdb"] is RegDB


def test_plain_torchreid_datamanager_with_defaults(sysu_root):
    dm = compat.ImageDataManager(root=sysu_root, sources="sysu_mm01")
    ds = dm.train_loader.dataset
    assert isinstance(ds, SYSUMM01) and ds.protocol.name == "sysu/ir2vis/all/single-shot/agw/10 trials"
    item = ds[0]
    assert item["img"].shape == (3, 256, 128)


def test_train_loader_batches(sysu_root):
    dm = make(sysu_root, sources="sysu_mm01")
    assert dm.train_loader.batch_size == 12 and dm.train_loader.drop_last
    assert dm.train_ir_camids == frozenset({2, 5}) == dm.ir_camids_of("sysu_mm01")
    assert dm.num_train_pids == SYSUMM01(sysu_root, verbose=False).num_train_pids
    n = 0
    for batch in dm.train_loader:
        assert batch["img"].shape == (12, 3, 32, 16)
        assert batch["pid"].unique().numel() == 3
        is_ir = torch.isin(batch["camid"], torch.tensor([2, 5]))
        assert int(is_ir.sum()) == 6
        for p in batch["pid"].unique():
            assert int(is_ir[batch["pid"] == p].sum()) == 2
        n += 1
    assert n == len(dm.train_loader) > 0
    # two passes differ (the sampler advances its epoch), and set_epoch replays a pass
    dm.train_sampler.set_epoch(0)
    first = list(dm.train_sampler)
    assert list(dm.train_sampler) != first
    dm.train_sampler.set_epoch(0)
    assert list(dm.train_sampler) == first


def test_test_loaders_and_protocols(sysu_root, regdb_root):
    dm = make(sysu_root, sources="sysu_mm01", targets=["sysu_mm01", "sysu_mm01_indoor"])
    ref = SYSUMM01(sysu_root, search_mode="indoor", verbose=False)
    assert dm.test_dataset["sysu_mm01_indoor"]["gallery"] == ref.gallery
    assert dm.test_dataset["sysu_mm01_indoor"]["query"] == ref.query
    assert dm.protocols["sysu_mm01_indoor"].name == ref.protocol.name
    q = next(iter(dm.test_loader["sysu_mm01"]["query"]))
    assert q["img"].shape[1:] == (3, 32, 16) and set(q["camid"].tolist()) <= {2, 5}
    assert len(dm.test_loader["sysu_mm01"]["gallery"].dataset) == len(SYSUMM01(sysu_root, verbose=False).gallery)
    assert dm.val_protocols == {}
    qf, gf = dm.fetch_test_loaders("sysu_mm01")
    assert qf == dm.test_dataset["sysu_mm01"]["query"]


def test_dataset_kwargs_flat_and_per_name(sysu_root):
    dm = make(sysu_root, sources="sysu_mm01", dataset_kwargs={"search_mode": "indoor", "shots": 10})
    assert dm.protocols["sysu_mm01"].name == "sysu/ir2vis/indoor/multi-shot/agw/10 trials"
    dm = make(sysu_root, sources="sysu_mm01", targets=["sysu_mm01", "sysu_mm01_indoor"],
              dataset_kwargs={"sysu_mm01_indoor": {"num_trials": 2}})
    assert dm.protocols["sysu_mm01"].num_trials == 10 and dm.protocols["sysu_mm01_indoor"].num_trials == 2


def test_val_protocol_loaders(sysu_root):
    dm = make(sysu_root, sources="sysu_mm01", dataset_kwargs={"val_for_selection": True})
    ref = SYSUMM01(sysu_root, val_for_selection=True, verbose=False)
    assert dm.num_train_pids == ref.num_train_pids
    assert dm.val_protocols["sysu_mm01"].name == ref.val_protocol.name
    assert dm.val_dataset["sysu_mm01"]["gallery"] == ref.val_gallery
    batch = next(iter(dm.val_loader["sysu_mm01"]["query"]))
    assert set(batch["pid"].tolist()) <= {q[1] for q in ref.val_query}
    assert len(dm.val_loader["sysu_mm01"]["gallery"].dataset) == len(ref.val_gallery)
    # the test loaders still serve the test split
    assert len(dm.test_loader["sysu_mm01"]["query"].dataset) == len(ref.query)


def test_regdb_and_multi_source(sysu_root, regdb_root, tmp_path):
    import os

    os.symlink(os.path.join(sysu_root, "SYSU-MM01"), tmp_path / "SYSU-MM01")
    os.symlink(os.path.join(regdb_root, "RegDB"), tmp_path / "RegDB")
    dm = make(str(tmp_path), sources="regdb", targets=["regdb", "regdb_t2v"], dataset_kwargs={"regdb": {"trial": 3}})
    assert dm.protocols["regdb"].name == "regdb/vis2ir/trial-3"
    assert dm.protocols["regdb_t2v"].name == "regdb/ir2vis/trial-1"
    assert dm.train_ir_camids == frozenset({1})
    assert dm.num_train_pids == RegDB(str(tmp_path), trial=3, verbose=False).num_train_pids
    # two sources: torchreid offsets RegDB's camids by SYSU's 6 cameras, so thermal RegDB images get camid 7
    dm = make(str(tmp_path), sources=["sysu_mm01", "regdb"], targets="regdb")
    assert dm.train_ir_camids == frozenset({2, 5, 7})
    for path, _, camid, _ in dm.train_loader.dataset.train:
        assert (camid in dm.train_ir_camids) == ("Thermal" in path or "/cam3/" in path or "/cam6/" in path)


def test_bad_arguments(sysu_root):
    with pytest.raises(ValueError, match=r"\['serch_mode'\] are not options of SYSUMM01"):
        make(sysu_root, sources="sysu_mm01", dataset_kwargs={"serch_mode": "indoor"})
    with pytest.raises(ValueError, match="batch_size_train=32 but num_ids \\* 2 \\* num_instances = 12"):
        make(sysu_root, sources="sysu_mm01", batch_size_train=32)
    with pytest.raises(ValueError, match="unknown dataset 'sysu'"):
        make(sysu_root, sources="sysu")
    with pytest.raises(TypeError, match="bogus"):
        make(sysu_root, sources="sysu_mm01", bogus=1)
    with pytest.raises(ValueError, match="search_mode"):
        make(sysu_root, sources="sysu_mm01", dataset_kwargs={"search_mode": "outdoor"})
    with pytest.warns(UserWarning, match="RandomIdentitySampler"):
        make(sysu_root, sources="sysu_mm01", train_sampler="RandomIdentitySampler")


def test_views_batches_and_epoch_length(sysu_root):
    from vdreid.errors import ConfigError

    plain = make(sysu_root, sources="sysu_mm01")
    dm = make(sysu_root, sources="sysu_mm01", visible_views=["channel_exchange:1"], infrared_views=[""])
    P, K = 3, 2
    assert dm.train_sampler.views == (2, 2)
    assert dm.train_loader.batch_size == P * K * 4 == 24 and dm.train_loader.drop_last
    assert len(dm.train_loader) == len(plain.train_loader)  # views add tensors, not images drawn
    n = 0
    for batch in dm.train_loader:
        assert batch["img"].shape == (24, 3, 32, 16)
        is_ir = torch.isin(batch["camid"], torch.tensor(sorted(dm.train_ir_camids)))
        for j in range(P):
            blk = slice(j * 4 * K, (j + 1) * 4 * K)
            assert batch["pid"][blk].unique().numel() == 1
            assert is_ir[blk].tolist() == [False] * (2 * K) + [True] * (2 * K)
            assert batch["view"][blk].tolist() == [0] * K + [1] * K + [0] * K + [1] * K
            paths = batch["impath"][blk]
            assert paths[:K] == paths[K : 2 * K] and paths[2 * K : 3 * K] == paths[3 * K :]
            second = batch["img"][blk][K : 2 * K]  # the visible view 1: channel-exchanged
            assert torch.equal(second[:, 0], second[:, 1]) and torch.equal(second[:, 1], second[:, 2])
        n += 1
    assert n == len(dm.train_loader) > 0
    with pytest.raises(ValueError, match=r"batch_size_train=12 but num_ids \* 3 views \* num_instances = 18"):
        make(sysu_root, sources="sysu_mm01", visible_views=[""], batch_size_train=12)
    with pytest.raises(ConfigError, match=r"data.infrared_views\[0\]: unknown transform 'flip'"):
        make(sysu_root, sources="sysu_mm01", infrared_views=["flip"])


def test_resize_interpolation_reaches_train_and_test_transforms(sysu_root):
    from PIL import Image
    from torchvision import transforms as T
    from vdreid.errors import ConfigError

    img = Image.new("RGB", (23, 57))
    img.putdata([(i % 251, (7 * i) % 253, (13 * i) % 255) for i in range(23 * 57)])
    norm = T.Compose([T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    plain = make(sysu_root, sources="sysu_mm01")
    lanczos = make(sysu_root, sources="sysu_mm01", resize_interpolation="lanczos")
    assert torch.equal(lanczos.transform_te(img), norm(img.resize((16, 32), Image.LANCZOS)))
    assert torch.equal(plain.transform_te(img), norm(img.resize((16, 32), Image.BILINEAR)))
    assert lanczos.transform_tr.steps[0].fn.interpolation == T.InterpolationMode.LANCZOS
    assert plain.transform_tr.steps[0].fn.interpolation == T.InterpolationMode.BILINEAR
    gallery = next(iter(lanczos.test_loader["sysu_mm01"]["gallery"]))
    path = gallery["impath"][0]
    assert torch.equal(gallery["img"][0], norm(Image.open(path).convert("RGB").resize((16, 32), Image.LANCZOS)))
    with pytest.raises(ConfigError, match="resize_interpolation: 'nearest'"):
        make(sysu_root, sources="sysu_mm01", resize_interpolation="nearest")
