"""Conventional information-bottleneck baseline ("CIBS", Table 3 rows 7-9): for ablations only.

The conventional IB trades ``I(z; y)`` (the classification term) against ``I(v; z)``. ``I(v; z)`` is estimated with
the Jensen-Shannon mutual-information estimator of Deep InfoMax (Hjelm et al., ICLR'19, Eq. 4; Nowozin et al.'s
f-GAN JS bound), which the paper's section 4.2 names (``I_JS``):

    I_JS(v; z) = E_{p(v, z)}[-softplus(-T(v, z))] - E_{p(v) p(z)}[softplus(T(v', z))]

with a critic network ``T`` on the concatenated pair and ``v'`` drawn from the marginal by shuffling ``v`` within the
batch (the released code's commented-out ``MIEstimator`` does the same with a 3-layer MLP critic).

It is a min-max problem: the critic maximises the bound (a tighter estimate) while the encoder and bottleneck
minimise it. :class:`ConventionalIB` folds both into one loss for one optimiser: its value is the estimate, the
gradient reaching ``v`` and ``z`` is the estimate's (critic held fixed), and the gradient reaching the critic's
parameters is the negated estimate's (inputs held fixed), so a single ``loss.backward()`` + ``step()`` descends for
the network and ascends for the critic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call


def js_mi_lower_bound(scores_joint: Tensor, scores_marginal: Tensor) -> Tensor:
    """Jensen-Shannon MI bound from critic scores (Hjelm et al., Eq. 4; softplus form):
    ``mean(-softplus(-T_joint)) - mean(softplus(T_marginal))``."""
    return (-F.softplus(-scores_joint)).mean() - F.softplus(scores_marginal).mean()


class JSMIEstimator(nn.Module):
    """Critic ``T(v, z)``: an MLP on ``[v, z]`` (dims ``dim_v + dim_z -> hidden -> hidden -> 1``, ReLU).

    No BatchNorm (the released critic has it), because :class:`ConventionalIB` evaluates the critic twice per step
    and BatchNorm would update its running statistics twice.
    """

    def __init__(self, dim_v: int, dim_z: int, hidden: int = 512) -> None:
        super().__init__()
        for name, val in (("dim_v", dim_v), ("dim_z", dim_z), ("hidden", hidden)):
            if not (isinstance(val, int) and val > 0):
                raise ValueError(f"vdreid.losses.JSMIEstimator: `{name}` must be a positive int, got {val!r}")
        self.dim_v, self.dim_z = dim_v, dim_z
        self.net = nn.Sequential(
            nn.Linear(dim_v + dim_z, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def scores(self, v: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([v, z], dim=1)).squeeze(1)

    def forward(self, v: Tensor, z: Tensor, perm: Tensor) -> Tensor:
        """JS estimate of ``I(v; z)`` with marginal samples ``(v[perm], z)``."""
        if v.dim() != 2 or z.dim() != 2 or v.shape[0] != z.shape[0]:
            raise ValueError(
                f"vdreid.losses.JSMIEstimator: `v` {tuple(v.shape)} and `z` {tuple(z.shape)} must be 2-D with the "
                "same number of rows"
            )
        if v.shape[1] != self.dim_v or z.shape[1] != self.dim_z:
            raise ValueError(
                f"vdreid.losses.JSMIEstimator: built for v of dim {self.dim_v} and z of dim {self.dim_z}, got "
                f"{v.shape[1]} and {z.shape[1]}; pass feat_dim_v / feat_dim_z of the model to VDLoss"
            )
        return js_mi_lower_bound(self.scores(v, z), self.scores(v[perm], z))


def minmax_estimate(critic: JSMIEstimator, v: Tensor, z: Tensor, perm: Tensor) -> Tensor:
    """The estimate with split gradients: value ``I_JS(v; z)``; d/d(v, z) of ``+I_JS`` (critic fixed);
    d/d(critic) of ``-I_JS`` (inputs fixed). Minimising it minimises ``I(v; z)`` and trains the critic."""
    frozen = {k: p.detach() for k, p in critic.named_parameters()}
    to_inputs = functional_call(critic, frozen, (v, z, perm))
    to_critic = critic(v.detach(), z.detach(), perm)
    return to_inputs - (to_critic - to_critic.detach())


class ConventionalIB(nn.Module):
    """Sum over branches of the JS estimate of ``I(v; z)`` (conventional IB term; one critic per encoder:
    ``ir``, ``vis`` and ``shared``, the latter used for both views of the shared branch)."""

    CRITICS = ("ir", "vis", "shared")

    def __init__(self, dim_v: int, dim_z: int, hidden: int = 512) -> None:
        super().__init__()
        self.critics = nn.ModuleDict({k: JSMIEstimator(dim_v, dim_z, hidden) for k in self.CRITICS})

    def forward(self, pairs: dict[str, tuple[Tensor, Tensor]], generator: torch.Generator | None = None) -> Tensor:
        """``pairs`` maps a branch name (``ir``, ``vis``, ``shared_x``, ``shared_gray``) to its ``(v, z)`` rows."""
        total: Tensor | None = None
        for name, (v, z) in pairs.items():
            if v.shape[0] < 2:
                continue  # one row has no marginal sample to contrast with
            critic = self.critics["shared" if name.startswith("shared") else name]
            perm = torch.randperm(v.shape[0], generator=generator).to(v.device)
            dt = next(critic.parameters()).dtype
            est = minmax_estimate(critic, v.to(dt), z.to(dt), perm)
            total = est if total is None else total + est
        if total is None:
            raise ValueError("vdreid.losses.ConventionalIB: no branch had at least 2 rows to estimate I(v; z) from")
        return total
