"""AGW, the cross-modality baseline of Ye et al., "Deep Learning for Person Re-identification: A Survey and
Outlook" (TPAMI'21), exactly as its authors' code computes it (mangye16/Cross-Modal-Re-ID-baseline ``model.py``,
``resnet.py``; summarised in ``docs/baselines.md``).

Network (``AGWNet``):

* two modality-specific stems, each the ``conv1 -> bn1 -> relu -> maxpool`` of its own ResNet (``stem_vis`` for
  visible, ``stem_ir`` for infrared images), then ``layer1 .. layer4`` of a third ResNet shared by both modalities
  (``shared``), last stride 1;
* non-local blocks (:class:`~vdreid.models.nonlocal_block.NonLocalBlock`) after the last ``non_local[i]``
  bottlenecks of stage ``i`` (AGW: ``(0, 2, 3, 0)``, i.e. after blocks 2, 3 of layer2 and 3, 4, 5 of layer3 of a
  ResNet-50). Stages with fewer blocks than requested (e.g. ResNet-18's two blocks per stage) get one block after
  each of their bottlenecks: the count is clipped to the stage length;
* GeM pooling with a fixed p = 3 and eps after the mean (:mod:`vdreid.models.pooling`) or average pooling;
* a BNNeck (BatchNorm1d, bias frozen at 0, weight N(1, 0.01)) and an identity classifier ``Linear(D, C,
  bias=False)`` with weights N(0, 0.001), both shared.

``gem=False, non_local=(0, 0, 0, 0)`` is AGW's ``--method base``.

Transformer encoders (ViT, DeiT, Swin, ...; docs/encoders.md): the two-stream layout carries over as
modality-specific *patch embeddings* (the transformer's stem: the linear projection of pixels, with Swin's
LayerNorm) and every block shared, pooled by the encoder's own head (class token, DeiT's class and distillation
tokens, Swin's mean), then AGW's BNNeck and classifier. AGW's non-local blocks sit between ResNet stages and GeM
pools a non-negative ReLU map, neither of which a token encoder has, so they must be off (``non_local=(0, 0, 0, 0)``,
``gem=False``); asking for them is a ConfigError saying so. Last stride has no meaning there.

Forward contract: ``forward(x, modality)`` with ``modality`` a bool tensor (B,), True = infrared, in any order.
Each image goes through its modality's stem, then the shared part runs on the whole batch in the original order:
BatchNorm statistics of the shared part cover all images and each stem's BatchNorm only its own modality, as in
AGW's ``cat(stem_v(x1), stem_t(x2))`` (the order of a batch does not change BatchNorm statistics). Training returns
:class:`~vdreid.models.neck.NeckOutput` ``(pool, bn, logits)``; eval returns the test feature (B, D), *not*
L2-normalised: ``feature_mode`` 'bn' (the BNNeck feature, AGW's "FC", the default) or 'pool' (the GeM feature,
AGW's "POOL").

Pretrained weights: AGW loads torchvision's ImageNet ResNet-50 into all three ResNets; timm names that checkpoint
``resnet50.tv_in1k`` (torchvision's ``IMAGENET1K_V1`` weights), so the hub path asks for ``<backbone>.tv_in1k``
whenever timm has that tag.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import Tensor, nn

from vdreid.errors import ConfigError
from vdreid.models.backbones import (
    EncoderLayout,
    _is_timm_resnet,
    build_timm_encoder,
    check_image_size,
    create_timm_backbone,
    describe_encoder,
    describe_layout,
    encoder_layout,
    is_fixed_size,
    set_last_stride_one,
)
from vdreid.models.common import (
    SingleWidthFeatureModes,
    check_modality,
    check_num_classes,
    resolve_pretrained,
    torchreid_factory,
)
from vdreid.models.neck import NeckOutput, bnneck
from vdreid.models.nonlocal_block import NonLocalBlock
from vdreid.models.pooling import AveragePooling, GeneralizedMeanPooling
from vdreid.models.weights import hub_state_dict, load_backbone_state, read_state_dict

logger = logging.getLogger(__name__)

FEATURE_MODES = ("bn", "pool")
STAGES = ("layer1", "layer2", "layer3", "layer4")
AGW_NON_LOCAL = (0, 2, 3, 0)
_STEM_PARTS = ("conv1", "bn1", "act1", "maxpool")
PATCH_STEM_PARTS = ("patch_embed",)  # the stem of a transformer encoder


def imagenet_tag(backbone: str) -> str:
    """The timm name whose ImageNet weights AGW uses: ``<backbone>.tv_in1k`` (torchvision's) when timm has it and
    ``backbone`` carries no tag, else ``backbone`` unchanged."""
    tagged = f"{backbone}.tv_in1k"
    if "." not in backbone and tagged in timm.list_pretrained(tagged):  # is_model() accepts any tag
        return tagged
    return backbone


class Stem(nn.Module):
    """``conv1 -> bn1 -> act1 -> maxpool`` taken from a timm ResNet (its modules, so its key names); with
    ``parts=PATCH_STEM_PARTS`` the ``patch_embed`` of a timm ViT / DeiT / Swin."""

    def __init__(self, resnet: nn.Module, parts: tuple[str, ...] = _STEM_PARTS) -> None:
        super().__init__()
        self.parts = tuple(parts)
        for part in self.parts:
            setattr(self, part, getattr(resnet, part))

    def forward(self, x: Tensor) -> Tensor:
        for part in getattr(self, "parts", _STEM_PARTS):  # a Stem pickled before `parts` existed is a ResNet's
            x = getattr(self, part)(x)
        return x


class EmbeddedPatches(nn.Module):
    """The shared transformer's ``patch_embed`` in the two-stream layout: the modality-specific stems have embedded
    the patches already, so it passes them through. It keeps the replaced embedding's public plain attributes
    (``grid_size``, ``patch_size``, ...), which timm's forward reads (e.g. ViT's dynamic position embedding)."""

    def __init__(self, replaced: nn.Module) -> None:
        super().__init__()
        for key, value in vars(replaced).items():
            if not key.startswith("_") and key != "training" and not isinstance(value, (nn.Module, Tensor)):
                setattr(self, key, value)

    def forward(self, x: Tensor) -> Tensor:
        return x


class AGWNet(SingleWidthFeatureModes, nn.Module):
    """AGW's two-stream network (module docstring).

    Args:
        stem_vis, stem_ir: the modality-specific stems.
        shared: a timm ResNet whose stem was removed; its ``layer1 .. layer4`` are the shared stages. Or a timm
            transformer whose ``patch_embed`` is an :class:`EmbeddedPatches` (stems: patch embeddings); it is then
            pooled by its own head, with ``non_local`` all 0 and ``gem=False``.
        non_local: number of non-local blocks after the last bottlenecks of each of the four stages.
        gem: GeM pooling (True) or average pooling (False).
        num_classes: number of training identities.
        feature_mode: eval output, 'bn' or 'pool'.
        config: the build arguments, kept for checkpoints and provenance.
    """

    feature_modes = FEATURE_MODES
    needs_vdreid_engine = True  # torchreid's engines pass no modality and apply one fixed loss to a NeckOutput
    test_needs_modality = True  # each image goes through its modality's stem, in eval too

    def __init__(
        self,
        stem_vis: Stem,
        stem_ir: Stem,
        shared: nn.Module,
        num_classes: int,
        non_local: Sequence[int] = AGW_NON_LOCAL,
        gem: bool = True,
        feature_mode: str = "bn",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.stem_vis = stem_vis
        self.stem_ir = stem_ir
        self.shared = shared
        self.token_encoder = not _is_timm_resnet(shared)
        self.layout: EncoderLayout | None = None  # set by build_agw for transformer encoders
        self.non_local = nn.ModuleDict()
        self.pool: nn.Module | None = None
        if self.token_encoder:
            _check_token_options(non_local, gem, type(shared).__name__)
            self.out_dim = int(getattr(shared, "head_hidden_size", 0) or shared.num_features)
            self.non_local_counts: tuple[int, ...] = (0, 0, 0, 0)
        else:
            self.out_dim = int(shared.num_features)
            channels = {f["module"]: int(f["num_chs"]) for f in shared.feature_info}
            counts = []
            for stage, n in zip(STAGES, non_local):
                n = min(int(n), len(getattr(shared, stage)))
                counts.append(n)
                if n > 0:
                    self.non_local[stage] = nn.ModuleList(NonLocalBlock(channels[stage]) for _ in range(n))
            self.non_local_counts = tuple(counts)
            self.pool = GeneralizedMeanPooling(3.0, 1e-12) if gem else AveragePooling()
        self.bnneck = bnneck(self.out_dim, weight_std=0.01)
        self.classifier = nn.Linear(self.out_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, 0.0, 0.001)
        self.feature_mode = feature_mode
        self.config = dict(config or {})

    # ----------------------------------------------------------------- feature modes

    # ----------------------------------------------------------------- forward
    def stems(self, x: Tensor, is_ir: Tensor) -> Tensor:
        """Each image through its modality's stem, rows in the input order (``is_ir``: CPU bool (B,))."""
        if not bool(is_ir.any()):
            return self.stem_vis(x)
        if bool(is_ir.all()):
            return self.stem_ir(x)
        vis_idx = torch.nonzero(~is_ir).flatten()
        ir_idx = torch.nonzero(is_ir).flatten()
        inverse = torch.argsort(torch.cat([vis_idx, ir_idx]))
        dev = x.device
        vis_idx, ir_idx, inverse = (t.to(dev, non_blocking=True) for t in (vis_idx, ir_idx, inverse))
        h = torch.cat([self.stem_vis(x[vis_idx]), self.stem_ir(x[ir_idx])], dim=0)
        return h[inverse]

    def shared_stages(self, h: Tensor) -> Tensor:
        """``layer1 .. layer4`` with the non-local blocks after the last bottlenecks of each stage (a transformer:
        its ``forward_features`` after the patch embedding)."""
        if self.token_encoder:
            return self.shared.forward_features(h)
        for stage in STAGES:
            blocks = getattr(self.shared, stage)
            nls = self.non_local[stage] if stage in self.non_local else ()
            first = len(blocks) - len(nls)
            for i, block in enumerate(blocks):
                h = block(h)
                if i >= first:
                    h = nls[i - first](h)
        return h

    def forward(self, x: Tensor, modality: Tensor | None = None) -> NeckOutput | Tensor:
        """Training: :class:`NeckOutput`. Eval: the (B, D) test feature of ``feature_mode``, not normalised."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"AGWNet expects images of shape (B, 3, H, W), got {shape}")
        is_ir = check_modality(modality, x.shape[0], "AGWNet", "agw")
        if self.token_encoder and self.layout is not None:
            check_image_size(self.layout, int(x.shape[-2]), int(x.shape[-1]))
        pool = self.pooled(self.shared_stages(self.stems(x, is_ir)))
        bn = self.bnneck(pool)
        if self.training:
            return NeckOutput(pool=pool, bn=bn, logits=self.classifier(bn))
        return bn if self.feature_mode == "bn" else pool

    def pooled(self, f: Tensor) -> Tensor:
        """The pooled feature of the shared stages' output: GeM / average pooling, or a transformer's own head
        (``forward_head(pre_logits=True)``)."""
        if self.token_encoder:
            return self.shared.forward_head(f, pre_logits=True)
        return self.pool(f)

    def describe_encoder(self) -> str:
        """One line: the timm encoder, what last stride and pooling mean for it, and the two-stream split."""
        if self.token_encoder and self.layout is not None:
            line = describe_layout(self.layout)
        else:
            backbone = self.config.get("timm_name") or self.config.get("backbone", "resnet50")
            line = describe_encoder(backbone, int(self.config.get("last_stride", 1)), self.config.get("input_size"),
                                    **self.config.get("timm_kwargs", {}))
        split = ("modality-specific patch embeddings, every block shared" if self.token_encoder else
                 "modality-specific conv1/bn1/maxpool stems, layer1..layer4 shared")
        return f"{line}; two-stream: {split}"

    # ----------------------------------------------------------------- weights
    def load_imagenet_state(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Load one ImageNet state dict (timm or torchvision keys) into both stems and the shared stages, as AGW
        loads the same ImageNet weights into its three ResNets (a transformer: its patch embedding into both
        stems, everything else into the shared encoder)."""
        backbone = self.config.get("timm_name") or self.config.get("backbone", "resnet50")
        timm_kwargs = self.config.get("timm_kwargs", {})
        if self.token_encoder:
            full, _ = build_timm_encoder(backbone, int(self.config.get("last_stride", 1)),
                                         self.config.get("input_size"), **timm_kwargs)
        else:
            full = create_timm_backbone(backbone, **timm_kwargs)
        load_backbone_state(full, state, source=source)  # converts and checks every key
        full_state = full.state_dict()
        stem_prefixes = tuple(f"{p}." for p in self.stem_vis.parts)
        stem_state = {k: v for k, v in full_state.items() if k.startswith(stem_prefixes)}
        self.stem_vis.load_state_dict(stem_state, strict=True)
        self.stem_ir.load_state_dict(stem_state, strict=True)
        if self.token_encoder:
            shared_state = {k: v for k, v in full_state.items() if not k.startswith(stem_prefixes)}
        else:
            shared_state = {k: v for k, v in full_state.items() if k.startswith(STAGES)}
        self.shared.load_state_dict(shared_state, strict=True)

    def load_backbone_weights(self, path: str) -> None:
        """Load a local ImageNet weights file (timm or torchvision format) into the stems and shared stages."""
        self.load_imagenet_state(read_state_dict(path), source=f'"{path}"')


