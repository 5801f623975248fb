"""The released code's channel attention (``ShallowCAM``): vdreid's block against the authors' ``CAM_Module``
(restated in tests/original_reference.py) and against the ``Tensor.amax`` form it replaced, outputs and gradients in
float64 and float32, and what the block keeps alive for backward."""

from __future__ import annotations

import pytest
import torch
from original_reference import CAM_Module
from vdreid.models.attention import ShallowCAM

B, C, H, W = 3, 16, 4, 2


def _amax_form(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The form vdreid computed before: the row maximum through ``Tensor.amax`` (written here from the definition)."""
    b, c, h, w = x.shape
    q = x.reshape(b, c, h * w)
    e = torch.bmm(q, q.transpose(1, 2))
    e = e.amax(dim=-1, keepdim=True) - e
    return gamma * torch.bmm(torch.softmax(e, dim=-1), q).reshape(b, c, h, w) + x


def _run(form: str, x0: torch.Tensor, grad: torch.Tensor, gamma: float = 0.7):
    x = x0.clone().requires_grad_()
    if form == "amax":
        g = torch.full((1,), gamma, dtype=x0.dtype, requires_grad=True)
        y = _amax_form(x, g)
    else:
        m = (ShallowCAM(C) if form == "vdreid" else CAM_Module(C)).to(x0.dtype)
        with torch.no_grad():
            m.gamma.fill_(gamma)
        g = m.gamma
        y = m(x)
    y.backward(grad)
    return y.detach(), x.grad, g.grad


def _inputs(dtype: torch.dtype, dead_channels: bool):
    torch.manual_seed(0)
    x = torch.randn(B, C, H, W, dtype=dtype)
    if dead_channels:  # post-ReLU input with all-zero channels: their energy rows are all zeros (ties at the max)
        x = x.relu()
        x[:, :3] = 0
    return x, torch.randn(B, C, H, W, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dead_channels", [False, True])
def test_outputs_and_gradients_are_the_released_codes(dtype, dead_channels):
    x, grad = _inputs(dtype, dead_channels)
    ours, released, amax = (_run(f, x, grad) for f in ("vdreid", "released", "amax"))
    for a, b in zip(ours, released):  # output, d/dx, d/dgamma: the released code's values, bit for bit
        assert torch.equal(a, b)
    assert torch.equal(ours[0], amax[0]) and torch.equal(ours[2], amax[2])  # the shift is the same maximum
    if dead_channels:
        # with ties amax spreads the (rounding-sized) gradient of the shift over the tied entries, max gives it to
        # one index, as the released code does; the difference is the size of one rounding of the gradient
        eps = torch.finfo(dtype).eps
        assert torch.allclose(ours[1], amax[1], rtol=0, atol=8 * eps * float(amax[1].abs().max()))
    else:
        assert torch.equal(ours[1], amax[1])


def _saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward while ``fn(x)`` is built."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


def test_block_keeps_no_energy_tensor_for_backward():
    c, hw = 64, 32
    x = torch.randn(2, c, hw, 1, requires_grad=True)
    cam = ShallowCAM(c)
    with torch.no_grad():
        cam.gamma.fill_(0.5)
    ours = _saved_bytes(cam, x)
    amax = _saved_bytes(lambda t: _amax_form(t, cam.gamma), x)
    energy = 2 * c * c * 4  # one (B, C, C) float32 tensor
    # amax saves its input (the energy) and its result for backward; max saves int64 indices of (B, C, 1)
    assert amax - ours >= energy - 2 * c * 8, (amax, ours, energy)
