"""DEEN, the "Diverse Embedding Expansion Network" of Zhang & Wang (CVPR'23, the LLCM paper), exactly as its
authors' code computes it (ZYK100/LLCM ``DEEN/model.py``; summarised in ``docs/baselines.md``).

Network (:class:`DEENNet`):

* AGW's two-stream layout (reused from :mod:`vdreid.models.agw`): a visible and an infrared stem (``conv1 -> bn1 ->
  relu -> maxpool`` of their own ResNets), then the stages of a third ResNet shared by both modalities;
* an MFA block (:class:`~vdreid.models.deen_mfa.MFABlock`) after each of the first ``dee_stage`` stages, reading the
  stage's output and its input;
* the DEE module (:class:`~vdreid.models.deen_dee.DEEModule`) after the last MFA block: it triples the batch (the
  input embedding and two expanded ones, stacked on the batch dimension);
* one more stage, then average pooling, a BNNeck (BatchNorm1d, bias frozen at 0, weight N(1, 0.01)) and an identity
  classifier ``Linear(D, C, bias=False)`` with weights N(0, 0.001), both applied to all three embeddings.

``dee_stage = 3`` is the SYSU-MM01 / LLCM network (MFA after layers 1-3, DEE on layer 3's 1024 channels, layer 4 with
stride 1, 2048-d features); ``dee_stage = 2`` the RegDB one (MFA after layers 1-2, DEE on 512 channels, then layer 3;
no layer 4, 1024-d features).

Forward contract: ``forward(x, modality)`` with ``modality`` a bool tensor (B,), True = infrared, in any order. The
batch is rearranged into the original's layout (all visible images, then all infrared ones, each group in the
order it came), so the DEE rows, the dropout masks and every batch statistic are those of the authors' code for the
same images. Training returns :class:`DEENOutput` (the ``3B`` rows in that layout plus the row order, which the
criterion needs for the prototype loss). Eval returns the test feature ``(B, D')`` in the input order:

* ``'all'`` (default; the code's ``distmat7``): the concatenation of the six L2-normalised parts, pool and BN feature
  of each of the three embeddings. Its inner product is the code's sum of six similarity matrices; every image's
  feature has norm sqrt(6), so cosine ranks exactly like that sum. The feature is already a combination of
  L2-normalised parts: that *is* the test feature, not a feature the model forgot to leave unnormalised.
* ``'weighted'`` (the code's ``distmat8``): the same parts scaled by sqrt(0.1) (pool) and sqrt(0.9) (BN): the inner
  product is ``0.1 * (pool similarities) + 0.9 * (BN similarities)``; norm sqrt(3) for every image.
* ``'bn'`` / ``'pool'``: the BN / pooled feature of the input embedding alone (``distmat2`` / ``distmat1`` of the
  code's ``train.py``), not normalised.

Pretrained weights: DEEN loads torchvision's ImageNet ResNet-50 into its three ResNets; timm's ``resnet50.tv_in1k``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdreid.models.agw import STAGES, Stem, _resnet, imagenet_tag
from vdreid.models.backbones import create_timm_backbone, set_last_stride_one
from vdreid.models.common import check_modality, check_num_classes, resolve_pretrained, torchreid_factory
from vdreid.models.deen_dee import DEEModule
from vdreid.models.deen_mfa import MFABlock
from vdreid.models.neck import bnneck
from vdreid.models.pooling import AveragePooling
from vdreid.models.weights import hub_state_dict, load_backbone_state, read_state_dict

logger = logging.getLogger(__name__)

FEATURE_MODES = ("all", "weighted", "bn", "pool")
#: weight of the pooled-feature similarities in the 'weighted' test feature (the code's ``a`` in ``distmat8``)
POOL_WEIGHT = 0.1
#: number of embeddings per image after the DEE module
EMBEDDINGS = 3
DEE_STAGES = (2, 3)
_STEM_PARTS = ("conv1", "bn1", "act1", "maxpool")


@dataclass
class DEENOutput:
    """Training output of :class:`DEENNet`: ``3N`` rows for a batch of ``N`` images, in the original's layout.

    Attributes:
        pool: pooled features (3N, D): rows ``[kN, (k+1)N)`` are embedding k (0: the input, 1, 2: the DEE branches);
            inside each block the visible images come first, then the infrared ones.
        bn: BNNeck features (3N, D).
        logits: identity logits of ``bn`` (3N, num_classes).
        order: (N,) the input row of each row of a block (``pids[order]`` labels the block).
        modality: (N,) True for the infrared rows of a block (the last ones).
    """

    pool: Tensor
    bn: Tensor
    logits: Tensor
    order: Tensor
    modality: Tensor


def original_row_order(is_ir: Tensor) -> tuple[Tensor, int]:
    """``(order, n_visible)``: the input rows of the visible images, then those of the infrared ones, each group in
    input order (the authors' code feeds ``cat(visible batch, infrared batch)``)."""
    vis = torch.nonzero(~is_ir).flatten()
    return torch.cat([vis, torch.nonzero(is_ir).flatten()]), int(vis.numel())


class DEENNet(nn.Module):
    """DEEN's network (module docstring).

    Args:
        stem_vis, stem_ir: the modality-specific stems.
        shared: a timm ResNet whose stem was removed; its ``layer1 .. layer{dee_stage + 1}`` are the shared stages
            (later stages are removed).
        num_classes: number of training identities.
        dee_stage: the stage after which the DEE module sits (3: SYSU-MM01 / LLCM, 2: RegDB).
        dropout: the DEE module's dropout probability (0.01).
        feature_mode: eval output, one of :data:`FEATURE_MODES`.
        config: the build arguments, kept for checkpoints and provenance.
    """

    feature_modes = FEATURE_MODES
    needs_vdreid_engine = True  # torchreid's engines pass no modality and cannot apply DEEN's loss

    def __init__(
        self,
        stem_vis: Stem,
        stem_ir: Stem,
        shared: nn.Module,
        num_classes: int,
        dee_stage: int = 3,
        dropout: float = 0.01,
        feature_mode: str = "all",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if dee_stage not in DEE_STAGES:
            raise ValueError(f"dee_stage must be one of {DEE_STAGES} (3: SYSU-MM01/LLCM, 2: RegDB), got {dee_stage!r}")
        self.stem_vis = stem_vis
        self.stem_ir = stem_ir
        self.shared = shared
        self.dee_stage = int(dee_stage)
        self.stages = STAGES[: dee_stage + 1]
        info = {f["module"]: f for f in shared.feature_info}
        low, prev = int(info["act1"]["num_chs"]), int(info["act1"]["reduction"]) * 2  # after the stem's max-pool
        self.mfa = nn.ModuleDict()
        for stage in self.stages[:-1]:
            high, reduction = int(info[stage]["num_chs"]), int(info[stage]["reduction"])
            self.mfa[stage] = MFABlock(high, low, reduction // prev)
            low, prev = high, reduction
        self.dee = DEEModule(low, dropout)
        self.out_dim = int(info[self.stages[-1]]["num_chs"])
        self.pool = AveragePooling()
        self.bnneck = bnneck(self.out_dim, weight_std=0.01)
        self.classifier = nn.Linear(self.out_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, 0.0, 0.001)
        self.feature_mode = feature_mode
        self.config = dict(config or {})

    # ----------------------------------------------------------------- feature modes
    @property
    def feature_mode(self) -> str:
        return self._feature_mode

    @feature_mode.setter
    def feature_mode(self, mode: str) -> None:
        if mode not in FEATURE_MODES:
            raise ValueError(f"DEENNet feature_mode must be one of {FEATURE_MODES}, got {mode!r}")
        self._feature_mode = mode

    @property
    def test_needs_modality(self) -> bool:
        """Every feature mode runs each image through its modality's stem."""
        return True

    def feature_dim(self, mode: str | None = None) -> int:
        """Width of the eval feature: 6 D for 'all' and 'weighted' (six parts), D for 'bn' and 'pool'."""
        mode = self.feature_mode if mode is None else mode
        if mode not in FEATURE_MODES:
            raise ValueError(f"DEENNet feature mode must be one of {FEATURE_MODES}, got {mode!r}")
        return self.out_dim * (2 * EMBEDDINGS if mode in ("all", "weighted") else 1)

    # ----------------------------------------------------------------- forward
    def stems(self, x: Tensor, n_vis: int) -> Tensor:
        """Rows ``[0, n_vis)`` through the visible stem, the rest through the infrared one."""
        if n_vis == x.shape[0]:
            return self.stem_vis(x)
        if n_vis == 0:
            return self.stem_ir(x)
        return torch.cat([self.stem_vis(x[:n_vis]), self.stem_ir(x[n_vis:])], dim=0)

    def trunk(self, h: Tensor, expand: bool = True) -> Tensor:
        """The shared stages with the MFA blocks and the DEE module (``expand=False`` leaves DEE out: the first
        third of its output is its input, which is all the 'bn' and 'pool' test features read)."""
        low = h
        for stage in self.stages[:-1]:
            high = getattr(self.shared, stage)(low)
            low = self.mfa[stage](high, low)
        if expand:
            low = self.dee(low)
        return getattr(self.shared, self.stages[-1])(low)

    def test_feature(self, pool: Tensor, bn: Tensor, n: int) -> Tensor:
        """The eval feature of ``feature_mode`` from the ``(3n, D)`` (or ``(n, D)``) pooled and BN features."""
        if self.feature_mode == "pool":
            return pool[:n]
        if self.feature_mode == "bn":
            return bn[:n]
        w_pool, w_bn = (math.sqrt(POOL_WEIGHT), math.sqrt(1.0 - POOL_WEIGHT)) if self.feature_mode == "weighted" else (
            1.0, 1.0)
        parts = []
        for k in range(EMBEDDINGS):
            rows = slice(k * n, (k + 1) * n)
            parts += [F.normalize(pool[rows], dim=1) * w_pool, F.normalize(bn[rows], dim=1) * w_bn]
        return torch.cat(parts, dim=1)

    def forward(self, x: Tensor, modality: Tensor | None = None) -> DEENOutput | Tensor:
        """Training: :class:`DEENOutput`. Eval: the (B, feature_dim) test feature of ``feature_mode``."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"DEENNet expects images of shape (B, 3, H, W), got {shape}")
        n = x.shape[0]
        is_ir = check_modality(modality, n, "DEENNet", "deen")
        order, n_vis = original_row_order(is_ir)
        identity = bool((order == torch.arange(n)).all())
        dev_order = order.to(x.device, non_blocking=True)
        xs = x if identity else x[dev_order]
        expand = self.training or self.feature_mode in ("all", "weighted")
        pool = self.pool(self.trunk(self.stems(xs, n_vis), expand))
        bn = self.bnneck(pool)
        if self.training:
            return DEENOutput(pool=pool, bn=bn, logits=self.classifier(bn), order=dev_order,
                              modality=is_ir[order].to(x.device, non_blocking=True))
        feat = self.test_feature(pool, bn, n)
        if identity:
            return feat
        return feat[torch.argsort(dev_order)]

    # ----------------------------------------------------------------- weights
    def load_imagenet_state(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Load one ImageNet ResNet state dict (timm or torchvision keys) into both stems and the shared stages,
        as DEEN loads the same ImageNet weights into its three ResNets."""
        backbone = self.config.get("timm_name") or self.config.get("backbone", "resnet50")
        full = create_timm_backbone(backbone, **self.config.get("timm_kwargs", {}))
        load_backbone_state(full, state, source=source)  # converts and checks every key
        full_state = full.state_dict()
        stem_state = {k: v for k, v in full_state.items() if k.startswith(("conv1.", "bn1."))}
        self.stem_vis.load_state_dict(stem_state, strict=True)
        self.stem_ir.load_state_dict(stem_state, strict=True)
        own = self.shared.state_dict()
        self.shared.load_state_dict({k: v for k, v in full_state.items() if k in own}, strict=True)

    def load_backbone_weights(self, path: str) -> None:
        """Load a local ImageNet weights file (timm or torchvision format) into the stems and shared stages."""
        self.load_imagenet_state(read_state_dict(path), source=f'"{path}"')


def build_deen(
    backbone: str = "resnet50",
    num_classes: int = 395,
    pretrained: bool | str = False,
    pretrained_path: str | None = None,
    dee_stage: int = 3,
    dropout: float = 0.01,
    feature_mode: str = "all",
    **timm_kwargs: Any,
) -> DEENNet:
    """Build :class:`DEENNet`.

    Args:
        backbone: timm ResNet name ('resnet50' is DEEN's; 'resnet18' for CPU tests and demos).
        num_classes: number of training identities (395 SYSU-MM01, 206 RegDB, 713 LLCM).
        pretrained: load ImageNet weights into the two stems and the shared stages; a string is taken as
            ``pretrained_path``.
        pretrained_path: local weights file (timm or torchvision ResNet state dict); without it, pretrained=True
            takes ``<backbone>.tv_in1k`` (torchvision's ImageNet weights, as DEEN) from the hub cache or the hub.
        dee_stage: 3 (SYSU-MM01 / LLCM network) or 2 (RegDB network: no layer 4).
        dropout: the DEE module's dropout probability.
        feature_mode: eval output, one of :data:`FEATURE_MODES`.
        timm_kwargs: passed to ``timm.create_model``.
    """
    check_num_classes(num_classes)
    if dee_stage not in DEE_STAGES:
        raise ValueError(f"dee_stage must be one of {DEE_STAGES} (3: SYSU-MM01/LLCM, 2: RegDB), got {dee_stage!r}")
    if feature_mode not in FEATURE_MODES:
        raise ValueError(f"feature_mode must be one of {FEATURE_MODES}, got {feature_mode!r}")
    pretrained, pretrained_path = resolve_pretrained(pretrained, pretrained_path)
    timm_name = imagenet_tag(backbone)
    # Three ResNets as in DEEN (independent random initialisation); only the stems of the first two are kept.
    stem_vis = Stem(_resnet(timm_name, **timm_kwargs))
    stem_ir = Stem(_resnet(timm_name, **timm_kwargs))
    shared = _resnet(timm_name, **timm_kwargs)
    if dee_stage == 3:
        set_last_stride_one(shared, backbone)  # DEEN's layer 4 keeps stride 1
    for stage in STAGES[dee_stage + 1 :]:
        setattr(shared, stage, nn.Identity())  # built and saved by DEEN's code, never run
    for part in _STEM_PARTS:
        setattr(shared, part, nn.Identity())
    config = dict(
        backbone=backbone,
        timm_name=timm_name,
        num_classes=num_classes,
        pretrained=bool(pretrained),
        pretrained_path=pretrained_path,
        dee_stage=int(dee_stage),
        dropout=float(dropout),
        feature_mode=feature_mode,
        timm_kwargs=dict(timm_kwargs),
    )
    net = DEENNet(stem_vis, stem_ir, shared, num_classes, dee_stage, dropout, feature_mode, config)
    if pretrained:
        if pretrained_path:
            net.load_imagenet_state(read_state_dict(pretrained_path), source=f'"{pretrained_path}"')
        else:
            state = hub_state_dict(timm_name, shared, **timm_kwargs)  # shared keeps timm's pretrained_cfg
            net.load_imagenet_state(state, source=f"timm hub weights of '{timm_name}'")
    return net


# ----------------------------------------------------------------- torchreid registry presets
DEEN_PRESETS: dict[str, dict[str, Any]] = {
    "deen": dict(backbone="resnet50", dee_stage=3),  # SYSU-MM01 / LLCM network
    "deen_regdb": dict(backbone="resnet50", dee_stage=2),  # RegDB network (no layer 4)
    "deen_resnet18": dict(backbone="resnet18", dee_stage=3),  # the same code on ResNet-18, for CPU tests and demos
}


def make_deen_factory(name: str):
    """torchreid factory of preset ``name`` (:func:`~vdreid.models.common.torchreid_factory`): ``loss`` is ignored,
    DEEN needs each image's modality, which torchreid's engines do not pass, so it trains with vdreid's trainer."""
    return torchreid_factory(name, DEEN_PRESETS[name], build_deen)
