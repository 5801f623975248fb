"""SYSU-MM01 loader: layout, relabelling, camids, AGW / official gallery draws (against restatements written here from
the spec, not from our code), the three torchreid constructions, val protocol and every bad input."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
import vdreid  # noqa: F401  (registers the datasets)
from scipy.io import savemat
from vdreid import compat
from vdreid.data import SYSUMM01
from vdreid.data.errors import DatasetLayoutError, ImageReadError, SplitFileError
from vdreid.data.synthetic import make_sysu

RGB, IR = ("cam1", "cam2", "cam4", "cam5"), ("cam3", "cam6")


# ------------------------------------------------------------------ independent restatements (spec 1.2, 1.4, 2.1, 2.2)


def read_ids(base: str, split: str) -> list[int]:
    with open(os.path.join(base, "exp", f"{split}_id.txt")) as f:
        return [int(t) for t in f.read().splitlines()[0].split(",")]


def folder(base: str, cam: str, pid: int) -> str:
    return os.path.join(base, cam, "%04d" % pid)  # noqa: UP031  (AGW's own formatting)


def agw_gallery(base: str, mode: str, trial: int) -> list[str]:
    """AGW's process_gallery_sysu as printed in the spec: global random.seed + random.choice."""
    random.seed(trial)
    cams = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    ids = ["%04d" % x for x in read_ids(base, "test")]  # noqa: UP031  (AGW's own formatting)
    files = []
    for pid in sorted(ids):
        for cam in cams:
            d = os.path.join(base, cam, pid)
            if os.path.isdir(d):
                new_files = sorted([d + "/" + i for i in os.listdir(d)])
                files.append(random.choice(new_files))
    return files


def agw_query(base: str) -> list[str]:
    files = []
    for pid in sorted("%04d" % x for x in read_ids(base, "test")):  # noqa: UP031  (AGW's own formatting)
        for cam in ["cam3", "cam6"]:
            d = os.path.join(base, cam, pid)
            if os.path.isdir(d):
                files.extend(sorted([d + "/" + i for i in os.listdir(d)]))
    return files


def gallery_paths(ds: SYSUMM01, trial: int) -> list[str]:
    return [ds.gallery[i][0] for i in ds.protocol.gallery_trials[trial]]


def norm(paths: list[str]) -> list[str]:
    return [os.path.normpath(p) for p in paths]


@pytest.fixture()
def sysu_copy(sysu_root, tmp_path) -> str:
    """A private copy of the tiny tree that a test may corrupt; returns the root (parent of SYSU-MM01)."""
    shutil.copytree(os.path.join(sysu_root, "SYSU-MM01"), tmp_path / "SYSU-MM01")
    return str(tmp_path)


@pytest.fixture(scope="module")
def sysu_all(sysu_root) -> SYSUMM01:
    return SYSUMM01(sysu_root, verbose=False)


# ------------------------------------------------------------------ counts, relabelling, camids


def test_train_counts_relabel_and_camids(sysu_root, sysu_all):
    base = os.path.join(sysu_root, "SYSU-MM01")
    ids = sorted(read_ids(base, "train") + read_ids(base, "val"))
    expected = []
    for cams in (RGB, IR):
        for pid in ids:
            for cam in cams:
                d = folder(base, cam, pid)
                if os.path.isdir(d):
                    expected += [(os.path.join(d, f), ids.index(pid), int(cam[-1]) - 1) for f in sorted(os.listdir(d))]
    got = [(os.path.normpath(p), pid, cam) for p, pid, cam, _ in sysu_all.train]
    assert got == [(os.path.normpath(p), a, b) for p, a, b in expected]
    assert {it[3] for it in sysu_all.train} == {0}
    assert sysu_all.num_train_pids == len(ids)
    # label = rank of the original pid (read back from the path, AGW's path[-13:-9])
    for p, label, camid, _ in sysu_all.train:
        assert ids[label] == int(p[-13:-9]) and camid == int(p[-15]) - 1
    assert SYSUMM01.ir_camids == frozenset({2, 5})


