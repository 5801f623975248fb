"""The plain BNNeck baseline (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-Identification",
CVPRW'19) for visible-infrared Re-ID: ONE timm encoder shared by both modalities (a CNN with last stride 1 and
global average pooling, or a ViT / DeiT / Swin pooled by its own head), BNNeck and an identity classifier (the
:class:`~vdreid.models.backbones.Encoder` of the VD network).
It is the row every VI-ReID paper starts from; see ``docs/baselines.md``.

Outputs depend on ``loss`` (torchreid's model contract, so torchreid's engines can train it):

* ``'vdreid'`` (vdreid's trainer; :func:`build_bnneck`'s default): training returns
  :class:`~vdreid.models.neck.NeckOutput` ``(pool, bn, logits)``;
* ``'softmax'`` (torchreid's ``ImageSoftmaxEngine``): training returns the logits;
* ``'triplet'`` (torchreid's ``ImageTripletEngine``): training returns ``(logits, pool)``.

Eval mode always returns the test feature (B, D), not L2-normalised: ``feature_mode`` 'bn' (BNNeck feature, the
default) or 'pool' (the pooled feature). ``modality`` is accepted and ignored (nothing is modality-specific).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vdreid.models.agw import imagenet_tag
from vdreid.models.backbones import Encoder
from vdreid.models.common import SingleWidthFeatureModes, check_num_classes, resolve_pretrained, torchreid_factory
from vdreid.models.neck import NeckOutput
from vdreid.models.weights import read_state_dict

FEATURE_MODES = ("bn", "pool")
OUTPUTS = ("vdreid", "softmax", "triplet")


class BNNeckNet(SingleWidthFeatureModes, nn.Module):
    """One shared encoder (timm encoder -> pooling -> BNNeck -> classifier); module docstring for the outputs.

    Args:
        encoder: the :class:`Encoder`.
        loss: 'vdreid', 'softmax' or 'triplet' (training output).
        feature_mode: eval output, 'bn' or 'pool'.
        config: the build arguments, kept for checkpoints and provenance.
    """

    feature_modes = FEATURE_MODES

    def __init__(
        self, encoder: Encoder, loss: str = "vdreid", feature_mode: str = "bn", config: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        if loss not in OUTPUTS:
            raise ValueError(f"BNNeckNet: loss must be one of {OUTPUTS} (training output), got {loss!r}")
        self.encoder = encoder
        self.loss = loss
        self.out_dim = encoder.out_dim
        self.feature_mode = feature_mode
        self.config = dict(config or {})


    def forward(self, x: Tensor, modality: Tensor | None = None) -> NeckOutput | Tensor | tuple[Tensor, Tensor]:
        """Training: see the module docstring (by ``loss``). Eval: the (B, D) test feature. ``modality`` is
        ignored."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"BNNeckNet expects images of shape (B, 3, H, W), got {shape}")
        pool, bn, logits = self.encoder(x)
        if not self.training:
            return bn if self.feature_mode == "bn" else pool
        if self.loss == "softmax":
            return logits
        if self.loss == "triplet":
            return logits, pool
        return NeckOutput(pool=pool, bn=bn, logits=logits)

    def describe_encoder(self) -> str:
        """One line: the timm encoder, what last stride and pooling mean for it."""
        return self.encoder.describe()

    def load_backbone_weights(self, path: str) -> None:
        """Load a local ImageNet weights file (timm or torchvision format) into the timm body."""
        self.encoder.load_backbone_weights(path=path, state=read_state_dict(path))


def build_bnneck(
    backbone: str = "resnet50",
    num_classes: int = 395,
    pretrained: bool | str = False,
    pretrained_path: str | None = None,
    last_stride: int = 1,
    feature_mode: str = "bn",
    loss: str = "vdreid",
    input_size: tuple[int, int] | None = None,
    **timm_kwargs: Any,
) -> BNNeckNet:
    """Build :class:`BNNeckNet`.

    Args:
        backbone: a timm CNN name ('resnet50'; 'resnet18' for CPU tests and demos) or a timm ViT / DeiT / Swin
            (docs/encoders.md). For ResNets without a tag, the hub weights are torchvision's ImageNet ones
            (``<backbone>.tv_in1k``), the weights the strong baseline and AGW start from.
        num_classes: number of training identities.
        pretrained / pretrained_path: as :func:`vdreid.models.build_agw`.
        last_stride: 1 (Re-ID) or 2; no meaning for encoders built for one input size (ViT, Swin, ...).
        feature_mode: eval output, 'bn' (default) or 'pool'.
        loss: training output: 'vdreid' (NeckOutput), 'softmax' (logits) or 'triplet' ((logits, pool)).
        input_size: (height, width) of the images; ViT / DeiT / Swin are built for it (timm ``img_size``), None
            builds them with timm's ``dynamic_img_size``. CNNs ignore it.
        timm_kwargs: passed to ``timm.create_model``.
    """
    check_num_classes(num_classes)
    if feature_mode not in FEATURE_MODES:
        raise ValueError(f"feature_mode must be one of {FEATURE_MODES}, got {feature_mode!r}")
    if loss not in OUTPUTS:
        raise ValueError(f"loss must be one of {OUTPUTS} (training output), got {loss!r}")
    pretrained, pretrained_path = resolve_pretrained(pretrained, pretrained_path)
    timm_name = imagenet_tag(backbone)
    encoder = Encoder(timm_name, num_classes, last_stride=last_stride, input_size=input_size, **timm_kwargs)
    if pretrained:
        if pretrained_path:
            encoder.load_backbone_weights(path=pretrained_path, state=read_state_dict(pretrained_path))
        else:
            encoder.load_backbone_weights(path=f"timm hub weights of '{timm_name}'", state=encoder.hub_state_dict())
    config = dict(
        backbone=backbone,
        timm_name=timm_name,
        num_classes=num_classes,
        pretrained=bool(pretrained),
        pretrained_path=pretrained_path,
        last_stride=last_stride,
        feature_mode=feature_mode,
        timm_kwargs=dict(timm_kwargs),
        **({"input_size": tuple(int(s) for s in input_size)} if input_size is not None else {}),
    )
    return BNNeckNet(encoder, loss=loss, feature_mode=feature_mode, config=config)


BNNECK_PRESETS: dict[str, dict[str, Any]] = {
    "bnneck_resnet50": dict(backbone="resnet50"),
    "bnneck_resnet18": dict(backbone="resnet18"),  # for CPU tests and demos
}


def make_bnneck_factory(name: str):
    """torchreid factory of preset ``name`` (:func:`~vdreid.models.common.torchreid_factory`): ``loss`` picks the
    training output, torchreid's 'softmax' / 'triplet' contracts or 'vdreid' (vdreid's trainer)."""
    return torchreid_factory(name, BNNECK_PRESETS[name], build_bnneck, pass_loss=True)
