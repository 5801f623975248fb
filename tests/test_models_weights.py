"""Pretrained backbone weights from local files, the offline cache and the fail-fast hub path (issue 4).

Weight files are written here from randomly initialised timm / torchvision models, so nothing downloads.
"""

from __future__ import annotations

import time

import pytest
import timm
import torch
import torchvision
import vdreid  # noqa: F401
from vdreid import compat
from vdreid.models import PretrainedWeightsError, build_vd_net, hub_reachable, weights

C = 4
X = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))


def build(**kw):
    args = dict(backbone="resnet18", num_classes=C, bottleneck_dims=(16, 8), last_stride=2)
    args.update(kw)
    return build_vd_net(**args)


def pooled(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    torch.manual_seed(11)
    src = timm.create_model("resnet18", pretrained=False)  # with its 1000-way fc, as timm saves it
    path = tmp_path_factory.mktemp("w") / "timm_resnet18.pth"
    torch.save(src.state_dict(), path)
    src.reset_classifier(0)  # -> pooled 512-d features
    return str(path), src


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    torch.manual_seed(12)
    src = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp("w") / "resnet18-tv.pth"
    torch.save(src.state_dict(), path)
    src.fc = torch.nn.Identity()
    return str(path), src


def test_load_timm_file_matches_source_model(timm_file):
    path, src = timm_file
    m = build(pretrained=True, pretrained_path=path).eval()
    ref = pooled(src, X)
    for name in ("ir", "vis", "shared"):
        with torch.no_grad():
            v_pre, _, _ = m.branches[name].encoder(X)
        assert torch.allclose(v_pre, ref, atol=1e-5), name
    # all three encoders got the same ImageNet weights, heads stay random
    assert torch.equal(m.branches["ir"].encoder.body.conv1.weight, src.conv1.weight)


def test_load_torchvision_file_matches_source_model(tv_file):
    path, src = tv_file
    m = build(pretrained=path).eval()  # a string is taken as the path (torchreid's build_model passes it through)
    with torch.no_grad():
        v_pre, _, _ = m.branches["shared"].encoder(X)
    assert torch.allclose(v_pre, pooled(src, X), atol=1e-5)


def test_registry_accepts_a_path_and_last_stride_one_keeps_weights(tv_file):
    path, src = tv_file
    m = compat.models.build_model("vd_resnet18", num_classes=C, pretrained=path)
    body = m.branches["vis"].encoder.body
    sd = src.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in body.state_dict().items())
    assert body.layer4[0].conv1.stride == (1, 1)  # stride changed after loading, weights untouched


def test_wrapped_prefixed_and_safetensors_files(tmp_path, timm_file):
    path, src = timm_file
    sd = torch.load(path, weights_only=True)
    wrapped = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 5}, wrapped)
    from safetensors.torch import save_file

    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    ref = pooled(src, X)
    for f in (wrapped, st):
        m = build(pretrained=True, pretrained_path=str(f)).eval()
        with torch.no_grad():
            assert torch.allclose(m.branches["ir"].encoder(X)[0], ref, atol=1e-5), f
    # VDNet.load_backbone_weights loads the same file after construction
    m = build()
    m.load_backbone_weights(str(st))
    assert torch.allclose(pooled(m.branches["vis"].encoder, X)[0], ref, atol=1e-5)


def test_missing_unreadable_and_mismatching_files(tmp_path, timm_file):
    with pytest.raises(PretrainedWeightsError, match="not found.*pretrained_path"):
        build(pretrained=True, pretrained_path=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="could not read"):
        build(pretrained=True, pretrained_path=str(junk))
    notdict = tmp_path / "list.pth"
    torch.save([1, 2, 3], notdict)
    with pytest.raises(PretrainedWeightsError, match="does not hold a state dict"):
        build(pretrained=True, pretrained_path=str(notdict))
    # resnet34 weights into resnet18: extra blocks are unexpected keys
    r34 = tmp_path / "r34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), r34)
    with pytest.raises(PretrainedWeightsError, match=r"unexpected keys \d+ \(first: \['layer1\.2") as e:
        build(pretrained=True, pretrained_path=str(r34))
    assert "missing keys 0" in str(e.value) and "resnet18" in str(e.value)
    # a truncated file: missing keys and a wrong shape are listed
    path, _ = timm_file
    sd = torch.load(path, weights_only=True)
    del sd["layer4.1.bn2.weight"]
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(PretrainedWeightsError, match="layer4.1.bn2.weight") as e:
        build(pretrained=True, pretrained_path=str(bad))
    assert "conv1.weight: file (64, 3, 3, 3) vs model (64, 3, 7, 7)" in str(e.value)


@pytest.fixture
def silent_server():
    """An HTTPS URL on loopback whose server accepts connections and never answers (tests send no traffic elsewhere)."""
    import socket
    import threading

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)  # keep it open, say nothing
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"https://127.0.0.1:{srv.getsockname()[1]}/"
    stop.set()
    t.join(1)
    for c in held:
        c.close()
    srv.close()


def _no_hf_cache(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    return old


def test_pretrained_without_file_offline_flag_fails_fast(monkeypatch, tmp_path):
    old = _no_hf_cache(monkeypatch, tmp_path)
    try:
        monkeypatch.setenv("VDREID_OFFLINE", "1")
        t = time.perf_counter()
        with pytest.raises(PretrainedWeightsError, match="pretrained_path") as e:
            compat.models.build_model("vd_resnet18", num_classes=C)  # torchreid's default pretrained=True
        assert time.perf_counter() - t < 30
        assert "vd_resnet18" in str(e.value) and "pretrained=False" in str(e.value)
    finally:
        torch.hub.set_dir(old)


def test_pretrained_without_file_unreachable_hub_fails_within_timeout(monkeypatch, tmp_path, silent_server):
    old = _no_hf_cache(monkeypatch, tmp_path)
    try:
        monkeypatch.delenv("VDREID_OFFLINE", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("VDREID_HUB_TIMEOUT", "0.5")
        # a loopback port that accepts the connection but never answers the TLS handshake
        monkeypatch.setattr(weights, "HUB_URL", silent_server)
        real_create = timm.create_model
        downloads = []

        def create(*a, **k):
            if k.get("pretrained"):
                downloads.append(a)
            return real_create(*a, **k)

        monkeypatch.setattr(timm, "create_model", create)
        t = time.perf_counter()
        with pytest.raises(PretrainedWeightsError, match=r"cannot be reached \(checked with a 0.5 s timeout") as e:
            build(pretrained=True)
        assert time.perf_counter() - t < 30
        assert downloads == []  # timm's download was never attempted
        assert "pretrained_path=FILE" in str(e.value)
    finally:
        torch.hub.set_dir(old)


def test_bad_hub_timeout_setting(monkeypatch):
    monkeypatch.setenv("VDREID_HUB_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="VDREID_HUB_TIMEOUT must be a number"):
        hub_reachable("https://host.invalid/")


def test_hub_probe_never_hangs(silent_server):
    t = time.perf_counter()
    assert hub_reachable(silent_server, timeout=0.5) is False  # accepts, then silent
    assert hub_reachable("https://127.0.0.1:1/", timeout=0.5) is False  # refused
    assert time.perf_counter() - t < 3


def test_cached_hub_weights_are_used_offline(monkeypatch, tmp_path):
    old = _no_hf_cache(monkeypatch, tmp_path)
    try:
        monkeypatch.setenv("VDREID_OFFLINE", "1")
        torch.manual_seed(5)
        src = timm.create_model("resnet18")
        url = src.pretrained_cfg["url"]
        ckpt_dir = tmp_path / "torch_hub" / "checkpoints"
        ckpt_dir.mkdir(parents=True)
        torch.save(src.state_dict(), ckpt_dir / url.rsplit("/", 1)[-1])
        m = build(pretrained=True)
        sd = src.state_dict()
        assert all(torch.equal(v, sd[k]) for k, v in m.branches["shared"].encoder.body.state_dict().items())
    finally:
        torch.hub.set_dir(old)


def test_hub_probe_counts_an_http_answer_as_reachable():
    import http.server
    import threading

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self.send_response(405)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        assert hub_reachable(f"http://127.0.0.1:{srv.server_port}/", timeout=5) is True
    finally:
        srv.shutdown()


def test_official_preset_offline_names_torchvision_weights_and_timm_tag(monkeypatch):
    """The released code starts from torchvision's ImageNet ResNet-50; offline, the error names that file and the
    timm name holding those weights (not timm's default resnet50 recipe)."""
    import torchreid as _tr  # noqa: F401  (registry import side effects only)
    from vdreid import compat

    monkeypatch.setenv("VDREID_OFFLINE", "1")
    monkeypatch.setattr(weights, "cached_hub_file", lambda model: None)
    with pytest.raises(PretrainedWeightsError) as err:
        compat.models.build_model("vd_resnet50_official", num_classes=3, pretrained=True)
    msg = str(err.value)
    assert "resnet50.tv_in1k" in msg and "resnet50-0676ba61.pth" in msg and "pretrained_path" in msg
