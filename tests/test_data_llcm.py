"""LLCM loader: DEEN's lists (queries, the galleries of all 10 trials, training lists) and its eval_llcm rule, checked
against the restatements in ``llcm_reference.py`` (DEEN's loops with the global ``random``), on a synthetic tree in
the real layout with an empty NIR cam3, ids missing from some cameras and unpadded frame numbers; every direction,
the swapped ``test.py`` variant, the data manager, config section and bad layouts."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import vdreid  # noqa: F401  (registers the datasets)
from llcm_reference import (
    eval_llcm_reference,
    load_data,
    pid_cam,
    process_gallery_llcm,
    process_query_llcm,
)
from vdreid import compat
from vdreid.data import LLCM, CrossModalDataManager
from vdreid.data.errors import DatasetLayoutError, SplitFileError
from vdreid.data.synthetic import make_llcm
from vdreid.evaluation import run_protocol


@pytest.fixture(scope="module")
def llcm_root(tmp_path_factory) -> str:
    """A tiny synthetic LLCM tree under a root whose path contains "cam" (DEEN's absolute-path parse would break)."""
    root = tmp_path_factory.mktemp("llcm") / "camera_data"
    make_llcm(str(root), preset="tiny", seed=0)
    return str(root)


def data_path(root: str) -> str:
    return os.path.join(root, "LLCM") + "/"


def norm(paths) -> list[str]:
    return [os.path.normpath(p) for p in paths]


def physical(items) -> list[int]:
    """1-based camera digits of items: camid k-1 (visible) or 9+k-1 (near-infrared) is camera k."""
    return [(c % 9) + 1 for _, _, c, _ in items]


def copy_tree(root: str, tmp_path) -> str:
    shutil.copytree(os.path.join(root, "LLCM"), tmp_path / "LLCM", symlinks=True)
    return str(tmp_path)


# ------------------------------------------------------------------ lists against DEEN's code


def test_the_tree_has_the_edge_cases(llcm_root):
    base = data_path(llcm_root)
    assert os.path.isdir(base + "test_nir/cam3") and not os.listdir(base + "test_nir/cam3")
    with open(base + "idx/test_id.txt") as f:
        ids = [int(x) for x in f.read().split(",")]
    assert ids != sorted(ids)  # DEEN sorts them
    present = {(m, c, p) for m in ("test_vis", "test_nir") for c in range(1, 10) for p in ids
               if os.path.isdir(f"{base}{m}/cam{c}/{p:04d}")}
    assert any((m, c, p) not in present for m in ("test_vis", "test_nir") for c in (1, 2, 4) for p in ids)
    names = [line.split(" ")[0] for f in ("train_vis", "train_nir", "test_vis", "test_nir")
             for line in open(f"{base}idx/{f}.txt").read().splitlines()]
    frames = [n.split("_f")[1].split("_")[0] for n in names]
    assert len({len(f) for f in frames}) > 1 and all(not f.startswith("0") for f in frames)  # unpadded


@pytest.mark.parametrize("direction, q_mode, g_mode", [("ir2vis", 2, 1), ("vis2ir", 1, 2)])
def test_queries_and_all_ten_galleries_match_deen(llcm_root, direction, q_mode, g_mode):
    dp = data_path(llcm_root)
    ds = LLCM(llcm_root, direction=direction, verbose=False)
    p = ds.protocol
    assert p.name == f"llcm/{direction}/deen/10 trials" and p.num_trials == 10 and p.trial_seeds == tuple(range(10))
    query = process_query_llcm(dp, q_mode)
    assert norm(it[0] for it in ds.query) == norm(query)
    assert [(it[1], c) for it, c in zip(ds.query, physical(ds.query))] == [pid_cam(x, dp) for x in query]
    assert {it[2] >= 9 for it in ds.query} == {q_mode == 2}  # near-infrared camids are 9..17
    for t in range(10):
        gallery = process_gallery_llcm(dp, g_mode, t)
        items = [ds.gallery[i] for i in p.gallery_trials[t]]
        assert norm(it[0] for it in items) == norm(gallery)
        assert [(it[1], c) for it, c in zip(items, physical(items))] == [pid_cam(x, dp) for x in gallery]
    assert len({tuple(g.tolist()) for g in p.gallery_trials}) > 1  # the draws differ between trials
    assert sorted({i for g in p.gallery_trials for i in g.tolist()}) == list(range(len(ds.gallery)))
    assert p.eval_kwargs() == {"cmc_mode": "dedup", "exclude_cam_pairs": (), "remove_same_pid_same_cam": True,
                               "physical_camera": {9 + k: k for k in range(9)}}
    assert p.info["swapped_roles"] is False and p.direction == direction


def test_swapped_test_py_variant(llcm_root):
    """The authors' test.py 'VIS->IR': probes = the seeded NIR draws of each trial, gallery = every VIS image."""
    dp = data_path(llcm_root)
    ds = compat._image_dataset_registry()["llcm_vis2ir_swapped"](root=llcm_root, verbose=False)
    p = ds.protocol
    assert p.name == "llcm/vis2ir_swapped/deen/10 trials" and p.info["swapped_roles"] is True
    assert p.info["variant"] == "swapped" and p.name != LLCM(llcm_root, direction="vis2ir").protocol.name
    for t in range(10):
        probes = [ds.query[i] for i in p.query_of(t)]
        assert norm(it[0] for it in probes) == norm(process_gallery_llcm(dp, 2, t))
        assert norm(ds.gallery[i][0] for i in p.gallery_trials[t]) == norm(process_query_llcm(dp, 1))
    assert len({tuple(q.tolist()) for q in p.query_trials}) > 1


def test_training_lists_match_deen(llcm_root):
    dp = data_path(llcm_root)
    ds = LLCM(llcm_root, verbose=False)
    vis, vis_lb = load_data(dp + "idx/train_vis.txt")
    nir, nir_lb = load_data(dp + "idx/train_nir.txt")
    assert norm(it[0] for it in ds.train) == norm(dp + x for x in vis + nir)
    assert [it[1] for it in ds.train] == vis_lb + nir_lb  # labels 0..N-1 used as is
    cams = [int(os.path.basename(x).split("_c")[1][:2]) for x in vis + nir]
    assert [c % 9 + 1 for _, _, c, _ in ds.train] == cams
    assert [c >= 9 for _, _, c, _ in ds.train] == [False] * len(vis) + [True] * len(nir)
    assert ds.num_train_pids == len(set(vis_lb)) and ds.train_labels_contiguous
    test_ids = {pid_cam(x, dp)[0] for x in process_query_llcm(dp, 1)}
    assert not {int(x.split("/")[1]) for x in vis + nir} & test_ids  # the training folders hold no test id


def test_directions_share_the_training_set_and_presets(llcm_root):
    reg = compat._image_dataset_registry()
    a = reg["llcm"](root=llcm_root, verbose=False)
    b = reg["llcm_vis2ir"](root=llcm_root, verbose=False)
    assert a.direction == "ir2vis" and b.direction == "vis2ir" and a.train == b.train
    assert a.ir_camids == frozenset(range(9, 18))
    assert LLCM(llcm_root, direction="t2v", verbose=False).direction == "ir2vis"  # aliases as for RegDB
    assert LLCM(llcm_root, num_trials=3, verbose=False).protocol.name == "llcm/ir2vis/deen/3 trials"


# ------------------------------------------------------------------ unpadded frames, empty cam3, the removal rule


def test_unpadded_frame_numbers_sort_as_strings(llcm_root, tmp_path):
    root = copy_tree(llcm_root, tmp_path)
    dp = data_path(root)
    pid = int(sorted(os.listdir(dp + "test_vis/cam5") or os.listdir(dp + "test_vis/cam1"))[0])
    cam = 5 if os.listdir(dp + "test_vis/cam5") else 1
    folder = f"{dp}test_vis/cam{cam}/{pid:04d}"
    src = os.path.join(folder, os.listdir(folder)[0])
    for frame in (9000, 10000, 950):
        shutil.copyfile(src, os.path.join(folder, f"{pid:04d}_c{cam:02d}_s123456_f{frame}_vis.jpg"))
    names = [os.path.basename(p) for p in process_query_llcm(dp, 1) if p.startswith(folder)]
    assert names.index(f"{pid:04d}_c{cam:02d}_s123456_f10000_vis.jpg") < names.index(
        f"{pid:04d}_c{cam:02d}_s123456_f9000_vis.jpg")
    ds = LLCM(root, direction="vis2ir", verbose=False)
    assert norm(it[0] for it in ds.query) == norm(process_query_llcm(dp, 1))
    ir = LLCM(root, verbose=False)
    for t in range(10):
        assert norm(ir.gallery[i][0] for i in ir.protocol.gallery_trials[t]) == norm(process_gallery_llcm(dp, 1, t))


def test_nir_cam3_is_never_read(llcm_root, tmp_path):
    """DEEN lists no NIR cam3: empty identity folders there (which would crash random.choice) change nothing."""
    root = copy_tree(llcm_root, tmp_path)
    dp = data_path(root)
    ref = LLCM(llcm_root, direction="vis2ir", verbose=False)
    for pid in os.listdir(dp + "test_vis/cam1"):
        os.makedirs(f"{dp}test_nir/cam3/{pid}")
    ds = LLCM(root, direction="vis2ir", verbose=False)
    assert [os.path.relpath(it[0], root) for it in ds.gallery] == [os.path.relpath(it[0], llcm_root)
                                                                   for it in ref.gallery]
    shutil.rmtree(dp + "test_nir/cam3")  # the folder itself is optional
    ref_ir = LLCM(llcm_root, verbose=False)
    assert [os.path.relpath(it[0], root) for it in LLCM(root, verbose=False).query] == [
        os.path.relpath(it[0], llcm_root) for it in ref_ir.query]


@pytest.mark.parametrize("direction, q_mode, g_mode", [("ir2vis", 2, 1), ("vis2ir", 1, 2), ("vis2ir_swapped", 0, 0)])
def test_full_ten_trial_evaluation_matches_eval_llcm(llcm_root, direction, q_mode, g_mode):
    """run_protocol (protocol.eval_kwargs(): the same-pid-same-camera rule through physical cameras) on random
    features equals DEEN's eval_llcm restated, on DEEN's own lists, for all 10 trials."""
    dp = data_path(llcm_root)
    ds = LLCM(llcm_root, direction=direction, verbose=False)
    rng = np.random.default_rng(5)
    paths = {os.path.normpath(it[0]) for it in ds.query + ds.gallery}
    pids = {os.path.normpath(it[0]): it[1] for it in ds.query + ds.gallery}
    centers = rng.normal(size=(max(pids.values()) + 1, 16))
    feat = {p: centers[pids[p]] + 1.2 * rng.normal(size=16) for p in sorted(paths)}
    qf = np.stack([feat[os.path.normpath(it[0])] for it in ds.query])
    gf = np.stack([feat[os.path.normpath(it[0])] for it in ds.gallery])
    qp, gp = np.array([it[1] for it in ds.query]), np.array([it[1] for it in ds.gallery])
    qc, gc = np.array([it[2] for it in ds.query]), np.array([it[2] for it in ds.gallery])
    rep = run_protocol(ds.protocol, qf, gf, qp, gp, qc, gc)
    assert rep.num_trials == 10 and rep.protocol_info["remove_same_pid_same_cam"] is True
    removed_somewhere = False
    for t in range(10):
        if direction == "vis2ir_swapped":  # DEEN: eval_llcm(-(g q^T), g_pids, q_pids, g_cams, q_cams)
            probes, gallery = process_gallery_llcm(dp, 2, t), process_query_llcm(dp, 1)
        else:
            probes, gallery = process_query_llcm(dp, q_mode), process_gallery_llcm(dp, g_mode, t)
        pq = np.stack([feat[os.path.normpath(x)] for x in probes])
        pg = np.stack([feat[os.path.normpath(x)] for x in gallery])
        pq, pg = pq / np.linalg.norm(pq, axis=1, keepdims=True), pg / np.linalg.norm(pg, axis=1, keepdims=True)
        (qpid, qcam), (gpid, gcam) = (np.array([pid_cam(x, dp) for x in lst]).T for lst in (probes, gallery))
        cmc, mAP, mINP, nvalid = eval_llcm_reference(-(pq @ pg.T), qpid, gpid, qcam, gcam, 20)
        got = rep.per_trial[t]
        assert got["num_valid_queries"] == nvalid
        for k, v in (("R1", cmc[0]), ("R5", cmc[4]), ("R10", cmc[9]), ("R20", cmc[19]), ("mAP", mAP), ("mINP", mINP)):
            assert got[k] == pytest.approx(100 * v, abs=1e-9), (t, k)
        any_match = sum(bool((gpid == qpid[i]).any()) for i in range(len(qpid)))
        removed_somewhere |= nvalid < any_match  # some queries lose every positive to the rule
    assert removed_somewhere


# ------------------------------------------------------------------ data manager, config section


def test_cross_modal_data_manager_on_the_synthetic_tree(llcm_root):
    dm = CrossModalDataManager(root=llcm_root, sources="llcm", targets=["llcm", "llcm_vis2ir"], height=32, width=16,
                               workers=0, num_ids=2, num_instances=1, batch_size_test=8, use_gpu=False)
    assert dm.train_ir_camids == frozenset(range(9, 18))
    assert dm.protocols["llcm"].name == "llcm/ir2vis/deen/10 trials"
    assert dm.protocols["llcm_vis2ir"].name == "llcm/vis2ir/deen/10 trials"
    batch = next(iter(dm.train_loader))
    cams = batch["camid"].tolist()
    assert len(cams) == 4 and sum(c >= 9 for c in cams) == 2  # 2 ids x (1 visible + 1 near-infrared)
    q = next(iter(dm.test_loader["llcm"]["query"]))
    assert q["img"].shape[1:] == (3, 32, 16) and all(c >= 9 for c in q["camid"].tolist())
    dm2 = CrossModalDataManager(root=llcm_root, sources="llcm", height=32, width=16, workers=0, num_ids=2,
                                num_instances=1, use_gpu=False, dataset_kwargs={"direction": "vis2ir_swapped"})
    assert dm2.protocols["llcm"].query_trials is not None


def test_config_section(llcm_root):
    node = LLCM.config()
    assert LLCM.config_section == "llcm" and LLCM.from_config(node) == {"direction": "ir2vis", "num_trials": 10}
    node.direction, node.num_trials = "vis2ir_swapped", 2
    ds = LLCM(llcm_root, verbose=False, **LLCM.from_config(node))
    assert ds.protocol.name == "llcm/vis2ir_swapped/deen/2 trials"
    node.direction = "diagonal"
    with pytest.raises(ValueError, match="data.llcm.direction"):
        LLCM.from_config(node)


# ------------------------------------------------------------------ bad layouts


def test_bad_layouts_name_the_problem(llcm_root, tmp_path):
    with pytest.raises(DatasetLayoutError, match="LLCM folder not found"):
        LLCM(str(tmp_path))
    root = copy_tree(llcm_root, tmp_path)
    dp = data_path(root)
    with pytest.raises(ValueError, match="unknown direction"):
        LLCM(root, direction="sideways")
    os.rename(dp + "test_vis/cam5", dp + "cam5_moved")
    with pytest.raises(DatasetLayoutError, match=r"test_vis/cam5"):
        LLCM(root)
    os.rename(dp + "cam5_moved", dp + "test_vis/cam5")
    os.rename(dp + "idx/test_id.txt", dp + "idx/moved.txt")
    with pytest.raises(DatasetLayoutError, match="test id file"):
        LLCM(root)
    os.rename(dp + "idx/moved.txt", dp + "idx/test_id.txt")
    pid = sorted(os.listdir(dp + "test_vis/cam1") + os.listdir(dp + "test_vis/cam2"))[0]
    cam = 1 if os.path.isdir(f"{dp}test_vis/cam1/{pid}") else 2
    saved = tmp_path / "saved"
    shutil.move(f"{dp}test_vis/cam{cam}/{pid}", saved)
    os.makedirs(f"{dp}test_vis/cam{cam}/{pid}")
    with pytest.raises(DatasetLayoutError, match="is empty"):
        LLCM(root)
    os.rmdir(f"{dp}test_vis/cam{cam}/{pid}")
    shutil.move(saved, f"{dp}test_vis/cam{cam}/{pid}")
    LLCM(root, verbose=False)  # restored


def test_bad_training_index_files(llcm_root, tmp_path):
    root = copy_tree(llcm_root, tmp_path)
    dp = data_path(root)
    with open(dp + "idx/train_nir.txt") as f:
        good = f.read()
    first = good.splitlines()[0]
    cases = [
        (good + "../outside.jpg 0\n", SplitFileError, "leaves the dataset folder"),
        (good + first.split(" ")[0] + "  0\n", SplitFileError, "one space"),
        (good.replace(" 0\n", " 99\n", 1), SplitFileError, "same training labels"),
        (good + "nir/missing.jpg 0\n", DatasetLayoutError, "not found"),
    ]
    for text, err, match in cases:
        with open(dp + "idx/train_nir.txt", "w") as f:
            f.write(text)
        with pytest.raises(err, match=match):
            LLCM(root)
    path, label = first.split(" ")
    shutil.copyfile(dp + path, dp + "nir/nocamera.jpg")
    with open(dp + "idx/train_nir.txt", "w") as f:
        f.write(good + f"nir/nocamera.jpg {label}\n")
    with pytest.raises(SplitFileError, match="camera number"):
        LLCM(root)
