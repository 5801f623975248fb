"""`vdreid export` for every registered method (the issue this closes: AGW's export used to fail because the export
guessed "needs the modality" from VD's feature-mode names instead of asking the model). For each method: its default
test feature, and a feature that needs each image's modality when the method has one; onnxruntime must equal torch
(export_onnx checks max |diff| <= 1e-4 and the command fails otherwise)."""

from __future__ import annotations

import os.path as osp

import pytest
from vdreid import methods
from vdreid.cli import main
from vdreid.models.common import needs_modality


def _small_model(method) -> list[str]:
    """Overrides building the method's smallest preset (a ResNet-18-sized or smaller model) at 64x32."""
    small = [n for n in method.model_names if any(t in n for t in ("resnet18", "resnet10t", "_r18"))]
    if small:
        return ["model.name", small[0]]
    return ["model.name", method.model_names[0], "model.backbone", "resnet18"]


def _cases() -> list[tuple[str, str]]:
    out = []
    for m in methods.all_methods():
        out.append((m.name, m.default_feature_mode))
    return out


@pytest.mark.parametrize(("method", "mode"), _cases())
def test_every_method_exports_to_onnx(method, mode, tmp_path, capsys):
    m = methods.get(method)
    base = ["model.method", method, *_small_model(m), "model.pretrained", "false", "data.height", "64",
            "data.width", "32"]
    from vdreid import builders
    from vdreid.config import load_config

    cfg = load_config(opts=base)
    net = builders.build_model(cfg, 4)
    modes = [mode] + [f for f in m.feature_modes if f != mode and needs_modality(net, f) != needs_modality(net, mode)
                      ][:1]
    for feature in modes:
        out = str(tmp_path / f"{method}_{feature}.onnx")
        rc = main(["export", "--out", out, "--num-classes", "4", "--feature-mode", feature, *base])
        captured = capsys.readouterr()
        assert rc == 0, captured.err[-2000:]
        assert osp.isfile(out)
        line = [ln for ln in captured.out.splitlines() if "max |diff|" in ln][-1]
        assert ("is_ir" in line) == needs_modality(net, feature), line


def test_agw_export_as_a_user_types_it(tmp_path):
    """The command of the report: AGW's recipe, 4 classes, no pretrained weights, 64x32."""
    out = str(tmp_path / "agw.onnx")
    agw = next(m for m in methods.all_methods() if "agw_resnet18" in m.model_names)
    assert main(["export", "--config-file", "methods/agw_sysu", "--out", out, "--num-classes", "4",
                 "model.pretrained", "false", "model.name", "agw_resnet18", "data.height", "64", "data.width",
                 "32"]) == 0, agw.name
    assert osp.isfile(out)
