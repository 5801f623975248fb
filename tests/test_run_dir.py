"""Run folders (vdreid.engine.run_dir): fresh-folder check and --overwrite, the lock (with a real second process and a
killed one), writability, train-log repair and the resume policy."""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from vdreid.config import get_default_config, to_dict
from vdreid.engine import run_dir
from vdreid.engine.run_dir import (
    LOCK_NAME,
    RunLock,
    check_fresh,
    check_resume_config,
    check_writable,
    prepare_run_dir,
    repair_train_log,
    resume_diff,
)
from vdreid.errors import ConfigError, DiskFullError, RunDirError


def _touch(folder, *names: str) -> None:
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")


# ------------------------------------------------------------------------------------------------ check_fresh
def test_fresh_folders_pass(tmp_path):
    assert check_fresh(str(tmp_path / "new")) is None
    _touch(tmp_path, "config.yaml", "events.out.tfevents.1.host")  # a run that crashed before its first epoch
    assert check_fresh(str(tmp_path)) is None


@pytest.mark.parametrize("marker", ["train_log.jsonl", "latest.pth", "best_val.pth", "results_sysu_mm01.json"])
def test_a_folder_with_a_run_is_refused_in_one_line(tmp_path, marker):
    _touch(tmp_path, "config.yaml", marker)
    with pytest.raises(RunDirError) as e:
        check_fresh(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and marker in msg and "--resume latest" in msg and "--overwrite" in msg
    assert "another folder" in msg and "\n" not in msg
    assert sorted(os.listdir(tmp_path)) == sorted(["config.yaml", marker])  # nothing touched


def test_overwrite_moves_the_old_run_aside(tmp_path, caplog):
    _touch(tmp_path, "config.yaml", "train_log.jsonl", "latest.pth", "results_regdb.json", "ranked_regdb/q0.jpg",
           LOCK_NAME)
    with caplog.at_level(logging.WARNING, logger="vdreid.engine.run_dir"):
        moved = check_fresh(str(tmp_path), overwrite=True)
    assert os.path.dirname(moved) == str(tmp_path) and os.path.basename(moved).startswith("replaced-")
    assert sorted(os.listdir(moved)) == ["config.yaml", "latest.pth", "ranked_regdb", "results_regdb.json",
                                         "train_log.jsonl"]
    assert sorted(os.listdir(tmp_path)) == sorted([LOCK_NAME, os.path.basename(moved)])
    assert moved in caplog.text and "--overwrite" in caplog.text
    _touch(tmp_path, "latest.pth")
    again = check_fresh(str(tmp_path), overwrite=True)  # same second: a distinct folder, the first one kept
    assert again != moved and os.listdir(again) == ["latest.pth"] and len(os.listdir(moved)) == 5
    assert check_fresh(str(tmp_path)) is None  # replaced-* folders do not count as a run


# ------------------------------------------------------------------------------------------------ check_writable
def test_check_writable(tmp_path):
    assert check_writable(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert os.listdir(tmp_path / "a" / "b") == []  # the probe is removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match=r'"[^"]*file" as the output folder: a file of that name is in the way'):
        check_writable(str(tmp_path / "file"))
    with pytest.raises(RunDirError, match=r'cannot create the output folder "[^"]*file/sub"'):
        check_writable(str(tmp_path / "file" / "sub"))


@pytest.mark.parametrize("code, error, words", [(errno.EROFS, RunDirError, "Read-only file system"),
                                                (errno.EACCES, RunDirError, "Permission denied"),
                                                (errno.ENOSPC, DiskFullError, "no space left")])
def test_check_writable_read_only_and_full(tmp_path, monkeypatch, code, error, words):
    real_open = os.open

    def refusing_open(path, flags, mode=0o777, **kw):
        if ".vdreid-write-test" in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(run_dir.os, "open", refusing_open)  # a read-only mount / a full disk, as the kernel says it
    with pytest.raises(error) as e:
        check_writable(str(tmp_path))
    assert str(tmp_path) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_real_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match="Permission denied"):
            check_writable(str(ro))
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------------------------------------ the lock
def test_lock_file_holds_the_owner_and_goes_away(tmp_path):
    with RunLock(str(tmp_path)) as lock:
        rec = json.loads((tmp_path / LOCK_NAME).read_text())
        assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname() and rec["started"]
        assert lock.held
        with pytest.raises(RunDirError) as e:  # a second lock on the same folder, even in the same process
            RunLock(str(tmp_path)).acquire()
        msg = str(e.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}, started {rec['started']}" in msg
        assert str(tmp_path) in msg and "\n" not in msg
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(KeyError):
        with RunLock(str(tmp_path)):
            raise KeyError("boom")
    assert not (tmp_path / LOCK_NAME).exists()  # released on an exception too


# The holder loads the real vdreid/engine/run_dir.py without running the package __init__ files (they import torch
# and every model, seconds on a loaded machine): empty package modules stand in for vdreid and vdreid.engine.
_HOLDER = textwrap.dedent(
    """
    import os, sys, types
    for name, sub in (("vdreid", ""), ("vdreid.engine", "engine")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(sys.argv[2], sub)]
        sys.modules[name] = pkg
    from vdreid.engine.run_dir import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
    """
)


def _holder(folder) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    pkg = os.path.dirname(os.path.dirname(run_dir.__file__))
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), pkg], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_process_refuses_and_a_killed_owner_is_taken_over(tmp_path, caplog):
    p = _holder(tmp_path)
    try:
        with pytest.raises(RunDirError, match=rf"in use by another vdreid process \(pid {p.pid} on host "
                                              rf"{socket.gethostname()}, started "):
            RunLock(str(tmp_path)).acquire()
        os.kill(p.pid, signal.SIGKILL)  # a crash: the lock file stays, the kernel drops the flock
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == p.pid
    with caplog.at_level(logging.WARNING, logger="vdreid.engine.run_dir"):
        with RunLock(str(tmp_path)) as lock:
            assert lock.taken_over["pid"] == p.pid
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text and f"pid {p.pid}" in caplog.text and str(tmp_path) in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_normal_exit_of_the_owner_frees_the_folder(tmp_path):
    p = _holder(tmp_path)
    out, _ = p.communicate("\n", timeout=30)
    assert out.strip() == "released" and not (tmp_path / LOCK_NAME).exists()
    with RunLock(str(tmp_path)) as lock:
        assert lock.taken_over is None


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_records_without_flock_and_from_other_hosts(tmp_path, monkeypatch):
    def write(pid, host):
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "started": "earlier"}))

    write(12345, "other-machine")  # another host: whether it runs cannot be checked from here
    with pytest.raises(RunDirError, match=rf"host other-machine.*delete \"{tmp_path / LOCK_NAME}\""):
        RunLock(str(tmp_path)).acquire()

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_dir.fcntl, "flock", no_flock)  # a network file system without flock: pid check only
    write(os.getppid(), socket.gethostname())  # alive on this host
    with pytest.raises(RunDirError, match=f"pid {os.getppid()}"):
        RunLock(str(tmp_path)).acquire()
    dead = _dead_pid()
    write(dead, socket.gethostname())
    with RunLock(str(tmp_path)) as lock:
        assert lock.taken_over["pid"] == dead


