"""The `vdreid` CLI on a tiny synthetic tree: train one short epoch, test from the checkpoint, leaderboard, t-SNE,
ONNX export (checked with onnxruntime), plots; config errors from the command line."""

from __future__ import annotations

import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import yaml
from vdreid.cli import main

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICK = osp.join(REPO, "configs", "quickstart.yaml")
TINY = ["data.height", "32", "data.width", "16", "data.workers", "0", "sampler.num_ids", "8",
        "sampler.num_instances", "4", "test.batch_size", "64", "train.warmup_epochs", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sysu_root):
    out = str(tmp_path_factory.mktemp("cli_run"))
    rc = main(["train", "--config-file", QUICK, "data.root", sysu_root, "data.save_dir", out,
               "train.max_epoch", "1", "test.visrank", "true", "test.visrank_topk", "3", *TINY])
    assert rc == 0
    return out


def test_train_writes_checkpoint_results_log_and_pictures(trained):
    for name in ("latest.pth", "config.yaml", "train_log.jsonl", "results_sysu_mm01.json", "cmc_sysu_mm01.png"):
        assert osp.isfile(osp.join(trained, name)), name
    res = json.load(open(osp.join(trained, "results_sysu_mm01.json")))
    assert res["protocol"] == "sysu/ir2vis/all/single-shot/agw/10 trials" and res["num_trials"] == 10
    quick = yaml.safe_load(open(QUICK))
    assert quick["model"]["name"] == "vd_resnet10t"  # the quickstart's CPU model since the second transfer retune
    assert res["synthetic"] is True and res["model"] == "vd_resnet10t" and len(res["config_hash"]) == 12
    # the quickstart's test feature, read from the file itself (the shared encoder's v since the transfer retune)
    configured = yaml.safe_load(open(QUICK))["vd"]["feature_mode"]
    assert configured == "shared_v" and res["feature_mode"] == configured and res["selection"] == "final"
    log = [json.loads(x) for x in open(osp.join(trained, "train_log.jsonl"))]
    assert len(log) == 1 and {"ce", "vsd", "vcd", "vml", "dml", "lr"} <= set(log[0])
    ranked = os.listdir(osp.join(trained, "ranked_sysu_mm01"))
    assert ranked and all(f.endswith(".jpg") for f in ranked)


def test_test_from_checkpoint_reproduces_training_eval(trained, tmp_path, sysu_root):
    # no --config-file: the checkpoint's stored config is used; data.root/save_dir overridden
    rc = main(["test", "--checkpoint", osp.join(trained, "latest.pth"), "--trials", "3",
               "data.root", sysu_root, "data.save_dir", str(tmp_path), "data.workers", "0"])
    assert rc == 0
    res = json.load(open(tmp_path / "results_sysu_mm01.json"))
    first = json.load(open(osp.join(trained, "results_sysu_mm01.json")))
    assert res["num_trials"] == 3 and res["protocol"] == "sysu/ir2vis/all/single-shot/agw/3 trials"
    # the same weights on the same first 3 galleries give the same per-trial numbers
    for a, b in zip(res["per_trial"], first["per_trial"][:3]):
        assert a["R1"] == pytest.approx(b["R1"], abs=1e-6) and a["mAP"] == pytest.approx(b["mAP"], abs=1e-4)
    assert res["checkpoint"].endswith("latest.pth")


def test_test_with_another_feature_mode(trained, tmp_path, sysu_root):
    rc = main(["test", "--config-file", QUICK, "--checkpoint", osp.join(trained, "latest.pth"), "--trials", "2",
               "--feature-mode", "shared_z", "data.root", sysu_root, "data.save_dir", str(tmp_path), *TINY])
    assert rc == 0
    assert json.load(open(tmp_path / "results_sysu_mm01.json"))["feature_mode"] == "shared_z"


def test_leaderboard_command(trained, tmp_path):
    out = tmp_path / "LB.md"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-m", "vdreid", "leaderboard", "--runs", trained, "--out", str(out),
                        "--published", osp.join(REPO, "benchmarks", "published.yaml")],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert "## synthetic data: sysu/ir2vis/all/single-shot/agw/10 trials" in text
    assert "ours: vd_resnet10t paper" in text  # the quickstart's model
    assert osp.isfile(tmp_path / "LB.csv")


def test_tsne_command(trained, tmp_path, sysu_root):
    rc = main(["tsne", "--checkpoint", osp.join(trained, "latest.pth"), "--out", str(tmp_path), "--num-ids", "4",
               "--per-id", "3", "--modes", "shared_z,z_ir", "data.root", sysu_root])
    assert rc == 0
    assert osp.getsize(tmp_path / "tsne_joint.png") > 1000 and osp.getsize(tmp_path / "tsne_branches.png") > 1000


