"""Shared pytest fixtures: tiny synthetic SYSU-MM01 and RegDB trees (real layouts), generated once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sysu_root(tmp_path_factory) -> str:
    """A data root holding a tiny synthetic ``SYSU-MM01/`` (16 split ids + 2 stray folders, 32x16 jpgs).

    Treat it as read-only: it is shared by every test of the session. Copy it (``shutil.copytree``) to corrupt it.
    """
    from vdreid.data.synthetic import make_sysu

    root = tmp_path_factory.mktemp("sysu_root")
    make_sysu(str(root), preset="tiny", seed=0)
    return str(root)


@pytest.fixture(scope="session")
def regdb_root(tmp_path_factory) -> str:
    """A data root holding a tiny synthetic ``RegDB/`` (12 ids, 3 visible + 3 thermal bmps each, trials 1..10)."""
    from vdreid.data.synthetic import make_regdb

    root = tmp_path_factory.mktemp("regdb_root")
    make_regdb(str(root), preset="tiny", seed=0)
    return str(root)


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Tests never reach the network: timm/huggingface hub look-ups are switched to offline mode for the session
    (a test that checks the online path unsets these itself and points the hub URL at a loopback server)."""
    import os

    old = {k: os.environ.get(k) for k in ("VDREID_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ["VDREID_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use tiny tensors: one intra-op thread is as fast, and immune to OpenMP spinning on a loaded 2-core box.
    (Subprocess tests set their own thread count.)"""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
