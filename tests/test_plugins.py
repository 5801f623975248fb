"""Plug-ins from outside the package (docs/adding-a-method.md): a method (examples/plugin_method.py) trained from a
folder outside the checkout with `--plugin`, tested and exported from its checkpoint; a dataset
(tests/plugins/example_dataset.py) written, trained on and evaluated; installed packages' `vdreid.plugins` entry
points. Each case runs in a subprocess, so the registrations do not leak into other tests."""

from __future__ import annotations

import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
EXAMPLES = osp.join(ROOT, "examples")
PLUGINS = osp.join(ROOT, "tests", "plugins")
TINY = ["train.max_epoch", "1", "sampler.num_ids", "4", "data.workers", "0", "data.height", "32", "data.width",
        "16", "test.visrank", "false"]


def _vdreid(args: list[str], cwd: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "VDREID_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "vdreid", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full)


@pytest.fixture()
def elsewhere(tmp_path) -> str:
    """A folder outside the checkout holding copies of the example plug-in and its config."""
    out = tmp_path / "elsewhere"
    out.mkdir()
    for fn in ("plugin_method.py", "plugin_method.yaml"):
        shutil.copy(osp.join(EXAMPLES, fn), out / fn)
    assert not str(out).startswith(ROOT)
    return str(out)


def test_example_method_trains_tests_and_exports_from_outside_the_checkout(elsewhere, sysu_root):
    run = osp.join(elsewhere, "run")
    r = _vdreid(["train", "--plugin", "plugin_method.py", "--config-file", "plugin_method.yaml", "data.root",
                 sysu_root, "data.save_dir", run, *TINY], cwd=elsewhere)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.load(open(osp.join(run, "results_sysu_mm01.json")))
    assert res["method"] == "center_gem" and res["feature_mode"] == "bn"
    assert any(p.endswith("plugin_method.py") for p in res["plugins"])
    log = [json.loads(ln) for ln in open(osp.join(run, "train_log.jsonl"))]
    assert {"ce", "triplet", "center"} <= set(log[0]), log[0]  # the plug-in's own criterion trained
    # the inherited quickstart's VD keys were reset: they belong to another method
    cfg = open(osp.join(run, "config.yaml")).read()
    assert "method: center_gem" in cfg and "feature_mode: shared_v" not in cfg

    ckpt = osp.join(run, "latest.pth")
    r = _vdreid(["test", "--checkpoint", ckpt, "data.root", sysu_root, "data.save_dir", osp.join(elsewhere, "t")],
                cwd=elsewhere)
    assert r.returncode == 2 and "center_gem" in r.stderr and "--plugin" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    r = _vdreid(["test", "--plugin", "plugin_method.py", "--checkpoint", ckpt, "data.root", sysu_root,
                 "data.save_dir", osp.join(elsewhere, "t")], cwd=elsewhere)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.load(open(osp.join(elsewhere, "t", "results_sysu_mm01.json")))
    assert again["mean"]["mAP"] == pytest.approx(res["mean"]["mAP"], abs=1e-6)
    r = _vdreid(["export", "--plugin", "plugin_method.py", "--checkpoint", ckpt, "--out", "m.onnx"], cwd=elsewhere)
    assert r.returncode == 0, r.stderr[-3000:]
    assert osp.isfile(osp.join(elsewhere, "m.onnx")) and "max |diff|" in r.stdout


def test_a_dataset_from_a_test_local_module(tmp_path):
    plugin = osp.join(PLUGINS, "example_dataset.py")
    data = str(tmp_path / "data")
    r = _vdreid(["make-synthetic", "--plugin", plugin, "--layout", "foldervi", "--preset", "tiny", "--out", data],
                cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert osp.isdir(osp.join(data, "FolderVI", "train"))
    run = str(tmp_path / "run")
    r = _vdreid(["train", "--plugin", plugin, "--config-file", "methods/bnneck_sysu", "data.root", data,
                 "data.sources", "[foldervi]", "data.targets", "[foldervi]", "data.foldervi.max_train_ids", "8",
                 "model.name", "bnneck_resnet18", "model.pretrained", "false", "data.save_dir", run, *TINY],
                cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.load(open(osp.join(run, "results_foldervi.json")))
    assert res["protocol"] == "foldervi/ir2vis/1 trial" and res["synthetic"] is True
    assert res["config"]["data"]["foldervi"]["max_train_ids"] == 8
    # the dataset's own range rule answers for its key
    r = _vdreid(["train", "--plugin", plugin, "--config-file", "methods/bnneck_sysu", "data.foldervi.max_train_ids",
                 "-1"], cwd=str(tmp_path))
    assert r.returncode == 2 and "data.foldervi.max_train_ids" in r.stderr and "Traceback" not in r.stderr


def test_installed_packages_plugins_load_with_import_vdreid(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(osp.join(EXAMPLES, "plugin_method.py"), site / "center_gem_plugin.py")
    (site / "broken_plugin.py").write_text("raise RuntimeError('this plug-in is broken')\n")
    dist = site / "center_gem_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: center-gem-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[vdreid.plugins]\ncenter_gem = center_gem_plugin\nbroken = broken_plugin\n")
    code = textwrap.dedent("""
        import warnings
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import vdreid
            from vdreid import methods, plugins
        print("METHODS", methods.names())
        print("WARN", [str(x.message) for x in w if "broken" in str(x.message)])
        print("LOADED", plugins.loaded())
    """)
    env = {**os.environ, "PYTHONPATH": str(site), "VDREID_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'center_gem'" in r.stdout.split("METHODS", 1)[1].splitlines()[0]
    warn = r.stdout.split("WARN", 1)[1].splitlines()[0]
    assert "broken" in warn and "failed to load" in warn and "RuntimeError" in warn
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**env, "VDREID_NO_PLUGINS": "1"})
    assert "'center_gem'" not in r.stdout.split("METHODS", 1)[1].splitlines()[0]


def test_a_missing_plugin_is_one_line(tmp_path):
    r = _vdreid(["train", "--plugin", "nowhere/missing.py", "--config-file", "quickstart"], cwd=str(tmp_path))
    assert r.returncode == 2 and "missing.py" in r.stderr and "Traceback" not in r.stderr
    r = _vdreid(["train", "--plugin", "no_such_module_xyz", "--config-file", "quickstart"], cwd=str(tmp_path))
    assert r.returncode == 2 and "no_such_module_xyz" in r.stderr and "Traceback" not in r.stderr
