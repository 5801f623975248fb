"""RegDB loader: idx parsing, label namespaces, directions, trials, protocol and every bad input."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import vdreid  # noqa: F401  (registers the datasets)
from vdreid import compat
from vdreid.data import RegDB
from vdreid.data.errors import DatasetLayoutError, SplitFileError


def parse(root: str, split: str, modality: str, trial: int) -> list[tuple[str, int]]:
    """Independent reading of an idx file: AGW's ``line.split(' ')``, path relative to RegDB/."""
    base = os.path.join(root, "RegDB")
    with open(os.path.join(base, "idx", f"{split}_{modality}_{trial}.txt")) as f:
        rows = [line.strip("\n").split(" ") for line in f if line.strip()]
    return [(os.path.normpath(os.path.join(base, p)), int(lb)) for p, lb in rows]


@pytest.fixture()
def regdb_copy(regdb_root, tmp_path) -> str:
    shutil.copytree(os.path.join(regdb_root, "RegDB"), tmp_path / "RegDB")
    return str(tmp_path)


@pytest.mark.parametrize("trial", [1, 4])
def test_train_items_labels_and_camids(regdb_root, trial):
    ds = RegDB(regdb_root, trial=trial, verbose=False)
    tv, tt = parse(regdb_root, "train", "visible", trial), parse(regdb_root, "train", "thermal", trial)
    labels = sorted({lb for _, lb in tv + tt})
    expected = [(p, labels.index(lb), 0) for p, lb in tv] + [(p, labels.index(lb), 1) for p, lb in tt]
    assert [(os.path.normpath(p), pid, cam) for p, pid, cam, _ in ds.train] == expected
    assert ds.num_train_pids == len(labels)
    assert RegDB.ir_camids == frozenset({1})
    # thermal items really are the Thermal/ files
    assert all(("Thermal" in p) == (cam == 1) for p, _, cam, _ in ds.train + ds.query + ds.gallery)


def test_test_namespace_is_apart_from_train(regdb_root):
    ds = RegDB(regdb_root, trial=1, verbose=False)
    qv, qt = parse(regdb_root, "test", "visible", 1), parse(regdb_root, "test", "thermal", 1)
    assert min(lb for _, lb in qv) == 0, "synthetic test labels restart at 0 like the real ones"
    off = ds.num_train_pids
    assert [(os.path.normpath(p), pid) for p, pid, _, _ in ds.query] == [(p, lb + off) for p, lb in qv]
    assert [(os.path.normpath(p), pid) for p, pid, _, _ in ds.gallery] == [(p, lb + off) for p, lb in qt]
    assert not {it[1] for it in ds.train} & {it[1] for it in ds.query + ds.gallery}
    # test label k and train label k are different people: their image folders differ
    train_folders = {os.path.dirname(p) for p, pid, *_ in ds.train if pid == 0}
    test_folders = {os.path.dirname(p) for p, pid, *_ in ds.query if pid == off}
    assert not train_folders & test_folders


def test_directions_swap_roles(regdb_root):
    v2t = RegDB(regdb_root, trial=2, direction="v2t", verbose=False)
    t2v = RegDB(regdb_root, trial=2, direction="t2v", verbose=False)
    assert v2t.query == t2v.gallery and v2t.gallery == t2v.query and v2t.train == t2v.train
    assert {c for _, _, c, _ in v2t.query} == {0} and {c for _, _, c, _ in v2t.gallery} == {1}
    for ds, d in ((v2t, "vis2ir"), (t2v, "ir2vis")):  # the direction names shared with SYSU-MM01 and LLCM
        p = ds.protocol
        assert p.name == f"regdb/{d}/trial-2" and p.cmc_mode == "standard" and p.exclude_cam_pairs == ()
        assert p.num_trials == 1 and p.trial_seeds == (2,)
        np.testing.assert_array_equal(p.query, np.arange(len(ds.query)))
        np.testing.assert_array_equal(p.gallery_trials[0], np.arange(len(ds.gallery)))


