"""DEEN (models/deen*.py, losses/cpm.py, losses/deen.py) against an independent restatement of its authors' code
(tests/deen_reference.py), loaded through vdreid.models.from_original('deen', ...): outputs, test features, every loss
term and every gradient, in float64, for the SYSU-MM01 / LLCM network and the RegDB network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import vdreid  # noqa: F401  (registers the layouts and torchreid factories)
from deen_reference import CPMLoss, deen_distmats, deen_train_loss, embed_net
from original_reference import randomize_
from vdreid.losses import DEENCriterion, cross_modal_prototype_loss, orthogonal_loss
from vdreid.models import detect_original, from_original, model_from_original
from vdreid.models.deen import DEENNet, DEENOutput, build_deen
from vdreid.models.original import to_original_key

DATASET_OF_STAGE = {3: "sysu", 2: "regdb"}


def _pair(dee_stage: int, arch: str = "resnet18", classes: int = 5):
    """The restated DEEN network with random weights and BN statistics, and DEENNet holding the same weights through
    from_original; both float64."""
    torch.manual_seed(0)
    ref = randomize_(embed_net(classes, DATASET_OF_STAGE[dee_stage], arch=arch), seed=1).double()
    ckpt = {"net": ref.state_dict(), "cmc": None, "mAP": 0.5, "mINP": 0.3, "epoch": 7}
    net = build_deen(arch, num_classes=classes, dee_stage=dee_stage)
    net.load_state_dict(from_original("deen", ckpt), strict=True)
    return ref, net.double()


@pytest.fixture(scope="module", params=[3, 2], ids=["sysu-llcm", "regdb"])
def pair(request):
    return request.param, *_pair(request.param)


def _images(seed: int, n: int, h: int = 32, w: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g, dtype=torch.float64)


def _vdreid_batch(x_vis, x_ir, l_vis, ids: int, k: int):
    """vdreid's sampler order: for each identity its K visible then its K infrared images."""
    rows, is_ir, pids = [], [], []
    for i in range(ids):
        for src, flag in ((x_vis, False), (x_ir, True)):
            rows += [src[i * k + j] for j in range(k)]
            is_ir += [flag] * k
            pids += [int(l_vis[i * k])] * k
    return torch.stack(rows), torch.tensor(is_ir), torch.tensor(pids)


def _grads_match(net: DEENNet, ref: torch.nn.Module, rtol=1e-7, atol=1e-10) -> int:
    """Every trainable DEENNet parameter's gradient equals the original parameter's; returns how many were compared."""
    ref_params = dict(ref.named_parameters())
    n = 0
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        q = ref_params[to_original_key("deen", name)]
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=atol, msg=name)
        n += 1
    return n


# ------------------------------------------------------------------------------------------------ training
def test_train_step_equals_deen_in_vdreid_batch_order(pair):
    """A batch in vdreid's order (2 ids x (2 vis + 2 ir)): outputs (dropout masks included, same seed), every loss
    term, the total and every parameter gradient equal DEEN's train.py on its own layout."""
    stage, ref, net = pair
    ids, k = 2, 2
    x_vis, x_ir = _images(10, ids * k), _images(11, ids * k)
    l_vis = torch.tensor([3, 3, 1, 1])
    ref.train()
    net.train()
    ref.zero_grad(set_to_none=True)
    net.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    total_ref, terms_ref = deen_train_loss(ref, x_vis, x_ir, l_vis, l_vis.clone())
    total_ref.backward()
    x, is_ir, pids = _vdreid_batch(x_vis, x_ir, l_vis, ids, k)
    torch.manual_seed(123)
    out = net(x, is_ir)
    assert isinstance(out, DEENOutput) and out.pool.shape[0] == 3 * x.shape[0]
    total, terms = DEENCriterion()(out, pids)
    assert set(terms) == {"ce", "triplet", "cpm", "ort"}
    for name in terms:
        assert terms[name].item() == pytest.approx(terms_ref[name].item(), rel=1e-9, abs=1e-12), name
    assert total.item() == pytest.approx(total_ref.item(), rel=1e-9)
    total.backward()
    assert _grads_match(net, ref) == sum(1 for p in net.parameters() if p.requires_grad)
    # every BatchNorm saw the same images: running statistics agree after the step
    torch.testing.assert_close(net.bnneck.running_mean, ref.bottleneck.running_mean)
    torch.testing.assert_close(net.mfa["layer2"].pnl.w_z[1].running_var, ref.MFA2.PNL.W[1].running_var)
    torch.testing.assert_close(net.stem_ir.bn1.running_mean, ref.thermal_module.thermal.bn1.running_mean)


