"""What a VI-ReID method is to vdreid: one registered unit (see ``docs/adding-a-method.md``).

A :class:`Method` turns its own config section (plus the shared ``model``/``loss`` keys) into plain keyword
arguments, builds its model and its criterion, names its test-feature modes and says what it records in results.
The trainer, the evaluator, the command line and the tools only ever talk to this interface, so adding a method is
one new file in ``vdreid/methods/`` (plus its model and loss modules when they are new) and a config.

Contracts every method's parts follow:

* **model**: a ``torch.nn.Module`` registered in torchreid's model factory. ``forward(x, modality=None)`` where
  ``modality`` is a bool tensor (B,), True = infrared. Train mode returns whatever the method's criterion takes;
  eval mode returns the test feature ``(B, D)``, *not* L2-normalised (the evaluator normalises for cosine). The model
  has a settable ``feature_mode`` attribute (one of ``Method.feature_modes``) choosing that test feature.
* **criterion**: ``criterion(outputs, pids) -> (total, terms)`` where ``terms`` maps each active loss term's name to
  its weighted 0-dim tensor and ``total`` is their sum. It may own parameters (they are optimised too).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn
from yacs.config import CfgNode as CN

from vdreid.errors import ConfigError


class Method(ABC):
    """Base class of a registered method. Subclasses set the class attributes and implement the builders."""

    #: registry name, picked by the config key ``model.method``
    name: ClassVar[str] = ""
    #: the method's own config section (``cfg.<section>``); its defaults come from :meth:`config`
    section: ClassVar[str] = ""
    #: other top-level sections only this method reads (their keys are an error under another method)
    extra_sections: ClassVar[tuple[str, ...]] = ()
    #: torchreid model-factory names this method registers (``model.name`` must be one of them)
    model_names: ClassVar[tuple[str, ...]] = ()
    #: test-feature modes the model offers, and the default one
    feature_modes: ClassVar[tuple[str, ...]] = ()
    default_feature_mode: ClassVar[str] = ""
    #: feature modes drawn by ``vdreid tsne`` by default (a joint cross-modal picture uses the first)
    tsne_modes: ClassVar[tuple[str, ...]] = ()
    #: provenance keys that must agree between a checkpoint and a run resuming from it
    resume_keys: ClassVar[tuple[str, ...]] = ()
    #: checkpoint layouts of the method's original code that ``vdreid.models.from_original`` maps (e.g. 'agw')
    original_kinds: ClassVar[tuple[str, ...]] = ()
    #: other methods' layouts whose checkpoints hold this method's network too (e.g. a method reusing AGW's network
    #: reads AGW's layout); chosen for such a file when the config names this method
    reads_layouts: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------------------------------------ config
    @classmethod
    def config(cls) -> CN:
        """Defaults of the method's own section (added to the default config as ``cfg.<section>``)."""
        return CN()

    @classmethod
    def extra_config(cls) -> dict[str, CN]:
        """Defaults of the other top-level sections only this method reads (:attr:`extra_sections`), by name."""
        return {}

    @classmethod
    def list_elements(cls) -> dict[str, Any]:
        """Element type (an example value) of each list key of the method's sections whose default is empty, by
        dotted key, so that a value given on the command line is converted and checked (``{'vd.branches': ''}``)."""
        return {}

    def reads_original(self, kind: str) -> bool:
        """Whether checkpoints of original-code layout ``kind`` hold this method's network."""
        return kind in self.original_kinds or kind in self.reads_layouts

    @classmethod
    def ranges(cls) -> dict[str, tuple[Callable[[Any], bool], str]]:
        """Valid ranges of the numeric keys of the method's own section(s): dotted key (``'<section>.<key>'``) ->
        ``(test, expected)``, built with :func:`vdreid.config.at_least`, :func:`vdreid.config.positive`, ... A list
        key applies the test to every element. Every int/float key of the section needs a rule (or a place in
        :meth:`free_numeric_keys`); the config check reports a value outside it as one line naming the key."""
        return {}

    @classmethod
    def upgrade_config(cls, stored: dict[str, Any]) -> dict[str, Any]:
        """A config dict stored by an older vdreid (a checkpoint's or a results JSON's), with the method's renamed
        keys translated to today's names; called before the dict is merged into today's defaults. Default: as is."""
        return stored

    @classmethod
    def free_numeric_keys(cls) -> frozenset[str]:
        """Numeric keys of the method's section(s) with no range (any finite value is valid)."""
        return frozenset()

    # ------------------------------------------------------------------------------------------------ model.*
    @staticmethod
    def pretrained_arg(cfg: CN) -> bool | str:
        """``model.pretrained`` / ``model.pretrained_path`` as the model factories take them: the local weights file
        when one is named, else ``True`` (timm's hub, a clear error offline) or ``False`` (random initialisation)."""
        if not cfg.model.pretrained:
            return False
        return cfg.model.pretrained_path or True

    @staticmethod
    def backbone_kwargs(cfg: CN) -> dict[str, Any]:
        """``{'backbone': model.backbone}`` when the config names a timm encoder, else ``{}`` (the preset's)."""
        return {"backbone": cfg.model.backbone} if cfg.model.backbone else {}

    def check_config(self, cfg: CN) -> None:
        """Value checks of the method's keys; raise :class:`~vdreid.errors.ConfigError` naming the key."""
        if self.model_names and not cfg.model.backbone and cfg.model.name not in self.model_names:
            raise ConfigError(
                f"config key 'model.name': {cfg.model.name!r} is not a model of method '{self.name}' "
                f"(model.method); choose one of {list(self.model_names)}, or set model.backbone to a timm CNN name"
            )

    def feature_mode(self, cfg: CN) -> str:
        """The test feature: ``test.feature_mode`` when set, else the recipe's ``<section>.feature_mode`` (when the
        section has that key), else :attr:`default_feature_mode`; checked, the error naming the key that set it."""
        own = cfg[self.section].get("feature_mode", "") if self.section in cfg else ""
        mode = cfg.test.feature_mode or own or self.default_feature_mode
        key = "test.feature_mode" if cfg.test.feature_mode else f"{self.section}.feature_mode"
        if mode not in self.feature_modes:
            raise ConfigError(f"config key '{key}': {mode!r} is not a feature mode of method '{self.name}'; "
                              f"choose one of {list(self.feature_modes)}")
        return mode

    @classmethod
    def model_factories(cls) -> dict[str, Any]:
        """torchreid factories ``f(num_classes, loss='softmax', pretrained=True, use_gpu=True, **kwargs)`` by model
        name; ``import vdreid`` registers them in torchreid's model factory (``torchreid.models.build_model``)."""
        return {}

    # ------------------------------------------------------------------------------------------------ builders
    @abstractmethod
    def model_kwargs(self, cfg: CN) -> dict[str, Any]:
        """Keyword arguments of the model factory, from the config (no yacs object goes further)."""

    @abstractmethod
    def build_model(self, cfg: CN, num_classes: int) -> nn.Module:
        """The model, with pretrained weights as configured and ``feature_mode`` set."""

    @abstractmethod
    def build_criterion(self, cfg: CN, num_classes: int, model: nn.Module | None = None) -> nn.Module:
        """The training criterion ``(outputs, pids) -> (total, terms)``."""

    def param_groups(self, cfg: CN, model: nn.Module, criterion: nn.Module) -> list[dict[str, Any]]:
        """Optimiser parameter groups (``{'params': [...], 'lr_mult': float}``; default: one group of every
        trainable parameter of the model and the criterion at the base learning rate)."""
        params = [p for p in model.parameters() if p.requires_grad]
        params += [p for p in criterion.parameters() if p.requires_grad]
        return [{"params": params, "lr_mult": 1.0}]

    def find_unused_parameters(self, cfg: CN) -> bool:
        """Whether DDP must look for parameters without gradients (branches or heads some steps do not use)."""
        return False

    def original_overrides(self, kind: str, state_dict: dict[str, Any]) -> list[str]:
        """``KEY VALUE`` config overrides describing the model of an original-code checkpoint of ``kind`` (one of
        :attr:`original_kinds`), read from its keys."""
        raise ConfigError(f"method '{self.name}' maps no original-code checkpoints (got kind {kind!r})")

    # ------------------------------------------------------------------------------------------------ records
    def provenance(self, cfg: CN) -> dict[str, Any]:
        """What the method records in checkpoints and results JSON besides the common fields."""
        return {"method": self.name, "feature_mode": self.feature_mode(cfg)}

    def describe(self) -> str:
        return f"{self.name}: models {list(self.model_names)}, feature modes {list(self.feature_modes)}"
