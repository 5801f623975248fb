"""Synthetic VI data: exact layouts, split files, strays, determinism, infrared rendering, identity separation."""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat
from vdreid.data.synthetic import (
    _ATTR_SIZES,
    SYSU_CAMERAS,
    make_identities,
    make_regdb,
    make_sysu,
    random_pose,
    render,
)


def tree_digest(base: str) -> str:
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(base)):
        for f in sorted(files):
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, base).encode())
            if not f.endswith(".mat"):  # .mat headers carry a creation time
                h.update(open(p, "rb").read())
    return h.hexdigest()


def test_sysu_layout(sysu_root):
    base = os.path.join(sysu_root, "SYSU-MM01")
    assert sorted(f for f in os.listdir(base) if not f.startswith(".")) == [f"cam{c}" for c in range(1, 7)] + ["exp"]
    splits = {}
    for s in ("train", "val", "test", "available"):
        text = open(os.path.join(base, "exp", f"{s}_id.txt")).read()
        assert re.fullmatch(r"\d+(,\d+)*\n", text), f"{s}_id.txt must be one comma-separated line"
        splits[s] = [int(t) for t in text.strip().split(",")]
        assert splits[s] == sorted(splits[s])
        mat = loadmat(os.path.join(base, "exp", f"{s}_id.mat"))["id"]
        assert mat.shape == (1, len(splits[s])) and mat.dtype == np.uint16
        assert mat.ravel().tolist() == splits[s]
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["val"]) & set(splits["test"])
    assert not set(splits["train"]) & set(splits["test"])
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == splits["available"]
    present = {}
    for c in range(1, 7):
        for pid in os.listdir(os.path.join(base, f"cam{c}")):
            assert re.fullmatch(r"\d{4}", pid)
            files = os.listdir(os.path.join(base, f"cam{c}", pid))
            assert files and all(re.fullmatch(r"\d{4}\.jpg", f) for f in files)
            present.setdefault(int(pid), set()).add(c)
    for pid in splits["train"] + splits["val"]:
        assert present[pid] & {1, 2, 4, 5} and present[pid] & {3, 6}, f"train id {pid} needs both modalities"
    stray = set(present) - set(splits["available"])
    assert stray and all(present[p] <= {1, 2, 4, 5} or present[p] <= {3, 6} for p in stray)
    test = splits["test"]
    assert any(1 not in present[p] for p in test), "some test ids must lack an indoor gallery"
    assert any(3 not in present[p] for p in test), "some test ids must lack cam3"
    for p in splits["available"]:
        assert (1 in present[p]) == (2 in present[p]), "cam1 and cam2 hold the same ids"


def test_regdb_layout(regdb_root):
    base = os.path.join(regdb_root, "RegDB")
    for t in range(1, 11):
        ids = {}
        for split in ("train", "test"):
            for m in ("visible", "thermal"):
                lines = open(os.path.join(base, "idx", f"{split}_{m}_{t}.txt")).read().splitlines()
                labels, folders = [], set()
                for line in lines:
                    path, label = line.split(" ")
                    assert re.fullmatch(
                        rf"{m.capitalize()}/\d+/(male|female)_(front|back)_{m[0]}_\d{{5}}_\d+\.bmp", path
                    ), path
                    assert os.path.isfile(os.path.join(base, path))
                    labels.append(int(label))
                    folders.add(path.split("/")[1])
                assert sorted(set(labels)) == list(range(len(set(labels)))), "labels restart at 0 in each file"
                assert labels == sorted(labels), "lines grouped by identity"
                ids[(split, m)] = folders
        assert ids[("train", "visible")] == ids[("train", "thermal")]
        assert not ids[("train", "visible")] & ids[("test", "visible")]
    vis = set(os.listdir(os.path.join(base, "Visible")))
    thr = set(os.listdir(os.path.join(base, "Thermal")))
    assert thr < vis, "a stray visible-only folder exists"
    first = os.path.join(base, "Thermal", sorted(thr)[0])
    assert Image.open(os.path.join(first, sorted(os.listdir(first))[0])).format == "BMP"


