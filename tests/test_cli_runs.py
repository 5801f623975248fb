"""Run folders through the command line (docs/run-folders.md): a run never destroys another run, one process writes
a folder at a time, a resumed run is the run that was started, a damaged log line does not block a resume, a
read-only folder fails before any work, and the data order does not depend on the worker count."""

from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import stat

import pytest
import torch
from vdreid.cli import main

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICK = osp.join(REPO, "configs", "quickstart.yaml")


def _tiny(root: str, save: str, *extra: str) -> list[str]:
    """A one-epoch VD run on the tiny synthetic tree with timm's ~0.4M-parameter test ResNet."""
    return ["train", "--config-file", QUICK, "data.root", root, "data.save_dir", save, "model.backbone", "test_resnet",
            "vd.bottleneck_dims", "[32, 32, 16]", "data.height", "32", "data.width", "16", "sampler.num_ids", "4",
            "train.max_epoch", "1", "data.workers", "0", "test.visrank", "false", "data.sysu.num_trials", "2",
            *extra]


def _sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _weights(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def first_run(sysu_root, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("runs") / "run")
    assert main(_tiny(sysu_root, save)) == 0
    return save


def test_second_run_into_a_run_folder_refuses_and_overwrite_moves_it_aside(sysu_root, first_run, tmp_path, capsys):
    save = str(tmp_path / "run")
    import shutil

    shutil.copytree(first_run, save)
    before = {f: _sha(osp.join(save, f)) for f in ("latest.pth", "train_log.jsonl", "results_sysu_mm01.json",
                                                      "config.yaml")}
    capsys.readouterr()
    assert main(_tiny(sysu_root, save, "train.lr", "0.01")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and save in err[0] and "--resume latest" in err[0] and "--overwrite" in err[0]
    assert {f: _sha(osp.join(save, f)) for f in before} == before  # nothing was touched, config.yaml included
    argv = _tiny(sysu_root, save)
    assert main(argv[:1] + ["--overwrite"] + argv[1:]) == 0
    aside = [d for d in os.listdir(save) if d.startswith("replaced-")]
    assert len(aside) == 1
    assert {f: _sha(osp.join(save, aside[0], f)) for f in before} == before  # the old run, intact, moved aside


def test_a_folder_locked_by_another_process_refuses(sysu_root, tmp_path, capsys):
    from vdreid.engine.run_dir import RunLock

    save = str(tmp_path / "run")
    os.makedirs(save)
    with RunLock(save):
        capsys.readouterr()
        assert main(_tiny(sysu_root, save)) == 2
        err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and save in err[0] and str(os.getpid()) in err[0]
    assert not osp.exists(osp.join(save, "latest.pth"))


def test_resume_refuses_changed_training_keys_and_records_allowed_changes(sysu_root, first_run, tmp_path, capsys):
    import shutil

    save = str(tmp_path / "run")
    shutil.copytree(first_run, save)
    cfg_before, ck_before = _sha(osp.join(save, "config.yaml")), _sha(osp.join(save, "latest.pth"))
    capsys.readouterr()
    args = _tiny(sysu_root, save, "train.max_epoch", "2", "train.lr", "1e9")
    assert main(args[:1] + ["--resume", "latest"] + args[1:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr" in err[0] and "1000000000.0" in err[0]
    assert _sha(osp.join(save, "config.yaml")) == cfg_before and _sha(osp.join(save, "latest.pth")) == ck_before
    # an allowed change (more epochs) runs and is recorded with both values and the epoch it took effect
    args = _tiny(sysu_root, save, "train.max_epoch", "2")
    assert main(args[:1] + ["--resume", "latest"] + args[1:]) == 0
    res = json.load(open(osp.join(save, "results_sysu_mm01.json")))
    assert res["resume_changes"]["train.max_epoch"] == {"before": 1, "after": 2, "from_epoch": 2}
    assert res["config"]["train"]["max_epoch"] == 2 and res["selected_epoch"] == 2


def test_a_torn_last_log_line_does_not_block_resume(sysu_root, first_run, tmp_path, capsys):
    import shutil

    save = str(tmp_path / "run")
    shutil.copytree(first_run, save)
    with open(osp.join(save, "train_log.jsonl"), "a") as f:
        f.write('{"epoch": 2, "lr": 0.0')  # a crash while writing the next line
    capsys.readouterr()
    args = _tiny(sysu_root, save, "train.max_epoch", "2")
    assert main(args[:1] + ["--resume", "latest"] + args[1:]) == 0
    out = capsys.readouterr().out
    assert "train_log.jsonl" in out and "dropped" in out
    rows = [json.loads(ln) for ln in open(osp.join(save, "train_log.jsonl")) if ln.strip()]
    assert [r["epoch"] for r in rows] == [1, 2]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_save_dir_fails_before_any_work(sysu_root, first_run, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        for argv in (_tiny(sysu_root, str(ro / "run")),
                     ["test", "--checkpoint", osp.join(first_run, "latest.pth"), "--save-dir", str(ro / "t")]):
            capsys.readouterr()
            assert main(argv) == 2
            err = capsys.readouterr()
            assert len(err.err.strip().splitlines()) == 1 and str(ro) in err.err
            assert "protocol:" not in err.out  # no evaluation ran first
    finally:
        ro.chmod(stat.S_IRWXU)


def test_read_only_save_dir_check_as_root(tmp_path, monkeypatch):
    """As root (CI containers) a read-only mode does not stop writes; the same check then sees a folder that cannot
    be created (a file in the way) and fails before any work."""
    from vdreid.engine.run_dir import check_writable
    from vdreid.errors import RunDirError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="file"):
        check_writable(str(blocker / "run"))


def test_data_order_and_augmentation_do_not_depend_on_workers(sysu_root, tmp_path):
    """Same seeds, data.workers 0 and 2: the same weights after an epoch (per-sample augmentation seeds)."""
    a, b = str(tmp_path / "w0"), str(tmp_path / "w2")
    assert main(_tiny(sysu_root, a, "data.workers", "0")) == 0
    assert main(_tiny(sysu_root, b, "data.workers", "2")) == 0
    wa, wb = _weights(osp.join(a, "latest.pth")), _weights(osp.join(b, "latest.pth"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra = json.load(open(osp.join(a, "results_sysu_mm01.json")))
    rb = json.load(open(osp.join(b, "results_sysu_mm01.json")))
    assert ra["mean"] == rb["mean"] and ra["config_hash"] == rb["config_hash"]


def test_truncated_checkpoint_and_bad_numbers_are_one_line(sysu_root, first_run, tmp_path, capsys):
    bad = tmp_path / "cut.pth"
    data = open(osp.join(first_run, "latest.pth"), "rb").read()
    bad.write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert main(["test", "--checkpoint", str(bad), "--save-dir", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "truncated" in err[0] and "weights_only=False" not in err[0]
    assert not osp.exists(tmp_path / "t" / "results_sysu_mm01.json")
    for key, value in (("test.batch_size", "0"), ("data.workers", "-1"), ("train.lr", "-1")):
        capsys.readouterr()
        assert main(_tiny(sysu_root, str(tmp_path / "r"), key, value)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0], (key, err)
