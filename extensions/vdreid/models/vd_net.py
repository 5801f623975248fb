"""VDNet: the three-branch network of the paper (Fig. 3, section 3.3 / 4.2) and of the released code (spec 5.2).

Branches ``ir``, ``vis`` and ``shared``, each an encoder ``E`` (timm CNN + GAP + BNNeck, observation ``v``) followed
by an information bottleneck ``B`` (representation ``z``), each with an identity classifier.

Routing (which images each encoder sees):

* ``official`` (released code, trap 13): every image goes through every encoder. ``E_ir`` sees ``gray(x)``,
  ``E_vis`` sees ``x``, ``E_shared`` sees both views. Modality is not needed by the forward.
* ``modality`` (paper text): ``E_ir`` sees the infrared images, ``E_vis`` the visible ones (each their own ``x``),
  ``E_shared`` sees ``x`` and ``gray(x)`` of every image. Needs the per-image modality flag.

Training forward returns :class:`~vdreid.models.outputs.VDOutput`; eval forward returns one 2-D tensor chosen by
``feature_mode`` (not L2-normalised; the evaluator does that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vdreid.models.backbones import Encoder
from vdreid.models.bottleneck import BOTTLENECK_FORMS, InformationBottleneck
from vdreid.models.outputs import BranchOutput, VDOutput, gray_view
from vdreid.models.weights import PretrainedWeightsError, read_state_dict

ROUTINGS = ("official", "modality")
BRANCHES = ("ir", "vis", "shared")
FEATURE_MODES = (
    "obs_concat",  # official: [v_ir(gray), v_shared(gray), v_vis(x), v_shared(x)] (released extract_feature.py)
    "z_concat",  # the same four slots with z
    "shared_v",  # v of the shared branch on x
    "shared_z",  # z of the shared branch on x ([VD2]'s v_ms_representation)
    "v_vis",
    "v_ir",
    "z_vis",
    "z_ir",
    "v_specific",  # v of the modality-specific branch matching each image's modality (needs modality)
    "z_specific",
)


class Branch(nn.Module):
    """One branch ``E`` + ``B``: ``forward(x, index)`` returns a :class:`BranchOutput` for the rows ``index``."""

    def __init__(self, encoder: Encoder, bottleneck: InformationBottleneck) -> None:
        super().__init__()
        self.encoder = encoder
        self.bottleneck = bottleneck

    def forward(self, x: Tensor, index: Tensor) -> BranchOutput:
        v_pre, v, v_logits = self.encoder(x)
        z, z_logits, mu, logvar = self.bottleneck(v)
        return BranchOutput(
            v=v, v_pre=v_pre, v_logits=v_logits, z=z, z_logits=z_logits, index=index, mu=mu, logvar=logvar
        )


class VDNet(nn.Module):
    """Three encoders and three information bottlenecks (``ir``, ``vis``, ``shared``) in ``self.branches``.

    Args:
        branches: ModuleDict with keys 'ir', 'vis', 'shared' of :class:`Branch`.
        routing: 'official' or 'modality' (see module docstring).
        feature_mode: eval output, one of :data:`FEATURE_MODES`.
        config: the build arguments, kept for checkpoints and provenance.
    """

    def __init__(
        self,
        branches: nn.ModuleDict,
        routing: str = "official",
        feature_mode: str = "obs_concat",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if set(branches.keys()) != set(BRANCHES):
            raise ValueError(f"VDNet needs branches {BRANCHES}, got {list(branches.keys())}")
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        self.branches = branches
        self.routing = routing
        self.feature_mode = feature_mode
        self.config = dict(config or {})
        self.v_dim = branches["shared"].encoder.out_dim
        self.z_dim = branches["shared"].bottleneck.z_dim

    # ----------------------------------------------------------------- feature modes
    @property
    def feature_mode(self) -> str:
        return self._feature_mode

    @feature_mode.setter
    def feature_mode(self, mode: str) -> None:
        if mode not in FEATURE_MODES:
            raise ValueError(f"feature_mode must be one of {FEATURE_MODES}, got {mode!r}")
        self._feature_mode = mode

    def feature_dim(self, mode: str | None = None) -> int:
        """Width of the eval feature for ``mode`` (default: the current ``feature_mode``)."""
        mode = self.feature_mode if mode is None else mode
        if mode not in FEATURE_MODES:
            raise ValueError(f"feature mode must be one of {FEATURE_MODES}, got {mode!r}")
        d = self.v_dim if mode.startswith("v_") or mode in ("obs_concat", "shared_v") else self.z_dim
        if mode in ("obs_concat", "z_concat"):
            return d * (4 if self.routing == "official" else 3)
        return d

    # ----------------------------------------------------------------- helpers
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"VDNet expects images of shape (B, 3, H, W), got {shape}")

    def _modality(
        self, modality: Tensor | Sequence[bool] | None, batch: int, device: torch.device, need: bool
    ) -> Tensor:
        if modality is None:
            if need:
                raise ValueError(
                    f"routing='{self.routing}' with feature mode '{self.feature_mode}' needs the modality of every "
                    "image: call model(x, modality=is_ir) with a bool tensor of shape (B,) (True = infrared)"
                )
            return torch.zeros(batch, dtype=torch.bool, device=device)
        m = torch.as_tensor(modality, device=device)
        if m.dim() != 1 or m.shape[0] != batch:
            raise ValueError(
                f"modality must be a bool tensor of shape ({batch},) (True = infrared), got {tuple(m.shape)}"
            )
        if m.dtype != torch.bool:
            if m.is_floating_point() or not bool(((m == 0) | (m == 1)).all()):
                raise ValueError(f"modality must be bool (or 0/1 integers), got dtype {m.dtype}")
            m = m.bool()
        return m

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor, modality: Tensor | None = None) -> VDOutput | Tensor:
        """Training: :class:`VDOutput`. Eval: (B, feature_dim) tensor for ``feature_mode``.

        ``modality``: bool (B,) with True for infrared images (0/1 integers accepted). Required by
        ``routing='modality'`` and by the ``*_specific`` feature modes. The official training forward does not
        use it and only copies it to ``VDOutput.is_ir`` (all False when it is not given, so pass it whenever a
        loss needs modality, e.g. the released rank loss).
        """
        self._check_input(x)
        gray = gray_view(x)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            gray = gray.contiguous(memory_format=torch.channels_last)
        if not self.training:
            return self._eval_features(x, gray, modality)
        b = x.shape[0]
        is_ir = self._modality(modality, b, x.device, need=self.routing == "modality")
        every = torch.arange(b, device=x.device)
        br = self.branches
        if self.routing == "official":  # order of the released ft_net.forward: vis, shared(gray), shared(x), ir
            vis = br["vis"](x, every)
            shared_gray = br["shared"](gray, every)
            shared_x = br["shared"](x, every)
            ir = br["ir"](gray, every)
        else:
            ir_idx = torch.nonzero(is_ir).flatten()
            vis_idx = torch.nonzero(~is_ir).flatten()
            for name, idx in (("infrared", ir_idx), ("visible", vis_idx)):
                if idx.numel() < 2:
                    raise ValueError(
                        f"routing='modality' needs at least 2 {name} images per training batch (BatchNorm in the "
                        f"BNNeck/bottleneck), got {idx.numel()}; use the cross-modal identity sampler"
                    )
            vis = br["vis"](x[vis_idx], vis_idx)
            shared_gray = br["shared"](gray, every)
            shared_x = br["shared"](x, every)
            ir = br["ir"](x[ir_idx], ir_idx)
        return VDOutput(ir=ir, vis=vis, shared_x=shared_x, shared_gray=shared_gray, is_ir=is_ir, routing=self.routing)

    def _specific(self, x: Tensor, gray: Tensor, is_ir: Tensor, attr: str) -> Tensor:
        """Feature ``attr`` ('v' or 'z') of the branch matching each image's modality, in batch order."""
        ir_in = gray if self.routing == "official" else x
        ir_idx = torch.nonzero(is_ir).flatten()
        vis_idx = torch.nonzero(~is_ir).flatten()
        dim = self.v_dim if attr == "v" else self.z_dim
        out = x.new_zeros(x.shape[0], dim)
        if ir_idx.numel():
            out[ir_idx] = getattr(self.branches["ir"](ir_in[ir_idx], ir_idx), attr)
        if vis_idx.numel():
            out[vis_idx] = getattr(self.branches["vis"](x[vis_idx], vis_idx), attr)
        return out

    def _eval_features(self, x: Tensor, gray: Tensor, modality: Tensor | None) -> Tensor:
        mode = self.feature_mode
        br = self.branches
        every = torch.arange(x.shape[0], device=x.device)
        attr = "v" if mode.startswith("v_") or mode in ("obs_concat", "shared_v") else "z"
        ir_in = gray if self.routing == "official" else x
        if mode in ("shared_v", "shared_z"):
            return getattr(br["shared"](x, every), attr)
        if mode in ("v_ir", "z_ir"):
            return getattr(br["ir"](ir_in, every), attr)
        if mode in ("v_vis", "z_vis"):
            return getattr(br["vis"](x, every), attr)
        needs_modality = mode in ("v_specific", "z_specific") or self.routing == "modality"
        is_ir = self._modality(modality, x.shape[0], x.device, need=needs_modality)
        if mode in ("v_specific", "z_specific"):
            return self._specific(x, gray, is_ir, attr)
        # obs_concat / z_concat
        shared_gray = getattr(br["shared"](gray, every), attr)
        shared_x = getattr(br["shared"](x, every), attr)
        if self.routing == "official":  # released order: i_obs, i_ms_obs, v_obs, v_ms_obs
            ir = getattr(br["ir"](gray, every), attr)
            vis = getattr(br["vis"](x, every), attr)
            return torch.cat([ir, shared_gray, vis, shared_x], dim=1)
        return torch.cat([self._specific(x, gray, is_ir, attr), shared_gray, shared_x], dim=1)

    # ----------------------------------------------------------------- weights
    def load_backbone_weights(self, path: str) -> None:
        """Load one local ImageNet weights file (timm or torchvision format) into all three encoders' CNNs."""
        state = read_state_dict(path)
        for name in BRANCHES:
            self.branches[name].encoder.load_backbone_weights(path=path, state=state)

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: per branch (encoder, bottleneck, total) and overall."""
        counts: dict[str, int] = {}
        for name in BRANCHES:
            enc = sum(p.numel() for p in self.branches[name].encoder.parameters())
            ib = sum(p.numel() for p in self.branches[name].bottleneck.parameters())
            counts[f"{name}.encoder"], counts[f"{name}.bottleneck"], counts[name] = enc, ib, enc + ib
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def build_vd_net(
    backbone: str = "resnet50",
    num_classes: int = 395,
    pretrained: bool | str = False,
    pretrained_path: str | None = None,
    routing: str = "official",
    bottleneck: str = "deterministic",
    bottleneck_dims: Sequence[int] = (1024, 512, 256),
    z_classifier_hidden: int | None = None,
    attention: bool = False,
    last_stride: int = 1,
    feature_mode: str = "obs_concat",
    **timm_kwargs: Any,
) -> VDNet:
    """Build a :class:`VDNet` from any timm CNN.

    Args:
        backbone: timm model name of the three encoders (no weights are shared between them).
        num_classes: number of training identities (395 for SYSU-MM01, 206 for RegDB).
        pretrained: load ImageNet weights into the three CNNs. A string is taken as ``pretrained_path``.
        pretrained_path: local weights file (timm or torchvision state dict). Without it, pretrained=True uses the
            local hub cache or, only when the hub answers within a few seconds, timm's download (weights.py).
        routing: 'official' or 'modality' (module docstring).
        bottleneck: 'deterministic' or 'gaussian' (bottleneck.py).
        bottleneck_dims: hidden sizes and z size: paper (1024, 512, 256), released (1000, 500, 512).
        z_classifier_hidden: None (Linear classifier on z) or 256 (released: BN, LeakyReLU(0.1), Dropout(0.5)).
        attention: channel-attention blocks before layer2/3/4 (released code; timm ResNets only).
        last_stride: 1 (Re-ID) or 2.
        feature_mode: eval output, one of :data:`FEATURE_MODES`.
        timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (number of training identities), got {num_classes!r}")
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    if bottleneck not in BOTTLENECK_FORMS:
        raise ValueError(f"bottleneck must be one of {BOTTLENECK_FORMS}, got {bottleneck!r}")
    if feature_mode not in FEATURE_MODES:
        raise ValueError(f"feature_mode must be one of {FEATURE_MODES}, got {feature_mode!r}")
    if isinstance(pretrained, str):
        if pretrained_path and pretrained_path != pretrained:
            raise ValueError(f"pretrained={pretrained!r} and pretrained_path={pretrained_path!r} name different files")
        pretrained_path, pretrained = pretrained, True
    pretrained_path = str(pretrained_path) if pretrained_path else None
    if pretrained_path and not pretrained:
        raise ValueError(
            f"pretrained=False but pretrained_path={pretrained_path!r} was given: set pretrained=True to load it, "
            "or drop the path"
        )
    branches = nn.ModuleDict()
    for name in BRANCHES:
        enc = Encoder(backbone, num_classes, last_stride=last_stride, attention=attention, **timm_kwargs)
        ib = InformationBottleneck(enc.out_dim, num_classes, bottleneck_dims, bottleneck, z_classifier_hidden)
        branches[name] = Branch(enc, ib)
    if pretrained:
        if pretrained_path:
            state, source = read_state_dict(pretrained_path), pretrained_path
        else:
            state, source = branches["ir"].encoder.hub_state_dict(), f"timm hub weights of '{backbone}'"
        for name in BRANCHES:
            branches[name].encoder.load_backbone_weights(path=source, state=state)
    config = dict(
        backbone=backbone,
        num_classes=num_classes,
        pretrained=bool(pretrained),
        pretrained_path=pretrained_path,
        routing=routing,
        bottleneck=bottleneck,
        bottleneck_dims=tuple(int(d) for d in bottleneck_dims),
        z_classifier_hidden=z_classifier_hidden,
        attention=bool(attention),
        last_stride=last_stride,
        feature_mode=feature_mode,
        **timm_kwargs,
    )
    return VDNet(branches, routing=routing, feature_mode=feature_mode, config=config)


