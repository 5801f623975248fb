"""Shipped recipes: name resolution (fast), and a wheel built from the repository working outside the checkout (slow:
runs only with VDREID_SLOW=1, as `.ci/run` does)."""

from __future__ import annotations

import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from vdreid.errors import ConfigError
from vdreid.recipes import configs_dir, list_recipes, published_path, resolve_config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ------------------------------------------------------------------------------------------------- fast
def test_list_recipes_names_every_shipped_config():
    names = list_recipes()
    on_disk = sorted(
        osp.relpath(osp.join(d, f), osp.join(REPO, "configs"))[: -len(".yaml")].replace(os.sep, "/")
        for d, _, fs in os.walk(osp.join(REPO, "configs")) for f in fs if f.endswith(".yaml")
    )
    assert names == [n for n in on_disk if not osp.basename(n).startswith("_")]
    assert {"quickstart", "sysu_all", "official/sysu_all", "official/regdb_v2t"} <= set(names)
    assert "ablation/_base" in list_recipes(include_bases=True) and "ablation/_base" not in names
    assert osp.samefile(configs_dir(), osp.join(REPO, "configs"))
    assert osp.samefile(published_path(), osp.join(REPO, "benchmarks", "published.yaml"))


def test_resolve_config_paths_names_and_errors(tmp_path, monkeypatch):
    own = tmp_path / "mine.yaml"
    own.write_text("train:\n  max_epoch: 3\n")
    monkeypatch.chdir(tmp_path)  # outside the checkout
    assert resolve_config(str(own)) == str(own)
    assert resolve_config("mine.yaml") == str(own)  # an existing relative path wins
    official = osp.join(REPO, "configs", "official", "sysu_all.yaml")
    for given in ("official/sysu_all", "official/sysu_all.yaml", "configs/official/sysu_all.yaml",
                  "./configs/official/sysu_all"):
        assert osp.samefile(resolve_config(given), official), given
    assert osp.samefile(resolve_config("configs/quickstart.yaml"), osp.join(REPO, "configs", "quickstart.yaml"))
    with pytest.raises(ConfigError, match=r"official/sysu_al1.*Did you mean official/sysu_all.*official/regdb_v2t"):
        resolve_config("official/sysu_al1")
    with pytest.raises(ConfigError, match="no config given"):
        resolve_config("  ")


def test_cli_reads_recipe_names(tmp_path, monkeypatch):
    from vdreid.cli import _cfg_from_args, build_parser, parse_args

    monkeypatch.chdir(tmp_path)
    args = parse_args(["train", "--config-file", "official/sysu_all", "train.max_epoch", "2"])
    cfg = _cfg_from_args(args)
    assert cfg.model.name == "vd_resnet50_official" and cfg.train.max_epoch == 2
    assert build_parser().parse_args(["leaderboard"]).published == ""  # default: the shipped file


# ------------------------------------------------------------------------------------------------- slow
slow = pytest.mark.skipif(not os.environ.get("VDREID_SLOW"), reason="builds a wheel (set VDREID_SLOW=1; .ci/run does)")

# what the build needs from the checkout (copied, so that building writes nothing into the working tree)
_BUILD_INPUTS = ("setup.py", "README.md", "MANIFEST.in", "extensions", "configs", osp.join("benchmarks",
                                                                                              "published.yaml"))


def _run(cmd: list[str], cwd: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@slow
def test_wheel_installed_outside_the_checkout_runs_recipes(tmp_path):
    # 1. build the wheel from a copy of the checkout (no network: the running venv's setuptools, no deps)
    src = tmp_path / "src"
    for rel in _BUILD_INPUTS:
        s, d = osp.join(REPO, rel), src / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if osp.isdir(s):
            shutil.copytree(s, d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", "_shipped"))
        else:
            shutil.copyfile(s, d)
    wheels = tmp_path / "wheels"
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
             cwd=str(tmp_path), env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = wheels.glob("vdreid-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    shipped = {n for n in names if n.startswith("vdreid/_shipped/")}
    n_configs = sum(1 for _, _, fs in os.walk(osp.join(REPO, "configs")) for f in fs if f.endswith(".yaml"))
    assert "vdreid/_shipped/benchmarks/published.yaml" in shipped
    assert "vdreid/_shipped/configs/official/sysu_all.yaml" in shipped
    assert sum(n.startswith("vdreid/_shipped/configs/") for n in shipped) == n_configs

    # 2. a plain venv (no system site-packages); vdreid from the wheel only, heavy dependencies through a .pth line
    #    naming this interpreter's site-packages (a plain path: .pth files there, such as an editable install's, are
    #    not processed, so the checkout never enters sys.path)
    venv = tmp_path / "venv"
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=str(tmp_path), env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    py = str(venv / "bin" / "python")
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], str(tmp_path),
                dict(os.environ)).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(osp.join(site, "_vdreid_test_deps.pth"), "w") as f:
        f.write("\n".join(sorted(deps)) + "\n")
    r = _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", str(whl)],
             cwd=str(tmp_path), env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", VDREID_OFFLINE="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               PATH=str(venv / "bin") + os.pathsep + env.get("PATH", ""))
    r = _run([py, "-c", "import vdreid, vdreid.recipes as R; from vdreid.config import load_config; "
                        "print(vdreid.__file__); print(R.resolve_config('official/sysu_all')); "
                        "print(load_config(R.resolve_config('official/sysu_all')).train.max_epoch)"], str(work), env)
    assert r.returncode == 0, r.stderr
    file_, cfg_path, max_epoch = r.stdout.split()
    assert file_.startswith(str(venv)) and cfg_path.startswith(osp.join(site, "vdreid", "_shipped")), r.stdout
    assert max_epoch == "600"

    vdreid = str(venv / "bin" / "vdreid")
    # 3. a bare recipe name is found; a wrong one lists the shipped names
    r = _run([vdreid, "train", "--config-file", "official/sysu_al", "train.max_epoch", "1"], str(work), env)
    assert r.returncode == 2 and "official/sysu_all" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _run([vdreid, "train", "--help"], str(work), env)
    assert r.returncode == 0 and "--config-file" in r.stdout

    # 4. leaderboard with the shipped published numbers
    r = _run([vdreid, "leaderboard", "--runs", str(work), "--out", "board.md"], str(work), env)
    assert r.returncode == 0, r.stderr
    assert "60.02" in (work / "board.md").read_text()  # VD's published SYSU all-search rank-1

    # 5. demo on the shipped quickstart recipe: a tiny synthetic tree (11 training ids: 2 per batch), one epoch
    r = _run([vdreid, "make-synthetic", "--layout", "sysu", "--preset", "tiny", "--out", "data"], str(work), env)
    assert r.returncode == 0, r.stderr
    r = _run([vdreid, "demo", "--no-progress", "--config-file", "quickstart", "data.root", "data", "train.max_epoch",
              "1", "data.workers", "0", "data.save_dir", "run", "sampler.num_ids", "2"], str(work), env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "vdreid demo: done" in r.stdout
    assert any(f.startswith("results_") for f in os.listdir(work / "run"))
    assert "60.02" in (work / "run" / "LEADERBOARD.md").read_text()
