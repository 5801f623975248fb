"""torchreid's own entry points with vdreid's parts, used as a torchreid user would: its engines refuse VD/AGW at
once and train the BNNeck baseline, its Engine.test() warns on vdreid datasets whose protocol it does not compute
(and stays quiet where it computes it: RegDB, checked against the protocol evaluator), and its FeatureExtractor gives
the features `vdreid test` extracts from vdreid checkpoints."""

from __future__ import annotations

import argparse
import logging
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchreid.reid as torchreid  # the registry layout (test_compat.py covers upstream's)
import vdreid  # noqa: F401  (installs the registrations and the torchreid patches)
from PIL import Image
from torchvision import transforms as T
from vdreid import builders
from vdreid.config import load_config
from vdreid.data import CrossModalDataManager
from vdreid.errors import CheckpointMismatchError, ConfigError, EvaluationInputError, VDReIDError
from vdreid.evaluation import extract_features, run_protocol
from vdreid.interop import TorchreidProtocolWarning

ENGINES = ("ImageSoftmaxEngine", "ImageTripletEngine", "VideoSoftmaxEngine", "VideoTripletEngine")


def _x(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 32, 16, generator=torch.Generator().manual_seed(n))


@pytest.fixture(scope="module")
def vi_models():
    torch.manual_seed(0)
    return {name: torchreid.models.build_model(name, 4, pretrained=False) for name in ("vd_resnet18", "agw_resnet18")}


# ------------------------------------------------------------------------------------------------ engines
@pytest.mark.parametrize("engine_name", ENGINES)
@pytest.mark.parametrize("model_name", ["vd_resnet18", "agw_resnet18"])
def test_torchreid_engines_refuse_vd_and_agw_at_once(vi_models, engine_name, model_name):
    model = vi_models[model_name]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # an empty data manager: the refusal comes before torchreid reads anything from it
    with pytest.raises(ConfigError) as err:
        getattr(torchreid.engine, engine_name)(SimpleNamespace(), model, opt, use_gpu=False)
    msg = str(err.value)
    assert isinstance(err.value, VDReIDError)
    assert f"torchreid.engine.{engine_name} cannot train {type(model).__name__}" in msg
    for needle in ("vdreid.engine.VIEngine", "vdreid train", "modality", "criterion", "bnneck_resnet18"):
        assert needle in msg, needle
    with pytest.raises(ConfigError, match="cannot train"):  # keywords and a DataParallel wrapper too
        getattr(torchreid.engine, engine_name)(datamanager=SimpleNamespace(), model=torch.nn.DataParallel(model),
                                               optimizer=opt, use_gpu=False)


@pytest.mark.parametrize("engine_name", ["ImageSoftmaxEngine", "ImageTripletEngine"])
def test_torchreid_engines_train_bnneck_one_step(engine_name):
    loss = "softmax" if engine_name == "ImageSoftmaxEngine" else "triplet"
    torch.manual_seed(0)
    model = torchreid.models.build_model("bnneck_resnet18", 4, loss=loss, pretrained=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dm = SimpleNamespace(train_loader=None, test_loader=None, num_train_pids=4)
    engine = getattr(torchreid.engine, engine_name)(dm, model, opt, use_gpu=False)
    before = model.encoder.classifier.weight.detach().clone()
    model.train()
    summary = engine.forward_backward({"img": _x(8), "pid": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])})
    assert summary and all(np.isfinite(float(v)) for v in summary.values())
    assert not torch.equal(before, model.encoder.classifier.weight)


@pytest.mark.parametrize("engine_name,loss", [("ImageSoftmaxEngine", "triplet"), ("ImageTripletEngine", "softmax"),
                                              ("ImageSoftmaxEngine", "vdreid"), ("VideoTripletEngine", "vdreid")])
def test_bnneck_training_output_must_be_the_engines(engine_name, loss):
    model = torchreid.models.build_model("bnneck_resnet18", 4, loss=loss, pretrained=False)
    want = "triplet" if "Triplet" in engine_name else "softmax"
    with pytest.raises(ConfigError, match=rf"takes the '{want}' training output .* loss='{loss}'.* loss='{want}'"):
        getattr(torchreid.engine, engine_name)(SimpleNamespace(), model, None, use_gpu=False)


