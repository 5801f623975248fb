"""Generalized-mean (GeM) pooling as AGW computes it (Ye et al., TPAMI'21; AGW ``model.py``, ``gm_pool='on'``).

``x_pool[b, c] = (mean_{h,w} x[b, c, h, w]^p + eps)^(1/p)`` with a fixed ``p = 3`` and ``eps = 1e-12`` added
*after* the mean. timm's and fast-reid's GeM clamp the input to ``eps`` before the power and make ``p`` a
parameter, which is a different function (and a different gradient) near zero, so AGW's form is written here.
"""

from __future__ import annotations

from torch import Tensor, nn


def gem_pool(x: Tensor, p: float = 3.0, eps: float = 1e-12) -> Tensor:
    """GeM of a (B, C, H, W) map to (B, C): ``(mean(x ** p) + eps) ** (1 / p)``, eps after the mean (AGW).

    The input is the last stage's post-ReLU output (non-negative), as in AGW; negative inputs are not clamped.
    """
    if x.dim() != 4:
        raise ValueError(f"gem_pool expects a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
    return (x.flatten(2).pow(p).mean(dim=-1) + eps).pow(1.0 / p)


class GeneralizedMeanPooling(nn.Module):
    """Module form of :func:`gem_pool` with a constant (not learnable) exponent ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-12) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be > 0, got {p!r}")
        self.p = float(p)
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        return gem_pool(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p}, eps={self.eps}"


class AveragePooling(nn.Module):
    """Global average pooling of a (B, C, H, W) map to (B, C) (AGW's ``--method base``)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"average pooling expects a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
        return x.mean(dim=(2, 3))
