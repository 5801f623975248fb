"""The command line as users of torchreid and fast-reid type it: flags before or after the KEY VALUE overrides,
`--version`, `vdreid recipes`, torchreid's and fast-reid's spellings (aliases or a one-line answer naming vdreid's
equivalent), shipped recipe names in `load_config` and `_base_`, `make-synthetic` over an existing tree, and what
`train` / `test` say they wrote."""

from __future__ import annotations

import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from vdreid.cli import main, parse_args
from vdreid.config import load_config
from vdreid.errors import ConfigError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = ["model.backbone", "test_resnet", "vd.bottleneck_dims", "[32, 32, 16]", "data.height", "32", "data.width",
        "16", "sampler.num_ids", "4", "train.max_epoch", "1", "data.workers", "0", "data.sysu.num_trials", "2"]


# ------------------------------------------------------------------------------------------------ flag order
def test_flags_work_before_or_after_the_overrides():
    a = parse_args(["train", "--config-file", "quickstart", "train.max_epoch", "10", "--resume", "latest"])
    assert a.resume == "latest" and a.opts == ["train.max_epoch", "10"] and a.config_file == "quickstart"
    b = parse_args(["train", "train.max_epoch", "10", "--resume", "latest", "--config-file", "quickstart"])
    assert (b.resume, b.opts, b.config_file) == (a.resume, a.opts, a.config_file)
    t = parse_args(["test", "--checkpoint", "X", "test.visrank", "false", "--visrank"])
    assert t.visrank and t.checkpoint == "X" and t.opts == ["test.visrank", "false"]
    n = parse_args(["train", "--config-file", "quickstart", "vd.beta", "-1", "train.lr", "-0.5"])
    assert n.opts == ["vd.beta", "-1", "train.lr", "-0.5"]  # negative numbers are values, not flags
    with pytest.raises(ConfigError, match="odd number"):
        load_config("quickstart", parse_args(["train", "--config-file", "quickstart", "train.lr"]).opts)


def test_version_and_recipes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    from vdreid.version import __version__

    assert f"vdreid {__version__}" in capsys.readouterr().out
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "official/sysu_all" in out and "methods/agw_sysu" in out
    assert "ablation/_base" not in out  # shared parents only with --all
    assert main(["recipes", "--all"]) == 0 and "ablation/_base" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ habits
def test_torchreid_and_fastreid_spellings():
    a = parse_args(["train", "--config-file", "quickstart", "--root", "/data", "--opts", "train.lr", "0.1"])
    assert a.opts == ["train.lr", "0.1", "data.root", "/data"]  # --opts is dropped, --root is data.root
    e = parse_args(["train", "--config-file", "quickstart", "--eval-only", "MODEL.WEIGHTS", "/w.pth"])
    assert e.opts == ["model.load_weights", "/w.pth", "test.evaluate", "true"]
    with pytest.raises(ConfigError, match="lower case; use 'train.lr'"):
        parse_args(["train", "--config-file", "quickstart", "TRAIN.LR", "0.1"])
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        parse_args(["train", "--config-file", "quickstart", "--gpu-devices", "0"])
    with pytest.raises(ConfigError, match="torchrun"):
        parse_args(["train", "--config-file", "quickstart", "--num-gpus", "2"])
    with pytest.raises(ConfigError, match="data.height data.width"):
        parse_args(["train", "--config-file", "quickstart", "INPUT.SIZE_TRAIN", "[256, 128]"])
    with pytest.raises(ConfigError, match="unknown option '--frobnicate'"):
        parse_args(["train", "--config-file", "quickstart", "--frobnicate"])


def test_habit_errors_are_one_line_on_the_command_line(capsys):
    assert main(["train", "--config-file", "quickstart", "--gpu-devices", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vdreid train: configuration error:") and "Traceback" not in err[0]
    assert main(["test", "--checkpoint", "x.pth", "--resume", "latest"]) == 2
    assert "belongs to `vdreid train`" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ recipes
def test_shipped_recipe_names_outside_a_checkout(tmp_path):
    """`load_config('quickstart')` and `_base_: quickstart` resolve the shipped recipes from any folder."""
    user = tmp_path / "mine.yaml"
    user.write_text("_base_: quickstart\ntrain:\n  max_epoch: 3\n")
    code = ("from vdreid.config import load_config; a = load_config('quickstart'); b = load_config('mine.yaml'); "
            "print(a.model.name, a.train.max_epoch, b.model.name, b.train.max_epoch)")
    r = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    name, epochs, name_b, epochs_b = r.stdout.split()
    assert name == name_b and epochs_b == "3" and epochs != "3"
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: quickstrat\n")
    with pytest.raises(ConfigError, match="quickstrat.*Did you mean quickstart"):
        load_config(str(bad))


# ------------------------------------------------------------------------------------------------ make-synthetic
def test_make_synthetic_over_an_existing_tree(tmp_path, capsys):
    out = str(tmp_path / "d")
    assert main(["make-synthetic", "--layout", "regdb", "--preset", "tiny", "--out", out]) == 0
    assert main(["make-synthetic", "--layout", "regdb", "--preset", "tiny", "--out", out]) == 0  # identical: kept
    capsys.readouterr()
    assert main(["make-synthetic", "--layout", "regdb", "--preset", "tiny", "--seed", "3", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "Traceback" not in err[0]
    assert main(["make-synthetic", "--layout", "regdb", "--preset", "tiny", "--seed", "3", "--out", out,
                 "--overwrite"]) == 0
    marker = json.load(open(osp.join(out, "RegDB", ".vdreid_synthetic.json")))
    assert marker["seed"] == 3
    real = tmp_path / "real" / "RegDB"
    real.mkdir(parents=True)
    (real / "keep.txt").write_text("a real dataset")
    assert main(["make-synthetic", "--layout", "regdb", "--preset", "tiny", "--out", str(tmp_path / "real"),
                 "--overwrite"]) == 2
    assert (real / "keep.txt").read_text() == "a real dataset"  # never touched


# ------------------------------------------------------------------------------------------------ outputs
def test_train_and_test_say_what_they_wrote(sysu_root, tmp_path, capsys):
    save = str(tmp_path / "run")
    assert main(["train", "--config-file", "quickstart", "data.root", sysu_root, "data.save_dir", save, *TINY,
                 "test.visrank", "false"]) == 0
    out = capsys.readouterr().out
    listed = out.split("wrote under", 1)[1]
    for name in ("latest.pth", "results_sysu_mm01.json", "config.yaml", "train_log.jsonl", "cmc_sysu_mm01.png"):
        assert name in listed, name
    test_dir = str(tmp_path / "t")
    assert main(["test", "--checkpoint", osp.join(save, "latest.pth"), "data.root", sysu_root, "--save-dir",
                 test_dir]) == 0
    out = capsys.readouterr().out
    assert "results_<target>" not in out
    assert "results_sysu_mm01.json" in out.split("wrote under", 1)[1]
    assert osp.isfile(osp.join(test_dir, "results_sysu_mm01.json"))
    assert not any(f.startswith("replaced-") for f in os.listdir(save))