def test_trials_differ_and_strays_ignored(regdb_root):
    a, b = RegDB(regdb_root, trial=1, verbose=False), RegDB(regdb_root, trial=2, verbose=False)
    assert {p for p, *_ in a.train} != {p for p, *_ in b.train}
    listed = {os.path.dirname(p) for p, *_ in a.train + a.query + a.gallery}
    vis_dir = os.path.join(regdb_root, "RegDB", "Visible")
    vis_folders = {os.path.join(vis_dir, d) for d in os.listdir(vis_dir)}
    stray = {os.path.normpath(f) for f in vis_folders} - {os.path.normpath(f) for f in listed}
    assert stray, "the synthetic tree must contain a stray folder listed in no idx file"


def test_registered_names_through_torchreid(regdb_root):
    dm = compat.ImageDataManager(root=regdb_root, sources="regdb", targets=["regdb", "regdb_t2v"], height=32, width=16,
                                 workers=0)
    assert {c for *_, c, _ in dm.test_dataset["regdb"]["query"]} == {0}
    assert {c for *_, c, _ in dm.test_dataset["regdb_t2v"]["query"]} == {1}
    assert dm.num_train_pids == RegDB(regdb_root, verbose=False).num_train_pids


def _write_line(root: str, name: str, lineno: int, text: str) -> str:
    path = os.path.join(root, "RegDB", "idx", name)
    lines = open(path).read().splitlines()
    lines[lineno - 1] = text
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("Visible/1/x.bmp  3", "one space"),
        ("Visible/1/x.bmp", "one space"),
        ("Visible/1/x.bmp three", "'three' is not an integer"),
        ("Visible/1/x.bmp -1", "negative label"),
    ],
)
def test_malformed_idx_line(regdb_copy, text, pattern):
    _write_line(regdb_copy, "train_visible_1.txt", 3, text)
    with pytest.raises(SplitFileError, match=rf"train_visible_1\.txt:3: .*{pattern}"):
        RegDB(regdb_copy)


def test_idx_line_pointing_to_missing_image(regdb_copy):
    _write_line(regdb_copy, "test_thermal_1.txt", 2, "Thermal/999/gone.bmp 0")
    with pytest.raises(DatasetLayoutError, match=r"test_thermal_1\.txt:2: image .*gone\.bmp.* not found"):
        RegDB(regdb_copy)


