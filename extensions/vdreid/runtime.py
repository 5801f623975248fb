"""Process-wide runtime settings of a run: torch's intra-op threads and flushing of denormal floats on the CPU.

``train.threads`` / ``test.threads``: ``auto`` or a positive integer. ``auto`` is the number of cores this process
may use: the CPUs of its affinity mask (``os.sched_getaffinity``), capped by a cgroup CPU quota when one is set and
by ``OMP_NUM_THREADS`` when that is set. torch's own default counts the machine's physical cores, which oversubscribes
a container limited to fewer, and does not read a cgroup quota.

``train.flush_denormal``: ``auto`` (on for a CPU run, off on a GPU), ``true`` or ``false``. Denormal floats (below
1.2e-38 in float32) are computed by a slow microcode path on x86 CPUs; the softmax of the released code's channel
attention and the small gradients of a late epoch produce many. Flushing sets the FTZ/DAZ bits of the MXCSR register
(``torch.set_flush_denormal``), which is per thread: a thread inherits them when it is created, so the flag is set
before the intra-op thread pool is resized, and a probe checks that every intra-op thread flushes (benchmarks/
RESULTS.md, "Threads, memory and denormals").

The command line calls :func:`apply_config` where a run starts; the results record :meth:`Runtime.provenance`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from vdreid.errors import ConfigError

logger = logging.getLogger(__name__)

AUTO = "auto"
FLUSH_CHOICES = ("auto", "true", "false")


# ------------------------------------------------------------------------------------------------ threads
def parse_threads(value: object, key: str = "train.threads") -> int | None:
    """``None`` for ``auto``, else the positive integer ``value`` names; anything else is a :class:`ConfigError`
    naming ``key``."""
    text = str(value).strip().lower()
    if text == AUTO:
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ConfigError(f"config key '{key}': expected 'auto' (the cores this process may use) or a positive number of "
                      f"threads, got {value!r}")


def parse_flush(value: object, key: str = "train.flush_denormal") -> str:
    """``'auto'``, ``'true'`` or ``'false'`` (YAML booleans arrive as ``'true'``/``'false'``)."""
    text = str(value).strip().lower()
    if text not in FLUSH_CHOICES:
        raise ConfigError(f"config key '{key}': expected one of {list(FLUSH_CHOICES)} (auto: on for a CPU run), got "
                          f"{value!r}")
    return text


def cgroup_cpu_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (``quota / period``; the smallest along the path to the
    root), or ``None`` when there is none or it cannot be read. Reads cgroup v2 ``cpu.max`` and v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    try:
        with open(proc_cgroup) as f:
            lines = [ln.strip().split(":", 2) for ln in f if ln.count(":") >= 2]
    except OSError:
        return None
    limits: list[float] = []
    for _, controllers, path in lines:
        ctrl = controllers.split(",")
        if controllers == "":  # v2: one unified hierarchy
            dirs = [root, _join(root, "unified")]
            files = ("cpu.max",)
        elif "cpu" in ctrl:
            dirs = [_join(root, controllers), _join(root, "cpu")]
            files = ("cpu.cfs_quota_us",)
        else:
            continue
        for base in dirs:
            for sub in _ancestors(path):
                d = _join(base, sub)
                for name in files:
                    limit = _read_limit(d, name)
                    if limit is not None:
                        limits.append(limit)
    return min(limits) if limits else None


def _join(a: str, b: str) -> str:
    return os.path.join(a, b.lstrip("/")) if b.strip("/") else a


def _ancestors(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _read_limit(directory: str, name: str) -> float | None:
    try:
        if name == "cpu.max":
            with open(os.path.join(directory, name)) as f:
                quota, *period = f.read().split()
            if quota == "max":
                return None
            return int(quota) / int(period[0] if period else 100000)
        with open(os.path.join(directory, name)) as f:
            quota_us = int(f.read().strip())
        if quota_us <= 0:
            return None
        with open(os.path.join(directory, "cpu.cfs_period_us")) as f:
            return quota_us / int(f.read().strip())
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        return None


def omp_num_threads(environ: dict[str, str] | None = None) -> int | None:
    """``OMP_NUM_THREADS`` as a positive integer (its first level when it lists several), else ``None``."""
    text = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def usable_cores(environ: dict[str, str] | None = None, cgroup_limit: float | None | bool = False) -> tuple[int, str]:
    """(the threads ``auto`` gives, why): the CPUs of this process's affinity mask, capped by the cgroup CPU quota
    (rounded up) and by ``OMP_NUM_THREADS`` when set. ``cgroup_limit``: pass a value to skip reading it (tests)."""
    try:
        n = len(os.sched_getaffinity(0))
        why = [f"{n} CPUs in this process's affinity"]
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
        why = [f"{n} CPUs (os.cpu_count)"]
    limit = cgroup_cpu_limit() if cgroup_limit is False else cgroup_limit
    if limit is not None and limit > 0 and math.ceil(limit) < n:
        n = max(1, math.ceil(limit))
        why.append(f"cgroup CPU quota {limit:g} cores")
    omp = omp_num_threads(environ)
    if omp is not None:
        if omp < n:
            n = omp
        why.append(f"OMP_NUM_THREADS={omp}")
    return n, ", ".join(why)


# ------------------------------------------------------------------------------------------------ runtime
@dataclass(frozen=True)
class Runtime:
    """What a run set: intra-op threads and denormal flushing, with the settings they came from.

    Attributes:
        threads: torch's intra-op threads.
        threads_setting: the config value (``'auto'`` or the number given).
        threads_reason: how ``auto`` was resolved (or that the config gave the number).
        flush_denormal: whether denormals are flushed to zero.
        flush_setting: the config value (``auto`` / ``true`` / ``false``).
        flush_consistent: whether a probe found every intra-op thread following ``flush_denormal`` (``None``: not
            applied yet).
    """

    threads: int
    threads_setting: str
    threads_reason: str
    flush_denormal: bool
    flush_setting: str
    flush_consistent: bool | None = None

    def line(self) -> str:
        """The start-banner line: ``runtime: 2 intra-op threads (auto: ...); denormals flushed to zero (auto: CPU)``."""
        src = f"auto: {self.threads_reason}" if self.threads_setting == AUTO else "set in the config"
        flush = "flushed to zero" if self.flush_denormal else "kept (not flushed)"
        if self.flush_consistent is False:
            flush += " in some threads only"
        fsrc = f"auto: {'CPU' if self.flush_denormal else 'GPU'} run" if self.flush_setting == AUTO else "set"
        return f"runtime: {self.threads} intra-op thread{'s' if self.threads != 1 else ''} ({src}); " \
               f"denormals {flush} ({fsrc})"

    def provenance(self) -> dict[str, object]:
        """The fields the results JSON and checkpoints record (``runtime``)."""
        return {"threads": self.threads, "threads_setting": self.threads_setting, "threads_reason": self.threads_reason,
                "flush_denormal": self.flush_denormal, "flush_denormal_setting": self.flush_setting,
                "cpu_capability": cpu_capability()}


def cpu_capability() -> str:
    """The vector kernels torch's CPU operators dispatch to (``AVX512``, ``AVX2``, ...; ``ATEN_CPU_CAPABILITY``
    selects a lower one)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # older torch
        return "unknown"