def test_deterministic_per_seed(tmp_path):
    a = make_sysu(str(tmp_path / "a"), preset="tiny", seed=5, num_ids=8)
    b = make_sysu(str(tmp_path / "b"), preset="tiny", seed=5, num_ids=8)
    c = make_sysu(str(tmp_path / "c"), preset="tiny", seed=6, num_ids=8)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    r1 = make_regdb(str(tmp_path / "a"), preset="tiny", seed=2, num_ids=6)
    r2 = make_regdb(str(tmp_path / "b"), preset="tiny", seed=2, num_ids=6)
    assert tree_digest(r1) == tree_digest(r2)


def test_infrared_is_grey_and_thermal_like_visible_is_coloured():
    rng = np.random.default_rng(0)
    person = make_identities(1, rng)[0]
    pose = random_pose(rng)
    ir = render(person, SYSU_CAMERAS[2], pose, 128, 64).astype(int)
    vis = render(person, SYSU_CAMERAS[1], pose, 128, 64).astype(int)
    assert (ir[..., 0] == ir[..., 1]).all() and (ir[..., 1] == ir[..., 2]).all()
    assert np.abs(vis[..., 0] - vis[..., 2]).mean() > 5
    # warm body on a cold background: the centre column (person) is brighter than the image borders
    assert ir[:, 28:36].mean() > ir[:, :4].mean() + 20


def test_identities_differ_in_two_infrared_attributes():
    people = make_identities(150, np.random.default_rng(1))
    keys = np.array([[p.height, p.build, p.upper, p.lower, p.carry, p.hat, p.warmth] for p in people])
    assert (keys < np.array(_ATTR_SIZES)).all()
    dist = (keys[:, None, :] != keys[None, :, :]).sum(-1)
    np.fill_diagonal(dist, 99)
    assert dist.min() >= 2