def test_an_engine_with_its_own_step_is_not_refused(vi_models):
    class ModalityEngine(torchreid.engine.ImageSoftmaxEngine):
        def forward_backward(self, data):  # a user's step that passes the modality itself
            return {}

    dm = SimpleNamespace(train_loader=None, test_loader=None, num_train_pids=4)
    model = vi_models["agw_resnet18"]
    engine = ModalityEngine(dm, model, torch.optim.SGD(model.parameters(), lr=0.1), use_gpu=False)
    assert engine.model is model


# ------------------------------------------------------------------------------------------------ Engine.test()
def _bnneck_engine(dm):
    torch.manual_seed(0)
    model = torchreid.models.build_model("bnneck_resnet18", dm.num_train_pids, loss="softmax", pretrained=False)
    return torchreid.engine.ImageSoftmaxEngine(dm, model, torch.optim.SGD(model.parameters(), lr=0.1), use_gpu=False)


def _check_sysu_warning(record, caplog, protocol, num_gallery_union):
    texts = [str(w.message) for w in record if issubclass(w.category, TorchreidProtocolWarning)]
    assert len(texts) == 1, texts
    text = texts[0]
    assert f"protocol '{protocol.name}'" in text
    for needle in ("vdreid.engine.VIEngine", "run_protocol(dataset.protocol", "vdreid test --checkpoint",
                   f"union of the protocol's {protocol.num_trials} gallery trials",
                   "cam3 queries -> cam2 gallery", "identity-deduplicated", "not the protocol's numbers"):
        assert needle in text, needle
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert text in logged and any("printed above are not" in m for m in logged)
    assert num_gallery_union == len(np.unique(np.concatenate(protocol.gallery_trials)))


def test_torchreid_test_warns_on_vdreid_sysu(sysu_root, caplog):
    dm = CrossModalDataManager(root=sysu_root, sources="sysu_mm01", height=32, width=16, workers=0, num_ids=3,
                               num_instances=2, batch_size_test=64,
                               dataset_kwargs={"sysu_mm01": {"num_trials": 3}})
    protocol = dm.protocols["sysu_mm01"]
    assert protocol.num_trials == 3 and protocol.exclude_cam_pairs == ((2, 1),) and protocol.cmc_mode == "dedup"
    engine = _bnneck_engine(dm)
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        rank1 = engine.test()
    assert 0.0 <= float(rank1) <= 1.0  # torchreid still runs and returns its own number
    # the torchreid-facing gallery is every trial's gallery at once
    _check_sysu_warning(record, caplog, protocol, len(dm.test_dataset["sysu_mm01"]["gallery"]))


def test_torchreid_test_warns_with_torchreids_own_data_manager(sysu_root, caplog):
    dm = torchreid.data.ImageDataManager(root=sysu_root, sources="sysu_mm01", height=32, width=16, workers=0,
                                         batch_size_test=64, use_gpu=False)
    loader = dm.test_loader["sysu_mm01"]["gallery"]
    protocol = loader.dataset.protocol
    engine = _bnneck_engine(dm)
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        engine.run(test_only=True)
    _check_sysu_warning(record, caplog, protocol, len(loader.dataset))


def test_torchreid_test_is_quiet_where_it_computes_the_protocol(regdb_root):
    """RegDB: one gallery, no camera rule, standard CMC; torchreid's rank-1 equals the protocol evaluator's."""
    dm = CrossModalDataManager(root=regdb_root, sources="regdb", height=32, width=16, workers=0, num_ids=3,
                               num_instances=2, batch_size_test=64)
    engine = _bnneck_engine(dm)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rank1 = engine.test(dist_metric="euclidean", ranks=[1, 5])  # torchreid prints ranks <= gallery size
    assert not [w for w in record if issubclass(w.category, TorchreidProtocolWarning)]
    loaders, ir = dm.test_loader["regdb"], dm.ir_camids_of("regdb")
    qf, qp, qc, _ = extract_features(engine.model, loaders["query"], "cpu", ir)
    gf, gp, gc, _ = extract_features(engine.model, loaders["gallery"], "cpu", ir)
    rep = run_protocol(dm.protocols["regdb"], qf.numpy(), gf.numpy(), qp, gp, qc, gc, metric="euclidean",
                       backend="torch")
    assert float(rank1) * 100 == pytest.approx(rep.rank1, abs=1e-6)