def resolve(threads: object = AUTO, flush_denormal: object = AUTO, use_gpu: bool = False,
            threads_key: str = "train.threads", environ: dict[str, str] | None = None) -> Runtime:
    """The settings a run would apply (nothing is changed)."""
    n = parse_threads(threads, threads_key)
    if n is None:
        count, reason = usable_cores(environ)
        setting = AUTO
    else:
        count, reason, setting = n, f"{threads_key} {n}", str(n)
    flush = parse_flush(flush_denormal)
    on = (not use_gpu) if flush == AUTO else flush == "true"
    return Runtime(threads=count, threads_setting=setting, threads_reason=reason, flush_denormal=on,
                   flush_setting=flush)


def flushing_threads() -> tuple[int, int]:
    """(intra-op threads that flush denormals, intra-op threads): an elementwise operation split over every thread
    (one chunk of 65536 elements each, above torch's grain size) on denormal inputs; a chunk of zeros comes from a
    flushing thread. Inputs and outputs are read as integer bits: a float conversion or comparison in a flushing
    thread would itself turn a denormal into zero."""
    n = max(1, torch.get_num_threads())
    x = torch.from_numpy(np.full((n, 65536), 0x00200000, dtype=np.int32).view(np.float32))  # 2.9e-39, denormal
    y = (x * 0.5).numpy().view(np.int32)
    return int((y == 0).all(axis=1).sum()), n


_CURRENT: list[Runtime] = []


def current() -> Runtime | None:
    """The settings this process applied last (:func:`apply`), or ``None`` before any."""
    return _CURRENT[-1] if _CURRENT else None


def apply(rt: Runtime) -> Runtime:
    """Set the flush mode of this thread, then torch's intra-op threads (threads created after the flush inherit it);
    probe that every intra-op thread follows the flush mode. Returns ``rt`` with the probe's answer."""
    if rt.flush_denormal and not torch.set_flush_denormal(True):
        logger.warning("runtime: this CPU cannot flush denormals (no SSE3): train.flush_denormal ignored")
        rt = replace(rt, flush_denormal=False)
    if not rt.flush_denormal:
        torch.set_flush_denormal(False)
    torch.set_num_threads(rt.threads)
    flushing, n = flushing_threads()
    consistent = flushing == (n if rt.flush_denormal else 0)
    if not consistent:
        logger.warning("runtime: %d of %d intra-op threads flush denormals, not %s (threads keep the mode they were "
                       "started with: the pool started before); apply the settings before the first parallel "
                       "operation, or use one thread", flushing, n, "all" if rt.flush_denormal else "none")
    rt = replace(rt, flush_consistent=consistent)
    _CURRENT[:] = [rt]
    return rt


def apply_config(cfg, section: str = "train", use_gpu: bool = False) -> Runtime:
    """Apply a run's runtime settings from a vdreid config: ``<section>.threads`` (``train`` for a training,
    ``test`` for an evaluation) and ``train.flush_denormal``; logs :meth:`Runtime.line` and returns the settings
    (record :meth:`Runtime.provenance` with the results)."""
    rt = apply(resolve(cfg[section].threads, cfg.train.flush_denormal, use_gpu=use_gpu,
                       threads_key=f"{section}.threads"))
    logger.info(rt.line())
    if rt.threads > 1:
        load = _load_average()
        cores = usable_cores()[0]
        # every core already busy on average: spinning intra-op threads then wait for each other (measured in
        # benchmarks/RESULTS.md, "Threads, memory and denormals")
        if load is not None and load >= cores:
            logger.warning("runtime: the CPUs are busy (load average %.1f on %d cores): %d intra-op threads may spend "
                        "most of their time waiting for each other; `%s.threads 1` avoids that on a shared machine",
                        load, cores, rt.threads, section)
    return rt


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
