"""VDNet: the three-branch network of the paper (Fig. 3, section 3.3 / 4.2) and of the released code
(docs/vd-recipes.md section 1).

Branches ``ir``, ``vis`` and ``shared``, each an encoder ``E`` (timm encoder + pooling + BNNeck, observation ``v``:
a CNN with GAP, or a ViT / DeiT / Swin pooled by its own head, see :mod:`vdreid.models.backbones`) followed by an
information bottleneck ``B`` (representation ``z``), each with an identity classifier; ``B``'s input width is read
from the encoder.

Routing (which images each encoder sees):

* ``official`` (released code, docs/vd-recipes.md section 1): every image goes through every encoder. ``E_ir`` sees
``gray(x)``,
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
from vdreid.models.common import check_num_classes, resolve_pretrained, torchreid_factory
from vdreid.models.outputs import BranchOutput, VDOutput, gray_view
from vdreid.models.weights import read_state_dict

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


def mode_branches(mode: str) -> set[str]:
    """Branches a feature mode reads (obs_concat / z_concat: every branch the network has)."""
    if mode in ("obs_concat", "z_concat"):
        return set(BRANCHES)
    if mode.startswith("shared"):
        return {"shared"}
    if mode.endswith("_specific"):
        return {"ir", "vis"}
    if mode.endswith("_ir"):
        return {"ir"}
    if mode.endswith("_vis"):
        return {"vis"}
    raise ValueError(f"feature mode must be one of {FEATURE_MODES}, got {mode!r}")


def mode_reads_z(mode: str) -> bool:
    """Whether a feature mode reads the representation ``z`` (else the observation ``v``)."""
    return mode.startswith("z_") or mode == "shared_z"


class Branch(nn.Module):
    """One branch ``E`` + ``B``: ``forward(x, index)`` returns a :class:`BranchOutput` for the rows ``index``.

    ``bottleneck=None`` builds the encoder alone (the Table 3 rows without ``B``): its output has no ``z``.
    """

    def __init__(self, encoder: Encoder, bottleneck: InformationBottleneck | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.bottleneck = bottleneck

    def forward(self, x: Tensor, index: Tensor) -> BranchOutput:
        v_pre, v, v_logits = self.encoder(x)
        if self.bottleneck is None:
            return BranchOutput(v=v, v_pre=v_pre, v_logits=v_logits, z=None, z_logits=None, index=index)
        z, z_logits, mu, logvar = self.bottleneck(v)
        return BranchOutput(
            v=v, v_pre=v_pre, v_logits=v_logits, z=z, z_logits=z_logits, index=index, mu=mu, logvar=logvar
        )


class VDNet(nn.Module):
    """Up to three encoders and information bottlenecks (``ir``, ``vis``, ``shared``) in ``self.branches``.

    The full VD network has all three branches, each with its bottleneck; the Table 3 ablation rows build only the
    encoders (and bottlenecks) they use, so a missing branch has no parameters at all.

    Args:
        branches: ModuleDict of :class:`Branch` with keys among 'ir', 'vis', 'shared' (at least one).
        routing: 'official' or 'modality' (see module docstring).
        feature_mode: eval output, one of :data:`FEATURE_MODES`.
        config: the build arguments, kept for checkpoints and provenance.
    """

    needs_vdreid_engine = True  # torchreid's engines pass no modality and apply one fixed loss to a VDOutput

    def __init__(
        self,
        branches: nn.ModuleDict,
        routing: str = "official",
        feature_mode: str = "obs_concat",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        names = list(branches.keys())
        if not names or not set(names) <= set(BRANCHES):
            raise ValueError(f"VDNet branches must be a non-empty subset of {BRANCHES}, got {names}")
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        self.branches = branches
        self.routing = routing
        self.feature_mode = feature_mode
        self.config = dict(config or {})
        first = branches[next(b for b in BRANCHES if b in branches)]
        self.v_dim = first.encoder.out_dim
        bott = [branches[b].bottleneck for b in BRANCHES if b in branches and branches[b].bottleneck is not None]
        self.z_dim = bott[0].z_dim if bott else 0

    def has(self, branch: str, bottleneck: bool = False) -> bool:
        """Whether ``branch`` is built (and, with ``bottleneck=True``, has its bottleneck)."""
        return branch in self.branches and (not bottleneck or self.branches[branch].bottleneck is not None)

    # ----------------------------------------------------------------- feature modes
    @property
    def feature_mode(self) -> str:
        return self._feature_mode

    @feature_mode.setter
    def feature_mode(self, mode: str) -> None:
        if mode not in FEATURE_MODES:
            raise ValueError(f"feature_mode must be one of {FEATURE_MODES}, got {mode!r}")
        missing = self.missing_for(mode)
        if missing:
            raise ValueError(f"feature mode '{mode}' reads {missing}, which this network does not build")
        self._feature_mode = mode

    @property
    def feature_modes(self) -> tuple[str, ...]:
        """The feature modes this network can compute (every mode whose branches and bottlenecks exist)."""
        return tuple(m for m in FEATURE_MODES if not self.missing_for(m))

    @property
    def test_needs_modality(self) -> bool:
        """Whether the eval feature of ``feature_mode`` needs ``modality``: a ``*_specific`` mode, or a concatenation
        holding the modality-specific slot of ``routing='modality'``."""
        mode = self.feature_mode
        return mode.endswith("_specific") or (mode.endswith("_concat") and "specific" in self._concat_slots())

    def missing_for(self, mode: str) -> list[str]:
        """Branches ('ir', ...) or bottlenecks ('B_ir', ...) that feature ``mode`` needs and this net lacks."""
        need, z = mode_branches(mode), mode_reads_z(mode)
        if mode in ("obs_concat", "z_concat"):
            need = {b for b in BRANCHES if b in self.branches}  # the concatenation of the branches that exist
            if self.routing == "modality" and ("ir" in need) != ("vis" in need):
                need = {"ir", "vis"}  # the 'specific' slot needs both modality-specific branches
        miss = sorted(b for b in need if b not in self.branches)
        if z:
            miss += sorted(f"B_{b}" for b in need if b in self.branches and self.branches[b].bottleneck is None)
        return miss

    def feature_dim(self, mode: str | None = None) -> int:
        """Width of the eval feature for ``mode`` (default: the current ``feature_mode``)."""
        mode = self.feature_mode if mode is None else mode
        if mode not in FEATURE_MODES:
            raise ValueError(f"feature mode must be one of {FEATURE_MODES}, got {mode!r}")
        d = self.z_dim if mode_reads_z(mode) else self.v_dim
        if mode in ("obs_concat", "z_concat"):
            return d * len(self._concat_slots())
        return d

    def _concat_slots(self) -> list[str]:
        """Slots of obs_concat / z_concat in order. official: the released order (ir on gray, shared on gray, vis,
        shared on x); modality: (the image's specific branch, shared on gray, shared on x). Absent branches are
        left out."""
        if self.routing == "official":
            order = [("ir", "ir"), ("shared", "shared_gray"), ("vis", "vis"), ("shared", "shared_x")]
        else:
            order = [("ir", "specific"), ("shared", "shared_gray"), ("shared", "shared_x")]
        return [slot for b, slot in order if b in self.branches]

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
        specific = self.has("ir") or self.has("vis")
        is_ir = self._modality(modality, b, x.device, need=self.routing == "modality" and specific)
        every = torch.arange(b, device=x.device)
        br = self.branches
        ir = vis = shared_x = shared_gray = None
        if self.routing == "official":  # order of the released ft_net.forward: vis, shared(gray), shared(x), ir
            if self.has("vis"):
                vis = br["vis"](x, every)
            if self.has("shared"):
                shared_gray = br["shared"](gray, every)
                shared_x = br["shared"](x, every)
            if self.has("ir"):
                ir = br["ir"](gray, every)
        else:
            ir_idx = torch.nonzero(is_ir).flatten()
            vis_idx = torch.nonzero(~is_ir).flatten()
            for branch, name, idx in (("ir", "infrared", ir_idx), ("vis", "visible", vis_idx)):
                if self.has(branch) and idx.numel() < 2:
                    raise ValueError(
                        f"routing='modality' needs at least 2 {name} images per training batch (BatchNorm in the "
                        f"BNNeck/bottleneck), got {idx.numel()}; use the cross-modal identity sampler"
                    )
            if self.has("vis"):
                vis = br["vis"](x[vis_idx], vis_idx)
            if self.has("shared"):
                shared_gray = br["shared"](gray, every)
                shared_x = br["shared"](x, every)
            if self.has("ir"):
                ir = br["ir"](x[ir_idx], ir_idx)
        return VDOutput(ir=ir, vis=vis, shared_x=shared_x, shared_gray=shared_gray, is_ir=is_ir, routing=self.routing)

    def _specific(self, x: Tensor, gray: Tensor, is_ir: Tensor, attr: str) -> Tensor:
        """Feature ``attr`` ('v' or 'z') of the branch matching each image's modality, in batch order."""
        ir_in = gray if self.routing == "official" else x
        ir_idx = torch.nonzero(is_ir).flatten()
        vis_idx = torch.nonzero(~is_ir).flatten()
        dim = self.v_dim if attr == "v" else self.z_dim
        if not (self.has("ir") and self.has("vis")):
            raise ValueError("the modality-specific feature needs both the 'ir' and the 'vis' branch")
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
        attr = "z" if mode_reads_z(mode) else "v"
        ir_in = gray if self.routing == "official" else x
        if mode in ("shared_v", "shared_z"):
            return getattr(br["shared"](x, every), attr)
        if mode in ("v_ir", "z_ir"):
            return getattr(br["ir"](ir_in, every), attr)
        if mode in ("v_vis", "z_vis"):
            return getattr(br["vis"](x, every), attr)
        needs_modality = mode in ("v_specific", "z_specific") or (
            self.routing == "modality" and "specific" in self._concat_slots() and mode in ("obs_concat", "z_concat"))
        is_ir = self._modality(modality, x.shape[0], x.device, need=needs_modality)
        if mode in ("v_specific", "z_specific"):
            return self._specific(x, gray, is_ir, attr)
        # obs_concat / z_concat: the slots of _concat_slots, in order
        parts = []
        for slot in self._concat_slots():
            if slot == "specific":
                parts.append(self._specific(x, gray, is_ir, attr))
            elif slot == "shared_gray":
                parts.append(getattr(br["shared"](gray, every), attr))
            elif slot == "shared_x":
                parts.append(getattr(br["shared"](x, every), attr))
            else:  # official routing: ir on gray(x) (released i_obs), vis on x (v_obs)
                parts.append(getattr(br[slot](gray if slot == "ir" else x, every), attr))
        return torch.cat(parts, dim=1)

    # ----------------------------------------------------------------- weights
    def load_backbone_weights(self, path: str) -> None:
        """Load one local ImageNet weights file (timm or torchvision format) into all three encoders' timm bodies."""
        state = read_state_dict(path)
        for name in self.branches:
            self.branches[name].encoder.load_backbone_weights(path=path, state=state)

    def describe_encoder(self) -> str:
        """One line: the encoders' timm model, what last stride and pooling mean for it (the three are alike)."""
        return self.branches[next(b for b in BRANCHES if b in self.branches)].encoder.describe()

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: per branch (encoder, bottleneck, total) and overall."""
        counts: dict[str, int] = {}
        for name in self.branches:
            enc = sum(p.numel() for p in self.branches[name].encoder.parameters())
            bott = self.branches[name].bottleneck
            ib = sum(p.numel() for p in bott.parameters()) if bott is not None else 0
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
    branches: Sequence[str] = BRANCHES,
    bottleneck_branches: Sequence[str] | None = None,
    input_size: tuple[int, int] | None = None,
    **timm_kwargs: Any,
) -> VDNet:
    """Build a :class:`VDNet` from a timm CNN or a timm ViT / DeiT / Swin (docs/encoders.md).

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
        last_stride: 1 (Re-ID) or 2; no meaning for encoders built for one input size (ViT, Swin, ...).
        feature_mode: eval output, one of :data:`FEATURE_MODES`.
        branches: the encoders to build (paper Table 3: ``E_I``/``E_V`` = 'ir'/'vis', ``E_S`` = 'shared').
        bottleneck_branches: the branches that get an information bottleneck ``B`` (default: every built branch).
        input_size: (height, width) of the images. ViT / DeiT / Swin encoders are built for it (timm ``img_size``);
            None builds them with timm's ``dynamic_img_size``. CNNs ignore it.
        timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    check_num_classes(num_classes)
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    if bottleneck not in BOTTLENECK_FORMS:
        raise ValueError(f"bottleneck must be one of {BOTTLENECK_FORMS}, got {bottleneck!r}")
    if feature_mode not in FEATURE_MODES:
        raise ValueError(f"feature_mode must be one of {FEATURE_MODES}, got {feature_mode!r}")
    pretrained, pretrained_path = resolve_pretrained(pretrained, pretrained_path)
    names = [b for b in BRANCHES if b in set(branches)]
    unknown = sorted(set(branches) - set(BRANCHES))
    if unknown or not names:
        raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {list(branches)}")
    with_b = set(names if bottleneck_branches is None else bottleneck_branches)
    if not with_b <= set(names):
        raise ValueError(f"bottleneck_branches {sorted(with_b)} name branches that are not built ({names})")
    modules = nn.ModuleDict()
    for name in names:
        enc = Encoder(backbone, num_classes, last_stride=last_stride, attention=attention, input_size=input_size,
                      **timm_kwargs)
        ib = None
        if name in with_b:
            ib = InformationBottleneck(enc.out_dim, num_classes, bottleneck_dims, bottleneck, z_classifier_hidden)
        modules[name] = Branch(enc, ib)
    if pretrained:
        if pretrained_path:
            state, source = read_state_dict(pretrained_path), pretrained_path
        else:
            state, source = modules[names[0]].encoder.hub_state_dict(), f"timm hub weights of '{backbone}'"
        for name in names:
            modules[name].encoder.load_backbone_weights(path=source, state=state)
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
        branches=tuple(names),
        bottleneck_branches=tuple(b for b in names if b in with_b),
        **({"input_size": tuple(int(s) for s in input_size)} if input_size is not None else {}),
        **timm_kwargs,
    )
    return VDNet(modules, routing=routing, feature_mode=feature_mode, config=config)