@pytest.mark.parametrize("feature_mode", ["", "obs_concat"])
def test_export_command_checks_onnxruntime(trained, tmp_path, capsys, feature_mode):
    out = tmp_path / "vd.onnx"
    extra = ["--feature-mode", feature_mode] if feature_mode else []
    rc = main(["export", "--checkpoint", osp.join(trained, "latest.pth"), "--out", str(out), *extra])
    assert rc == 0 and out.stat().st_size > 0
    assert "max |diff|" in capsys.readouterr().out
    # independent check: onnxruntime features on a new batch size equal PyTorch's
    import onnxruntime as ort
    import torch
    from vdreid.builders import build_model
    from vdreid.config import load_config
    from vdreid.engine import load_checkpoint, load_model_weights

    ckpt = load_checkpoint(osp.join(trained, "latest.pth"))
    cfg = load_config(QUICK, TINY)
    model = build_model(cfg, int(ckpt["config"]["num_classes"]))
    load_model_weights(model, ckpt["state_dict"])
    if feature_mode:
        model.feature_mode = feature_mode
    x = torch.randn(5, 3, 32, 16)
    m = torch.tensor([True, False, True, True, False])
    with torch.no_grad():
        ref = model.eval()(x, modality=m).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if feature_mode == "obs_concat":  # modality-specific encoders under `modality` routing: the graph takes is_ir
        assert names == ["images", "is_ir"]
        got = sess.run(None, {"images": x.numpy(), "is_ir": m.numpy()})[0]
    else:  # the quickstart's shared_v: one encoder for every image, no modality input
        assert names == ["images"]
        got = sess.run(None, {"images": x.numpy()})[0]
    assert np.abs(got - ref).max() < 1e-4


def test_plot_command(trained, tmp_path):
    res = osp.join(trained, "results_sysu_mm01.json")
    assert main(["plot", "--cmc", res, res, "--out", str(tmp_path / "cmc.png")]) == 0
    assert main(["plot", "--train-log", osp.join(trained, "train_log.jsonl"), "--out", str(tmp_path / "c.png")]) == 0
    assert osp.getsize(tmp_path / "cmc.png") > 1000 and osp.getsize(tmp_path / "c.png") > 1000


def test_config_errors_exit_2_with_message(capsys, sysu_root):
    assert main(["train", "--config-file", QUICK, "train.max_epohc", "1"]) == 2
    err = capsys.readouterr().err
    assert "train.max_epohc" in err and "did you mean 'train.max_epoch'" in err
    assert main(["train", "--config-file", QUICK, "train.max_epoch", "one"]) == 2
    assert "expected an integer" in capsys.readouterr().err
    assert main(["train", "--config-file", QUICK, "--all-trials"]) == 2
    assert "--all-trials is for RegDB" in capsys.readouterr().err
    assert main(["test", "--checkpoint", osp.join(sysu_root, "missing.pth")]) == 2


def test_bad_input_errors_exit_2_without_traceback(capsys, sysu_root, tmp_path):
    """Errors that say what to fix (missing weights offline, missing data root) are one clear line, exit code 2."""
    sysu_all = osp.join(osp.dirname(QUICK), "sysu_all.yaml")
    args = ["train", "--config-file", sysu_all, "data.root", sysu_root, "data.save_dir", str(tmp_path / "o"),
            "sampler.num_ids", "4", "data.height", "32", "data.width", "16"]
    assert main(args) == 2  # pretrained=True, no local file, offline (conftest sets VDREID_OFFLINE)
    err = capsys.readouterr().err
    assert "PretrainedWeightsError" in err and "pretrained_path" in err and "Traceback" not in err
    assert main(["train", "--config-file", QUICK, "data.root", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    args = ["train", "--config-file", QUICK, "data.root", sysu_root, "data.save_dir", str(tmp_path / "p")]
    assert main(args) == 2  # 16 ids per batch, the tiny tree has fewer: a ValueError that names the fix
    err = capsys.readouterr().err
    assert "num_ids" in err and "Traceback" not in err


def test_demo_tree_generates_reuses_and_never_replaces_another_tree(tmp_path, caplog):
    """`vdreid demo`'s data step: writes today's demo preset into an empty root, reuses it as it is, and trains on a
    synthetic tree of other generator arguments (e.g. an older version's demo tree) with a warning, never deleting
    it."""
    import logging

    from vdreid.cli import _demo_tree
    from vdreid.data import synthetic

    other = str(tmp_path / "other")
    synthetic.make_sysu(other, preset="tiny", seed=0)
    marker = osp.join(other, "SYSU-MM01", synthetic.MARKER)
    before = open(marker).read()
    with caplog.at_level(logging.WARNING, logger="vdreid"):
        assert _demo_tree(other) == "other"
    assert "--overwrite" in caplog.text and open(marker).read() == before
    real = tmp_path / "real" / "SYSU-MM01" / "exp"
    real.mkdir(parents=True)
    assert _demo_tree(str(tmp_path / "real")) == "real" and os.listdir(real) == []
    fresh = str(tmp_path / "fresh")
    assert _demo_tree(fresh) == "generated"
    assert json.load(open(osp.join(fresh, "SYSU-MM01", synthetic.MARKER)))["images_per_cam"] == 2
    assert _demo_tree(fresh) == "demo"
