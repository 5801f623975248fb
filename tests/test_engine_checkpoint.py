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
