"""Variational Distillation (Tian et al., CVPR 2021) as a vdreid method.

The network (:mod:`vdreid.models.vd_net`): encoders ``E_I``, ``E_V``, ``E_S`` (branches ``ir``, ``vis``,
``shared``), each followed by an information bottleneck ``B``. The objective (:mod:`vdreid.losses.composite`):
``L = L_ReID + beta (VSD + VCD + VML)`` (Eq. 16) with ``L_ReID = L_cls + L_metric + alpha L_DML`` (Eq. 17), in the
paper's form or as the authors' released code computes it (``vd.recipe``; see ``docs/vd-recipes.md``).

Config: the ``vd`` section (architecture, routing, recipe, the weights of Eq. 16-17, Table 3's switches) plus the
shared ``loss`` keys for ``L_cls`` and ``L_metric``. Table 3 ablation rows build only the encoders and bottlenecks
they use (``vd.branches``, ``vd.bottleneck_branches``); the terms that need a missing part are switched off.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from yacs.config import CfgNode as CN

from vdreid.errors import ConfigError
from vdreid.methods import register
from vdreid.methods.base import Method

BRANCH_NAMES = ("ir", "vis", "shared")
ROUTINGS = ("official", "modality")
BOTTLENECKS = ("deterministic", "gaussian")
RECIPES = ("paper", "official")
VD_METRICS = ("", "ranked_list", "triplet", "official_rank", "none")


def _recipe_value(v: float) -> float | None:
    """Config weights given as -1 take the recipe's default (None for :class:`~vdreid.losses.VDLossConfig`)."""
    return None if v < 0 else float(v)


