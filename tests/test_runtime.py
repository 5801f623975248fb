"""Runtime settings of a run (vdreid.runtime): intra-op threads ('auto' from the affinity mask, a cgroup CPU quota and
OMP_NUM_THREADS), denormal flushing (per thread, probed in every intra-op thread), the config keys, and the command
line applying them before it builds anything."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from vdreid import runtime
from vdreid.config import get_default_config, load_config
from vdreid.errors import ConfigError

AFFINITY = len(os.sched_getaffinity(0))


# ------------------------------------------------------------------------------------------------ threads
def test_parse_threads_values_and_errors():
    assert runtime.parse_threads("auto") is None and runtime.parse_threads(" AUTO ") is None
    assert runtime.parse_threads("3") == 3 and runtime.parse_threads(1) == 1
    for bad in ("0", 0, "-1", "two", "1.5", ""):
        with pytest.raises(ConfigError, match=r"config key 'test.threads': expected 'auto' .* or a positive number"):
            runtime.parse_threads(bad, "test.threads")


def test_usable_cores_honours_affinity_quota_and_omp_num_threads():
    n, why = runtime.usable_cores({}, cgroup_limit=None)
    assert n == AFFINITY and "affinity" in why
    assert runtime.usable_cores({"OMP_NUM_THREADS": "1"}, cgroup_limit=None) == (1, why + ", OMP_NUM_THREADS=1")
    assert runtime.usable_cores({"OMP_NUM_THREADS": "1,1"}, cgroup_limit=None)[0] == 1  # nested levels: the first
    assert runtime.usable_cores({"OMP_NUM_THREADS": "64"}, cgroup_limit=None)[0] == AFFINITY  # a cap, not a raise
    assert runtime.usable_cores({"OMP_NUM_THREADS": "x"}, cgroup_limit=None) == (AFFINITY, why)  # invalid: ignored
    n, why = runtime.usable_cores({}, cgroup_limit=0.5)  # half a core of quota: one thread
    assert n == 1 and "cgroup CPU quota 0.5 cores" in why
    assert runtime.usable_cores({}, cgroup_limit=AFFINITY + 3.0)[0] == AFFINITY


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_smallest_along_the_path(tmp_path):
    proc = tmp_path / "cgroup"
    _write(proc, "0::/a/b\n")
    root = tmp_path / "fs"
    _write(root / "a" / "b" / "cpu.max", "max 100000\n")
    _write(root / "a" / "cpu.max", "150000 100000\n")
    _write(root / "cpu.max", "max\n")
    assert runtime.cgroup_cpu_limit(str(proc), str(root)) == 1.5
    _write(root / "a" / "cpu.max", "max 100000\n")
    assert runtime.cgroup_cpu_limit(str(proc), str(root)) is None
    assert runtime.cgroup_cpu_limit(str(tmp_path / "missing"), str(root)) is None


def test_cgroup_v1_quota(tmp_path):
    proc = tmp_path / "cgroup"
    _write(proc, "4:memory:/x\n2:cpu,cpuacct:/job\n")
    root = tmp_path / "fs"
    _write(root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu,cpuacct" / "job" / "cpu.cfs_period_us", "100000\n")
    assert runtime.cgroup_cpu_limit(str(proc), str(root)) is None  # -1: no quota
    _write(root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "50000\n")
    assert runtime.cgroup_cpu_limit(str(proc), str(root)) == 0.5


def test_resolve_flush_auto_is_on_for_cpu_runs_only():
    assert runtime.resolve("1", "auto", use_gpu=False).flush_denormal is True
    assert runtime.resolve("1", "auto", use_gpu=True).flush_denormal is False
    assert runtime.resolve("1", "true", use_gpu=True).flush_denormal is True
    assert runtime.resolve("1", "false").flush_denormal is False
    with pytest.raises(ConfigError, match=r"train.flush_denormal.*'maybe'"):
        runtime.resolve("1", "maybe")
    rt = runtime.resolve("auto", "auto", environ={"OMP_NUM_THREADS": "1"})
    assert rt.threads == 1 and rt.threads_setting == "auto" and "OMP_NUM_THREADS=1" in rt.threads_reason
    line = rt.line()
    assert "runtime: 1 intra-op thread (auto: " in line and "denormals flushed to zero (auto: CPU run)" in line
    prov = rt.provenance()
    assert prov["threads"] == 1 and prov["flush_denormal"] is True and prov["cpu_capability"]


# ------------------------------------------------------------------------------------------------ applied (own process)
def _run(code: str, threads_env: str | None = None) -> str:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads_env:
        env["OMP_NUM_THREADS"] = threads_env
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_apply_sets_threads_and_flushes_in_every_intra_op_thread():
    out = _run("""
        import numpy as np, torch
        from vdreid import runtime
        x = torch.from_numpy(np.full(2 * 65536, 3e-39, dtype=np.float32))  # denormal, one chunk per thread
        rt = runtime.apply(runtime.resolve("2", "true"))
        bits = (x * 0.5).numpy().view(np.int32)  # integer bits: a float comparison would flush them itself
        print(torch.get_num_threads(), rt.flush_consistent, int((bits != 0).sum()), runtime.current() == rt)
        print(runtime.flushing_threads())
    """)
    assert out.splitlines() == ["2 True 0 True", "(2, 2)"]
    out = _run("""
        import torch
        from vdreid import runtime
        rt = runtime.apply(runtime.resolve("2", "false"))
        print(rt.flush_consistent, runtime.flushing_threads(), "flushed to zero" in rt.line())
    """)
    assert out == "True (0, 2) False"


def test_the_probe_sees_threads_started_in_another_mode():
    # the MXCSR flush bits are per thread and a thread keeps the mode it started with: intra-op threads started
    # before the flush keep computing denormals (and after switching it off keep flushing); the probe says so, and
    # the command line applies the settings before anything runs
    out = _run("""
        import torch
        from vdreid import runtime
        torch.set_num_threads(2)
        torch.ones(4 * 65536) * 2.0                # an elementwise op over both threads starts the pool
        rt = runtime.apply(runtime.resolve("2", "true"))
        print(rt.flush_consistent, runtime.flushing_threads(), "in some threads only" in rt.line())
    """)
    assert out == "False (1, 2) True"


# ------------------------------------------------------------------------------------------------ config and CLI
def test_config_keys_defaults_and_errors():
    d = get_default_config()
    assert (d.train.threads, d.test.threads, d.train.flush_denormal) == ("auto", "auto", "auto")
    cfg = load_config(None, ["train.threads", "1", "test.threads", "3", "train.flush_denormal", "false"])
    assert (cfg.train.threads, cfg.test.threads, cfg.train.flush_denormal) == ("1", "3", "false")
    with pytest.raises(ConfigError, match="config key 'train.threads'"):
        load_config(None, ["train.threads", "0"])
    with pytest.raises(ConfigError, match="config key 'train.flush_denormal'"):
        load_config(None, ["train.flush_denormal", "sometimes"])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("command", ["train", "demo", "test"])
def test_cli_applies_the_settings_before_building_anything(command, sysu_root, tmp_path, monkeypatch):
    """`vdreid train/demo` apply train.threads, `vdreid test` test.threads, before the data or the model exist."""
    from vdreid import builders, cli

    seen = []
    real = runtime.apply_config

    def spy(cfg, section="train", use_gpu=False):
        rt = real(cfg, section, use_gpu)
        seen.append((section, rt, torch.get_num_threads()))
        raise _Stop

    monkeypatch.setattr(runtime, "apply_config", spy)
    monkeypatch.setattr(builders, "build_datamanager", lambda *a, **k: pytest.fail("built data before the runtime"))
    args = ["train.threads", "2", "test.threads", "3", "train.flush_denormal", "false", "data.root", sysu_root,
            "data.save_dir", str(tmp_path / "run")]
    if command == "test":
        ckpt = tmp_path / "weights.pth"
        torch.save({"state_dict": {"w": torch.zeros(1)}}, ckpt)
        argv = ["test", "--checkpoint", str(ckpt), "--config-file", "quickstart"] + args
    else:
        argv = [command, "--config-file", "quickstart"] + args
    with pytest.raises(_Stop):
        cli.main(argv)
    ((section, rt, threads),) = seen
    want = 3 if command == "test" else 2
    assert section == ("test" if command == "test" else "train") and rt.threads == threads == want
    assert rt.flush_denormal is False and rt.threads_setting == str(want)


def test_the_test_session_flushes_as_asked():
    """tests/conftest.py: denormals flushed as a CPU run does (auto), or as VDREID_TEST_FLUSH_DENORMAL=1|0 says."""
    want = {"1": True, "0": False}.get(os.environ.get("VDREID_TEST_FLUSH_DENORMAL", ""),
                                       runtime.resolve("1", "auto", use_gpu=False).flush_denormal)
    assert runtime.flushing_threads() == (1 if want else 0, 1)
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
