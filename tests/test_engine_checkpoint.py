"""Checkpoint helpers: atomic writes, weights_only-safe RNG states, mismatch errors that list keys."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from vdreid.engine import (
    CheckpointMismatchError,
    get_rng_state,
    load_checkpoint,
    load_model_weights,
    save_checkpoint_atomic,
    set_rng_state,
)
from vdreid.engine.checkpoint import check_config_compatible


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(1)), float(np.random.randn())


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    path = save_checkpoint_atomic({"rng": get_rng_state()}, str(tmp_path / "rng.pth"))
    expected = _draw()
    _draw()
    state = torch.load(path, weights_only=True)["rng"]  # must not need the unsafe unpickler
    set_rng_state(state)
    assert _draw() == expected


def test_atomic_save_keeps_previous_file_on_failure(tmp_path):
    path = str(tmp_path / "latest.pth")
    save_checkpoint_atomic({"epoch": 1, "w": torch.ones(3)}, path)
    before = open(path, "rb").read()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom while writing")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint_atomic({"epoch": 2, "bad": Unpicklable()}, path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["latest.pth"]  # no temporary file left behind
    assert load_checkpoint(path)["epoch"] == 1


def test_load_weights_lists_mismatching_keys():
    a = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 5))
    b = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 7))  # another number of classes
    c = torch.nn.Sequential(torch.nn.Linear(4, 3))  # another architecture
    with pytest.raises(CheckpointMismatchError) as e:
        load_model_weights(b, a.state_dict(), source="a.pth")
    msg = str(e.value)
    assert "shape mismatch (2)" in msg and "1.weight: checkpoint (5, 3) vs model (7, 3)" in msg and "a.pth" in msg
    with pytest.raises(CheckpointMismatchError) as e:
        load_model_weights(c, a.state_dict())
    assert "not in the model (2): 1.bias, 1.weight" in str(e.value)
    with pytest.raises(CheckpointMismatchError, match=r"missing in checkpoint \(2\): 1.bias, 1.weight"):
        load_model_weights(a, c.state_dict())
    # a DDP 'module.' prefix is accepted and the weights land exactly
    load_model_weights(b, {"module." + k: v.clone() + 1 for k, v in b.state_dict().items()})
    d = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 7))
    load_model_weights(d, b.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(d.state_dict().values(), b.state_dict().values()))


def test_config_compatibility():
    check_config_compatible({"num_classes": 3, "lr": 1}, {"num_classes": 3, "lr": 2}, ("num_classes",))
    with pytest.raises(CheckpointMismatchError, match="num_classes: checkpoint 3 vs now 4"):
        check_config_compatible({"num_classes": 3}, {"num_classes": 4}, ("num_classes", "recipe"))


# ------------------------------------------------------------------------------------------------ machine faults
def _dev_full_temp(monkeypatch):
    """Make atomic_write's temporary file a real file whose writes go to /dev/full (the kernel answers ENOSPC)."""
    import vdreid.atomic as atomic

    real_open_temp = atomic._open_temp

    def open_temp(folder, name):
        fd, tmp = real_open_temp(folder, name)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), tmp

    monkeypatch.setattr(atomic, "_open_temp", open_temp)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_while_saving_names_the_path_and_keeps_the_previous_file(tmp_path, monkeypatch):
    from vdreid.atomic import atomic_write
    from vdreid.errors import DiskFullError

    path = str(tmp_path / "latest.pth")
    save_checkpoint_atomic({"epoch": 1, "w": torch.ones(3)}, path)
    before = open(path, "rb").read()
    _dev_full_temp(monkeypatch)
    with pytest.raises(DiskFullError) as e:  # torch.save alone says "inline_container.cc ... unexpected pos"
        save_checkpoint_atomic({"epoch": 2, "w": torch.ones(100_000)}, path)
    msg = str(e.value)
    assert path in msg and "no space left" in msg and "previous file is intact" in msg and "\n" not in msg
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["latest.pth"]
    assert load_checkpoint(path)["epoch"] == 1
    with pytest.raises(DiskFullError, match=r"results\.json.*no space left.*nothing was written"):  # text (JSON)
        atomic_write(str(tmp_path / "results.json"), lambda f: f.write("{}" * 10_000), binary=False)
    assert os.listdir(tmp_path) == ["latest.pth"]


