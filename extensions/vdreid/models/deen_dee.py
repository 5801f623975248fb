"""DEEN's diverse embedding expansion (DEE) module (Zhang & Wang, CVPR'23, Sec. 3.2; ZYK100/LLCM ``DEEN/model.py``
``DEE_module``), computed exactly as the authors' code does.

Two branches read the same map ``x`` (``C`` channels). Each averages three 3x3 convolutions ``C -> C / 4`` without
bias, with dilation (and padding) 1, 2 and 3, applies a ReLU and a 1x1 convolution ``C / 4 -> C`` with bias. The module
returns ``cat(x, branch1(x), branch2(x))`` on the **batch** dimension, so everything after it sees three embeddings of
every image (rows ``[0, B)``: the input itself, ``[B, 2B)``: branch 1, ``[2B, 3B)``: branch 2), followed by
``Dropout(p)`` (p = 0.01), which is active in training only. The module runs in evaluation too: the test feature is
built from all three embeddings.

Initialisation as the code's ``weights_init_kaiming``: every convolution weight ``kaiming_normal_`` (fan-in, a = 0);
the 1x1 convolution's bias keeps PyTorch's default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DILATIONS = (1, 2, 3)


def _kaiming(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
    return conv


class DEEBranch(nn.Module):
    """One DEE branch: ``fuse(relu((conv_d1(x) + conv_d2(x) + conv_d3(x)) / 3))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 4:
            raise ValueError(f"DEEBranch: needs at least 4 channels (C / 4 per dilated convolution), got {channels}")
        inner = channels // 4
        for d in DILATIONS:
            conv = nn.Conv2d(channels, inner, kernel_size=3, padding=d, dilation=d, bias=False)
            setattr(self, f"conv_d{d}", _kaiming(conv))
        self.fuse = _kaiming(nn.Conv2d(inner, channels, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        h = (self.conv_d1(x) + self.conv_d2(x) + self.conv_d3(x)) / 3  # the code's order of additions
        return self.fuse(F.relu(h))


class DEEModule(nn.Module):
    """``Dropout(cat(x, branch1(x), branch2(x)))`` on the batch dimension (module docstring)."""

    def __init__(self, channels: int, dropout: float = 0.01) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DEEModule: dropout must be in [0, 1), got {dropout!r}")
        self.channels = int(channels)
        self.branch1 = DEEBranch(channels)
        self.branch2 = DEEBranch(channels)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(torch.cat((x, self.branch1(x), self.branch2(x)), dim=0))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