class VD(Method):
    name = "vd"
    section = "vd"
    extra_sections = ("loss",)  # L_cls and L_metric of Eq. 17
    model_names = ("vd_resnet50", "vd_resnet50_official", "vd_resnet18", "vd_resnet10t")
    feature_modes = (
        "obs_concat", "z_concat", "shared_v", "shared_z", "v_vis", "v_ir", "z_vis", "z_ir", "v_specific", "z_specific",
    )
    default_feature_mode = "obs_concat"
    tsne_modes = ("shared_z", "z_ir", "z_vis", "shared_v")
    resume_keys = ("model", "num_classes", "recipe", "routing", "bottleneck", "backbone", "branches",
                   "bottleneck_branches")
    original_kinds = ("vd_official",)

    @classmethod
    def model_factories(cls) -> dict[str, Any]:
        from vdreid.models.vd_net import make_factory

        return {name: make_factory(name) for name in cls.model_names}

    @classmethod
    def config(cls) -> CN:
        c = CN()
        c.recipe = "paper"  # paper (the equations as written) | official (what the released code computes)
        c.branches = ["ir", "vis", "shared"]  # Table 3: E_I and E_V ('ir', 'vis'), E_S ('shared'): encoders built
        c.bottleneck_branches = ["ir", "vis", "shared"]  # Table 3: B_I and B_V, B_S: bottlenecks built
        c.routing = "official"  # official (gray(x) -> E_ir, x -> E_vis, both -> E_S) | modality (section 3.3)
        c.bottleneck = "deterministic"  # deterministic | gaussian
        # Architecture keys left at "preset" values take the registered model's preset (vdreid.models.vd_net.PRESETS):
        c.bottleneck_dims = []  # [] = preset; paper section 4.2 text: 1024, 512, 256; released code: 1000, 500, 512
        c.z_classifier_hidden = -1  # -1 = preset; 0 = linear classifier on z; released code: 256
        c.attention = "preset"  # preset | true | false: the released code's channel attention before layer2/3/4
        c.last_stride = 1
        c.feature_mode = "obs_concat"  # the recipe's test feature (test.feature_mode overrides it)
        c.beta = 2.0  # beta of Eq. 16
        c.vsd = -1.0  # VSD (Eq. 8) weight inside beta(...); -1 = recipe default (1)
        c.vcd = -1.0  # VCD (Eq. 15); -1 = recipe default (1)
        # paper recipe's VCD: views (Eq. 15 as printed, symmetrised KL between the two views' P_z) | cross (each view's
        # P_v teaches the other view's P_z; docs/vd-recipes.md); the official recipe computes the released code's form
        c.vcd_form = "views"
        c.vml = -1.0  # VML (Eq. 12); -1 = recipe default (paper 1, official 0: absent from the released code)
        c.dml = -1.0  # alpha of Eq. 17 (deep mutual learning); -1 = recipe default (paper 8, official 0)
        c.cml = -1.0  # the released code's Sinkhorn term standing in for DML; -1 = recipe default (paper 0, official 8)
        c.temperature = 1.0
        c.detach_teacher = True
        # CE/metric weight of each branch, order (ir, vis, shared_gray, shared_x) = vdreid.losses.BRANCH_ORDER
        c.branch_weights = [0.5, 0.5, 0.25, 0.25]
        c.ib_baseline = 0.0  # conventional IB (CIBS, Table 3 rows 7-9): weight of the I(v;z) estimate
        return c

    @classmethod
    def extra_config(cls) -> dict[str, CN]:
        """The ``loss`` section: ``L_cls`` and ``L_metric`` of Eq. 17 (torchreid's section name)."""
        c = CN()
        c.ce = 1.0  # identity (label-smoothed cross-entropy) loss weight
        c.label_smooth = 0.1
        c.metric = ""  # "" = the recipe's (paper: ranked_list, official: official_rank) | triplet | none
        c.metric_weight = 1.0
        c.triplet_margin = 0.3
        return {"loss": c}

    @classmethod
    def list_elements(cls) -> dict[str, Any]:
        return {"vd.bottleneck_dims": 0, "vd.bottleneck_branches": "", "vd.branches": ""}

    # ------------------------------------------------------------------------------------------------ config
    def check_config(self, cfg: CN) -> None:
        super().check_config(cfg)
        v = cfg.vd
        for key, value, choices in (("vd.recipe", v.recipe, RECIPES), ("vd.routing", v.routing, ROUTINGS),
                                    ("vd.bottleneck", v.bottleneck, BOTTLENECKS),
                                    ("vd.attention", v.attention, ("preset", "true", "false")),
                                    ("vd.vcd_form", v.vcd_form, ("views", "cross")),
                                    ("loss.metric", cfg.loss.metric, VD_METRICS)):
            if value not in choices:
                raise ConfigError(f"config key '{key}': {value!r} is not one of {list(choices)}")
        for key in ("vd.branches", "vd.bottleneck_branches"):
            bad = [b for b in cfg[key.split(".")[0]][key.split(".")[1]] if b not in BRANCH_NAMES]
            if bad:
                raise ConfigError(f"config key '{key}': unknown branch names {bad}; use 'ir', 'vis', 'shared'")
        if not v.branches:
            raise ConfigError("config key 'vd.branches': at least one encoder branch is needed")
        extra = [b for b in v.bottleneck_branches if b not in v.branches]
        if extra:
            raise ConfigError(f"config key 'vd.bottleneck_branches': {extra} have no encoder in vd.branches")
        if len(v.branch_weights) != 4:
            raise ConfigError("config key 'vd.branch_weights': four weights (ir, vis, shared_gray, shared_x) expected")
        if v.last_stride not in (1, 2):
            raise ConfigError(f"config key 'vd.last_stride': 1 or 2, got {v.last_stride}")
        if v.temperature <= 0:
            raise ConfigError(f"config key 'vd.temperature': must be > 0, got {v.temperature}")

    def feature_mode(self, cfg: CN) -> str:
        """``test.feature_mode`` if set, else ``vd.feature_mode``; checked against the branches the run builds."""
        mode = super().feature_mode(cfg)
        key = "test.feature_mode" if cfg.test.feature_mode else "vd.feature_mode"
        from vdreid.models.vd_net import mode_branches, mode_reads_z

        built, bott = set(cfg.vd.branches), set(cfg.vd.bottleneck_branches)
        used = mode_branches(mode) & built if mode in ("obs_concat", "z_concat") else mode_branches(mode)
        missing = used - built
        if missing:
            raise ConfigError(
                f"config key '{key}': feature mode '{mode}' reads branches {sorted(used)}, but vd.branches = "
                f"{list(cfg.vd.branches)} does not build {sorted(missing)}; pick a mode of the built branches "
                "(e.g. shared_v, v_specific)"
            )
        if mode_reads_z(mode) and used - bott:
            raise ConfigError(f"config key '{key}': feature mode '{mode}' reads z of {sorted(used - bott)}, which "
                              "vd.bottleneck_branches does not build")
        return mode

    # ------------------------------------------------------------------------------------------------ model
    def model_kwargs(self, cfg: CN) -> dict[str, Any]:
        """Keyword arguments for ``build_vd_net`` / the registered factories; preset values left out."""
        v = cfg.vd
        kw: dict[str, Any] = dict(
            routing=v.routing,
            bottleneck=v.bottleneck,
            last_stride=v.last_stride,
            feature_mode=self.feature_mode(cfg),
            branches=tuple(b for b in BRANCH_NAMES if b in v.branches),
            bottleneck_branches=tuple(b for b in BRANCH_NAMES if b in v.bottleneck_branches),
        )
        if v.bottleneck_dims:
            kw["bottleneck_dims"] = tuple(v.bottleneck_dims)
        if v.z_classifier_hidden >= 0:
            kw["z_classifier_hidden"] = v.z_classifier_hidden or None
        if v.attention != "preset":
            kw["attention"] = v.attention == "true"
        return kw

    def build_model(self, cfg: CN, num_classes: int) -> nn.Module:
        """The VD network: ``model.backbone`` (any timm CNN) through ``build_vd_net``, else the registered
        ``model.name`` preset."""
        from vdreid.models import build_vd_net
        from vdreid.models.vd_net import make_factory

        kw = self.model_kwargs(cfg)
        pretrained = bool(cfg.model.pretrained)
        path = (cfg.model.pretrained_path or None) if pretrained else None
        if cfg.model.backbone:
            return build_vd_net(backbone=cfg.model.backbone, num_classes=num_classes, pretrained=pretrained,
                                pretrained_path=path, **kw)
        return make_factory(cfg.model.name)(num_classes=num_classes, pretrained=path or pretrained, **kw)

    # ------------------------------------------------------------------------------------------------ loss
    def loss_config(self, cfg: CN):
        """``vdreid.losses.VDLossConfig`` with Table 3's switches applied: a term that needs a part the run does
        not build is off, and branches that are not built get CE/metric weight 0."""
        from vdreid.losses import BRANCH_ORDER, VDLossConfig

        v, loss = cfg.vd, cfg.loss
        on = set(v.branches)
        weights = []
        for name, w in zip(BRANCH_ORDER, v.branch_weights):
            branch = "shared" if name.startswith("shared") else name
            weights.append(float(w) if branch in on else 0.0)
        lc = dict(
            recipe=v.recipe,
            ce=loss.ce,
            label_smooth=loss.label_smooth,
            metric=loss.metric or None,
            metric_weight=loss.metric_weight,
            triplet_margin=loss.triplet_margin,
            dml=_recipe_value(v.dml),
            cml=_recipe_value(v.cml),
            beta=v.beta,
            vsd=_recipe_value(v.vsd),
            vcd=_recipe_value(v.vcd),
            vml=_recipe_value(v.vml),
            temperature=v.temperature,
            detach_teacher=v.detach_teacher,
            vcd_form=v.vcd_form,
            branch_weights=tuple(weights),
            ib_baseline=v.ib_baseline,
        )
        if not {"ir", "vis"} <= on:  # DML / CML compare the two modality-specific branches
            lc["dml"], lc["cml"] = 0.0, 0.0
        bott = set(v.bottleneck_branches)
        if not ({"ir", "vis"} & on & bott):  # VSD distils v -> z inside a modality-specific branch
            lc["vsd"] = 0.0
        if "shared" not in (on & bott):  # VCD / VML compare the shared branch's two views' representations
            lc["vcd"], lc["vml"] = 0.0, 0.0
        return VDLossConfig(**lc)

    def build_criterion(self, cfg: CN, num_classes: int, model: nn.Module | None = None) -> nn.Module:
        from vdreid.losses import VDLoss
        from vdreid.models.common import unwrap_model

        lcfg = self.loss_config(cfg)
        dims: dict[str, Any] = {}
        if lcfg.ib_baseline > 0:
            if model is None:
                raise ValueError("VD.build_criterion: the conventional-IB baseline needs the model (v and z sizes)")
            net = unwrap_model(model)
            dims = dict(feat_dim_v=int(net.v_dim), feat_dim_z=int(net.z_dim))
        return VDLoss(lcfg, num_classes, **dims)

    def find_unused_parameters(self, cfg: CN) -> bool:
        # Table 3 rows build only what they train, and CE reaches every classifier of every built branch; only a
        # zero CE weight or a zero weight of a built branch can leave parameters without a gradient.
        from vdreid.losses import BRANCH_ORDER

        if self.loss_config(cfg).effective_weights()["ce"] == 0:
            return True
        built = set(cfg.vd.branches)
        return any(float(w) == 0 for name, w in zip(BRANCH_ORDER, cfg.vd.branch_weights)
                   if ("shared" if name.startswith("shared") else name) in built)

    def original_overrides(self, kind: str, state_dict: dict[str, Any]) -> list[str]:
        """A checkpoint of the released VD code: the official recipe's network, sizes read from its keys."""
        from vdreid.models.original import original_model_kwargs

        kw = original_model_kwargs(kind, state_dict)
        return ["model.method", "vd", "model.name", "vd_resnet50_official", "model.backbone", kw["backbone"],
                "vd.recipe", "official", "vd.routing", "official",
                "vd.bottleneck_dims", str(list(kw["bottleneck_dims"])),
                "vd.z_classifier_hidden", str(kw["z_classifier_hidden"]), "vd.attention", str(kw["attention"]).lower()]

    # ------------------------------------------------------------------------------------------------ records
    def provenance(self, cfg: CN) -> dict[str, Any]:
        return {
            "method": self.name,
            "recipe": cfg.vd.recipe,
            "backbone": cfg.model.backbone or cfg.model.name,
            "routing": cfg.vd.routing,
            "bottleneck": cfg.vd.bottleneck,
            "branches": list(cfg.vd.branches),
            "bottleneck_branches": list(cfg.vd.bottleneck_branches),
            "feature_mode": self.feature_mode(cfg),
        }


register(VD(), default=True)