# ----------------------------------------------------------------- torchreid registry presets
# The ResNet-50 presets start from torchvision's ImageNet weights, as the released code does
# (torchvision `resnet50(pretrained=True)`); timm names those weights `resnet50.tv_in1k` (timm's default `resnet50`
# tag is a different, later training recipe). Offline, name a local copy with model.pretrained_path.
PRESETS: dict[str, dict[str, Any]] = {
    # paper section 4.2: ResNet-50, last stride 1, deterministic 1024-512-256 bottleneck
    "vd_resnet50": dict(backbone="resnet50.tv_in1k", bottleneck="deterministic", bottleneck_dims=(1024, 512, 256)),
    # released code: + channel attention, 1000-500-512 bottleneck, 512-256-BN-LeakyReLU-Dropout-C classifier
    "vd_resnet50_official": dict(
        backbone="resnet50.tv_in1k",
        bottleneck="deterministic",
        bottleneck_dims=(1000, 500, 512),
        z_classifier_hidden=256,
        attention=True,
    ),
    # small model for CPU tests and demos
    "vd_resnet18": dict(backbone="resnet18", bottleneck="deterministic", bottleneck_dims=(512, 256, 128)),
    # the quickstart's CPU model (configs/quickstart.yaml): timm's ResNet-10-T (deep stem, one block per stage),
    # with the paper's 1024-512-256 bottleneck
    "vd_resnet10t": dict(backbone="resnet10t", bottleneck="deterministic", bottleneck_dims=(1024, 512, 256)),
}


def make_factory(name: str):
    """torchreid factory of preset ``name`` (:func:`~vdreid.models.common.torchreid_factory`): ``loss`` is ignored
    (VDNet returns every output; its trainer takes them all); ``kwargs`` override the preset and go to
    :func:`build_vd_net`."""
    return torchreid_factory(name, PRESETS[name], build_vd_net)
