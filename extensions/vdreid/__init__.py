"""vdreid: Variational Distillation (Tian et al., CVPR 2021) for visible-infrared person Re-ID.

Importing the package registers the VI datasets and the VD models with torchreid (idempotently).
"""

from __future__ import annotations

from vdreid import compat  # noqa: E402,F401  (torchreid import shim)
from vdreid.data import register_datasets  # noqa: E402
from vdreid.models import register_models  # noqa: E402
from vdreid.version import __version__  # noqa: E402

register_datasets()
register_models()

__all__ = ["__version__", "compat", "register_datasets", "register_models"]
