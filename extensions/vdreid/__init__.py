"""vdreid: visible-infrared person Re-ID on torchreid and timm: exact SYSU-MM01 / RegDB / LLCM protocols, Variational
Distillation (Tian et al., CVPR 2021) and other VI methods as plug-ins sharing one trainer.

Importing the package registers the VI datasets, the methods and their models with torchreid (idempotently), wraps
torchreid's entry points so they never give a silently different result with vdreid's parts (:mod:`vdreid.interop`),
and loads the plug-ins installed packages declare in the ``vdreid.plugins`` entry point group (:mod:`vdreid.plugins`).
"""

from __future__ import annotations

from vdreid import compat, data, methods, models, plugins  # noqa: F401  (registrations)
from vdreid.data import register_datasets
from vdreid.interop import install_torchreid_patches
from vdreid.methods import register_models
from vdreid.version import __version__

install_torchreid_patches()
plugins.load_entry_points()

__all__ = ["__version__", "compat", "register_datasets", "register_models"]