def test_missing_layout(regdb_copy, tmp_path):
    with pytest.raises(DatasetLayoutError, match="RegDB"):
        RegDB(str(tmp_path / "none"))
    os.remove(os.path.join(regdb_copy, "RegDB", "idx", "test_visible_5.txt"))
    with pytest.raises(DatasetLayoutError, match="test_visible_5.txt"):
        RegDB(regdb_copy, trial=5)
    shutil.rmtree(os.path.join(regdb_copy, "RegDB", "Thermal"))
    with pytest.raises(DatasetLayoutError, match="Thermal"):
        RegDB(regdb_copy)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [({"trial": 0}, "trial"), ({"trial": 11}, "trial"), ({"trial": "1"}, "trial"), ({"trial": True}, "trial"),
     ({"direction": "both"}, "direction")],
)
def test_unknown_options(regdb_root, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        RegDB(regdb_root, **kwargs)


def test_blank_trailing_lines_are_fine_and_crlf(regdb_copy):
    path = os.path.join(regdb_copy, "RegDB", "idx", "train_thermal_1.txt")
    text = open(path).read().replace("\n", "\r\n") + "\r\n\r\n"
    with open(path, "w", newline="") as f:
        f.write(text)
    ds = RegDB(regdb_copy, verbose=False)
    assert len(ds.train) == len(parse(regdb_copy, "train", "visible", 1)) * 2


# ------------------------------------------------------------------ containment and strict parsing


@pytest.mark.parametrize("path", ["../outside/x.bmp", "Visible/../../outside/x.bmp", "ABS"])
def test_idx_paths_must_stay_inside_the_dataset_folder(regdb_copy, tmp_path, path):
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(parse(regdb_copy, "train", "visible", 1)[0][0], outside / "x.bmp")  # a real image: the rule refuses
    path = path.replace("ABS", str(outside / "x.bmp"))  # every form names the existing image tmp_path/outside/x.bmp
    _write_line(regdb_copy, "train_visible_1.txt", 3, f"{path} 0")
    with pytest.raises(SplitFileError, match=r"train_visible_1\.txt:3: .*(leaves the dataset folder|absolute path)"):
        RegDB(regdb_copy)


def test_idx_symlinks(regdb_copy, tmp_path):
    base = os.path.join(regdb_copy, "RegDB")
    first = parse(regdb_copy, "test", "thermal", 1)[0][0]
    rel = os.path.relpath(first, base)
    # a link inside RegDB/ works
    shutil.move(first, os.path.join(base, "moved.bmp"))
    os.symlink(os.path.join(base, "moved.bmp"), first)
    assert RegDB(regdb_copy, verbose=False).gallery[0][0] == os.path.normpath(first)
    # a link to a file outside RegDB/ is refused, naming the idx file and line
    os.remove(first)
    shutil.move(os.path.join(base, "moved.bmp"), tmp_path / "outside.bmp")
    os.symlink(tmp_path / "outside.bmp", first)
    with pytest.raises(DatasetLayoutError, match=rf"test_thermal_1\.txt:1: path \"{rel}\" resolves to .*outside\.bmp"):
        RegDB(regdb_copy)


def test_idx_labels_parse_strictly_and_encoding_errors_name_the_line(regdb_copy, regdb_root):
    path = os.path.join(regdb_copy, "RegDB", "idx", "train_visible_1.txt")
    first = open(path).read().splitlines()[0].split(" ")[0]
    _write_line(regdb_copy, "train_visible_1.txt", 1, f"{first} 1_4")  # int() reads 14
    with pytest.raises(SplitFileError, match=r"train_visible_1\.txt:1: label '1_4' is not an integer"):
        RegDB(regdb_copy)
    good = open(os.path.join(regdb_root, "RegDB", "idx", "train_visible_1.txt"), "rb").read()
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + good)  # a byte-order mark is dropped, not read as part of the first path
    ds, ref = RegDB(regdb_copy, verbose=False), RegDB(regdb_root, verbose=False)
    assert [(os.path.relpath(p, regdb_copy), *r) for p, *r in ds.train] == [
        (os.path.relpath(p, regdb_root), *r) for p, *r in ref.train
    ]
    lines = good.split(b"\n")
    lines[4] = lines[4].replace(b".bmp", b"\xe9.bmp")
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))
    with pytest.raises(SplitFileError, match=r"train_visible_1\.txt:5: byte 0xe9 .* not valid UTF-8"):
        RegDB(regdb_copy)


def test_direction_names_and_config_section(regdb_root):
    """vis2ir / ir2vis are the names shared with the other datasets; v2t / t2v stay accepted; data.regdb."""
    a = RegDB(regdb_root, trial=2, direction="vis2ir", verbose=False)
    b = RegDB(regdb_root, trial=2, direction="v2t", verbose=False)
    assert a.direction == b.direction == "vis2ir" and a.protocol.name == b.protocol.name == "regdb/vis2ir/trial-2"
    assert RegDB(regdb_root, trial=2, direction="ir2vis", verbose=False).query == b.gallery
    assert compat._image_dataset_registry()["regdb_ir2vis"](root=regdb_root, verbose=False).direction == "ir2vis"
    assert a.protocol.eval_kwargs() == {"cmc_mode": "standard", "exclude_cam_pairs": (),
                                        "remove_same_pid_same_cam": False, "physical_camera": None}
    with pytest.raises(ValueError, match="direction"):
        RegDB(regdb_root, direction="up")
    node = RegDB.config()
    assert RegDB.config_section == "regdb" and RegDB.from_config(node) == {"trial": 1, "direction": "vis2ir"}
    node.direction, node.trial = "t2v", 4
    assert RegDB.from_config(node) == {"trial": 4, "direction": "ir2vis"}
