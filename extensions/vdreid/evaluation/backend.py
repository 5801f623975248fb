"""Which engine computes the nearest-neighbour lists and the distance blocks: faiss or torch, on which device.

Two paths, chosen separately because they do different work:

* ``'search'``: the top-k lists (``vdreid.evaluation.search``, ranked-list pictures, the kNN graph of re-ranking,
  the CMC top-L when asked for faiss). faiss serves them through its flat indexes (``IndexFlatIP`` /
  ``IndexFlatL2``) on the CPU, or its brute-force GPU kNN when faiss sees a GPU. ``'auto'`` picks faiss whenever
  it is installed, except when torch sees a GPU that faiss does not (a CPU-only faiss next to CUDA torch): torch on
  the GPU is then the faster device. On the CPU faiss was 1.24x faster than torch's GEMM blocks for the top-20 of
  10k x 1M (``benchmarks/search_speed.py``; ``benchmarks/RESULTS.md``, section "faiss search and re-ranking").
* ``'rank'``: the exact counting of :func:`vdreid.evaluation.evaluate_features` reads every distance of a query
  row (mAP needs the rank of every positive), so it runs dense float32 GEMM blocks, which torch computes (faiss
  has no dense inner-product block routine: its ``pairwise_distances`` is a numpy product for that metric). The
  de-duplicated CMC also needs each row's top-L: with ``backend='faiss'`` a faiss index supplies it; with
  ``'auto'`` torch takes it from the blocks the counting computed anyway, because a separate faiss search repeats
  the whole matrix product (2.2-5.8x slower, ``benchmarks/rank_speed.py --backend both``, same RESULTS section).

Without faiss installed everything runs through torch; a warning says so once per process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

import torch

from vdreid.errors import EvaluationInputError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "faiss", "torch")
PATHS = ("search", "rank")
_state: dict[str, object] = {}


def import_faiss() -> ModuleType | None:
    """The faiss module, or None (with one warning per process) when it cannot be imported."""
    if "faiss" in _state:
        return _state["faiss"]  # type: ignore[return-value]
    try:
        import faiss
    except ImportError as exc:  # also raised when sys.modules['faiss'] is None
        faiss = None
        logger.warning(
            "faiss is not installed (%s): ranking and re-ranking run through torch. Install faiss for faster top-k "
            "search: pip install 'vdreid[cpu]' (faiss-cpu) or 'vdreid[gpu]' (faiss-gpu)", exc
        )
    _state["faiss"] = faiss
    return faiss


def _reset_for_tests() -> None:
    """Forget the cached faiss import (tests simulate a missing faiss)."""
    _state.clear()


def gpu_resources():
    """One ``faiss.StandardGpuResources`` per process (each allocates scratch memory on the GPU)."""
    if "gpu_res" not in _state:
        _state["gpu_res"] = import_faiss().StandardGpuResources()
    return _state["gpu_res"]


def faiss_gpus(faiss: ModuleType | None) -> int:
    """Number of GPUs faiss sees (0 for a CPU-only build)."""
    if faiss is None:
        return 0
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # pragma: no cover - very old builds
        return 0


@dataclass(frozen=True)
class Backend:
    """An engine and its device: ``name`` 'faiss' | 'torch', ``device`` 'cpu' | 'cuda'."""

    name: str
    device: str

    def __str__(self) -> str:
        return f"{self.name}:{self.device}"

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def resolve(backend: str, path: str = "search") -> Backend:
    """The engine that runs ``path`` for the requested ``backend`` ('auto' | 'faiss' | 'torch')."""
    if backend not in BACKENDS:
        raise EvaluationInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if path not in PATHS:
        raise EvaluationInputError(f"path must be one of {PATHS}, got {path!r}")
    cuda = torch.cuda.is_available()
    torch_be = Backend("torch", "cuda" if cuda else "cpu")
    if backend == "torch":
        return torch_be
    faiss = import_faiss()
    if faiss is None:
        if backend == "faiss":
            raise EvaluationInputError(
                "backend='faiss' needs the faiss package: pip install 'vdreid[cpu]' (faiss-cpu) or 'vdreid[gpu]'"
            )
        return torch_be
    fgpu = faiss_gpus(faiss) > 0
    faiss_be = Backend("faiss", "cuda" if fgpu else "cpu")
    if backend == "faiss":
        return faiss_be
    # auto
    if path == "rank":
        return torch_be
    if cuda and not fgpu:
        return torch_be
    return faiss_be
