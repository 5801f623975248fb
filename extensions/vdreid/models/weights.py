"""Pretrained backbone weights: local files first, timm's hub only for users who are online.

Offline-first policy (DESIGN.md principle 5), in this order:

1. ``pretrained_path`` names a local file: a timm or torchvision ResNet state dict (``.pth``/``.pt``/``.bin``/
   ``.tar`` through ``torch.load(weights_only=True)``, or ``.safetensors``). Wrappers (``state_dict``, ``model``,
   ``model_state_dict``), a ``module.`` prefix (DataParallel/DDP) and the ImageNet classifier are handled; every
   other key must fit, or :class:`PretrainedWeightsError` lists the missing, unexpected and wrongly shaped keys.
   timm's ResNets use torchvision's key names, so torchvision files load unchanged; for other families timm's own
   ``checkpoint_filter_fn`` (the converter timm uses for original-format weights) is tried when keys differ.
2. No file: the weights timm would download are looked up in the local Hugging Face / torch hub caches, with no
   network access.
3. Not cached: one HTTPS ``HEAD`` request to the hub (:data:`HUB_URL`, certificate verified, the environment's
   proxies honoured) is made in a daemon thread joined with a short timeout (``VDREID_HUB_TIMEOUT`` seconds,
   default 3). Only when the hub itself answers is timm's normal ``pretrained=True`` loading used (users who are
   online). Otherwise, or when ``VDREID_OFFLINE=1`` / ``HF_HUB_OFFLINE=1`` is set, a :class:`PretrainedWeightsError`
   says how to name a local file. A bare TCP connect is not used as the test: sandboxes and transparent proxies
   accept connections to any address and then never answer, which would send huggingface_hub into minutes of
   retries. The thread join bounds the wait even when DNS, connect or the TLS handshake would hang.
"""

from __future__ import annotations

import os
import os.path as osp
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from vdreid import compat
from vdreid.errors import CheckpointError, PretrainedWeightsError

HUB_URL = "https://huggingface.co"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")
_STRIP_PREFIXES = ("module.", "model.", "backbone.", "base.", "body.")




def offline_help(model_name: str) -> str:
    return (
        f"To use ImageNet weights offline, download a '{model_name}' state dict once on a machine with internet "
        f"(timm: `timm.create_model('{model_name}', pretrained=True).state_dict()` saved with torch.save, or a "
        "torchvision ResNet file such as resnet50-0676ba61.pth) and pass its path: "
        "`vdreid.models.build_vd_net(..., pretrained=True, pretrained_path=FILE)`, "
        "`torchreid.models.build_model(name, num_classes, pretrained=FILE)`, or config `model.pretrained_path`. "
        "Use pretrained=False to train from random initialisation."
    )


def read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a state dict from a local ``.pth``/``.pt``/``.bin``/``.tar`` or ``.safetensors`` file.

    Unwraps the usual checkpoint wrappers and strips a ``module.`` prefix; raises :class:`PretrainedWeightsError`
    naming the file when it is missing or unreadable.
    """
    if not path:
        raise PretrainedWeightsError("pretrained_path is empty: name a local weights file")
    fpath = osp.abspath(osp.expanduser(str(path)))
    if not osp.isfile(fpath):
        raise PretrainedWeightsError(f'pretrained weights file not found: "{fpath}" (argument pretrained_path)')
    try:
        if fpath.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(fpath, device="cpu")
        else:  # the package's one safe loader: weights_only=True, one error line naming the file
            obj = compat.load_checkpoint(fpath, weights_only=True, map_location="cpu")
    except CheckpointError as exc:  # says what the file is not (empty, truncated, not a PyTorch file, not a dict)
        raise PretrainedWeightsError(
            f"could not read pretrained weights: {str(exc).rstrip('.')}. It does not hold a state dict vdreid can "
            "load: expected a "
            "PyTorch state dict (torch.save(model.state_dict(), FILE)) or a .safetensors file."
        ) from None
    except Exception as exc:  # noqa: BLE001 - a .safetensors file that safetensors cannot read, re-raised named
        raise PretrainedWeightsError(
            f'could not read pretrained weights "{fpath}": {exc}. Expected a PyTorch state dict '
            "(torch.save(model.state_dict(), FILE)) or a .safetensors file."
        ) from exc
    for _ in range(3):  # nested wrappers, e.g. {'model': {'state_dict': ...}}
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        raise PretrainedWeightsError(
            f'"{fpath}" does not hold a state dict of tensors (found {type(obj).__name__}'
            + (f" with keys {sorted(obj)[:10]}" if isinstance(obj, Mapping) else "")
            + "). Save one with torch.save(model.state_dict(), FILE)."
        )
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _is_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    clf = cfg.get("classifier", "fc")
    names = clf if isinstance(clf, (list, tuple)) else [clf]
    return tuple(f"{n}." for n in names) + ("fc.", "head.fc.", "classifier.")


def _match(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> tuple[list, list, list]:
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in state and tuple(state[k].shape) != tuple(target[k].shape)
    ]
    return missing, unexpected, shapes


def _candidates(state: dict[str, Tensor], model: nn.Module):
    """Yield progressively converted versions of ``state`` (as is, prefix stripped, timm's converter)."""
    yield state
    for p in _STRIP_PREFIXES:
        if all(k.startswith(p) for k in state):
            yield {k[len(p) :]: v for k, v in state.items()}
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):
        try:
            yield dict(filter_fn(dict(state), model))
        except Exception:  # noqa: BLE001 - a converter that does not apply just is not a candidate
            return


