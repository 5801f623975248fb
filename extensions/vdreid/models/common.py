"""Plumbing every vdreid model shares: argument checks of the builders, the torchreid factory wrapper, and the
``feature_mode`` attribute of models whose test features all have one width (AGW, the BNNeck baseline)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from vdreid.models.weights import PretrainedWeightsError


def check_modality(modality: Any, batch: int, net: str, method: str) -> Tensor:
    """The modality flags of a two-stream network's forward (``net``: its class name, ``method``: its
    ``model.method``) as a CPU bool tensor: routing decisions are made on the host, so a CPU ``modality`` (as the data
    loader yields it) costs no device synchronisation."""
    if modality is None:
        raise ValueError(
            f"{net}.forward(x, modality): the argument `modality` is missing. {net[:-3]} routes each image through "
            f"its modality's stem: pass a bool tensor of shape ({batch},) with True for infrared images. torchreid's "
            f"engines do not pass it; train with vdreid's trainer (`vdreid train`, model.method {method})."
        )
    m = torch.as_tensor(modality).detach().cpu()
    if m.dim() != 1 or m.shape[0] != batch:
        raise ValueError(f"{net}.forward: `modality` must be a bool tensor of shape ({batch},) (True = infrared), "
                         f"got shape {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if m.is_floating_point() or not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"{net}.forward: `modality` must be bool (or 0/1 integers), got dtype {m.dtype}")
        m = m.bool()
    return m


def check_num_classes(num_classes: Any) -> int:
    """The number of training identities, a positive int."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (number of training identities), got {num_classes!r}")
    return num_classes


def resolve_pretrained(pretrained: bool | str, pretrained_path: str | None) -> tuple[bool, str | None]:
    """``(load ImageNet weights?, local file or None)``. ``pretrained`` may itself be a file path (torchreid's
    factories pass what the user gave); a path with ``pretrained=False`` is a contradiction, not silently dropped."""
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
    return bool(pretrained), pretrained_path


def torchreid_factory(name: str, preset: dict[str, Any], build: Callable[..., nn.Module],
                      pass_loss: bool = False) -> Callable[..., nn.Module]:
    """A torchreid model factory ``f(num_classes, loss='softmax', pretrained=True, use_gpu=True, **kwargs)`` that
    calls ``build(num_classes=..., pretrained=..., **{**preset, **kwargs})``. ``loss`` goes to ``build`` only with
    ``pass_loss`` (models with torchreid's training outputs); ``use_gpu`` is ignored (the engine places the model).
    ``pretrained`` may be a local file path. Weight errors name the registered model."""

    def factory(num_classes: int, loss: str = "softmax", pretrained: bool | str = True, use_gpu: bool = True,
                **kwargs: Any) -> nn.Module:
        extra = {"loss": loss} if pass_loss else {}
        try:
            return build(num_classes=num_classes, pretrained=pretrained, **extra, **{**preset, **kwargs})
        except PretrainedWeightsError as exc:
            raise PretrainedWeightsError(f"{name}: {exc}") from exc

    factory.__name__ = name
    factory.__doc__ = f"torchreid factory for '{name}' (preset {preset})."
    return factory


class SingleWidthFeatureModes:
    """``feature_mode`` (checked against ``feature_modes``) and ``feature_dim()`` for models whose test features
    all have ``out_dim`` channels."""

    feature_modes: tuple[str, ...] = ()
    out_dim: int

    @property
    def feature_mode(self) -> str:
        return self._feature_mode

    @feature_mode.setter
    def feature_mode(self, mode: str) -> None:
        if mode not in self.feature_modes:
            raise ValueError(f"{type(self).__name__} feature_mode must be one of {self.feature_modes}, got {mode!r}")
        self._feature_mode = mode

    def feature_dim(self, mode: str | None = None) -> int:
        """Width of the eval feature (the same for every mode)."""
        mode = self.feature_mode if mode is None else mode
        if mode not in self.feature_modes:
            raise ValueError(f"{type(self).__name__} feature mode must be one of {self.feature_modes}, got {mode!r}")
        return self.out_dim


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (the one unwrap of the package)."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def needs_modality(net: nn.Module, feature_mode: str | None = None) -> bool:
    """Whether ``net``'s test feature (``feature_mode``, default the current one) needs each image's modality: the
    model says so through its ``test_needs_modality`` attribute (a two-stream stem, a modality-routed branch); a
    model without it needs none. Export, t-SNE and feature extraction ask this instead of guessing from names."""
    net = unwrap_model(net)
    if feature_mode is None or getattr(net, "feature_mode", None) == feature_mode:
        return bool(getattr(net, "test_needs_modality", False))
    old = net.feature_mode
    try:
        net.feature_mode = feature_mode
        return bool(getattr(net, "test_needs_modality", False))
    finally:
        net.feature_mode = old
