"""DEEN's MFA block (Zhang & Wang, CVPR'23, "Diverse Embedding Expansion Network"; ZYK100/LLCM ``DEEN/model.py``
``CNL``, ``PNL``, ``MFA_block``), computed exactly as the authors' code does.

An MFA block follows a ResNet stage: it reads the stage's output ``x_h`` (high level, ``C_h`` channels) and the stage's
input ``x_l`` (low level, ``C_l`` channels, the same or twice the resolution) and returns a map shaped like ``x_h``:
``z = PNL(CNL(x_h, x_l), x_l)``. Both parts are non-local operations ending in a 1x1 convolution and a BatchNorm whose
weight and bias start at 0, so a new block is the identity.

* :class:`ChannelNonLocal` (the code's ``CNL``): ``g``, ``phi`` (``C_l -> C_l``) and ``theta`` (``C_h -> C_l``) are
  1x1 convolutions with bias; ``phi`` (and ``W``'s convolution) have stride ``stride`` (2 when ``x_l`` has twice the
  resolution of ``x_h``). The attention is between *channels*: ``A = theta(x_h) phi(x_l)^T / C_l`` (``C_l x C_l``),
  ``y = A g(x_l)`` reshaped to ``x_l``'s resolution, ``z = W(y) + x_h``.
* :class:`PixelNonLocal` (the code's ``PNL``): ``g``, ``phi`` (``C_l -> C_l / 2``), ``theta`` (``C_h -> C_l / 2``).
  The code flattens each ``(B, C_l / 2, H, W)`` map with ``view(B, C_l, -1)``: that reinterprets the memory, so a
  "position" row of ``C_l`` values holds two half-rows of the same channel (row-major order), not one pixel's channels.
  The attention ``A = theta^T phi / (H_l W_l / 2)`` is between these half-rows; ``y = A g`` is reshaped back the same
  way. This is the published network and is reproduced as is; it needs an even number of positions ``H * W`` at both
  levels (the code's ``view`` fails otherwise; here a ValueError says so).
"""

from __future__ import annotations

from torch import Tensor, nn


def _zero_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    nn.init.zeros_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


class ChannelNonLocal(nn.Module):
    """DEEN's ``CNL`` (module docstring). ``forward(x_h, x_l)`` returns a map shaped like ``x_h``."""

    def __init__(self, high_dim: int, low_dim: int, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ChannelNonLocal: stride must be 1 or 2 (x_l at x_h's or twice its resolution), got "
                             f"{stride}")
        self.high_dim, self.low_dim, self.stride = int(high_dim), int(low_dim), int(stride)
        self.g = nn.Conv2d(low_dim, low_dim, kernel_size=1)
        self.theta = nn.Conv2d(high_dim, low_dim, kernel_size=1)
        self.phi = nn.Conv2d(low_dim, low_dim, kernel_size=1, stride=stride)
        self.w_z = nn.Sequential(nn.Conv2d(low_dim, high_dim, kernel_size=1, stride=stride), _zero_bn(high_dim))

    def forward(self, x_h: Tensor, x_l: Tensor) -> Tensor:
        b = x_h.shape[0]
        g_x = self.g(x_l).reshape(b, self.low_dim, -1)  # (B, C_l, N_l)
        theta_x = self.theta(x_h).reshape(b, self.low_dim, -1)  # (B, C_l, N_h)
        phi_x = self.phi(x_l).reshape(b, self.low_dim, -1).transpose(1, 2)  # (B, N_h, C_l)
        if theta_x.shape[2] != phi_x.shape[1]:
            raise ValueError(
                f"ChannelNonLocal: x_h has {theta_x.shape[2]} positions but phi(x_l) (stride {self.stride}) has "
                f"{phi_x.shape[1]}; x_l must have x_h's resolution times the stride"
            )
        energy = theta_x @ phi_x  # (B, C_l, C_l)
        y = (energy / energy.shape[-1]) @ g_x  # (B, C_l, N_l)
        y = y.reshape(b, self.low_dim, *x_l.shape[2:])
        return self.w_z(y) + x_h

    def extra_repr(self) -> str:
        return f"high_dim={self.high_dim}, low_dim={self.low_dim}, stride={self.stride}"


def _halfrows(t: Tensor, rows: int, what: str) -> Tensor:
    """The code's ``t.view(B, rows, -1)`` on a contiguous map (``reshape`` gives the same values for any memory
    format), with a clear error where the code's ``view`` fails."""
    b = t.shape[0]
    if t[0].numel() % rows:
        raise ValueError(
            f"PixelNonLocal: {what} of shape {tuple(t.shape)} cannot be regrouped into {rows} rows (DEEN's PNL "
            "needs an even number of positions H * W at each MFA level); choose an input size whose stage maps have "
            "an even number of positions (e.g. 384x144, 288x144, 256x128)"
        )
    return t.reshape(b, rows, -1)


class PixelNonLocal(nn.Module):
    """DEEN's ``PNL`` (module docstring), reduction ratio 2. ``forward(x_h, x_l)`` returns a map shaped like ``x_h``."""

    def __init__(self, high_dim: int, low_dim: int, reduc_ratio: int = 2) -> None:
        super().__init__()
        self.high_dim, self.low_dim = int(high_dim), int(low_dim)
        self.inter_dim = self.low_dim // reduc_ratio
        if self.inter_dim < 1:
            raise ValueError(f"PixelNonLocal: low_dim {low_dim} // {reduc_ratio} leaves no channel")
        self.g = nn.Conv2d(low_dim, self.inter_dim, kernel_size=1)
        self.theta = nn.Conv2d(high_dim, self.inter_dim, kernel_size=1)
        self.phi = nn.Conv2d(low_dim, self.inter_dim, kernel_size=1)
        self.w_z = nn.Sequential(nn.Conv2d(self.inter_dim, high_dim, kernel_size=1), _zero_bn(high_dim))

    def forward(self, x_h: Tensor, x_l: Tensor) -> Tensor:
        b = x_h.shape[0]
        g_x = _halfrows(self.g(x_l), self.low_dim, "g(x_l)").transpose(1, 2)  # (B, M_l, C_l)
        theta_x = _halfrows(self.theta(x_h), self.low_dim, "theta(x_h)").transpose(1, 2)  # (B, M_h, C_l)
        phi_x = _halfrows(self.phi(x_l), self.low_dim, "phi(x_l)")  # (B, C_l, M_l)
        energy = theta_x @ phi_x  # (B, M_h, M_l)
        y = (energy / energy.shape[-1]) @ g_x  # (B, M_h, C_l)
        y = y.transpose(1, 2).reshape(b, self.inter_dim, *x_h.shape[2:])
        return self.w_z(y) + x_h

    def extra_repr(self) -> str:
        return f"high_dim={self.high_dim}, low_dim={self.low_dim}, inter_dim={self.inter_dim}"


class MFABlock(nn.Module):
    """DEEN's ``MFA_block``: ``PNL(CNL(x_h, x_l), x_l)`` (module docstring)."""

    def __init__(self, high_dim: int, low_dim: int, stride: int) -> None:
        super().__init__()
        self.cnl = ChannelNonLocal(high_dim, low_dim, stride)
        self.pnl = PixelNonLocal(high_dim, low_dim)

    def forward(self, x_h: Tensor, x_l: Tensor) -> Tensor:
        return self.pnl(self.cnl(x_h, x_l), x_l)
