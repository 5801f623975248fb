"""Channel attention of the authors' released code ("ShallowCAM", from ABD-Net), docs/vd-recipes.md section 1.

The released encoder applies one such block to the input of ResNet layer2, layer3 and layer4. Each block mixes
channels with a softmax over a "max minus Gram" affinity and adds the result scaled by a learnable ``gamma``
that starts at 0, so a freshly built block is the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ShallowCAM(nn.Module):
    """Channel attention module: ``out = gamma * softmax(max(E) - E) @ X + x`` with ``E = X X^T``.

    ``X`` is the input reshaped to (B, C, H*W) and the softmax runs over the last (channel) axis. It has no
    channel-dependent parameters; ``channels`` is kept for ``repr`` and for checking inputs.

    Args:
        channels: number of input channels (256 / 512 / 1024 before layer2/3/4 of a ResNet-50).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = int(channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = x.reshape(b, c, h * w)
        energy = torch.bmm(q, q.transpose(1, 2))  # (B, C, C)
        # the row maximum as the released code takes it (torch.max(...)[0]): its backward keeps only the argmax
        # indices, while Tensor.amax would keep the whole (B, C, C) energy alive until backward. The softmax
        # ignores the shift, so outputs and gradients are those of the released code
        # (tests/test_models_attention.py)
        energy = torch.max(energy, dim=-1, keepdim=True).values - energy
        attention = torch.softmax(energy, dim=-1)
        out = torch.bmm(attention, q).reshape(b, c, h, w)
        return self.gamma * out + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