# ------------------------------------------------------------------------------------------------ the train log
def _log(tmp_path, data: bytes) -> str:
    p = tmp_path / "train_log.jsonl"
    p.write_bytes(data)
    return str(p)


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    good = b'{"epoch": 1, "loss": 2.5}\n{"epoch": 2, "loss": 2.1}\n'
    for torn in (b'{"epoch": 3, "lo', b'{"epoch": 3}\x00\x00', b"\x00\x00\x00\x00", b'{"epoch": 3, "n": "\xe9'):
        path = _log(tmp_path, good + torn)
        with caplog.at_level(logging.WARNING, logger="vdreid.engine.run_dir"):
            assert repair_train_log(path) == [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.1}]
        assert path in caplog.text and "incomplete last line" in caplog.text
        assert open(path, "rb").read() == good  # rewritten, so the next record starts on its own line
        caplog.clear()
    path = _log(tmp_path, good.rstrip(b"\n"))  # complete, only its newline missing: kept, newline added
    assert len(repair_train_log(path)) == 2 and open(path, "rb").read() == good
    assert repair_train_log(str(tmp_path / "none.jsonl")) == []


def test_damage_before_the_last_line_names_file_and_line(tmp_path):
    path = _log(tmp_path, b'{"epoch": 1}\n{"epoch": 2\n{"epoch": 3}\n')
    with pytest.raises(RunDirError, match=r"train_log\.jsonl:2: not a JSON record"):
        repair_train_log(path)
    path = _log(tmp_path, b'{"epoch": 1}\n[1, 2]\n{"epoch": 3}\n')
    with pytest.raises(RunDirError, match=r"train_log\.jsonl:2: .*list, not an object"):
        repair_train_log(path)


# ------------------------------------------------------------------------------------------------ resume policy
def _configs():
    saved = to_dict(get_default_config())
    return saved, copy.deepcopy(saved)


def test_resume_diff():
    saved, cur = _configs()
    assert resume_diff(saved, cur) == {}
    cur["train"]["lr"] = 1e9
    cur["train"]["max_epoch"] = 300.0  # 300 == 300.0: no change
    cur["vd"]["branch_weights"] = [0.5, 0.5, 0.25, 0.3]
    del cur["test"]["flip"]
    cur["train"]["new_key"] = 3
    assert resume_diff(saved, cur) == {
        "test.flip": (False, run_dir.MISSING),
        "train.lr": (2.6e-4, 1e9),
        "train.new_key": (run_dir.MISSING, 3),
        "vd.branch_weights": ([0.5, 0.5, 0.25, 0.25], [0.5, 0.5, 0.25, 0.3]),
    }