def _resnet(backbone: str, **timm_kwargs: Any) -> nn.Module:
    model = create_timm_backbone(backbone, **timm_kwargs)
    if not _is_timm_resnet(model):
        raise ValueError(
            f"AGW needs a timm ResNet-family backbone (conv1/bn1/act1/maxpool stem and layer1..layer4) or a "
            f"transformer with a patch embedding (ViT, DeiT, Swin: modality-specific patch embeddings), "
            f"got '{backbone}' ({type(model).__name__}) (argument backbone / config key model.backbone)"
        )
    return model


def _check_token_options(non_local: Sequence[int], gem: bool, family: str) -> None:
    """AGW's non-local blocks and GeM need a ResNet's stages and ReLU map (module docstring)."""
    bad = []
    if any(int(n) for n in non_local):
        bad.append(f"non_local={tuple(int(n) for n in non_local)} (non-local blocks go after ResNet stages; a "
                   "transformer's attention is global already): use (0, 0, 0, 0), config agw.non_local [0, 0, 0, 0]")
    if gem:
        bad.append("gem=True (GeM pools a non-negative ReLU map; token features are signed and the encoder's own "
                   "head pools them): use gem=False, config agw.gem false")
    if bad:
        raise ConfigError(f"AGW with a transformer encoder ({family}, two-stream patch embeddings): "
                          + "; ".join(bad))


