"""The BNNeck head shared by the single-embedding baselines (AGW, the plain BNNeck baseline) and their output.

BNNeck (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-ID", CVPRW'19): the pooled feature
feeds the metric loss, a BatchNorm1d with a frozen zero bias gives the feature the identity classifier reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class NeckOutput:
    """Training output of a single-embedding model.

    Attributes:
        pool: the pooled feature before the BNNeck (B, D); the metric loss (triplet / WRT) uses it.
        bn: the BNNeck feature (B, D).
        logits: identity classifier on ``bn`` (B, num_classes).
    """

    pool: Tensor
    bn: Tensor
    logits: Tensor


def bnneck(dim: int, weight_std: float = 0.0) -> nn.BatchNorm1d:
    """BatchNorm1d(dim) with bias 0 and frozen (no gradient); weight 1, or N(1, weight_std) when ``weight_std > 0``
    (AGW ``model.py`` initialises it with ``weights_init_kaiming``: N(1, 0.01))."""
    bn = nn.BatchNorm1d(dim)
    if weight_std > 0:
        nn.init.normal_(bn.weight, 1.0, weight_std)
    else:
        nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn
