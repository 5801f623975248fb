"""ONNX export of the test-time feature extractor (the chosen feature mode), checked with onnxruntime.

The exported graph is the eval forward of any registered method's model: image batch (N, 3, H, W) -> features
(N, D), not L2-normalised (the evaluator normalises). When the model says its test feature needs each image's
modality (``test_needs_modality``: a two-stream stem, a modality-routed branch), the graph takes a second input
``is_ir`` (N,) bool.
"""

from __future__ import annotations

import os
import os.path as osp
import warnings

import numpy as np
import torch
from torch import nn

from vdreid.models.common import needs_modality, unwrap_model


class FeatureExtractor(nn.Module):
    """Eval forward of a model with a fixed feature mode (optionally with the modality input)."""

    def __init__(self, net: nn.Module, feature_mode: str, with_modality: bool) -> None:
        super().__init__()
        self.net = net
        self.net.feature_mode = feature_mode
        self.with_modality = with_modality

    def forward(self, x: torch.Tensor, is_ir: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, modality=is_ir if self.with_modality else None)


def export_onnx(
    model: nn.Module,
    path: str,
    height: int,
    width: int,
    feature_mode: str,
    batch: int = 4,
    opset: int = 17,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict:
    """Write ``path`` (ONNX, dynamic batch) and compare onnxruntime with PyTorch on a random batch.

    Returns ``{"path", "feature_dim", "max_abs_diff", "inputs"}``; raises ``AssertionError`` naming the difference
    when it exceeds ``atol``.
    """
    import onnxruntime as ort

    net = unwrap_model(model).cpu().eval()
    with_mod = needs_modality(net, feature_mode)
    wrapper = FeatureExtractor(net, feature_mode, with_mod).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, height, width, generator=g)
    is_ir = torch.arange(batch) % 2 == 1
    args = (x, is_ir) if with_mod else (x,)
    names = ["images", "is_ir"] if with_mod else ["images"]
    axes = {n: {0: "batch"} for n in names}
    axes["features"] = {0: "batch"}
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with torch.no_grad():
        ref = wrapper(*args).numpy()
        # the TorchScript-based exporter: no onnxscript dependency, supports opset 17 and dynamic axes. Its tracer
        # warnings concern Python-side shape checks and the constant gray-view weights, which are fine to freeze.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(wrapper, args, path, input_names=names, output_names=["features"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {"images": x.numpy()}
    if with_mod:
        feeds["is_ir"] = is_ir.numpy()
    got = sess.run(["features"], feeds)[0]
    if got.shape != ref.shape:
        raise AssertionError(f"ONNX features have shape {got.shape}, PyTorch {ref.shape}")
    diff = float(np.max(np.abs(got - ref)))
    if diff > atol:
        raise AssertionError(f"onnxruntime differs from PyTorch by {diff:.3g} (> {atol}) on a batch of {batch}")
    return {"path": path, "feature_dim": int(ref.shape[1]), "max_abs_diff": diff, "inputs": names, "opset": opset}
