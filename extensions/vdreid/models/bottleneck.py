"""Information bottleneck ``B`` (``E(z|v)`` in the paper) and its identity classifier ``P_z``.

Two forms (paper section 4.2 vs. the released code, docs/vd-recipes.md sections 1 and 3):

* ``deterministic``: MLP ``v -> h1 -> BN -> ReLU -> h2 -> BN -> ReLU -> z`` (paper sizes 1024-512-256; the released
  ``ChannelCompress`` is 1000-500-512).
* ``gaussian``: the same MLP whose last layer outputs ``2 x z_dim`` read as the posterior mean and log-variance
  (the paper's "output of size 2 x 256 that parametrizes mean and variance"); ``z = mu + exp(logvar / 2) * eps``
  in training (reparameterisation), ``z = mu`` in evaluation. :func:`gaussian_kl` gives the KL to N(0, I) used by
  the conventional-IB baseline.

The classifier on ``z`` is a Linear layer, or the released ``Linear -> BN -> LeakyReLU(0.1) -> Dropout(0.5) ->
Linear`` when ``z_classifier_hidden`` is set (256 in the released code). Initialisation follows the released code:
Linear kaiming-normal (fan_out) with zero bias and BN1d weights N(1, 0.02) in the MLP, classifier Linear N(0, 0.001).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

BOTTLENECK_FORMS = ("deterministic", "gaussian")


def gaussian_kl(mu: Tensor, logvar: Tensor, reduction: str = "mean") -> Tensor:
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ) = 0.5 * sum_d (mu^2 + exp(logvar) - 1 - logvar).

    Summed over the latent dimensions of each sample; ``reduction='mean'`` averages over samples (the
    per-sample mean), ``'sum'`` sums, ``'none'`` returns the (N,) vector.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"gaussian_kl: mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
    if mu.dim() != 2:
        raise ValueError(f"gaussian_kl expects (N, D) tensors, got {tuple(mu.shape)}")
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
    if reduction == "mean":
        return kl.mean() if kl.numel() else kl.sum()
    if reduction == "sum":
        return kl.sum()
    if reduction == "none":
        return kl
    raise ValueError(f"gaussian_kl: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _init_mlp(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out")
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm1d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _init_classifier(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.001)
        nn.init.zeros_(m.bias)


class InformationBottleneck(nn.Module):
    """``B``: MLP from the observation ``v`` to the representation ``z``, plus the classifier giving ``P_z``.

    Args:
        in_dim: dimension of ``v`` (2048 for ResNet-50).
        num_classes: number of training identities.
        dims: hidden sizes followed by the ``z`` size, e.g. (1024, 512, 256) (paper) or (1000, 500, 512) (released).
        form: 'deterministic' or 'gaussian' (the last layer then outputs 2 * dims[-1]: mean and log-variance).
        z_classifier_hidden: None for a Linear classifier, or the hidden size of the released classifier (256).

    ``forward(v)`` returns ``(z, z_logits, mu, logvar)``; ``mu``/``logvar`` are None for the deterministic form.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        dims: Sequence[int] = (1024, 512, 256),
        form: str = "deterministic",
        z_classifier_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if form not in BOTTLENECK_FORMS:
            raise ValueError(f"bottleneck must be one of {BOTTLENECK_FORMS}, got {form!r}")
        dims = tuple(int(d) for d in dims)
        if len(dims) < 1 or any(d <= 0 for d in dims):
            raise ValueError(f"bottleneck_dims must be positive sizes (hidden..., z_dim), got {dims!r}")
        self.form = form
        self.z_dim = dims[-1]
        layers: list[nn.Module] = []
        prev = in_dim
        for h in dims[:-1]:
            layers += [nn.Linear(prev, h), nn.BatchNorm1d(h), nn.ReLU()]
            prev = h
        out = self.z_dim * (2 if form == "gaussian" else 1)
        layers.append(nn.Linear(prev, out))
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_mlp)
        if z_classifier_hidden is None:
            self.classifier: nn.Module = nn.Linear(self.z_dim, num_classes)
        else:
            h = int(z_classifier_hidden)
            if h <= 0:
                raise ValueError(f"z_classifier_hidden must be a positive size or None, got {z_classifier_hidden!r}")
            self.classifier = nn.Sequential(
                nn.Linear(self.z_dim, h),
                nn.BatchNorm1d(h),
                nn.LeakyReLU(0.1),
                nn.Dropout(0.5),
                nn.Linear(h, num_classes),
            )
        self.classifier.apply(_init_classifier)

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        h = self.mlp(v)
        mu = logvar = None
        if self.form == "gaussian":
            mu, logvar = h[:, : self.z_dim], h[:, self.z_dim :]
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        else:
            z = h
        return z, self.classifier(z), mu, logvar