# ------------------------------------------------------------------------------------------------ FeatureExtractor
def _perturb(model: torch.nn.Module) -> None:
    """Move every weight and BatchNorm statistic away from its initial value (features of a trained-like net)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.add_(0.05 * torch.randn(t.shape, generator=g))


def _write_checkpoint(path, sysu_root, opts: list) -> str:
    """A checkpoint as `vdreid train` writes it (VIEngine.checkpoint_state: state_dict + provenance with the config)."""
    base = ["data.root", sysu_root, "data.sources", ["sysu_mm01"], "data.targets", ["sysu_mm01"],
            "data.height", 32, "data.width", 16, "data.workers", 0, "test.batch_size", 16,
            "model.pretrained", False, "data.sysu.num_trials", 1, "sampler.num_ids", 4, "sampler.num_instances", 2]
    cfg = load_config(None, base + opts)
    dm = builders.build_datamanager(cfg)
    torch.manual_seed(0)
    model = builders.build_model(cfg, dm.num_train_pids)
    _perturb(model)
    prov = {**builders.provenance(cfg), "num_classes": dm.num_train_pids}
    torch.save({"state_dict": model.state_dict(), "config": prov, "epoch": 1}, path)
    return str(path)


def _vdreid_test_features(path: str, sysu_root: str):
    """The features `vdreid test --checkpoint path` extracts: its model rebuild, its loaders, its extraction."""
    from vdreid.cli import _build_for_checkpoint

    args = argparse.Namespace(checkpoint=path, config_file="", opts=["data.root", sysu_root, "data.workers", "0"])
    cfg, dm, model, _ = _build_for_checkpoint(args, [])
    target = list(cfg.data.targets)[0]
    ir = dm.ir_camids_of(target)
    parts = [extract_features(model, dm.test_loader[target][s], "cpu", ir, flip=cfg.test.flip)
             for s in ("query", "gallery")]
    feats = torch.cat([p[0] for p in parts])
    camids = np.concatenate([p[2] for p in parts])
    paths = [x for p in parts for x in p[3]]
    return cfg, feats, paths, [bool(c in ir) for c in camids]


def _torchreid_unpatched(model_name, path, cfg) -> torch.Tensor:
    """torchreid's own FeatureExtractor.__init__ (num_classes=1 preset, matching keys only), same preprocessing."""
    cls = torchreid.utils.FeatureExtractor
    ext = object.__new__(cls)
    cls.__init__.__vdreid_original__(ext, model_name, model_path=path, image_size=(32, 16),
                                     pixel_mean=list(cfg.data.norm_mean), pixel_std=list(cfg.data.norm_std),
                                     device="cpu", verbose=False)
    return ext


@pytest.fixture(scope="module")
def vd_official_ckpt(tmp_path_factory, sysu_root):
    # official routing; the stored config differs from the vd_resnet18 preset (last stride, test feature, flip, norm)
    path = tmp_path_factory.mktemp("vd_official") / "latest.pth"
    return _write_checkpoint(path, sysu_root, [
        "model.method", "vd", "model.name", "vd_resnet18", "vd.routing", "official", "vd.last_stride", 2,
        "vd.feature_mode", "z_concat", "test.flip", True,
        "data.norm_mean", [0.5, 0.4, 0.3], "data.norm_std", [0.2, 0.25, 0.3]])


def test_feature_extractor_vd_official_checkpoint_equals_vdreid_test(vd_official_ckpt, sysu_root):
    cfg, ref, paths, _ = _vdreid_test_features(vd_official_ckpt, sysu_root)
    ext = torchreid.utils.FeatureExtractor("vd_resnet18", model_path=vd_official_ckpt, device="cpu", verbose=False)
    assert ext.model.feature_mode == "z_concat" and ext.vdreid.flip and ext.vdreid.kind == "vdreid"
    feats = ext(paths)  # preprocessing (size, normalisation) from the checkpoint; no modality needed
    assert feats.shape == ref.shape
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ext(paths[:3], modality=[True, False, True]), ref[:3], rtol=1e-4, atol=1e-5)
    # torchreid's own path builds the preset and silently gives other features
    other = _torchreid_unpatched("vd_resnet18", vd_official_ckpt, cfg)(paths)
    assert other.shape != ref.shape or not torch.allclose(other, ref, atol=1e-3)


