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
    OMP_NUM_THREADS=1 for the session, so that runs the tests start in this process with ``train.threads auto``
    (the default) take one thread too (subprocess tests set their own thread count).

    Denormal flushing for the session: as a CPU run does by default (``vdreid.runtime``, ``train.flush_denormal
    auto``), or as ``VDREID_TEST_FLUSH_DENORMAL=1|0`` says (to run the equality tests both ways). Applied before any
    tensor work, so every intra-op thread follows it."""
    import os

    import torch
    from vdreid import runtime

    n = torch.get_num_threads()
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    flush = {"1": "true", "0": "false"}.get(os.environ.get("VDREID_TEST_FLUSH_DENORMAL", ""), "auto")
    rt = runtime.apply(runtime.resolve("1", flush, use_gpu=False))
    yield rt
    torch.set_num_threads(n)
    if old is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old


@pytest.fixture(autouse=True)
def _runtime_restored(_one_thread):
    """A test that starts a run in this process applies the run's thread and flush settings (process-wide): put the
    session's back after it."""
    yield
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    torch.set_flush_denormal(_one_thread.flush_denormal)
