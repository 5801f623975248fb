"""Drawing helpers shared by the synthetic generators (:mod:`vdreid.data.synthetic`, the ``classic`` style and the
layout writers, and :mod:`vdreid.data.synthetic_hard`, the ``hard`` / ``shift`` styles).

Both generators import this module and neither imports the other's private helpers, so the imports go one way:
``synthetic`` -> ``synthetic_hard`` -> ``synthetic_draw``.
"""

from __future__ import annotations

import numpy as np


def box_blur(a: np.ndarray, k: int) -> np.ndarray:
    """Separable box blur of width ``k`` over the first two axes, with edge padding (a cheap stand-in for the optics
    blur of a thermal or a cheap visible camera). ``k <= 1`` returns ``a`` itself; an even ``k`` is widened by one so
    the output keeps the input's shape."""
    if k <= 1:
        return a
    k = k | 1  # odd width keeps the shape
    p = k // 2
    out = np.pad(a, ((p, p), (0, 0)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    c = np.cumsum(out, axis=0)
    c = np.concatenate([np.zeros_like(c[:1]), c], axis=0)
    out = (c[k:] - c[:-k]) / k
    out = np.pad(out, ((0, 0), (p, p)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    c = np.cumsum(out, axis=1)
    c = np.concatenate([np.zeros_like(c[:, :1]), c], axis=1)
    return (c[:, k:] - c[:, :-k]) / k