@pytest.mark.parametrize("key, value", [("train.lr", 1e9), ("vd.weights.ce", 2.0), ("model.name", "vd_resnet18"),
                                        ("sampler.num_ids", 8), ("data.height", 288), ("vd.beta", 0.0),
                                        ("train.seed", 7), ("data.regdb.trial", 2), ("train.selection", "val")])
def test_changed_training_keys_are_refused_naming_them(key, value):
    saved, cur = _configs()
    sec, leaf = key.rsplit(".", 1)
    node = cur
    for p in sec.split("."):
        node = node[p]
    old, node[leaf] = node[leaf], value
    with pytest.raises(ConfigError) as e:
        check_resume_config(saved, cur, completed_epochs=5, source='"log/latest.pth"')
    msg = str(e.value)
    assert f"{key} {old!r} -> {value!r}" in msg and '"log/latest.pth"' in msg and "config.yaml" in msg
    assert "\n" not in msg


def test_all_refused_keys_are_named_at_once():
    saved, cur = _configs()
    cur["train"]["lr"], cur["vd"]["term_options"]["ce"]["label_smooth"], cur["test"]["batch_size"] = 1.0, 0.0, 7
    with pytest.raises(ConfigError, match=r"train\.lr 0\.00026 -> 1\.0.*|vd\.term_options\.ce\.label_smooth") as e:
        check_resume_config(saved, cur)
    assert "train.lr" in str(e.value) and "vd.term_options.ce.label_smooth" in str(e.value)
    assert "test.batch_size 128" not in str(e.value)  # allowed keys are not among the refused


def test_keys_that_may_change_on_resume_are_returned():
    saved, cur = _configs()
    cur["train"]["max_epoch"] = 400  # extend the run
    cur["test"]["batch_size"] = 32
    cur["data"]["workers"] = 0
    cur["data"]["root"] = "/mnt/elsewhere"
    cur["data"]["regdb"]["direction"] = "t2v"
    cur["vd"]["feature_mode"] = "shared_z"
    cur["train"]["eval_freq"] = 10
    allowed = check_resume_config(saved, cur, completed_epochs=300)
    default_direction = saved["data"]["regdb"]["direction"]  # the default config's (vis2ir)
    assert allowed == {"train.max_epoch": (300, 400), "test.batch_size": (128, 32), "data.workers": (4, 0),
                       "data.root": ("datasets", "/mnt/elsewhere"), "data.regdb.direction": (default_direction, "t2v"),
                       "vd.feature_mode": ("obs_concat", "shared_z"), "train.eval_freq": (0, 10)}
    cur["train"]["max_epoch"] = 200
    with pytest.raises(ConfigError, match="train.max_epoch 200 is below the 250 epochs"):
        check_resume_config(saved, cur, completed_epochs=250)


def test_keys_added_or_removed_since_the_run_started():
    saved, cur = _configs()
    defaults = copy.deepcopy(cur)
    del saved["train"]["eval_start"]  # a run started by a vdreid without this key
    del cur["vd"]["weights"]["ib"]  # a key this vdreid no longer has
    assert check_resume_config(saved, cur, defaults=defaults) == {}  # at its default: accepted
    cur["train"]["eval_start"] = 5
    assert check_resume_config(saved, cur, defaults=defaults) == {"train.eval_start": (run_dir.MISSING, 5)}
    del saved["vd"]["term_options"]["metric"]["triplet_margin"]
    cur["vd"]["term_options"]["metric"]["triplet_margin"] = 0.5  # not the default, and a training key
    with pytest.raises(ConfigError, match=r"vd\.term_options\.metric\.triplet_margin \(absent\) -> 0\.5"):
        check_resume_config(saved, cur, defaults=defaults)


# ------------------------------------------------------------------------------------------------ all together
def test_prepare_run_dir(tmp_path, caplog):
    folder = tmp_path / "run"
    lock = prepare_run_dir(str(folder))
    try:
        assert lock.held and (folder / LOCK_NAME).exists()
        with pytest.raises(RunDirError, match="in use"):
            prepare_run_dir(str(folder))
    finally:
        lock.release()
    _touch(folder, "latest.pth", ".latest.pth.123-abcd.tmp")
    (folder / "train_log.jsonl").write_bytes(b'{"epoch": 1}\n{"epo')
    with pytest.raises(RunDirError, match="already holds a run"):
        prepare_run_dir(str(folder))
    assert not (folder / LOCK_NAME).exists()  # the lock is released when the checks fail
    with pytest.raises(ConfigError, match="contradict"):
        prepare_run_dir(str(folder), resume=True, overwrite=True)
    with prepare_run_dir(str(folder), resume=True):
        assert (folder / "train_log.jsonl").read_bytes() == b'{"epoch": 1}\n'  # repaired
        assert not (folder / ".latest.pth.123-abcd.tmp").exists()  # the killed save's temporary file
    with prepare_run_dir(str(folder), overwrite=True):
        assert [n for n in os.listdir(folder) if n != LOCK_NAME][0].startswith("replaced-")