def test_rerun_overwrite_and_foreign_folders(tmp_path):
    base = make_sysu(str(tmp_path), preset="tiny", num_ids=8)
    stamp = os.path.getmtime(os.path.join(base, "exp", "test_id.txt"))
    assert make_sysu(str(tmp_path), preset="tiny", num_ids=8) == base  # identical arguments: kept as is
    assert os.path.getmtime(os.path.join(base, "exp", "test_id.txt")) == stamp
    with pytest.raises(FileExistsError, match="different arguments"):
        make_sysu(str(tmp_path), preset="tiny", num_ids=9)
    make_sysu(str(tmp_path), preset="tiny", num_ids=9, overwrite=True)
    assert len(open(os.path.join(base, "exp", "available_id.txt")).read().split(",")) == 9
    real = tmp_path / "real" / "RegDB"
    real.mkdir(parents=True)
    (real / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not written by vdreid"):
        make_regdb(str(tmp_path / "real"), preset="tiny", overwrite=True)
    assert (real / "keep.txt").read_text() == "user data"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        make_sysu(str(tmp_path), preset="huge")
    with pytest.raises(ValueError, match="num_ids=4"):
        make_sysu(str(tmp_path), preset="tiny", num_ids=4)
    with pytest.raises(ValueError, match="num_ids"):
        make_regdb(str(tmp_path), preset="tiny", num_ids=2)


# ------------------------------------------------------------------ LLCM


def test_llcm_layout(tmp_path):
    """The real LLCM layout: vis/ nir/ by pid, idx files, test_vis/test_nir camera copies, empty NIR cam3."""
    from vdreid.data.synthetic import make_llcm

    base = make_llcm(str(tmp_path), preset="tiny", seed=1)
    assert os.path.basename(base) == "LLCM"
    name = re.compile(r"^(\d{4})_c(0[1-9])_s\d{6}_f([1-9]\d*)_(vis|nir)\.jpg$")
    listed = {}
    for split in ("train", "test"):
        for modality in ("vis", "nir"):
            for line in open(os.path.join(base, "idx", f"{split}_{modality}.txt")).read().splitlines():
                rel, label = line.split(" ")  # exactly one space
                top, pid, fname = rel.split("/")
                m = name.match(fname)
                assert top == modality and m and m.group(1) == pid and m.group(4) == modality
                assert modality == "vis" or m.group(2) != "03"  # no near-infrared cam3 images
                assert os.path.isfile(os.path.join(base, rel)) and int(label) >= 0
                listed[rel] = (split, int(pid), int(m.group(2)))
    test_ids = [int(x) for x in open(os.path.join(base, "idx", "test_id.txt")).read().strip().split(",")]
    assert {p for s, p, _ in listed.values() if s == "test"} <= set(test_ids)
    assert not {p for s, p, _ in listed.values() if s == "train"} & set(test_ids)
    labels = [int(line.split(" ")[1]) for line in open(os.path.join(base, "idx", "train_vis.txt"))]
    assert sorted(set(labels)) == list(range(len(set(labels))))
    assert sorted(os.listdir(os.path.join(base, "test_vis"))) == [f"cam{k}" for k in range(1, 10)]
    assert sorted(os.listdir(os.path.join(base, "test_nir"))) == [f"cam{k}" for k in range(1, 10)]
    assert os.listdir(os.path.join(base, "test_nir", "cam3")) == []
    copies = 0
    for modality in ("vis", "nir"):
        for d, _, files in os.walk(os.path.join(base, f"test_{modality}")):
            for f in files:
                cam, pid = int(d.split("/")[-2][3:]), int(d.split("/")[-1])
                src = f"{modality}/{pid:04d}/{f}"
                assert listed[src] == ("test", pid, cam)  # the folder camera is the _cKK_ camera
                assert open(os.path.join(d, f), "rb").read() == open(os.path.join(base, src), "rb").read()
                copies += 1
    assert copies == sum(1 for s, *_ in listed.values() if s == "test")


def test_llcm_deterministic_rerun_and_bad_arguments(tmp_path):
    from vdreid.data.synthetic import make_llcm

    a = make_llcm(str(tmp_path / "a"), preset="tiny", seed=3)
    b = make_llcm(str(tmp_path / "b"), preset="tiny", seed=3)
    c = make_llcm(str(tmp_path / "c"), preset="tiny", seed=4)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    assert make_llcm(str(tmp_path / "a"), preset="tiny", seed=3) == a  # identical arguments: kept
    with pytest.raises(FileExistsError, match="different arguments"):
        make_llcm(str(tmp_path / "a"), preset="tiny", seed=3, num_test=5)
    with pytest.raises(ValueError, match="num_test >= 3"):
        make_llcm(str(tmp_path / "d"), preset="tiny", num_test=2)


def test_cli_make_synthetic_llcm(tmp_path):
    from vdreid.cli import main
    from vdreid.data import LLCM

    assert main(["make-synthetic", "--layout", "llcm", "--out", str(tmp_path), "--preset", "tiny"]) == 0
    ds = LLCM(str(tmp_path), verbose=False)
    assert ds.protocol.name == "llcm/ir2vis/deen/10 trials" and len(ds.train) > 0


# ----------------------------------------------------------------------------------------------- hard styles


def test_hard_styles_keep_the_layouts_and_are_deterministic(tmp_path):
    from vdreid.data.synthetic import style_kit

    a = make_sysu(str(tmp_path / "a"), preset="tiny", seed=4, style="hard")
    b = make_sysu(str(tmp_path / "b"), preset="tiny", seed=4, style="hard")
    c = make_sysu(str(tmp_path / "c"), preset="tiny", seed=4, style="shift")
    d = make_sysu(str(tmp_path / "d"), preset="tiny", seed=4)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c) != tree_digest(d)
    test_sysu_layout(str(tmp_path / "a"))  # every rule of the real layout holds in the hard style too
    marker = json.load(open(os.path.join(a, ".vdreid_synthetic.json")))
    assert marker["style"] == "hard"
    assert "style" not in json.load(open(os.path.join(d, ".vdreid_synthetic.json")))  # classic trees unchanged
    r = make_regdb(str(tmp_path / "r"), preset="tiny", seed=1, style="hard")
    test_regdb_layout(str(tmp_path / "r"))
    assert json.load(open(os.path.join(r, ".vdreid_synthetic.json")))["style"] == "hard"
    from vdreid.cli import main

    assert main(["make-synthetic", "--layout", "sysu", "--preset", "tiny", "--seed", "4", "--style", "hard",
                 "--out", str(tmp_path / "cli")]) == 0
    assert tree_digest(os.path.join(tmp_path, "cli", "SYSU-MM01")) == tree_digest(a)
    h = make_sysu(str(tmp_path / "h"), preset="hard", num_ids=8, images_per_cam=1, height=32, width=16)
    assert json.load(open(os.path.join(h, ".vdreid_synthetic.json")))["style"] == "hard"  # the preset's style
    h2 = make_sysu(str(tmp_path / "h2"), preset="hard", num_ids=8, images_per_cam=1, height=32, width=16,
                   style="classic")
    assert "style" not in json.load(open(os.path.join(h2, ".vdreid_synthetic.json")))
    with pytest.raises(ValueError, match="unknown synthetic style 'harder'"):
        style_kit("harder")