def test_train_outputs_equal_deen_rows(pair):
    """pool and logits row by row (the original's layout [vis; ir] x 3 embeddings), dropout on, same seed; the
    orthogonal loss is DEEN's model-side loss_ort."""
    stage, ref, net = pair
    x_vis, x_ir = _images(20, 4), _images(21, 4)
    ref.train()
    net.train()
    torch.manual_seed(7)
    pool_ref, logits_ref, ort_ref = ref(x_vis, x_ir)
    x = torch.cat([x_ir[:2], x_vis[:2], x_ir[2:], x_vis[2:]])  # any order in: the network rearranges
    is_ir = torch.tensor([True, True, False, False, True, True, False, False])
    torch.manual_seed(7)
    out = net(x, is_ir)
    assert out.order.tolist() == [2, 3, 6, 7, 0, 1, 4, 5]
    assert out.modality.tolist() == [False] * 4 + [True] * 4
    torch.testing.assert_close(out.pool, pool_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.logits, logits_ref, rtol=1e-9, atol=1e-12)
    assert orthogonal_loss(out.pool).item() == pytest.approx(ort_ref.item(), rel=1e-10)
    assert net.dee.dropout.p == 0.01 and ref.DEE.dropout.p == 0.01


def test_loss_is_independent_of_the_row_order():
    """Rows shuffled so that no identity is contiguous: the criterion regroups them and the loss (and its
    gradients) equal DEEN's on its layout (dropout off, so that masks do not depend on row positions)."""
    ref, net = _pair(3)
    ref.DEE.dropout.p = net.dee.dropout.p = 0.0
    ids, k = 3, 2
    x_vis, x_ir = _images(30, ids * k), _images(31, ids * k)
    l_vis = torch.tensor([4, 4, 0, 0, 2, 2])
    ref.train()
    net.train()
    total_ref, terms_ref = deen_train_loss(ref, x_vis, x_ir, l_vis, l_vis.clone())
    total_ref.backward()
    x, is_ir, pids = _vdreid_batch(x_vis, x_ir, l_vis, ids, k)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(4))
    out = net(x[perm], is_ir[perm])
    total, terms = DEENCriterion()(out, pids[perm])
    for name in terms:
        assert terms[name].item() == pytest.approx(terms_ref[name].item(), rel=1e-9, abs=1e-12), name
    total.backward()
    _grads_match(net, ref)


def test_criterion_weights_and_errors():
    torch.manual_seed(0)
    net = build_deen("resnet18", num_classes=4).double().train()
    x = _images(40, 8)
    is_ir = torch.tensor([False, False, True, True] * 2)
    pids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    out = net(x, is_ir)
    _, base = DEENCriterion()(out, pids)
    _, weighted = DEENCriterion(ce=0.5, triplet=2.0, cpm=1.6, ort=0.0)(out, pids)
    assert set(weighted) == {"ce", "triplet", "cpm"}
    assert weighted["ce"].item() == pytest.approx(0.5 * base["ce"].item(), rel=1e-12)
    assert weighted["triplet"].item() == pytest.approx(2.0 * base["triplet"].item(), rel=1e-12)
    assert weighted["cpm"].item() == pytest.approx(2.0 * base["cpm"].item(), rel=1e-12)
    with pytest.raises(ValueError, match="K visible and K infrared"):
        DEENCriterion()(net(x[:6], is_ir[:6]), pids[:6])  # 4 visible, 2 infrared rows
    bad = torch.tensor([0, 0, 0, 2, 1, 1, 1, 1])  # identity 2 has no visible image
    with pytest.raises(ValueError, match="same identities"):
        DEENCriterion()(out, bad)
    with pytest.raises(TypeError, match="DEENOutput"):
        DEENCriterion()(torch.randn(3, 4), pids)
    with pytest.raises(ValueError, match="one label per image"):
        DEENCriterion()(out, pids[:4])
    with pytest.raises(ValueError, match="nothing would be trained"):
        DEENCriterion(ce=0, triplet=0, cpm=0, ort=0)
    with pytest.raises(ValueError, match="cpm_margin"):
        DEENCriterion(cpm_margin=-1)


# ------------------------------------------------------------------------------------------------ CPM loss
def _cpm_inputs(seed: int, ids: int, k: int, d: int = 6, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(4 * ids * k, d, generator=g, dtype=torch.float64) * scale
    labels_block = torch.tensor([7 * i + 1 for i in range(ids) for _ in range(k)])
    labels = labels_block.repeat(4)
    return feat, labels


@pytest.mark.parametrize("ids, k, scale", [(2, 1, 1.0), (3, 2, 1.0), (4, 3, 0.05), (6, 4, 0.3)])
def test_cpm_equals_deen_value_and_gradient(ids, k, scale):
    """Values and gradients (the detached 'negatives' included) equal DEEN's CPMLoss, whose mask comes from sorted
    labels: the identities here are not in ascending order within the block."""
    feat, labels = _cpm_inputs(ids * 10 + k, ids, k, scale=scale)
    perm = torch.arange(ids).flip(0)  # descending identities
    blocks = labels.reshape(4, ids, k)[:, perm].reshape(-1)
    a = feat.clone().requires_grad_(True)
    b = feat.clone().requires_grad_(True)
    ours = cross_modal_prototype_loss(a, blocks)
    ref = CPMLoss()(b, blocks)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-15)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14)


def test_cpm_detach_changes_the_gradient_and_margin_default():
    """Without the two stop-gradients the gradient differs (so the test above checks them); DEEN's CPMLoss ignores
    its margin argument (0.2 always), vdreid's honours it with 0.2 as the default."""
    feat, labels = _cpm_inputs(1, 3, 2)
    a = feat.clone().requires_grad_(True)
    cross_modal_prototype_loss(a, labels).backward()
    b = feat.clone().requires_grad_(True)
    c = b.reshape(4, 3, 2, -1).mean(2)
    import torch.nn.functional as F

    def d(u, v):
        return torch.cdist(u, v)

    def nearest(m):
        return m.masked_fill(torch.eye(3, dtype=torch.bool), float("inf")).amin(1)

    def hinge(an, ap):
        return F.relu(ap - an + 0.2).mean()

    ap1, ap2 = d(c[1], c[2]).diagonal(), d(c[0], c[3]).diagonal()
    undetached = (hinge(d(c[0], c[2]).diagonal(), ap1) + 0.5 * (hinge(nearest(d(c[2], c[2])), ap1)
                                                                  + hinge(nearest(d(c[0], c[0])), ap1))
                  + hinge(d(c[1], c[3]).diagonal(), ap2) + 0.5 * (hinge(nearest(d(c[3], c[3])), ap2)
                                                                    + hinge(nearest(d(c[1], c[1])), ap2))) / 2
    assert undetached.item() == pytest.approx(cross_modal_prototype_loss(feat, labels).item(), rel=1e-9)
    undetached.backward()
    assert (a.grad - b.grad).abs().max() > 1e-3
    assert CPMLoss(margin=0.9)(feat, labels).item() == pytest.approx(cross_modal_prototype_loss(feat, labels).item())
    assert cross_modal_prototype_loss(feat, labels, margin=0.9).item() != pytest.approx(
        cross_modal_prototype_loss(feat, labels).item())


def test_cpm_ties_share_the_gradient_like_deen():
    """Two identities with the same centres: the nearest-other minimum ties; the gradient is shared as DEEN's min()
    shares it."""
    feat, labels = _cpm_inputs(2, 3, 2)
    feat = feat.reshape(4, 3, 2, -1)
    feat[:, 2] = feat[:, 1]  # identities 2 and 3 coincide in every block
    feat = feat.reshape(24, -1)
    a = feat.clone().requires_grad_(True)
    b = feat.clone().requires_grad_(True)
    ours, ref = cross_modal_prototype_loss(a, labels), CPMLoss()(b, labels)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14)


def test_cpm_layout_errors():
    feat, labels = _cpm_inputs(3, 3, 2)
    with pytest.raises(ValueError, match="four equal blocks"):
        cross_modal_prototype_loss(feat[:22], labels[:22])
    shuffled = labels.clone()
    shuffled[[0, 2]] = shuffled[[2, 0]]  # identity rows not contiguous in block 0
    with pytest.raises(ValueError, match="contiguous"):
        cross_modal_prototype_loss(feat, shuffled)
    other = labels.clone()
    other[6:12] = other[6:12].flip(0)  # the infrared block lists the identities in another order
    with pytest.raises(ValueError, match="same order"):
        cross_modal_prototype_loss(feat, other)
    uneven = torch.tensor([1, 1, 1, 2, 2, 2]).repeat(4)
    uneven[:6] = torch.tensor([1, 1, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="same number of rows"):
        cross_modal_prototype_loss(feat, torch.cat([uneven[:6]] * 4))
    with pytest.raises(ValueError, match="at least two identities"):
        cross_modal_prototype_loss(feat[:8], torch.zeros(8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        cross_modal_prototype_loss(feat, labels.double())


def test_orthogonal_loss_definition():
    g = torch.Generator().manual_seed(5)
    pool = torch.rand(12, 5, generator=g, dtype=torch.float64)
    expect = sum(float(pool[4 + k] @ pool[8 + k]) for k in range(4)) / 12
    assert orthogonal_loss(pool).item() == pytest.approx(expect, rel=1e-12)
    with pytest.raises(ValueError, match="3N"):
        orthogonal_loss(pool[:10])


# ------------------------------------------------------------------------------------------------ test features
def test_eval_features_rank_like_deen_distmats(pair):
    """'all' is the concatenation of the six L2-normalised parts (inner product = DEEN's distmat7, norm sqrt(6)),
    'weighted' gives distmat8 (norm sqrt(3)), 'pool' / 'bn' the unnormalised input-embedding features; infrared
    queries and visible gallery images, each through its own stem."""
    stage, ref, net = pair
    ref.eval()
    net.eval()
    q, g = _images(50, 3), _images(51, 4)
    d7, d8, d1, d2 = deen_distmats(ref, q, g, q_modal=2, g_modal=1)
    ir, vis = torch.ones(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    feats = {}
    for mode in ("all", "weighted", "pool", "bn"):
        net.feature_mode = mode
        with torch.no_grad():
            feats[mode] = (net(q, ir), net(g, vis))
        assert feats[mode][0].shape[1] == net.feature_dim()
    np.testing.assert_allclose((feats["all"][0] @ feats["all"][1].T).numpy(), d7, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose((feats["weighted"][0] @ feats["weighted"][1].T).numpy(), d8, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(feats["all"][0].norm(dim=1), torch.full((3,), math.sqrt(6), dtype=torch.float64))
    torch.testing.assert_close(feats["weighted"][1].norm(dim=1), torch.full((4,), math.sqrt(3), dtype=torch.float64))
    for mode, d in (("pool", d1), ("bn", d2)):
        fq, fg = (torch.nn.functional.normalize(f, dim=1) for f in feats[mode])
        np.testing.assert_allclose((fq @ fg.T).numpy(), d, rtol=1e-10, atol=1e-12)
    # a mixed batch gives each image its own modality's feature, in the input order
    net.feature_mode = "all"
    with torch.no_grad():
        mixed = net(torch.stack([g[0], q[1], g[2]]), torch.tensor([False, True, False]))
    torch.testing.assert_close(mixed, torch.stack([feats["all"][1][0], feats["all"][0][1], feats["all"][1][2]]),
                               rtol=1e-10, atol=1e-12)
    assert net.test_needs_modality and not net.training


def test_flip_sum_of_normalised_features_is_deens_test_py_feature():
    """vdreid's flip TTA (n(f(x)) + n(f(mirror x))) of the 'all' feature is DEEN's test.py feature divided by sqrt(6):
    its inner products are test.py's flipped distmat7 / 6. (vdreid's cosine then normalises the sums again, which
    test.py does not: docs/protocols.md.)"""
    ref, net = _pair(3)
    ref.eval()
    net.eval()
    q, g = _images(60, 2), _images(61, 3)
    d7, _, _, _ = deen_distmats(ref, q, g, q_modal=1, g_modal=2, flip=True)
    import torch.nn.functional as F

    def flipped(x, ir):
        with torch.no_grad():
            return F.normalize(net(x, ir), dim=1) + F.normalize(net(torch.flip(x, dims=[3]), ir), dim=1)

    fq, fg = flipped(q, torch.zeros(2, dtype=torch.bool)), flipped(g, torch.ones(3, dtype=torch.bool))
    np.testing.assert_allclose(6 * (fq @ fg.T).numpy(), d7, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_original_checkpoints_detect_load_and_report_mismatches(pair):
    stage, ref, net = pair
    sd = {"module." + k: v for k, v in ref.state_dict().items()}  # DataParallel prefix
    assert detect_original({"net": sd, "epoch": 3}) == "deen"  # not 'agw', whose keys DEEN's extend
    model, kind = model_from_original({"net": sd}, feature_mode="weighted")
    assert kind == "deen" and isinstance(model, DEENNet) and model.dee_stage == stage
    assert model.feature_mode == "weighted" and not model.training
    assert model.config["backbone"] == "resnet18" and model.classifier.out_features == 5
    mapped = from_original("deen", sd)
    assert any(k.startswith("shared.layer4.") for k in mapped) == (stage == 3)
    if stage == 2:
        assert "base_resnet.base.layer4.0.conv1.weight" in ref.state_dict()  # saved by the RegDB network, dropped
        assert not any(k.startswith("shared.layer4") for k in mapped)
    broken = {k: v for k, v in ref.state_dict().items() if not k.startswith("DEE.FC2.")}
    broken["DEE.extra.weight"] = torch.zeros(1)
    from vdreid.errors import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match=r"DEE\.FC2\.weight") as err:
        from_original("deen", broken)
    assert "DEE.extra.weight" in str(err.value)


def test_agw_checkpoints_are_still_agw():
    from original_reference import embed_net as agw_net

    with torch.device("meta"):
        sd = agw_net(4, arch="resnet18").state_dict()
    assert detect_original(sd) == "agw"


# ------------------------------------------------------------------------------------------------ ResNet-50 networks
@pytest.mark.parametrize("stage", [3, 2])
def test_resnet50_networks_shapes_and_parameter_counts(stage):
    """The published networks (meta device): every original key maps, the feature widths are 2048 / 1024, and the
    parameter count is the original's minus the parts it saves but never runs."""
    import torchvision

    with torch.device("meta"):
        ref = embed_net(713, DATASET_OF_STAGE[stage], arch="resnet50")
        net = build_deen("resnet50", num_classes=713, dee_stage=stage)
        tv = torchvision.models.resnet50(weights=None)
        net.load_state_dict(from_original("deen", ref.state_dict()), strict=True, assign=True)
    assert net.out_dim == (2048 if stage == 3 else 1024)
    assert net.dee.channels == (1024 if stage == 3 else 512)
    assert net.feature_dim("all") == 6 * net.out_dim and net.feature_dim("bn") == net.out_dim

    def count(params):
        return sum(p.numel() for p in params)

    unused = 2 * count(p for n, p in tv.named_parameters() if n.startswith("layer"))
    unused += count(p for n, p in tv.named_parameters() if n.startswith(("conv1.", "bn1.")))
    if stage == 2:
        unused += count(p for n, p in tv.named_parameters() if n.startswith("layer4."))
    assert count(net.parameters()) + unused == count(ref.parameters())
    assert [n for n, p in net.named_parameters() if not p.requires_grad] == ["bnneck.bias"]
    assert net.shared.layer4.__class__.__name__ == ("Sequential" if stage == 3 else "Identity")
    if stage == 3:
        assert net.shared.layer4[0].conv2.stride == (1, 1)  # last stride 1


def test_resnet50_network_equals_deen_on_a_small_input():
    """The published SYSU-MM01 / LLCM network itself (ResNet-50 widths), float64, one train step's pool and loss."""
    ref, net = _pair(3, arch="resnet50", classes=4)
    ref.train()
    net.train()
    x_vis, x_ir = _images(70, 4), _images(71, 4)
    l_vis = torch.tensor([2, 2, 0, 0])
    torch.manual_seed(9)
    total_ref, _ = deen_train_loss(ref, x_vis, x_ir, l_vis, l_vis.clone())
    x, is_ir, pids = _vdreid_batch(x_vis, x_ir, l_vis, 2, 2)
    torch.manual_seed(9)
    total, _ = DEENCriterion()(net(x, is_ir), pids)
    assert total.item() == pytest.approx(total_ref.item(), rel=1e-9)


# ------------------------------------------------------------------------------------------------ edge cases
def test_modality_and_input_checks():
    net = build_deen("resnet18", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 16)
    with pytest.raises(ValueError, match="`modality` is missing"):
        net(x)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        net(x, torch.tensor([True]))
    with pytest.raises(ValueError, match="bool"):
        net(x, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(net(x, torch.tensor([0, 1])), net(x, torch.tensor([False, True])))
    with pytest.raises(ValueError, match="feature_mode"):
        net.feature_mode = "obs_concat"
    with pytest.raises(ValueError, match="even number of positions"):
        net(torch.randn(2, 3, 16, 16), torch.tensor([False, True]))  # layer 3 map 1x1
    with pytest.raises(ValueError, match="dee_stage"):
        build_deen("resnet18", num_classes=3, dee_stage=4)
    with pytest.raises(ValueError, match="ResNet-family"):
        build_deen("mobilenetv3_small_050", num_classes=3)


def test_bn_and_pool_modes_skip_the_dee_branches_exactly():
    """'bn' and 'pool' read only the input embedding; leaving the DEE branches out in eval changes nothing."""
    torch.manual_seed(0)
    net = randomize_(build_deen("resnet18", num_classes=3), seed=2).double().eval()
    x = _images(80, 3)
    ir = torch.tensor([True, False, True])
    with torch.no_grad():
        pool = net.pool(net.trunk(net.stems(x[[1, 0, 2]], 1), expand=True))  # 9 rows: 3 embeddings
        for mode, full in (("pool", pool), ("bn", net.bnneck(pool))):
            net.feature_mode = mode
            torch.testing.assert_close(net(x, ir), full[:3][[1, 0, 2]], rtol=1e-12, atol=1e-12)


def test_channels_last_gives_the_same_network():
    """The PNL regrouping reads the logical (row-major) layout, which DEEN's view() assumes: a channels_last model
    and input give the same outputs (DEEN's own view() would fail on them)."""
    torch.manual_seed(0)
    net = randomize_(build_deen("resnet18", num_classes=3), seed=4).eval()
    x = torch.randn(4, 3, 32, 16)
    ir = torch.tensor([False, True, True, False])
    with torch.no_grad():
        plain = net(x, ir)
        net_cl = net.to(memory_format=torch.channels_last)
        fast = net_cl(x.contiguous(memory_format=torch.channels_last), ir)
    w = net_cl.shared.layer1[0].conv1.weight  # 3x3: channels_last differs from the default layout
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
