"""VI-ReID datasets (SYSU-MM01, RegDB, LLCM), protocols, cross-modal sampler, synthetic data.

Datasets register themselves with :func:`register_dataset` (:mod:`vdreid.data.registry`); importing this package
imports the built-in ones. A dataset of one's own is one module calling the same function
(``docs/adding-a-dataset.md``).
"""

from vdreid.data import sysu_mm01, regdb, llcm  # noqa: F401,I001  (each registers its datasets, in this order)
from vdreid.data.datamanager import CrossModalDataManager
from vdreid.data.llcm import LLCM
from vdreid.data.protocol import Protocol
from vdreid.data.regdb import RegDB
from vdreid.data.registry import DATASET_REGISTRY, register_dataset, register_datasets
from vdreid.data.sampler import CrossModalIdentitySampler
from vdreid.data.sysu_mm01 import SYSUMM01

__all__ = [
    "DATASET_REGISTRY",
    "CrossModalDataManager",
    "CrossModalIdentitySampler",
    "LLCM",
    "Protocol",
    "RegDB",
    "SYSUMM01",
    "register_dataset",
    "register_datasets",
]