def test_query_is_every_cam3_cam6_image_of_the_test_ids(sysu_root, sysu_all):
    base = os.path.join(sysu_root, "SYSU-MM01")
    assert norm([q[0] for q in sysu_all.query]) == norm(agw_query(base))
    for p, pid, camid, _ in sysu_all.query:
        assert pid == int(p[-13:-9]) and camid + 1 == int(p[-15]) and camid in (2, 5)
    assert list(sysu_all.protocol.query) == list(range(len(sysu_all.query)))


def test_stray_folders_are_ignored(sysu_root, sysu_all):
    base = os.path.join(sysu_root, "SYSU-MM01")
    split = set(read_ids(base, "train") + read_ids(base, "val") + read_ids(base, "test"))
    on_disk = {int(p) for c in range(1, 7) for p in os.listdir(os.path.join(base, f"cam{c}"))}
    stray = on_disk - split
    assert stray, "the synthetic tree must contain stray id folders"
    used = {int(it[0][-13:-9]) for it in sysu_all.train + sysu_all.query + sysu_all.gallery}
    assert not used & stray


def test_protocol_fields(sysu_all):
    p = sysu_all.protocol
    assert p.name == "sysu/ir2vis/all/single-shot/agw/10 trials"
    assert p.exclude_cam_pairs == ((2, 1),) and p.cmc_mode == "dedup" and p.trial_seeds == tuple(range(10))
    # the gallery is the union of all trials, each image once
    union = sorted({i for g in p.gallery_trials for i in g.tolist()})
    assert union == list(range(len(sysu_all.gallery)))
    assert len({g[0] for g in sysu_all.gallery}) == len(sysu_all.gallery)


# ------------------------------------------------------------------ AGW draws, bit-exact


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_agw_draws_match_restatement(sysu_root, mode):
    state = random.getstate()
    ds = SYSUMM01(sysu_root, search_mode=mode, verbose=False)
    assert random.getstate() == state, "the loader must not consume the global random stream"
    base = os.path.join(sysu_root, "SYSU-MM01")
    try:
        for t in range(10):
            assert norm(gallery_paths(ds, t)) == norm(agw_gallery(base, mode, t)), f"trial {t}"
    finally:
        random.setstate(state)
    draws = {tuple(gallery_paths(ds, t)) for t in range(10)}
    assert len(draws) > 1, "different seeds must give different galleries"
    cams = {ds.gallery[i][2] for g in ds.protocol.gallery_trials for i in g}
    assert cams <= ({0, 1, 3, 4} if mode == "all" else {0, 1})


def test_agw_draws_unfiltered_listing_and_gaps(sysu_copy):
    """A stray non-image file is part of AGW's listing (no filtering) and shifts its draws: we must follow."""
    base = os.path.join(sysu_copy, "SYSU-MM01")
    test_ids = sorted(read_ids(base, "test"))
    for pid in test_ids:
        for cam in RGB:
            d = folder(base, cam, pid)
            if os.path.isdir(d):
                with open(os.path.join(d, "Thumbs.db"), "wb") as f:
                    f.write(b"x")
                shutil.copy(os.path.join(d, sorted(os.listdir(d))[0]), os.path.join(d, "0099.jpg"))
    ds = SYSUMM01(sysu_copy, verbose=False)
    state = random.getstate()
    try:
        for t in range(10):
            assert norm(gallery_paths(ds, t)) == norm(agw_gallery(base, "all", t))
    finally:
        random.setstate(state)


def test_agw_multishot_restatement(sysu_root):
    ds = SYSUMM01(sysu_root, shots=10, verbose=False)
    base = os.path.join(sysu_root, "SYSU-MM01")
    for t in (0, 7):
        rng = random.Random(t)
        expected = []
        for pid in sorted("%04d" % x for x in read_ids(base, "test")):  # noqa: UP031  (AGW's own formatting)
            for cam in RGB:
                d = os.path.join(base, cam, pid)
                if os.path.isdir(d):
                    files = sorted(d + "/" + i for i in os.listdir(d))
                    expected += rng.sample(files, min(10, len(files)))
        assert norm(gallery_paths(ds, t)) == norm(expected)
    assert ds.protocol.name == "sysu/ir2vis/all/multi-shot/agw/10 trials"


def test_indoor_queries_without_a_match(sysu_root):
    ds = SYSUMM01(sysu_root, search_mode="indoor", verbose=False)
    base = os.path.join(sysu_root, "SYSU-MM01")
    indoor_ids = {pid for pid in read_ids(base, "test") if os.path.isdir(folder(base, "cam1", pid))}
    assert len(indoor_ids) < len(set(read_ids(base, "test")))
    for t in range(10):
        g = [ds.gallery[i] for i in ds.protocol.gallery_trials[t]]
        assert {x[1] for x in g} == indoor_ids
        # valid query: some gallery image of its pid survives the cam3 -> cam2 exclusion
        valid = [q for q in ds.query if any(x[1] == q[1] and not (q[2] == 2 and x[2] == 1) for x in g)]
        unmatched = [q for q in ds.query if q[1] not in indoor_ids]
        assert unmatched and len(valid) == len(ds.query) - len(unmatched)
    assert len(ds.query) == len(SYSUMM01(sysu_root, verbose=False).query)


def test_three_constructions_identical(sysu_root):
    built = [SYSUMM01(sysu_root, mode=m, verbose=False) for m in ("train", "query", "gallery")]
    for ds in built[1:]:
        assert ds.gallery == built[0].gallery and ds.query == built[0].query and ds.train == built[0].train
        for a, b in zip(ds.protocol.gallery_trials, built[0].protocol.gallery_trials):
            np.testing.assert_array_equal(a, b)
    dm = compat.ImageDataManager(root=sysu_root, sources="sysu_mm01", height=32, width=16, workers=0)
    assert dm.test_dataset["sysu_mm01"]["gallery"] == built[0].gallery
    assert dm.test_dataset["sysu_mm01"]["query"] == built[0].query
    assert dm.num_train_pids == built[0].num_train_pids


def test_registered_presets(sysu_root):
    reg = compat._image_dataset_registry()
    indoor = reg["sysu_mm01_indoor"](root=sysu_root, verbose=False)
    assert indoor.protocol.name == "sysu/ir2vis/indoor/single-shot/agw/10 trials"
    multi = reg["sysu_mm01_multishot"](root=sysu_root, verbose=False)
    assert multi.protocol.name == "sysu/ir2vis/all/multi-shot/agw/10 trials"
    # an explicit keyword overrides the preset default
    overridden = reg["sysu_mm01_indoor"](root=sysu_root, search_mode="all", verbose=False)
    assert overridden.protocol.name.startswith("sysu/ir2vis/all/")


def test_val_for_selection(sysu_root):
    base = os.path.join(sysu_root, "SYSU-MM01")
    ds = SYSUMM01(sysu_root, val_for_selection=True, verbose=False)
    train_ids, val_ids = read_ids(base, "train"), read_ids(base, "val")
    assert {int(p[-13:-9]) for p, *_ in ds.train} == set(train_ids)
    assert ds.num_train_pids == len(train_ids)
    assert {q[1] for q in ds.val_query} <= set(val_ids)
    assert {g[1] for g in ds.val_gallery} <= set(val_ids)
    assert ds.val_protocol.name == "sysu-val/ir2vis/all/single-shot/agw/10 trials"
    for g in ds.val_protocol.gallery_trials:
        assert g.max() < len(ds.val_gallery)
    # the val draws follow the same AGW rule on the val ids
    rng = random.Random(3)
    expected = []
    for pid in sorted("%04d" % x for x in val_ids):  # noqa: UP031  (AGW's own formatting)
        for cam in RGB:
            d = os.path.join(base, cam, pid)
            if os.path.isdir(d):
                expected.append(rng.choice(sorted(d + "/" + i for i in os.listdir(d))))
    assert norm([ds.val_gallery[i][0] for i in ds.val_protocol.gallery_trials[3]]) == norm(expected)
    # the test protocol is unchanged
    assert ds.gallery == SYSUMM01(sysu_root, verbose=False).gallery


# ------------------------------------------------------------------ official rand_perm_cam.mat


def write_perm(base: str, path: str, rows: int = 10, seed: int = 1, width_fix: int = 0, drop=None) -> dict:
    """rand_perm_cam{cam}{pid} = rows x n 1-based permutations (scipy cell arrays); returns the matrices."""
    rng = np.random.default_rng(seed)
    cams = np.empty((6, 1), dtype=object)
    mats = {}
    for c in range(1, 7):
        pids = [int(p) for p in os.listdir(os.path.join(base, f"cam{c}"))]
        cells = np.empty((max(pids), 1), dtype=object)
        for p in range(1, max(pids) + 1):
            d = folder(base, f"cam{c}", p)
            if os.path.isdir(d) and (c, p) != drop:
                n = len(os.listdir(d)) + width_fix
                m = np.stack([rng.permutation(n) + 1 for _ in range(rows)]).astype(float)
                cells[p - 1, 0] = m
                mats[(c, p)] = m
            else:
                cells[p - 1, 0] = np.zeros((0, 0))
        cams[c - 1, 0] = cells
    savemat(path, {"rand_perm_cam": cams})
    return mats


@pytest.fixture(scope="module")
def sysu_many(tmp_path_factory) -> str:
    """A small tree with 12 images per folder, so multi-shot really takes the first 10 of 12 positions."""
    root = str(tmp_path_factory.mktemp("sysu_many"))
    make_sysu(root, preset="tiny", num_ids=8, images_per_cam=12, num_stray=1, seed=3)
    return root


@pytest.mark.parametrize("shots", [1, 10])
def test_official_sampler(sysu_many, tmp_path, shots):
    base = os.path.join(sysu_many, "SYSU-MM01")
    path = str(tmp_path / "rand_perm_cam.mat")
    mats = write_perm(base, path)
    ds = SYSUMM01(sysu_many, gallery_sampler="official", rand_perm_path=path, shots=shots, verbose=False)
    for r in range(10):
        expected = []
        for pid in sorted(read_ids(base, "test")):
            for cam in (1, 2, 4, 5):
                d = folder(base, f"cam{cam}", pid)
                if os.path.isdir(d):
                    files = sorted(os.listdir(d))
                    expected += [os.path.join(d, files[int(k) - 1]) for k in mats[(cam, pid)][r, :shots]]
        assert norm(gallery_paths(ds, r)) == norm(expected)
    shot = "single-shot" if shots == 1 else "multi-shot"
    assert ds.protocol.name == f"sysu/ir2vis/all/{shot}/official/10 trials"
    assert ds.protocol.trial_seeds == tuple(range(1, 11))
    sizes = {g.size for g in ds.protocol.gallery_trials}
    n_folders = sum(os.path.isdir(folder(base, f"cam{c}", p)) for p in read_ids(base, "test") for c in (1, 2, 4, 5))
    assert sizes == {n_folders * shots}