def test_feature_extractor_vd_modality_routing_needs_modality(tmp_path, sysu_root):
    path = _write_checkpoint(tmp_path / "vd_modality.pth", sysu_root, [
        "model.method", "vd", "model.name", "vd_resnet18", "vd.routing", "modality", "vd.feature_mode", "obs_concat"])
    cfg, ref, paths, is_ir = _vdreid_test_features(path, sysu_root)
    assert any(is_ir) and not all(is_ir)
    ext = torchreid.utils.FeatureExtractor("vd_resnet18", model_path=path, device="cpu", verbose=False)
    with pytest.raises(EvaluationInputError, match=r"obs_concat.*modality=is_ir") as err:
        ext(paths)
    assert "\n" not in str(err.value)
    torch.testing.assert_close(ext(paths, modality=is_ir), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ext(paths, modality=torch.tensor(is_ir).int()), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(EvaluationInputError, match="entries for"):
        ext(paths, modality=is_ir[:-1])
    old = _torchreid_unpatched("vd_resnet18", path, cfg)  # the preset: official routing
    assert old.model.routing == "official" and ext.model.routing == "modality"


def test_feature_extractor_agw_checkpoint_equals_vdreid_test(tmp_path, sysu_root):
    path = _write_checkpoint(tmp_path / "agw.pth", sysu_root, [
        "model.method", "agw", "model.name", "agw_resnet18", "agw.non_local", [0, 1, 1, 0], "agw.gem", False,
        "agw.feature_mode", "pool"])
    cfg, ref, paths, is_ir = _vdreid_test_features(path, sysu_root)
    ext = torchreid.utils.FeatureExtractor("agw_resnet18", model_path=path, device="cpu", verbose=True)
    assert ext.model.non_local_counts == (0, 1, 1, 0) and ext.model.feature_mode == "pool"
    with pytest.raises(EvaluationInputError, match=r"AGWNet \(feature_mode 'pool'\) needs each image's modality"):
        ext(paths)
    torch.testing.assert_close(ext(paths, modality=is_ir), ref, rtol=1e-4, atol=1e-5)
    # a single image as an array, and tensors, go through the same preprocessing as torchreid's
    arr = np.asarray(Image.open(paths[0]).convert("RGB"))
    torch.testing.assert_close(ext(arr, modality=[is_ir[0]]), ref[:1], rtol=1e-4, atol=1e-5)
    # another method's model name is refused; a different image size is used, with a warning
    with pytest.raises(CheckpointMismatchError, match="method 'agw'.*model_name='agw_resnet18'"):
        torchreid.utils.FeatureExtractor("vd_resnet18", model_path=path, device="cpu", verbose=False)
    with pytest.warns(UserWarning, match=r"image_size=\(64, 32\) differs"):
        torchreid.utils.FeatureExtractor("agw_resnet18", model_path=path, image_size=(64, 32), device="cpu",
                                         verbose=False)


def test_feature_extractor_keeps_torchreids_path_for_torchreid_checkpoints(tmp_path):
    torch.manual_seed(0)
    net = torchreid.models.build_model("bnneck_resnet18", 5, loss="softmax", pretrained=False)
    _perturb(net)
    path = tmp_path / "model.pth.tar"
    torch.save({"state_dict": net.state_dict(), "epoch": 3, "rank1": 0.5}, path)  # torchreid's save_checkpoint
    ext = torchreid.utils.FeatureExtractor("bnneck_resnet18", model_path=str(path), image_size=(32, 16),
                                           device="cpu", verbose=True)
    assert not hasattr(ext, "vdreid") and ext.model.encoder.classifier.out_features == 1  # torchreid's preset
    x = _x(4)
    with torch.no_grad():
        ref = net.eval()(x)
    torch.testing.assert_close(ext(x), ref)
    torch.testing.assert_close(ext(x, modality=[0, 1, 0, 1]), ref)  # accepted and ignored by the baseline

    agw = torchreid.models.build_model("agw_resnet18", 5, pretrained=False)
    apath = tmp_path / "agw.pth.tar"
    torch.save({"state_dict": agw.state_dict()}, apath)
    aext = torchreid.utils.FeatureExtractor("agw_resnet18", model_path=str(apath), device="cpu", verbose=True)
    with pytest.raises(EvaluationInputError, match="modality"):
        aext(x)
    is_ir = torch.tensor([False, True, False, True])
    with torch.no_grad():
        torch.testing.assert_close(aext(x, modality=is_ir), agw.eval()(x, modality=is_ir))


def test_vd_test_needs_modality_says_what_the_forward_needs():
    from vdreid.models import build_vd_net

    x = _x(2)
    for routing in ("official", "modality"):
        net = build_vd_net("resnet18", num_classes=3, routing=routing, pretrained=False).eval()
        for mode in net.feature_modes:
            net.feature_mode = mode
            try:
                with torch.no_grad():
                    net(x)
                needed = False
            except ValueError as exc:
                assert "modality" in str(exc)
                needed = True
            assert net.test_needs_modality is needed, (routing, mode)


def test_protocol_differences_name_each_departure():
    from vdreid.data import Protocol
    from vdreid.interop import protocol_differences

    def proto(**kw):
        base = dict(name="p", query=np.arange(4), gallery_trials=[np.arange(6)], cmc_mode="standard")
        return Protocol(**{**base, **kw})

    assert protocol_differences(proto(), 4, 6, [0, 0], [1, 1]) == []  # RegDB's shape: torchreid's own rule
    (d,) = protocol_differences(proto(gallery_trials=[np.arange(3), np.arange(3, 6)]), 4, 6)
    assert "union of the protocol's 2 gallery trials" in d
    (d,) = protocol_differences(proto(gallery_trials=[np.arange(3)]), 4, 6)
    assert "all 6 gallery images instead of the protocol's 3" in d
    (d,) = protocol_differences(proto(query=np.arange(2)), 4, 6)
    assert "query set" in d
    (d,) = protocol_differences(proto(exclude_cam_pairs=((2, 1), (5, 4))), 4, 6)
    assert "cam3 queries -> cam2 gallery, cam6 queries -> cam5 gallery" in d
    (d,) = protocol_differences(proto(cmc_mode="dedup"), 4, 6)
    assert "identity-deduplicated" in d
    (d,) = protocol_differences(proto(remove_same_pid_same_cam=True, physical_camera={9: 0}), 4, 6, [0], [9])
    assert "physical cameras" in d
    (d,) = protocol_differences(proto(), 4, 6, [0, 1], [1, 2])  # shared camera ids, rule off in the protocol
    assert "which the protocol keeps" in d
    assert protocol_differences(proto(remove_same_pid_same_cam=True), 4, 6, [0, 1], [1, 2]) == []


def test_feature_extractor_resizes_with_the_checkpoints_filter(tmp_path, sysu_root):
    """A checkpoint trained with data.resize_interpolation lanczos (CAJ's recipe): FeatureExtractor resizes with the
    same filter as `vdreid test` (the 32x16 images are resized to 40x20, so the filter matters)."""
    path = _write_checkpoint(tmp_path / "caj.pth", sysu_root, [
        "model.method", "caj", "model.name", "caj_resnet18", "caj.non_local", [0, 1, 1, 0],
        "data.height", 40, "data.width", 20, "data.resize_interpolation", "lanczos"])
    cfg, ref, paths, is_ir = _vdreid_test_features(path, sysu_root)
    assert cfg.data.resize_interpolation == "lanczos" and ref.shape[0] == len(paths)
    ext = torchreid.utils.FeatureExtractor("caj_resnet18", model_path=path, device="cpu", verbose=False)
    torch.testing.assert_close(ext(paths, modality=is_ir), ref, rtol=1e-4, atol=1e-5)
    ext.preprocess.transforms[0].interpolation = T.InterpolationMode.BILINEAR  # torchreid's filter: other features
    assert not torch.allclose(ext(paths, modality=is_ir), ref, rtol=1e-4, atol=1e-5)
