"""Camera -> modality maps (0-based torchreid camids) and the infrared test used by samplers, losses and engine.

SYSU-MM01 (docs/protocols.md): RGB cams 1, 2, 4, 5 and IR cams 3, 6, i.e. camids {0, 1, 3, 4} visible and {2, 5}
infrared.
RegDB (docs/protocols.md): one visible camera (camid 0) and one thermal camera (camid 1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch

Modality = Literal["visible", "infrared"]

SYSU_IR_CAMIDS: frozenset[int] = frozenset({2, 5})
SYSU_CAM_MODALITY: dict[int, Modality] = {c: ("infrared" if c in SYSU_IR_CAMIDS else "visible") for c in range(6)}
SYSU_RGB_CAMS: tuple[int, ...] = (1, 2, 4, 5)  # 1-based camera numbers, as in the folder names
SYSU_IR_CAMS: tuple[int, ...] = (3, 6)

REGDB_IR_CAMIDS: frozenset[int] = frozenset({1})
REGDB_CAM_MODALITY: dict[int, Modality] = {0: "visible", 1: "infrared"}


def is_infrared(camids: torch.Tensor | np.ndarray | Iterable[int], ir_camids: Iterable[int]) -> torch.Tensor:
    """Boolean tensor, True where ``camids`` (0-based) is one of ``ir_camids``. Keeps the input's device."""
    ir = sorted(int(c) for c in ir_camids)
    if isinstance(camids, torch.Tensor):
        cams = camids.long()
    else:
        arr = camids if isinstance(camids, np.ndarray) else np.asarray(list(camids), dtype=np.int64)
        cams = torch.as_tensor(arr, dtype=torch.long)
    if not ir:
        return torch.zeros(cams.shape, dtype=torch.bool, device=cams.device)
    return torch.isin(cams, torch.tensor(ir, dtype=torch.long, device=cams.device))


def modality_of(camid: int, ir_camids: Iterable[int]) -> Modality:
    """``'infrared'`` if ``camid`` is in ``ir_camids`` else ``'visible'``."""
    return "infrared" if int(camid) in {int(c) for c in ir_camids} else "visible"
