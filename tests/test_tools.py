"""vdreid.tools: training-curve and CMC plots, t-SNE helpers, ONNX export with a modality input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from vdreid.tools.plots import loss_terms, plot_cmc_runs, plot_training_curves, read_train_log
from vdreid.tools.tsne import embed_2d, pick_items, plot_tsne


def _log(tmp_path, rows):
    p = tmp_path / "train_log.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(p)


def test_training_curves_plot_every_loss_term(tmp_path):
    rows = [{"epoch": e, "lr": 0.1 / e, "ce": 5.0 / e, "vsd": 0.1, "vcd": 0.2, "vml": 0.01, "total": 6.0 / e,
             "images_per_s": 10.0, "time_s": 3.0, "val/sysu/rank1": 10.0 * e} for e in (1, 2, 3)]
    path = _log(tmp_path, rows)
    assert loss_terms(read_train_log(path)) == ["ce", "vsd", "vcd", "vml", "total"]
    out = plot_training_curves(path, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 1000 and out.endswith("curves.png")


def test_train_log_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"epoch": 1, "ce": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_train_log(str(p))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no epochs"):
        read_train_log(str(tmp_path / "empty.jsonl"))


def test_cmc_plot_of_several_runs(tmp_path):
    res = tmp_path / "r.json"
    res.write_text(json.dumps({"protocol": "sysu/all/single-shot/agw/10 trials", "cmc_mean": [40.0 + i for i in
                                                                                           range(20)]}))
    plot_cmc_runs({"run A": str(res), "fractions": list(np.linspace(0.3, 1.0, 20))}, str(tmp_path / "cmc.png"))
    assert (tmp_path / "cmc.png").stat().st_size > 1000
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="cmc_mean"):
        plot_cmc_runs({"x": str(tmp_path / "x.json")}, str(tmp_path / "y.png"))


class _DS:
    def __init__(self, items):
        self.data = items


def test_pick_items_takes_common_identities_and_caps_per_id():
    q = _DS([("q", pid, 2, 0) for pid in (1, 1, 1, 2, 3, 3, 9)])
    g = _DS([("g", pid, 0, 0) for pid in (1, 2, 2, 2, 3, 4)])
    (qd, qi), (gd, gi) = pick_items(q, g, num_ids=2, per_id=2)
    assert qd is q and gd is g
    assert [q.data[i][1] for i in qi] == [1, 1, 2] and [g.data[i][1] for i in gi] == [1, 2, 2]
    with pytest.raises(ValueError, match="no identity"):
        pick_items(_DS([("q", 5, 2, 0)]), _DS([("g", 6, 0, 0)]), 3, 3)


def test_tsne_keeps_separated_identities_apart(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 32)) * 5
    pids = np.repeat(np.arange(4), 10)
    feats = centers[pids] + rng.normal(size=(40, 32)) * 0.1
    xy = embed_2d(feats, seed=0)
    assert xy.shape == (40, 2)
    # independent check: every point's nearest 2-D neighbour has its identity
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(40) * 1e18
    assert (pids[d.argmin(1)] == pids).all()
    is_ir = np.arange(40) % 2 == 0
    paths = plot_tsne({"shared_z": feats, "z_ir": feats[:, ::-1].copy()}, pids, is_ir, str(tmp_path))
    assert set(paths) == {"joint", "branches"}
    with pytest.raises(ValueError, match="at least 3"):
        embed_2d(feats[:2])


def test_onnx_export_with_modality_input(tmp_path):
    import onnxruntime as ort
    import torch
    from vdreid.models import build_vd_net
    from vdreid.tools.export import export_onnx, needs_modality

    torch.manual_seed(0)
    net = build_vd_net("resnet18", num_classes=5, bottleneck_dims=(32, 32, 16), feature_mode="z_specific").eval()
    assert needs_modality(net, "z_specific") and not needs_modality(net, "obs_concat")
    res = export_onnx(net, str(tmp_path / "m.onnx"), 32, 16, "z_specific", batch=4)
    assert res["inputs"] == ["images", "is_ir"] and res["max_abs_diff"] < 1e-4 and res["feature_dim"] == 16
    # a different batch size and modality pattern through the dynamic axis
    x = torch.randn(6, 3, 32, 16)
    m = torch.tensor([True, True, False, True, False, False])
    with torch.no_grad():
        ref = net(x, modality=m).numpy()
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy(), "is_ir": m.numpy()})[0]
    assert np.abs(got - ref).max() < 1e-4