def test_hard_identity_cues_and_nuisance():
    from vdreid.data import synthetic_hard as sh

    people = sh.make_identities(3000, np.random.default_rng(0))
    luma = np.array([0.3, 0.59, 0.11])
    up_l = np.array([np.dot(p.upper_rgb, luma) for p in people])
    lo_l = np.array([np.dot(p.lower_rgb, luma) for p in people])
    t_up = np.array([p.t_upper for p in people])
    t_lo = np.array([p.t_lower for p in people])
    # visible colours say nothing about the infrared levels (|r| < 0.06 is 3.3 sigma at n = 3000)
    assert abs(np.corrcoef(up_l, t_up)[0, 1]) < 0.06 and abs(np.corrcoef(lo_l, t_lo)[0, 1]) < 0.06
    assert {p.pattern for p in people} == set(sh.HARD.patterns)
    assert len({p.height for p in people}) == 3000  # continuous shape: no grid of attribute values
    # the discrete infrared-surviving attributes of 200 people differ pairwise in at least two positions
    mid = sum(sh.HARD.period) / 2
    few = sh.make_identities(200, np.random.default_rng(2))
    keys = np.array([[p.sleeve, p.lower, p.coat, p.carry, p.hat, p.scarf, p.period >= mid and p.pattern != "solid",
                      sh.HARD.patterns.index(p.pattern)] for p in few])
    dist = (keys[:, None, :] != keys[None, :, :]).sum(-1)
    np.fill_diagonal(dist, 99)
    assert dist.min() >= 2
    rng = np.random.default_rng(1)
    poses = [sh.random_pose(rng) for _ in range(400)]
    assert {p.view for p in poses} == {0, 1, 2, 3} and {p.occluder for p in poses} == {0, 1, 2, 3}
    person = people[0]
    ir_cam, vis_cam = sh.HARD.sysu_cameras[2], sh.HARD.sysu_cameras[0]
    ir = sh.render(person, ir_cam, poses[0], 128, 64)
    vis = sh.render(person, vis_cam, poses[0], 128, 64)
    assert ir.shape == vis.shape == (128, 64, 3) and ir.dtype == np.uint8
    assert (ir[..., 0] == ir[..., 1]).all() and (ir[..., 1] == ir[..., 2]).all()
    assert np.abs(vis[..., 0].astype(int) - vis[..., 2]).mean() > 3
    assert not np.array_equal(sh.render(person, vis_cam, poses[1], 128, 64), vis)  # per-image variation
    assert np.array_equal(sh.render(person, vis_cam, poses[0], 128, 64), vis)  # a pure function of its inputs
    # on average the person (skin ~0.9, clothes 0.3-0.7) is warmer than the centre of a cold wall is dark
    centre = np.mean([sh.render(p, ir_cam, q, 64, 32)[20:50, 12:20].mean() for p, q in zip(people[:40], poses)])
    corners = np.mean([sh.render(p, ir_cam, q, 64, 32)[:8, :3].mean() for p, q in zip(people[:40], poses)])
    assert centre > corners + 20


