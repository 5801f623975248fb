"""A VD loss term added from outside the package: the hetero-centre loss (Zhu et al., "Hetero-Center Loss for
Cross-Modality Person Re-Identification", Neurocomputing 2020), registered through the public call
``vdreid.losses.register_term`` exactly as VD's built-in terms are. tests/test_losses_terms.py loads this file (in
process, and with ``vdreid train --plugin``), switches it on with ``vd.weights.hc`` and trains with it, without any
edit of vdreid's package. ``docs/adding-a-loss.md`` walks through it.

The term: for every identity of the batch with images of both modalities, the squared Euclidean distance between the
centre (mean) of its infrared images' features and the centre of its visible images' features, averaged over those
identities. The features are the shared branch's (the one encoder that sees both modalities): its representation
``z`` (option ``feature: z``, needing the shared bottleneck) or its observation ``v`` (``feature: v``), on the raw
view ``x`` of every image. Option ``normalize``: L2-normalise the features first (the centres then lie in the unit
ball, so the term is at most 4). Off by default in both recipes (weight 0): a config turns it on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from vdreid.losses import Needs, TermContext, TermOption, register_term
from vdreid.models.outputs import VDOutput


def hetero_center_term(out: VDOutput, pids: Tensor, ctx: TermContext) -> Tensor:
    """Mean over the batch's identities seen in both modalities of ``||c_ir - c_vis||^2``."""
    branch = out.shared_x
    if branch is None:
        return out.is_ir.new_zeros((), dtype=torch.float32)
    feat = branch.z if ctx.options["feature"] == "z" else branch.v
    if feat is None:  # no shared bottleneck: the needs below keep the term off then
        return out.is_ir.new_zeros((), dtype=torch.float32)
    feat = feat.to(torch.promote_types(feat.dtype, torch.float32))  # float32 at least (bf16/fp16 under autocast)
    if ctx.options["normalize"]:
        feat = F.normalize(feat, dim=1)
    y, ir = pids[branch.index], out.is_ir[branch.index]
    ids = torch.unique(y)
    # one-hot (identity x row) masks per modality: the centres are two matrix products, no Python loop over ids
    member = y.unsqueeze(0) == ids.unsqueeze(1)
    m_ir, m_vis = (member & ir.unsqueeze(0)).to(feat.dtype), (member & ~ir.unsqueeze(0)).to(feat.dtype)
    n_ir, n_vis = m_ir.sum(1), m_vis.sum(1)
    both = (n_ir > 0) & (n_vis > 0)
    if not bool(both.any()):
        return feat.new_zeros(())
    c_ir = (m_ir @ feat)[both] / n_ir[both].unsqueeze(1)
    c_vis = (m_vis @ feat)[both] / n_vis[both].unsqueeze(1)
    return (c_ir - c_vis).pow(2).sum(1).mean()


register_term(
    "hc",
    hetero_center_term,
    defaults={"paper": 0.0, "official": 0.0},
    needs=Needs(encoders={"shared"}),
    options={
        "feature": TermOption("z", choices=("z", "v"), doc="the shared branch's representation z or observation v"),
        "normalize": TermOption(True, doc="L2-normalise the features before taking the centres"),
    },
    doc="hetero-centre loss: pull each identity's infrared and visible feature centres together",
)