def load_backbone_state(model: nn.Module, state: dict[str, Tensor], source: str = "state dict") -> None:
    """Load ``state`` into a timm backbone built with ``num_classes=0``, dropping the ImageNet classifier.

    Every backbone parameter and buffer must be present with the right shape; otherwise raises
    :class:`PretrainedWeightsError` listing the first mismatching keys of each kind.
    """
    target = model.state_dict()
    cls_prefixes = _classifier_prefixes(model)
    best = None
    for cand in _candidates(state, model):
        cand = {k: v for k, v in cand.items() if k in target or not k.startswith(cls_prefixes)}
        missing, unexpected, shapes = _match(cand, target)
        score = len(missing) + len(unexpected) + len(shapes)
        if best is None or score < best[0]:
            best = (score, cand, missing, unexpected, shapes)
        if score == 0:
            break
    assert best is not None
    _, cand, missing, unexpected, shapes = best
    if missing or unexpected or shapes:

        def show(items: list) -> str:
            return f"{len(items)} " + (f"(first: {items[:8]})" if items else "")

        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise PretrainedWeightsError(
            f"pretrained weights from {source} do not fit backbone '{arch}': missing keys {show(missing)}; "
            f"unexpected keys {show(unexpected)}; shape mismatches {show(shapes)}. Expected a timm or torchvision "
            f"'{arch}' state dict (ImageNet classifier keys are ignored). Check that the file matches the "
            "backbone name (e.g. resnet50 weights for backbone='resnet50')."
        )
    model.load_state_dict(cand, strict=True)


def load_backbone_file(model: nn.Module, path: str) -> None:
    """Read ``path`` (see :func:`read_state_dict`) and load it into ``model`` (see :func:`load_backbone_state`)."""
    load_backbone_state(model, read_state_dict(path), source=f'"{osp.abspath(osp.expanduser(str(path)))}"')


def _hub_timeout() -> float:
    raw = os.environ.get("VDREID_HUB_TIMEOUT", "3")
    try:
        return max(0.05, float(raw))
    except ValueError as exc:
        raise ValueError(f"VDREID_HUB_TIMEOUT must be a number of seconds, got {raw!r}") from exc


def _offline_env() -> bool:
    flags = ("VDREID_OFFLINE", "HF_HUB_OFFLINE")
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in flags)


def hub_reachable(url: str | None = None, timeout: float | None = None) -> bool:
    """True if ``url`` (default :data:`HUB_URL`) answers an HTTPS HEAD request within ``timeout`` seconds
    (default ``VDREID_HUB_TIMEOUT`` or 3). Any HTTP status over a verified TLS connection counts as an answer;
    DNS failures, refused or silent connections, certificate errors and timeouts do not. Never blocks longer than
    ``timeout``: the request runs in a daemon thread that is abandoned if it has not finished.
    """
    url = HUB_URL if url is None else url
    if timeout is None:
        timeout = _hub_timeout()
    result = {"ok": False}

    def probe() -> None:
        try:
            req = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(req, timeout=timeout, context=ssl.create_default_context()):
                result["ok"] = True
        except urllib.error.HTTPError:
            result["ok"] = True  # the server answered (e.g. 404/405): the hub is reachable
        except (OSError, ValueError, ssl.SSLError):
            pass

    t = threading.Thread(target=probe, daemon=True, name="vdreid-hub-probe")
    t.start()
    t.join(timeout)
    return bool(result["ok"]) and not t.is_alive()


def cached_hub_file(model: nn.Module) -> str | None:
    """Path of the weights timm would download for ``model`` if already in a local cache, else None (no network)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    hf_id = cfg.get("hf_hub_id")
    if hf_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for fname in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
                if fname:
                    hit = try_to_load_from_cache(hf_id, fname)
                    if isinstance(hit, str) and osp.isfile(hit):
                        return hit
        except Exception:  # noqa: BLE001 - no cache support means no cached file
            pass
    url = cfg.get("url")
    if url:
        f = osp.join(torch.hub.get_dir(), "checkpoints", osp.basename(url.split("?")[0]))
        if osp.isfile(f):
            return f
    return None


def hub_state_dict(model_name: str, model: nn.Module, **timm_kwargs: Any) -> dict[str, Tensor]:
    """ImageNet weights for ``model_name`` without a named file: cache, then (online only) timm's hub loading.

    ``timm_kwargs`` are the arguments ``model`` was created with; the download is created with them over
    ``num_classes=0, global_pool=''`` (``global_pool=None`` keeps the model's registered pooling head, as the
    encoders built for one input size do; ``img_size`` makes timm resample position tables as it loads).
    """
    cached = cached_hub_file(model)
    if cached is not None:
        return read_state_dict(cached)
    if _offline_env():
        raise PretrainedWeightsError(
            f"pretrained=True for backbone '{model_name}' but no local weights file was named, the weights are not "
            "in the local hub cache, and VDREID_OFFLINE/HF_HUB_OFFLINE is set. " + offline_help(model_name)
        )
    if not hub_reachable():
        raise PretrainedWeightsError(
            f"pretrained=True for backbone '{model_name}' but no local weights file was named, the weights are not "
            f"in the local hub cache, and {HUB_URL} cannot be reached (checked with a {_hub_timeout():g} s "
            "timeout; set VDREID_OFFLINE=1 to skip the check). " + offline_help(model_name)
        )
    import timm

    try:
        kwargs = {"num_classes": 0, "global_pool": "", **timm_kwargs}
        src = timm.create_model(model_name, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised with guidance
        raise PretrainedWeightsError(
            f"timm could not download weights for '{model_name}': {exc}. " + offline_help(model_name)
        ) from exc
    return src.state_dict()
