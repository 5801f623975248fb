"""Variational Distillation (Tian et al., CVPR 2021) as a vdreid method.

The network (:mod:`vdreid.models.vd_net`): encoders ``E_I``, ``E_V``, ``E_S`` (branches ``ir``, ``vis``,
``shared``), each followed by an information bottleneck ``B``. The objective (:mod:`vdreid.losses.composite`):
``L = L_ReID + beta (VSD + VCD + VML)`` (Eq. 16) with ``L_ReID = L_cls + L_metric + alpha L_DML`` (Eq. 17), in the
paper's form or as the authors' released code computes it (``vd.recipe``; see ``docs/vd-recipes.md``).

Config: the ``vd`` section: architecture, routing, recipe, and the objective's term table (``vd.weights.<term>``,
``vd.term_options.<term>.<option>``, built from :mod:`vdreid.losses.terms`, so a plug-in's term appears there too;
``'recipe'`` = the recipe's default). Table 3 ablation rows build only the encoders and bottlenecks they use
(``vd.branches``, ``vd.bottleneck_branches``); a term whose declared needs those parts do not meet is switched off.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn
from yacs.config import CfgNode as CN

from vdreid.config import at_least, positive
from vdreid.errors import ConfigError
from vdreid.losses import VDLoss, VDLossConfig, terms
from vdreid.losses.vd_terms import BRANCH_ORDER
from vdreid.methods import register
from vdreid.methods.base import Method
from vdreid.models import build_vd_net
from vdreid.models.common import unwrap_model
from vdreid.models.original import original_model_kwargs
from vdreid.models.vd_net import make_factory, mode_branches, mode_reads_z

BRANCH_NAMES = ("ir", "vis", "shared")
ROUTINGS = ("official", "modality")
BOTTLENECKS = ("deterministic", "gaussian")
RECIPES = terms.RECIPES
INT = "an integer"


class VD(Method):
    name = "vd"
    section = "vd"
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
        # The objective (Eq. 16-17) is a table of registered terms (vdreid.losses.terms; docs/adding-a-loss.md):
        c.beta = 2.0  # beta of Eq. 16: multiplies VSD, VCD, VML
        c.temperature = 1.0  # T of the predictive distributions the distillation terms and DML compare
        c.detach_teacher = True  # sg() of Eq. 8: no gradient through a distillation teacher
        # CE/metric weight of each branch, order (ir, vis, shared_gray, shared_x) = vdreid.losses.BRANCH_ORDER
        c.branch_weights = [0.5, 0.5, 0.25, 0.25]
        # weight of each term (a number >= 0, 0 = off, or 'recipe': the recipe's default; inside beta for VSD, VCD
        # and VML); ce = L_cls, metric = L_metric, dml = alpha of Eq. 17, cml = the released code's Sinkhorn term,
        # vsd (Eq. 8), vcd (Eq. 15), vml (Eq. 12), ib = the conventional IB of Table 3 rows 7-9
        # options of each term ('recipe': the recipe's default): metric.kind, vcd.form, ... (docs/vd-recipes.md)
        weights, options = terms.config_defaults()
        c.weights = CN(weights)
        c.term_options = CN(options)
        return c

    @classmethod
    def list_elements(cls) -> dict[str, Any]:
        return {"vd.bottleneck_dims": 0, "vd.bottleneck_branches": "", "vd.branches": ""}

    @classmethod
    def ranges(cls) -> dict[str, Any]:
        """Ranges of the numeric ``vd`` keys, the term options' included (term weights, which may read
        ``'recipe'``, are checked by :meth:`check_config` through the term table)."""
        return {
            "vd.bottleneck_dims": at_least(1, INT),
            "vd.z_classifier_hidden": ((lambda v: v == -1 or v >= 0), "an integer >= 0, or -1 for the preset's"),
            "vd.last_stride": ((lambda v: v in (1, 2)), "1 or 2"),
            "vd.beta": at_least(0),
            "vd.temperature": positive(),
            "vd.branch_weights": at_least(0),
            **terms.option_ranges("vd.term_options"),
        }

    @classmethod
    def free_numeric_keys(cls) -> frozenset[str]:
        return terms.option_free_keys("vd.term_options")

    @classmethod
    def upgrade_config(cls, stored: dict[str, Any]) -> dict[str, Any]:
        """A stored config of an older vdreid, in today's keys (the stored dict is not changed). Before the term
        table (:mod:`vdreid.losses.terms`) the weights were ``vd.vsd``, ``vd.vcd``, ``vd.vml``, ``vd.dml``,
        ``vd.cml`` (``-1`` = the recipe's default) and ``vd.ib_baseline``, the VCD form ``vd.vcd_form`` (read under
        the paper recipe only), and L_cls / L_metric lived in a ``loss`` section (``ce``, ``metric_weight``,
        ``metric`` with ``''`` = the recipe's, ``label_smooth``, ``triplet_margin``). Any stored tree holds a ``vd``
        section, whatever its method, so this applies to every stored config; one already in today's keys is
        returned as it is. A weight or option of a term no loaded module registers is an error naming the term."""
        if not isinstance(stored, dict):
            return stored
        out = copy.deepcopy(stored)
        vd = out.get("vd") if isinstance(out.get("vd"), dict) else None
        loss = out.pop("loss", None) if isinstance(out.get("loss"), dict) else None
        if vd is not None or loss is not None:
            vd = out.setdefault("vd", {}) if vd is None else vd
            weights = vd.setdefault("weights", {})
            options = vd.setdefault("term_options", {})
            for name in ("vsd", "vcd", "vml", "dml", "cml"):
                if name in vd:
                    old = vd.pop(name)
                    weights.setdefault(name, terms.RECIPE if isinstance(old, (int, float)) and old < 0 else old)
            if "ib_baseline" in vd:
                weights.setdefault("ib", vd.pop("ib_baseline"))
            if "vcd_form" in vd:
                form = vd.pop("vcd_form")
                # the old vcd_form chose between the paper's forms; the official recipe computed its own VCD
                official = str(vd.get("recipe", "paper")) == "official"
                options.setdefault("vcd", {}).setdefault("form", terms.RECIPE if official or form == "views" else form)
            for old_key, name, new_key in (("ce", "ce", None), ("metric_weight", "metric", None),
                                           ("label_smooth", "ce", "label_smooth"), ("metric", "metric", "kind"),
                                           ("triplet_margin", "metric", "triplet_margin")):
                if loss is None or old_key not in loss:
                    continue
                value = loss[old_key]
                if new_key is None:
                    weights.setdefault(name, value)
                else:
                    options.setdefault(name, {}).setdefault(new_key, value if value != "" else terms.RECIPE)
            # an old explicit weight equal to what its recipe gives is today's 'recipe' marker: the same objective,
            # and a resumed run is not refused over a spelling
            recipe = str(vd.get("recipe", "paper"))
            for name, w in list(weights.items()):
                if name in terms.term_names() and isinstance(w, (int, float)) and not isinstance(w, bool) \
                        and float(w) == terms.get_term(name).default_weight(recipe):
                    weights[name] = terms.RECIPE
            if not weights:
                vd.pop("weights")
            if not options:
                vd.pop("term_options")
            unknown = sorted((set(vd.get("weights", {})) | set(vd.get("term_options", {}))) - set(terms.term_names()))
            if unknown:
                raise ConfigError(f"the stored config weights VD loss term(s) {unknown} that no loaded module "
                                  f"registers (registered: {list(terms.term_names())}); pass the --plugin that "
                                  "registers them")
        return out

    # ------------------------------------------------------------------------------------------------ config
    def check_config(self, cfg: CN) -> None:
        super().check_config(cfg)
        v = cfg.vd
        for key, value, choices in (("vd.recipe", v.recipe, RECIPES), ("vd.routing", v.routing, ROUTINGS),
                                    ("vd.bottleneck", v.bottleneck, BOTTLENECKS),
                                    ("vd.attention", v.attention, ("preset", "true", "false"))):
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
        # every term's weight and options (a plug-in's included), named by their config keys
        objective = terms.resolve_objective(v.recipe, self._weights(cfg), self._options(cfg),
                                            encoders=list(v.branches), bottlenecks=list(v.bottleneck_branches))
        on = [n for n, w in objective.weights.items() if w > 0 and terms.get_term(n).is_active(objective.options[n])
              and (v.beta > 0 or not terms.get_term(n).beta)]
        if not on:
            raise ConfigError(f"config keys 'vd.weights.*': every loss term is off ({dict(cfg.vd.weights)}, recipe "
                              f"'{v.recipe}', vd.beta {v.beta}, with the parts vd.branches / vd.bottleneck_branches "
                              "build); nothing to train")

    @staticmethod
    def _weights(cfg: CN) -> dict[str, Any]:
        return dict(cfg.vd.weights)

    @staticmethod
    def _options(cfg: CN) -> dict[str, dict[str, Any]]:
        return {name: dict(node) for name, node in cfg.vd.term_options.items()}

    def feature_mode(self, cfg: CN) -> str:
        """``test.feature_mode`` if set, else ``vd.feature_mode``; checked against the branches the run builds."""
        mode = super().feature_mode(cfg)
        key = "test.feature_mode" if cfg.test.feature_mode else "vd.feature_mode"
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
            input_size=(int(cfg.data.height), int(cfg.data.width)),  # transformers are built for it (docs/encoders.md)
        )
        if v.bottleneck_dims:
            kw["bottleneck_dims"] = tuple(v.bottleneck_dims)
        if v.z_classifier_hidden >= 0:
            kw["z_classifier_hidden"] = v.z_classifier_hidden or None
        if v.attention != "preset":
            kw["attention"] = v.attention == "true"
        return kw

    def build_model(self, cfg: CN, num_classes: int) -> nn.Module:
        """The VD network: ``model.backbone`` (any timm encoder) through ``build_vd_net``, else the registered
        ``model.name`` preset."""
        kw = self.model_kwargs(cfg)
        pretrained = bool(cfg.model.pretrained)
        path = (cfg.model.pretrained_path or None) if pretrained else None
        if cfg.model.backbone:
            return build_vd_net(backbone=cfg.model.backbone, num_classes=num_classes, pretrained=pretrained,
                                pretrained_path=path, **kw)
        return make_factory(cfg.model.name)(num_classes=num_classes, pretrained=path or pretrained, **kw)

    # ------------------------------------------------------------------------------------------------ loss
    def loss_config(self, cfg: CN) -> VDLossConfig:
        """:class:`vdreid.losses.VDLossConfig` of the run: the recipe, ``vd.weights`` and ``vd.term_options`` (the
        recipe's defaults resolved by :func:`vdreid.losses.resolve_objective`), and the parts the network builds
        (``vd.branches``, ``vd.bottleneck_branches``): a term whose declared needs they do not meet is off (Table 3's
        switches), and a branch not built gets CE/metric weight 0."""
        v = cfg.vd
        return VDLossConfig(
            recipe=v.recipe,
            weights=self._weights(cfg),
            options=self._options(cfg),
            beta=v.beta,
            temperature=v.temperature,
            detach_teacher=v.detach_teacher,
            branch_weights=tuple(float(w) for w in v.branch_weights),
            encoders=tuple(b for b in BRANCH_NAMES if b in v.branches),
            bottlenecks=tuple(b for b in BRANCH_NAMES if b in v.bottleneck_branches),
        )

    def build_criterion(self, cfg: CN, num_classes: int, model: nn.Module | None = None) -> nn.Module:
        """:class:`vdreid.losses.VDLoss`; a term with parameters sized by the network (the conventional IB's
        critics) reads ``v`` and ``z`` sizes from ``model``."""
        lcfg = self.loss_config(cfg)
        dims: dict[str, Any] = {}
        if model is not None:
            net = unwrap_model(model)
            dims = dict(feat_dim_v=int(net.v_dim), feat_dim_z=int(net.z_dim))
        elif any(terms.get_term(t).module is not None for t in lcfg.active_terms()):
            raise ValueError(f"VD.build_criterion: the terms {list(lcfg.active_terms())} include one with parameters "
                             "sized by the network; pass the model (v and z sizes)")
        return VDLoss(lcfg, num_classes, **dims)

    def find_unused_parameters(self, cfg: CN) -> bool:
        # Table 3 rows build only what they train, and CE reaches every classifier of every built branch; only a
        # zero CE weight or a zero weight of a built branch can leave parameters without a gradient.
        if self.loss_config(cfg).effective_weights()["ce"] == 0:
            return True
        built = set(cfg.vd.branches)
        return any(float(w) == 0 for name, w in zip(BRANCH_ORDER, cfg.vd.branch_weights)
                   if ("shared" if name.startswith("shared") else name) in built)

    def original_overrides(self, kind: str, state_dict: dict[str, Any]) -> list[str]:
        """A checkpoint of the released VD code: the official recipe's network, sizes read from its keys."""
        kw = original_model_kwargs(kind, state_dict)
        return ["model.method", "vd", "model.name", "vd_resnet50_official", "model.backbone", kw["backbone"],
                "vd.recipe", "official", "vd.routing", "official",
                "vd.bottleneck_dims", str(list(kw["bottleneck_dims"])),
                "vd.z_classifier_hidden", str(kw["z_classifier_hidden"]), "vd.attention", str(kw["attention"]).lower()]

    # ------------------------------------------------------------------------------------------------ records
    def provenance(self, cfg: CN) -> dict[str, Any]:
        """Besides the architecture, ``objective``: the multiplier of every term the run trains (beta applied),
        the recipe's defaults and Table 3's switches resolved."""
        return {
            "method": self.name,
            "recipe": cfg.vd.recipe,
            "backbone": cfg.model.backbone or cfg.model.name,
            "routing": cfg.vd.routing,
            "bottleneck": cfg.vd.bottleneck,
            "branches": list(cfg.vd.branches),
            "bottleneck_branches": list(cfg.vd.bottleneck_branches),
            "feature_mode": self.feature_mode(cfg),
            "objective": {k: w for k, w in self.loss_config(cfg).effective_weights().items() if w > 0},
        }


register(VD(), default=True)
