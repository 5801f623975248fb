"""The torchreid shim: both import layouts, idempotent registration, checkpoint loading errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

UPSTREAM_SIM = textwrap.dedent(
    """
    import sys
    import torchreid.reid as R  # load the registry package fully first

    # Re-expose it the way upstream torchreid 1.4 is laid out: `torchreid` *is* the package with data/models/...,
    # and there is no `torchreid.reid`.
    for k in list(sys.modules):
        if k == "torchreid" or k.startswith("torchreid."):
            del sys.modules[k]
    sys.modules["torchreid"] = R

    class NoReid:
        def find_spec(self, name, path=None, target=None):
            if name == "torchreid.reid":
                raise ModuleNotFoundError("No module named 'torchreid.reid'")
            return None

    sys.meta_path.insert(0, NoReid())
    import vdreid
    from vdreid import compat

    assert compat.TORCHREID_LAYOUT == "torchreid", compat.TORCHREID_LAYOUT
    assert compat.models is R.models and compat.data is R.data
    import torchreid
    m = torchreid.models.build_model("vd_resnet18", num_classes=5, pretrained=False)
    assert type(m).__name__ == "VDNet"
    assert "sysu_mm01" in getattr(R.data.datasets, "__image_datasets")
    print("upstream-layout-ok")
    """
)


class Evil:
    """A module-level class: picklable, but not on weights_only's allow-list."""


def test_upstream_layout_is_supported():
    r = subprocess.run([sys.executable, "-c", UPSTREAM_SIM], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "upstream-layout-ok" in r.stdout


def test_registry_layout_and_idempotent_registration():
    import importlib

    import vdreid
    from vdreid import compat

    assert compat.TORCHREID_LAYOUT == "torchreid.reid"
    importlib.reload(vdreid)  # a second registration must not raise
    vdreid.register_datasets()
    vdreid.register_models()
    import torchreid

    assert "sysu_mm01" in compat._image_dataset_registry()
    assert "vd_resnet50" in compat._model_registry()
    assert torchreid.models.build_model is compat.models.build_model


def test_load_checkpoint_errors(tmp_path):
    from vdreid import compat

    with pytest.raises(ValueError, match="empty"):
        compat.load_checkpoint("")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        compat.load_checkpoint(str(tmp_path / "nope.pth"))
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="garbage.pth"):
        compat.load_checkpoint(str(bad))

    evil = tmp_path / "evil.pth"
    torch.save({"obj": Evil()}, evil)  # arbitrary pickled objects are refused by weights_only=True
    with pytest.raises(RuntimeError, match="weights_only=True"):
        compat.load_checkpoint(str(evil))
    ok = tmp_path / "ok.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, ok)
    assert compat.load_checkpoint(str(ok))["epoch"] == 3


# ------------------------------------------------------------------------------------- torchreid entry points
UPSTREAM_INTEROP = UPSTREAM_SIM[: UPSTREAM_SIM.index("import vdreid")] + textwrap.dedent(
    """
    import importlib
    from types import SimpleNamespace

    import torchreid
    import vdreid
    from vdreid import compat
    from vdreid.errors import ConfigError

    assert compat.TORCHREID_LAYOUT == "torchreid", compat.TORCHREID_LAYOUT
    for _ in range(2):  # patched at import, and again (not nested) after a reload of compat
        for owner, attr in [(torchreid.engine.ImageSoftmaxEngine, "__init__"), (torchreid.engine.Engine, "test"),
                            (torchreid.utils.FeatureExtractor, "__call__")]:
            fn = owner.__dict__[attr]
            assert fn.__wrapped__ is fn.__vdreid_original__, (owner, attr)
            assert fn.__vdreid_original__.__module__.split(".")[0] == "torchreid", (owner, attr)
        model = torchreid.models.build_model("agw_resnet18", 4, pretrained=False)
        try:
            torchreid.engine.ImageTripletEngine(SimpleNamespace(), model, None, use_gpu=False)
            raise SystemExit("AGW was not refused")
        except ConfigError as exc:
            assert "vdreid.engine.VIEngine" in str(exc), exc
        importlib.reload(compat)
    print("upstream-interop-ok")
    """
)


def test_torchreid_patches_in_the_upstream_layout():
    r = subprocess.run([sys.executable, "-c", UPSTREAM_INTEROP], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "upstream-interop-ok" in r.stdout


def test_torchreid_patches_are_installed_once():
    import importlib

    from vdreid import compat, interop

    targets = [(compat.engine.ImageSoftmaxEngine, "__init__"), (compat.engine.ImageTripletEngine, "__init__"),
               (compat.engine.VideoSoftmaxEngine, "__init__"), (compat.engine.VideoTripletEngine, "__init__"),
               (compat.Engine, "test"), (compat.utils.FeatureExtractor, "__init__"),
               (compat.utils.FeatureExtractor, "__call__")]
    originals = [owner.__dict__[attr].__vdreid_original__ for owner, attr in targets]
    interop.install_torchreid_patches()
    importlib.reload(compat)
    # the shim is a leaf: the wrappers live in interop (not reloaded here: other tests hold its warning class)
    interop.install_torchreid_patches()
    for (owner, attr), original in zip(targets, originals):
        fn = owner.__dict__[attr]
        assert fn.__vdreid_original__ is original and fn.__wrapped__ is original, (owner, attr)
        assert original.__module__.split(".")[0] == "torchreid", (owner, attr)
