"""Non-local block in the form AGW uses (Ye et al., TPAMI'21; AGW ``model.py`` ``Non_local``).

Wang et al.'s non-local operation (CVPR'18) ``z = W_z(y) + x`` with ``y = f(x) g(x)``, in AGW's variant:

* ``g``, ``theta``, ``phi``: 1x1 convolutions C -> ``inter_channels`` with bias; AGW's released ``model.py``
  computes ``inter_channels`` as ``reduc_ratio // reduc_ratio``, i.e. **1** (an earlier revision of that file used
  C / 2, a different network with many more parameters; the published AGW parameter count matches 1);
* the dot-product form ``f = theta(x)^T phi(x) / N`` with ``N = H * W`` (no softmax);
* ``W_z``: a 1x1 convolution ``inter_channels -> C`` with bias followed by BatchNorm2d(C) whose weight and bias
  start at 0, so a new block is the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NonLocalBlock(nn.Module):
    """AGW's non-local block (module docstring). ``forward(x)`` keeps the shape (B, C, H, W)."""

    def __init__(self, in_channels: int, inter_channels: int = 1) -> None:
        super().__init__()
        if in_channels < 1 or inter_channels < 1:
            raise ValueError(f"NonLocalBlock needs positive channel counts, got {in_channels}, {inter_channels}")
        self.in_channels = int(in_channels)
        self.inter_channels = int(inter_channels)
        self.g = nn.Conv2d(in_channels, inter_channels, kernel_size=1)
        self.theta = nn.Conv2d(in_channels, inter_channels, kernel_size=1)
        self.phi = nn.Conv2d(in_channels, inter_channels, kernel_size=1)
        self.w_z = nn.Sequential(nn.Conv2d(inter_channels, in_channels, kernel_size=1), nn.BatchNorm2d(in_channels))
        nn.init.zeros_(self.w_z[1].weight)
        nn.init.zeros_(self.w_z[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        g_x = self.g(x).flatten(2).transpose(1, 2)  # (B, N, C')
        theta_x = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi_x = self.phi(x).flatten(2)  # (B, C', N)
        f = torch.matmul(theta_x, phi_x)  # (B, N, N)
        y = torch.matmul(f / f.shape[-1], g_x)  # dot-product form: f / N
        y = y.transpose(1, 2).reshape(b, self.inter_channels, h, w)
        return self.w_z(y) + x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, inter_channels={self.inter_channels}"
