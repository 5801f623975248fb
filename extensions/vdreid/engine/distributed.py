"""torch.distributed helpers for ``torchrun`` launches (one process per device).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; a plain ``python``
launch has none of them and runs as a single process (rank 0 of 1). The backend is NCCL when the process drives a
GPU and gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from vdreid.evaluation.extract import extract_features


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from exc


def init_distributed(use_gpu: bool = True, backend: str | None = None) -> DistInfo:
    """Initialise the default process group from torchrun's environment (idempotent).

    Returns ``DistInfo(0, 1, 0, None)`` when ``WORLD_SIZE`` is unset or 1. With GPUs, the process is bound to
    ``cuda:LOCAL_RANK``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())
    if world_size <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world_size - 1}")
    cuda = use_gpu and torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, backend)


def current() -> DistInfo:
    """The DistInfo of an already initialised process group (single process otherwise)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), dist.get_backend())
    return DistInfo()


def device_for(use_gpu: bool, info: DistInfo | None = None) -> torch.device:
    """``cuda:LOCAL_RANK`` (``cuda:0`` in a single process) when ``use_gpu`` and CUDA is available, else the CPU."""
    if not (use_gpu and torch.cuda.is_available()):
        return torch.device("cpu")
    info = info or current()
    return torch.device("cuda", info.local_rank if info.is_distributed else 0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of per-rank float dicts over ranks (same keys on every rank); identity in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    t = (t / dist.get_world_size()).cpu()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def wrap_model(
    model: torch.nn.Module,
    info: DistInfo,
    device: torch.device,
    sync_bn: bool = False,
    find_unused_parameters: bool = False,
) -> torch.nn.Module:
    """SyncBatchNorm conversion (optional; the converted modules keep the same Parameter objects, so an optimiser
    built before still points at them) and DistributedDataParallel wrapping, when the job has several processes."""
    if not info.is_distributed:
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    kwargs = {"find_unused_parameters": find_unused_parameters}
    if device.type == "cuda":
        kwargs.update(device_ids=[device.index], output_device=device.index)
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)


def extract_features_sharded(net: torch.nn.Module, loader, device: torch.device, ir_camids, info: DistInfo,
                             amp_dtype: torch.dtype | None = None, desc: str = "", **extract_kwargs):
    """Features, pids and camids of the whole ``loader.dataset`` in dataset order, through the one extraction
    routine (:func:`vdreid.evaluation.extract_features`). Single process: one pass. DDP: each rank extracts every
    ``world_size``-th image (a strided ``Subset``), the shards are gathered on every rank (``all_gather_object``)
    and put back in dataset order."""
    if not info.is_distributed:
        f, p, c, _ = extract_features(net, loader, device, ir_camids, amp_dtype, desc=desc, **extract_kwargs)
        return f.numpy(), p, c
    n = len(loader.dataset)
    idx = list(range(info.rank, n, info.world_size))
    part = None
    if idx:
        shard = DataLoader(Subset(loader.dataset, idx), batch_size=loader.batch_size, shuffle=False,
                           num_workers=loader.num_workers, collate_fn=loader.collate_fn)
        f, p, c, _ = extract_features(net, shard, device, ir_camids, amp_dtype, desc=desc, **extract_kwargs)
        part = (idx, f.numpy(), p, c)
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, part)
    parts = [q for q in parts if q is not None]
    dim = parts[0][1].shape[1]
    feats = np.zeros((n, dim), dtype=np.float32)
    pids = np.zeros(n, dtype=np.int64)
    camids = np.zeros(n, dtype=np.int64)
    for ids, f, p, c in parts:
        feats[ids], pids[ids], camids[ids] = f, p, c
    return feats, pids, camids


def broadcast_buffers(net: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics: each rank updated its own in its last training
    forward), so that every shard of a gathered evaluation sees the model rank 0 checkpoints."""
    if info.is_distributed:
        for b in net.buffers():
            dist.broadcast(b.data, src=0)
