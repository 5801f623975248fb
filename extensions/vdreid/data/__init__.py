"""VI-ReID datasets (SYSU-MM01, RegDB, LLCM), protocols, cross-modal sampler, synthetic data."""

from vdreid.data.datamanager import CrossModalDataManager
from vdreid.data.llcm import LLCM, LLCM_REGISTRY
from vdreid.data.protocol import Protocol
from vdreid.data.regdb import REGDB_REGISTRY, RegDB
from vdreid.data.sampler import CrossModalIdentitySampler
from vdreid.data.sysu_mm01 import SYSU_REGISTRY, SYSUMM01

#: every torchreid name vdreid registers -> dataset class
DATASET_REGISTRY = {**SYSU_REGISTRY, **REGDB_REGISTRY, **LLCM_REGISTRY}


def register_datasets() -> None:
    """Register the VI datasets with torchreid under the names of :data:`DATASET_REGISTRY` (idempotent)."""
    from vdreid import compat

    for name, cls in DATASET_REGISTRY.items():
        compat.register_image_dataset(name, cls)


__all__ = [
    "DATASET_REGISTRY",
    "CrossModalDataManager",
    "CrossModalIdentitySampler",
    "LLCM",
    "Protocol",
    "RegDB",
    "SYSUMM01",
    "register_datasets",
]