def test_llcm_num_ids_and_style(tmp_path):
    from vdreid.data.synthetic import make_llcm

    base = make_llcm(str(tmp_path), preset="tiny", num_ids=12)
    test_ids = open(os.path.join(base, "idx", "test_id.txt")).read().strip().split(",")
    train = {line.split(" ")[1] for line in open(os.path.join(base, "idx", "train_vis.txt"))}
    assert len(test_ids) == 4 and len(train) == 8
    with pytest.raises(ValueError, match="style"):
        make_llcm(str(tmp_path / "b"), preset="tiny", style="hard")


# ----------------------------------------------------------------------------------------------- pinned trees


def pixel_digest(base: str) -> str:
    """A digest of a tree's content: relative paths, decoded pixels of every image, the arrays of every ``.mat`` file
    (their headers carry a creation time) and the bytes of every other file. Pixels rather than file bytes, so a
    JPEG encoder of another Pillow build that writes other bytes for the same image does not count as a change of
    the generator."""
    h = hashlib.sha256()
    for d, dirs, files in os.walk(base):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, base).encode())
            if f.endswith((".jpg", ".bmp")):
                a = np.asarray(Image.open(p).convert("RGB"))
                h.update(repr(a.shape).encode() + a.tobytes())
            elif f.endswith(".mat"):
                m = loadmat(p)
                for k in sorted(k for k in m if not k.startswith("__")):
                    h.update(k.encode() + np.ascontiguousarray(m[k]).tobytes())
            else:
                h.update(open(p, "rb").read())
    return h.hexdigest()


#: digests of the ``tiny`` tree (seed 0) of each layout and style, recorded with the generator as it was before its
#: shared drawing helpers moved to vdreid.data.synthetic_draw (commit 75a3b3d): a refactor of the generators must
#: leave every image, split file and marker as it was
PINNED_TINY = {
    ("sysu", "classic"): "62af3188d76b6ea13711f91f884b80119259d96ecb1876cb3d31192e054b35af",
    ("sysu", "hard"): "d35986494691ad0c8771aabdb70315829038571cc7db46fc0327d29c78098df7",
    ("sysu", "shift"): "6f1a1aeb9abe701c3fa457bd2fde82cc668ca618e8b403a05781e9b22f6d9842",
    ("regdb", "classic"): "2fcb3616e5bfad333b08514226063abd25de8bea588c200ade8c90fb8d985e9c",
    ("regdb", "hard"): "d521dedc9972e65fa6c6c147bf4c16eeb178ecf8f5c15dae07c1b2a800fdebc2",
    ("llcm", "classic"): "433cbb2288acaf92083afb2e23eb85447d91f0156fa13b3c3c97ae37f8bc22bd",
}


@pytest.mark.parametrize(("layout", "style"), sorted(PINNED_TINY))
def test_tiny_trees_are_pinned(tmp_path, layout, style):
    from vdreid.data.synthetic import make_llcm

    make = {"sysu": make_sysu, "regdb": make_regdb, "llcm": make_llcm}[layout]
    base = make(str(tmp_path), preset="tiny", seed=0, **({} if style == "classic" else {"style": style}))
    assert pixel_digest(base) == PINNED_TINY[(layout, style)]


def test_the_generators_import_one_way():
    """synthetic -> synthetic_hard -> synthetic_draw: the hard styles never reach back into the classic module."""
    import ast

    from vdreid.data import synthetic, synthetic_draw, synthetic_hard

    def imported(module) -> set[str]:
        tree = ast.parse(open(module.__file__, encoding="utf-8").read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return names

    assert "vdreid.data.synthetic" not in imported(synthetic_hard)
    assert not {"vdreid.data.synthetic", "vdreid.data.synthetic_hard"} & imported(synthetic_draw)
    assert synthetic.style_kit("hard").render is synthetic_hard.render