def test_official_sampler_default_location_and_bad_mats(sysu_many, tmp_path):
    base = os.path.join(sysu_many, "SYSU-MM01")
    with pytest.raises(DatasetLayoutError, match="rand_perm_cam.mat"):
        SYSUMM01(sysu_many, gallery_sampler="official", verbose=False)
    with pytest.raises(DatasetLayoutError, match="nowhere.mat"):
        SYSUMM01(sysu_many, gallery_sampler="official", rand_perm_path=str(tmp_path / "nowhere.mat"), verbose=False)
    bad = str(tmp_path / "wide.mat")
    write_perm(base, bad, width_fix=1)
    with pytest.raises(SplitFileError, match=r"wide\.mat.*rand_perm_cam\{\d\}\{\d+\} has shape"):
        SYSUMM01(sysu_many, gallery_sampler="official", rand_perm_path=bad, verbose=False)
    pid = sorted(read_ids(base, "test"))[0]
    cam = next(c for c in (1, 2, 4, 5) if os.path.isdir(folder(base, f"cam{c}", pid)))
    holes = str(tmp_path / "holes.mat")
    write_perm(base, holes, drop=(cam, pid))
    with pytest.raises(SplitFileError, match=rf"rand_perm_cam\{{{cam}\}}\{{{pid}\}} is missing"):
        SYSUMM01(sysu_many, gallery_sampler="official", rand_perm_path=holes, verbose=False)
    short = str(tmp_path / "short.mat")
    write_perm(base, short, rows=3)
    with pytest.raises(SplitFileError, match="trials"):
        SYSUMM01(sysu_many, gallery_sampler="official", rand_perm_path=short, verbose=False)
    assert SYSUMM01(sysu_many, gallery_sampler="official", rand_perm_path=short, num_trials=3, verbose=False)
    other = str(tmp_path / "other.mat")
    savemat(other, {"something": np.zeros(3)})
    with pytest.raises(SplitFileError, match="no variable"):
        SYSUMM01(sysu_many, gallery_sampler="official", rand_perm_path=other, verbose=False)


# ------------------------------------------------------------------ bad input


def test_missing_root_and_camera_folder(sysu_copy, tmp_path):
    with pytest.raises(DatasetLayoutError, match="SYSU-MM01"):
        SYSUMM01(str(tmp_path / "nothing"))
    shutil.rmtree(os.path.join(sysu_copy, "SYSU-MM01", "cam4"))
    with pytest.raises(DatasetLayoutError, match="cam4"):
        SYSUMM01(sysu_copy)


def test_missing_and_malformed_split_files(sysu_copy):
    exp = os.path.join(sysu_copy, "SYSU-MM01", "exp")
    good = open(os.path.join(exp, "test_id.txt")).read()
    os.remove(os.path.join(exp, "test_id.txt"))
    with pytest.raises(DatasetLayoutError, match="test_id.txt"):
        SYSUMM01(sysu_copy)
    for content, pattern in (
        ("", r"test_id\.txt:1: empty"),
        (good.strip() + ",abc\n", r"test_id\.txt:1: item \d+ is 'abc'"),
        ("6;10;17\n", r"test_id\.txt:1: item 1 is '6;10;17'"),
        (good.strip() + "," + good.strip().split(",")[0] + "\n", r"test_id\.txt:1: ids listed more than once"),
    ):
        with open(os.path.join(exp, "test_id.txt"), "w") as f:
            f.write(content)
        with pytest.raises(SplitFileError, match=pattern):
            SYSUMM01(sysu_copy)
    train_first = open(os.path.join(exp, "train_id.txt")).read().split(",")[0]
    with open(os.path.join(exp, "test_id.txt"), "w") as f:
        f.write(good.strip() + "," + train_first + "\n")
    with pytest.raises(SplitFileError, match="disjoint"):
        SYSUMM01(sysu_copy)


def test_split_id_without_images(sysu_copy):
    exp = os.path.join(sysu_copy, "SYSU-MM01", "exp")
    good = open(os.path.join(exp, "val_id.txt")).read().strip()
    with open(os.path.join(exp, "val_id.txt"), "w") as f:
        f.write(good + ",9876\n")
    with pytest.raises(DatasetLayoutError, match=r"val_id\.txt: id 9876 has no images"):
        SYSUMM01(sysu_copy)