def test_disk_full_at_fsync_and_other_errors_pass_through(tmp_path, monkeypatch):
    import errno

    import vdreid.atomic as atomic
    from vdreid.errors import DiskFullError

    path = str(tmp_path / "latest.pth")
    save_checkpoint_atomic({"epoch": 1}, path)

    def fsync(fd, code=errno.EDQUOT):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "fsync", fsync)  # a full quota discovered when the data reaches the disk
    with pytest.raises(DiskFullError, match="latest.pth"):
        save_checkpoint_atomic({"epoch": 2}, path)
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: fsync(fd, errno.EIO))  # not a space problem: unchanged
    with pytest.raises(OSError) as e:
        save_checkpoint_atomic({"epoch": 2}, path)
    assert not isinstance(e.value, DiskFullError) and e.value.errno == errno.EIO
    assert os.listdir(tmp_path) == ["latest.pth"] and load_checkpoint(path)["epoch"] == 1


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_outputs_get_the_permissions_of_every_other_file(tmp_path, umask):
    from vdreid.atomic import atomic_write

    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as f:  # how every other output (config.yaml, logs) is written
            f.write("x")
        ckpt = save_checkpoint_atomic({"epoch": 1}, str(tmp_path / "latest.pth"))
        res = atomic_write(str(tmp_path / "results.json"), lambda f: f.write("{}"), binary=False)
    finally:
        os.umask(old)
    expected = os.stat(tmp_path / "plain.txt").st_mode & 0o777
    assert expected == 0o666 & ~umask
    assert os.stat(ckpt).st_mode & 0o777 == expected and os.stat(res).st_mode & 0o777 == expected


def test_remove_temp_files_only_removes_atomic_write_leftovers(tmp_path):
    from vdreid.atomic import _open_temp, remove_temp_files

    fd, tmp = _open_temp(str(tmp_path), "latest.pth")
    os.close(fd)
    fd, tmp2 = _open_temp(str(tmp_path), "results_sysu.json")
    os.close(fd)
    for keep in ("latest.pth", ".hidden.tmp", "notes.tmp", "train_log.jsonl"):
        (tmp_path / keep).write_text("x")
    assert sorted(remove_temp_files(str(tmp_path))) == sorted([tmp, tmp2])
    assert sorted(os.listdir(tmp_path)) == [".hidden.tmp", "latest.pth", "notes.tmp", "train_log.jsonl"]


# ------------------------------------------------------------------------------------------------ unreadable files
def _bad_checkpoints(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, what the message must say)."""
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.ones(100)}, "epoch": 3}, good)
    data = good.read_bytes()
    files = {
        "truncated": (data[: len(data) // 2], "not a complete checkpoint: the zip archive .* truncated"),
        "truncated_tail": (data[:-10], "not a complete checkpoint"),
        "empty": (b"", r"empty \(0 bytes\)"),
        "text": (b"epoch: 3\nlr: 0.1\n", "not a PyTorch checkpoint: it is neither a zip archive .* nor a pickle"),
        "jpeg": (b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(100), "not a PyTorch checkpoint"),
    }
    out = {}
    for name, (content, what) in files.items():
        p = tmp_path / f"{name}.pth"
        p.write_bytes(content)
        out[name] = (str(p), what)
    t = tmp_path / "tensor.pth"
    torch.save(torch.ones(2), t)
    out["tensor"] = (str(t), "not a checkpoint: it holds a Tensor, expected a dict")
    m = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), m)  # a whole pickled module: refused by the safe loader
    out["module"] = (str(m), r"holds the Python object torch\.nn\.modules\.linear\.Linear.*weights_only=True.* refuses")
    return out


def test_unreadable_checkpoints_say_what_they_are_not(tmp_path):
    from vdreid.errors import CheckpointError

    for name, (path, what) in _bad_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert path in msg and "\n" not in msg, name
        assert __import__("re").search(what, msg), (name, msg)
        assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg, name
    assert load_checkpoint(str(tmp_path / "good.pth"))["epoch"] == 3