# ----------------------------------------------------------------- torchreid registry presets
PRESETS: dict[str, dict[str, Any]] = {
    # paper section 4.2: ResNet-50, last stride 1, deterministic 1024-512-256 bottleneck
    "vd_resnet50": dict(backbone="resnet50", bottleneck="deterministic", bottleneck_dims=(1024, 512, 256)),
    # released code: + channel attention, 1000-500-512 bottleneck, 512-256-BN-LeakyReLU-Dropout-C classifier
    "vd_resnet50_official": dict(
        backbone="resnet50",
        bottleneck="deterministic",
        bottleneck_dims=(1000, 500, 512),
        z_classifier_hidden=256,
        attention=True,
    ),
    # small model for CPU tests and demos
    "vd_resnet18": dict(backbone="resnet18", bottleneck="deterministic", bottleneck_dims=(512, 256, 128)),
}


def make_factory(name: str):
    """torchreid-style factory ``f(num_classes, loss='softmax', pretrained=True, use_gpu=True, **kwargs)``.

    ``loss`` and ``use_gpu`` are accepted for torchreid's ``build_model`` and ignored (VDNet returns every output;
    the engine places the model). ``pretrained`` may be a local file path. ``kwargs`` override the preset and go
    to :func:`build_vd_net`.
    """
    preset = PRESETS[name]

    def factory(
        num_classes: int, loss: str = "softmax", pretrained: bool | str = True, use_gpu: bool = True, **kwargs: Any
    ) -> VDNet:
        try:
            return build_vd_net(num_classes=num_classes, pretrained=pretrained, **{**preset, **kwargs})
        except PretrainedWeightsError as exc:
            raise PretrainedWeightsError(f"{name}: {exc}") from exc

    factory.__name__ = name
    factory.__doc__ = f"torchreid factory for '{name}' (preset {preset})."
    return factory
