"""Typed training outputs of the VD network (names from the paper: observation ``v``, representation ``z``).

Contract shared by models, losses and the engine. In training mode ``VDNet.forward(x, modality)`` returns a
:class:`VDOutput`; in eval mode it returns one 2-D feature tensor chosen by the feature mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class BranchOutput:
    """What one encoder ``E`` + information bottleneck ``B`` produced for some images of the batch.

    Attributes:
        v: observation, the encoder's post-BNNeck feature (N, Dv).
        v_pre: the pooled feature before the BNNeck (N, Dv) (what BNNeck-style triplet losses use).
        v_logits: identity classifier on ``v`` (N, C); softmax gives ``P_v``.
        z: representation from the bottleneck (N, Dz); Gaussian form: a reparameterised sample in training.
            None for a branch built without a bottleneck (paper Table 3 rows without ``B``).
        z_logits: identity classifier on ``z`` (N, C); softmax gives ``P_z``; None without a bottleneck.
        index: LongTensor (N,) of the batch positions these rows belong to.
        mu, logvar: Gaussian bottleneck only, the posterior's mean and log-variance (N, Dz).
    """

    v: Tensor
    v_pre: Tensor
    v_logits: Tensor
    z: Tensor | None
    z_logits: Tensor | None
    index: Tensor
    mu: Tensor | None = None
    logvar: Tensor | None = None


@dataclass
class VDOutput:
    """All branches and views of one training forward.

    ``ir``/``vis``: the modality-specific branches (E_ir+B_ir, E_vis+B_vis). With ``routing='official'`` they see
    ``gray(x)`` and ``x`` of every image (``index`` = all positions); with ``routing='modality'`` they see the
    infrared and visible images only. ``shared_x``/``shared_gray``: the shared branch (E_S+B_S) on the two views of
    every image. ``is_ir``: bool (B,) modality of each batch image. A branch the network does not build (Table 3
    ablation rows) is None.
    """

    ir: BranchOutput | None
    vis: BranchOutput | None
    shared_x: BranchOutput | None
    shared_gray: BranchOutput | None
    is_ir: Tensor
    routing: str

    def branches(self) -> dict[str, BranchOutput]:
        """The outputs that exist, keyed 'ir', 'vis', 'shared_x', 'shared_gray'."""
        every = {"ir": self.ir, "vis": self.vis, "shared_x": self.shared_x, "shared_gray": self.shared_gray}
        return {k: v for k, v in every.items() if v is not None}


def gray_view(x: Tensor) -> Tensor:
    """Luminance 0.2989 R + 0.5870 G + 0.1140 B replicated to 3 channels, applied to the (already normalised)
    tensor exactly as the released code's ``to_edge`` does (docs/vd-recipes.md section 1)."""
    w = torch.tensor([0.2989, 0.5870, 0.1140], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    g = (x * w).sum(dim=1, keepdim=True)
    return g.expand(-1, 3, -1, -1).contiguous()