def test_unknown_options(sysu_root):
    for kwargs, pattern in (
        ({"search_mode": "outdoor"}, "search_mode"),
        ({"shots": 5}, "shots"),
        ({"shots": True}, "shots"),
        ({"gallery_sampler": "matlab"}, "gallery_sampler"),
        ({"num_trials": 0}, "num_trials"),
    ):
        with pytest.raises(ValueError, match=pattern):
            SYSUMM01(sysu_root, **kwargs)


def test_unreadable_image_names_its_path(sysu_copy):
    ds = SYSUMM01(sysu_copy, verbose=False)
    path = ds.train[0][0]
    with open(path, "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(ImageReadError, match=path.replace("\\", "\\\\")):
        ds[0]
    os.remove(path)
    with pytest.raises(ImageReadError, match="does not exist"):
        ds[0]
    item = ds[1]
    assert item["img"].mode == "RGB" and item["pid"] == ds.train[1][1] and item["impath"] == ds.train[1][0]


# ------------------------------------------------------------------ strict split files and containment


def _exp(root: str, split: str) -> str:
    return os.path.join(root, "SYSU-MM01", "exp", f"{split}_id.txt")


def test_split_ids_on_a_second_line_are_used(sysu_copy):
    ids = read_ids(os.path.join(sysu_copy, "SYSU-MM01"), "test")
    with open(_exp(sysu_copy, "test"), "w") as f:  # the same ids, wrapped over two lines
        f.write(",".join(map(str, ids[:2])) + "\n" + ",".join(map(str, ids[2:])) + "\n")
    assert SYSUMM01(sysu_copy, verbose=False).split_ids["test"] == sorted(ids)


def test_split_file_bom_is_dropped_and_bad_bytes_and_underscores_are_errors(sysu_copy, sysu_root):
    ids = read_ids(os.path.join(sysu_copy, "SYSU-MM01"), "test")
    text = ",".join(map(str, ids)) + "\n"
    with open(_exp(sysu_copy, "test"), "wb") as f:
        f.write(b"\xef\xbb\xbf" + text.encode())
    ds, ref = SYSUMM01(sysu_copy, verbose=False), SYSUMM01(sysu_root, verbose=False)
    assert ds.split_ids == ref.split_ids
    assert [(os.path.relpath(p, sysu_copy), *r) for p, *r in ds.query] == [
        (os.path.relpath(p, sysu_root), *r) for p, *r in ref.query
    ]
    for data, pattern in (
        (text.encode() + b"\xff\n", r"test_id\.txt:2: byte 0xff"),
        (f"1_{ids[0]},{text}".encode(), rf"test_id\.txt:1: item 1 is '1_{ids[0]}'"),  # int() would read 1{id}
    ):
        with open(_exp(sysu_copy, "test"), "wb") as f:
            f.write(data)
        with pytest.raises(SplitFileError, match=pattern):
            SYSUMM01(sysu_copy)


def test_identity_folder_symlinks(sysu_copy, sysu_root, tmp_path):
    base = os.path.join(sysu_copy, "SYSU-MM01")
    pid = next(p for p in read_ids(base, "test") if os.path.isdir(folder(base, "cam1", p)))
    cam1 = folder(base, "cam1", pid)
    ref = SYSUMM01(sysu_root, verbose=False)
    # a link inside the dataset folder works and the draws are unchanged
    shutil.move(cam1, os.path.join(base, "store"))
    os.symlink(os.path.join(base, "store"), cam1)
    ds = SYSUMM01(sysu_copy, verbose=False)
    assert [os.path.basename(p) for p, *_ in ds.gallery] == [os.path.basename(p) for p, *_ in ref.gallery]
    # a link loop is an error naming the folder (it used to count as a missing folder and change the gallery)
    os.remove(cam1)
    os.symlink(cam1, cam1)
    with pytest.raises(DatasetLayoutError, match=rf"{pid:04d}.*symbolic-link loop"):
        SYSUMM01(sysu_copy)
    # a link that leaves the dataset folder is refused
    os.remove(cam1)
    shutil.move(os.path.join(base, "store"), tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", cam1)
    with pytest.raises(DatasetLayoutError, match="outside the dataset folder"):
        SYSUMM01(sysu_copy)
    # so is an image link inside a real folder that points outside
    os.remove(cam1)
    shutil.move(tmp_path / "elsewhere", cam1)
    os.symlink(tmp_path / "secret.jpg", os.path.join(cam1, "zzzz.jpg"))
    with pytest.raises(DatasetLayoutError, match=r"zzzz\.jpg.* outside the dataset folder"):
        SYSUMM01(sysu_copy)


# ------------------------------------------------------------------ RGB -> IR direction (same rules, other modality)


def agw_style_lists(base: str, query_cams, gallery_cams, trial: int) -> tuple[list[str], list[str]]:
    """AGW's process_query_sysu / process_gallery_sysu with the camera lists swapped: the query is every image of
    ``query_cams``, the gallery one random.choice per existing (pid, camera) folder of ``gallery_cams``."""
    ids = sorted("%04d" % x for x in read_ids(base, "test"))  # noqa: UP031  (AGW's own formatting)
    query = []
    for pid in ids:
        for cam in query_cams:
            d = os.path.join(base, cam, pid)
            if os.path.isdir(d):
                query.extend(sorted([d + "/" + i for i in os.listdir(d)]))
    random.seed(trial)
    gallery = []
    for pid in ids:
        for cam in gallery_cams:
            d = os.path.join(base, cam, pid)
            if os.path.isdir(d):
                gallery.append(random.choice(sorted([d + "/" + i for i in os.listdir(d)])))
    return query, gallery


@pytest.mark.parametrize("mode, gallery_cams", [("all", ("cam3", "cam6")), ("indoor", ("cam3",))])
def test_vis2ir_lists_match_restatement(sysu_root, mode, gallery_cams):
    state = random.getstate()
    try:
        base = os.path.join(sysu_root, "SYSU-MM01")
        ds = SYSUMM01(sysu_root, search_mode=mode, direction="vis2ir", verbose=False)
        p = ds.protocol
        assert p.name == f"sysu/vis2ir/{mode}/single-shot/agw/10 trials" and p.direction == "vis2ir"
        assert p.exclude_cam_pairs == ((1, 2),)  # cam2 queries never see cam3 (the same room)
        assert p.eval_kwargs() == {"cmc_mode": "dedup", "exclude_cam_pairs": ((1, 2),),
                                   "remove_same_pid_same_cam": False, "physical_camera": None}
        for t in range(10):
            q, g = agw_style_lists(base, RGB, gallery_cams, t)
            assert norm([it[0] for it in ds.query]) == norm(q)
            assert norm(gallery_paths(ds, t)) == norm(g)
        assert {it[2] for it in ds.query} <= {0, 1, 3, 4} and {it[2] for it in ds.gallery} <= {2, 5}
        assert [it[1] for it in ds.query] == [int(x[-13:-9]) for x in norm(q)]
        # the training set does not depend on the direction
        assert ds.train == SYSUMM01(sysu_root, search_mode=mode, verbose=False).train
    finally:
        random.setstate(state)


def test_vis2ir_official_sampler_and_multishot(sysu_many, tmp_path):
    base = os.path.join(sysu_many, "SYSU-MM01")
    perm = write_perm(base, str(tmp_path / "perm.mat"))
    ds = SYSUMM01(sysu_many, gallery_sampler="official", rand_perm_path=str(tmp_path / "perm.mat"),
                  direction="vis2ir", verbose=False)
    assert ds.protocol.name == "sysu/vis2ir/all/single-shot/official/10 trials"
    for t in (0, 9):
        expected = []
        for pid in read_ids(base, "test"):
            for c in (3, 6):
                d = folder(base, f"cam{c}", pid)
                if os.path.isdir(d):
                    files = sorted(os.listdir(d))
                    expected.append(os.path.join(d, files[int(perm[(c, pid)][t, 0]) - 1]))
        assert norm(gallery_paths(ds, t)) == norm(expected)
    multi = SYSUMM01(sysu_many, shots=10, direction="vis2ir", verbose=False)
    assert multi.protocol.name == "sysu/vis2ir/all/multi-shot/agw/10 trials"
    assert {it[2] for it in multi.gallery} <= {2, 5}


def test_direction_names_presets_and_config(sysu_root):
    reg = compat._image_dataset_registry()
    assert reg["sysu_mm01_vis2ir"](root=sysu_root, verbose=False).protocol.name.startswith("sysu/vis2ir/all/")
    assert reg["sysu_mm01_indoor_vis2ir"](root=sysu_root, verbose=False).protocol.name.startswith(
        "sysu/vis2ir/indoor/")
    assert SYSUMM01(sysu_root, direction="rgb2ir", verbose=False).direction == "vis2ir"  # an accepted alias
    with pytest.raises(ValueError, match="direction"):
        SYSUMM01(sysu_root, direction="sideways")
    node = SYSUMM01.config()
    assert SYSUMM01.config_section == "sysu" and node.direction == "ir2vis"
    kw = SYSUMM01.from_config(node)
    assert kw == {"search_mode": "all", "shots": 1, "gallery_sampler": "agw", "rand_perm_path": None,
                  "val_for_selection": False, "num_trials": 10, "direction": "ir2vis"}
    node.direction, node.num_trials = "vis2ir", 3
    ds = SYSUMM01(sysu_root, verbose=False, **SYSUMM01.from_config(node))
    assert ds.protocol.name == "sysu/vis2ir/all/single-shot/agw/3 trials"


def test_vis2ir_evaluation_uses_the_cam2_cam3_rule(sysu_root):
    """run_protocol on the RGB -> IR protocol equals the spec's eval_sysu restated with the mirrored 1-based rule
    (q_cam == 2) & (g_cam == 3)."""
    from vdreid.evaluation import run_protocol

    ds = SYSUMM01(sysu_root, direction="vis2ir", verbose=False)
    rng = np.random.default_rng(4)
    qp, gp = np.array([it[1] for it in ds.query]), np.array([it[1] for it in ds.gallery])
    qc, gc = np.array([it[2] for it in ds.query]), np.array([it[2] for it in ds.gallery])
    centers = rng.normal(size=(int(max(qp.max(), gp.max())) + 1, 8))
    qf, gf = centers[qp] + rng.normal(size=(len(qp), 8)), centers[gp] + rng.normal(size=(len(gp), 8))
    rep = run_protocol(ds.protocol, qf, gf, qp, gp, qc, gc)
    for t, g in enumerate(ds.protocol.gallery_trials):
        qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gn = gf[g] / np.linalg.norm(gf[g], axis=1, keepdims=True)
        dist = -(qn[:, None, :] * gn[None, :, :]).sum(-1)
        q1, g1 = qc + 1, gc[g] + 1  # 1-based camera numbers
        aps, hits = [], []
        for i in range(len(qp)):
            order = np.argsort(dist[i], kind="stable")
            ranked = gp[g][order][~((q1[i] == 2) & (g1[order] == 3))]
            hit = ranked == qp[i]
            if hit.any():
                pos = np.nonzero(hit)[0]
                aps.append(np.mean((np.arange(len(pos)) + 1) / (pos + 1)))
                hits.append(ranked[0] == qp[i])
        assert rep.per_trial[t]["mAP"] == pytest.approx(100 * np.mean(aps), abs=1e-9)
        assert rep.per_trial[t]["R1"] == pytest.approx(100 * np.mean(hits), abs=1e-9)
        assert rep.per_trial[t]["num_valid_queries"] == len(aps)