def _token_two_stream(timm_name: str, last_stride: int, input_size: tuple[int, int] | None,
                      timm_kwargs: dict[str, Any]) -> tuple[Stem, Stem, nn.Module, EncoderLayout]:
    """Stems (patch embeddings) of two transformers and a third one sharing every block, as AGW builds three
    ResNets (independent random initialisation)."""
    layout = encoder_layout(timm_name, last_stride, input_size, **timm_kwargs)
    if layout.patch_size is None:
        raise ConfigError(
            f"AGW needs a timm ResNet-family backbone or a transformer with a patch embedding (ViT, DeiT, Swin); "
            f"'{timm_name}' ({layout.family}) is built for one input size but has no patch_embed to split by "
            "modality (argument backbone / config key model.backbone)"
        )
    bodies = [build_timm_encoder(timm_name, last_stride, input_size, **timm_kwargs)[0] for _ in range(3)]
    stem_vis, stem_ir = Stem(bodies[0], PATCH_STEM_PARTS), Stem(bodies[1], PATCH_STEM_PARTS)
    shared = bodies[2]
    shared.patch_embed = EmbeddedPatches(shared.patch_embed)
    return stem_vis, stem_ir, shared, layout


def build_agw(
    backbone: str = "resnet50",
    num_classes: int = 395,
    pretrained: bool | str = False,
    pretrained_path: str | None = None,
    non_local: Sequence[int] = AGW_NON_LOCAL,
    gem: bool = True,
    last_stride: int = 1,
    feature_mode: str = "bn",
    input_size: tuple[int, int] | None = None,
    **timm_kwargs: Any,
) -> AGWNet:
    """Build :class:`AGWNet`.

    Args:
        backbone: timm ResNet name ('resnet50' is AGW's; 'resnet18' for CPU tests and demos), or a timm ViT /
            DeiT / Swin (two-stream patch embeddings; module docstring).
        num_classes: number of training identities (395 for SYSU-MM01, 206 for RegDB).
        pretrained: load ImageNet weights into the two stems and the shared stages. A string is taken as
            ``pretrained_path``.
        pretrained_path: local weights file (timm or torchvision ResNet state dict). Without it, pretrained=True
            takes ``<backbone>.tv_in1k`` (torchvision's ImageNet weights, as AGW) from the local hub cache or,
            online only, from timm's hub.
        non_local: non-local blocks after the last bottlenecks of each stage; AGW (0, 2, 3, 0), base (0, 0, 0, 0).
        gem: GeM pooling (AGW) or average pooling (base).
        last_stride: 1 (AGW) or 2; no meaning for transformer encoders.
        feature_mode: eval output, 'bn' (default) or 'pool'.
        input_size: (height, width) of the images: transformers are built for it (timm ``img_size``), None builds
            them with timm's ``dynamic_img_size``. ResNets ignore it.
        timm_kwargs: passed to ``timm.create_model``.
    """
    check_num_classes(num_classes)
    non_local = tuple(int(n) for n in non_local)
    if len(non_local) != 4 or any(n < 0 for n in non_local):
        raise ValueError(f"non_local must give 4 non-negative block counts (one per stage), got {non_local!r}")
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    if feature_mode not in FEATURE_MODES:
        raise ValueError(f"feature_mode must be one of {FEATURE_MODES}, got {feature_mode!r}")
    pretrained, pretrained_path = resolve_pretrained(pretrained, pretrained_path)
    timm_name = imagenet_tag(backbone)
    layout = None
    if is_fixed_size(timm_name):  # a transformer: two-stream patch embeddings
        _check_token_options(non_local, gem, timm_name)
        stem_vis, stem_ir, shared, layout = _token_two_stream(timm_name, last_stride, input_size, timm_kwargs)
    else:
        # Three ResNets as in AGW (independent random initialisation); only the stems of the first two are kept.
        stem_vis = Stem(_resnet(timm_name, **timm_kwargs))
        stem_ir = Stem(_resnet(timm_name, **timm_kwargs))
        shared = _resnet(timm_name, **timm_kwargs)
        if last_stride == 1:
            set_last_stride_one(shared, backbone)
        for part in _STEM_PARTS:
            setattr(shared, part, nn.Identity())
    config = dict(
        backbone=backbone,
        timm_name=timm_name,
        num_classes=num_classes,
        pretrained=bool(pretrained),
        pretrained_path=pretrained_path,
        non_local=non_local,
        gem=bool(gem),
        last_stride=last_stride,
        feature_mode=feature_mode,
        timm_kwargs=dict(timm_kwargs),
        **({"input_size": tuple(int(s) for s in input_size)} if input_size is not None else {}),
    )
    net = AGWNet(stem_vis, stem_ir, shared, num_classes, non_local, gem, feature_mode, config)
    net.layout = layout
    if net.non_local_counts != non_local:
        logger.info("AGW non-local blocks clipped to the stage lengths of %s: %s -> %s", backbone, non_local,
                    net.non_local_counts)
    if pretrained:
        if pretrained_path:
            net.load_imagenet_state(read_state_dict(pretrained_path), source=f'"{pretrained_path}"')
        elif layout is not None:  # the creation arguments of the transformer (img_size, its pooling head)
            kw = {k: v for k, v in layout.create_kwargs.items() if k != "num_classes"}
            state = hub_state_dict(timm_name, shared, **kw)
            net.load_imagenet_state(state, source=f"timm hub weights of '{timm_name}'")
        else:
            state = hub_state_dict(timm_name, shared, **timm_kwargs)  # shared keeps timm's pretrained_cfg
            net.load_imagenet_state(state, source=f"timm hub weights of '{timm_name}'")
    return net


# ----------------------------------------------------------------- torchreid registry presets
AGW_PRESETS: dict[str, dict[str, Any]] = {
    "agw": dict(backbone="resnet50"),  # AGW's network
    "agw_resnet18": dict(backbone="resnet18"),  # the same code on ResNet-18, for CPU tests and demos
}


def make_agw_factory(preset: str, name: str | None = None):
    """torchreid factory of preset ``preset`` (:func:`~vdreid.models.common.torchreid_factory`), registered as
    ``name`` (default: the preset's; a method reusing AGW's network, CAJ, registers it under its own names). ``loss``
    is ignored: AGW needs each image's modality, which torchreid's engines do not pass, so it trains with vdreid's
    trainer."""
    return torchreid_factory(name or preset, AGW_PRESETS[preset], build_agw)
