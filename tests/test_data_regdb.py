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


# ------------------------------------------------------------------ augmentation seeds: independent of the worker count


def _flip_crop():
    import torchvision.transforms as T
    from vdreid import compat

    # torchvision's flip draws from torch's generator, torchreid's Random2DTranslation from Python's random
    return T.Compose([compat.transforms.Random2DTranslation(16, 8, p=0.5), T.RandomHorizontalFlip(), T.ToTensor()])


def _expected(img, seed: int):
    """The definition, written out: Random2DTranslation (Python random, seeded) then the flip (torch.rand(1) < 0.5)."""
    import random

    import torch
    import torchvision.transforms.functional as F
    from PIL import Image

    rng = random.Random(seed)
    torch.manual_seed(seed)
    if rng.uniform(0, 1) > 0.5:
        img = img.resize((8, 16), Image.BILINEAR)
    else:
        w, h = round(8 * 1.125), round(16 * 1.125)
        img = img.resize((w, h), Image.BILINEAR)
        x1, y1 = int(round(rng.uniform(0, w - 8))), int(round(rng.uniform(0, h - 16)))
        img = img.crop((x1, y1, x1 + 8, y1 + 16))
    flip = bool(torch.rand(1) < 0.5)
    return F.to_tensor(F.hflip(img) if flip else img), flip


def test_seeded_items_equal_the_definition_in_any_worker(regdb_root):
    import torch
    from vdreid.data.errors import read_image_rgb

    ds = RegDB(regdb_root, transform=_flip_crop(), verbose=False)
    keys = [(i % len(ds), 1000 + i) for i in range(12)]
    expected = [_expected(read_image_rgb(ds.train[i][0]), s) for i, s in keys]
    flips = {f for _, f in expected}
    assert flips == {True, False}  # the seeds above give both decisions: different seeds, different flips
    torch.manual_seed(0)
    main = [ds[k]["img"] for k in keys]
    assert all(torch.equal(a, e) for a, (e, _) in zip(main, expected))
    assert torch.equal(ds[keys[3]]["img"], main[3])  # the global generators do not leak into a seeded item
    for workers in (1, 2):
        loader = torch.utils.data.DataLoader(ds, sampler=keys, batch_size=4, num_workers=workers)
        got = torch.cat([b["img"] for b in loader])
        assert torch.equal(got, torch.stack(main)), workers
    import random

    torch.manual_seed(0)
    random.seed(0)
    r, p = torch.rand(1), random.random()
    torch.manual_seed(0)
    random.seed(0)
    for k in keys:
        ds[k]
    assert torch.equal(torch.rand(1), r) and random.random() == p  # global generators untouched by seeded items


def test_combined_training_sets_stay_vi_datasets(regdb_root):
    import torch

    a = RegDB(regdb_root, transform=_flip_crop(), verbose=False)
    b = RegDB(regdb_root, trial=2, transform=_flip_crop(), verbose=False)
    both = sum([a, b])
    assert type(both).__name__ == "VIImageDataset" and len(both.train) == len(a.train) + len(b.train)
    k = (len(a.train) + 5, 77)  # an item of the second set, with a seed
    assert torch.equal(both[k]["img"], b[(5, 77)]["img"]) and both[k]["pid"] == b.train[5][1] + a.num_train_pids


def test_train_batches_do_not_depend_on_the_worker_count(regdb_root):
    """Same seeds, data.workers 0 or 2: the same images, the same flips and crops (config_hash leaves workers out)."""
    import torch
    from vdreid.data import CrossModalDataManager

    def first_batches(workers: int) -> list[torch.Tensor]:
        dm = CrossModalDataManager(root=regdb_root, sources=["regdb"], targets=["regdb"], height=16, width=8,
                                   transforms=["random_flip", "random_crop"], workers=workers, num_ids=2,
                                   num_instances=2, seed=3, sample_seeds=True, use_gpu=False, batch_size_test=8)
        torch.manual_seed(workers)  # the global generator differs between the two runs; the batches must not
        return [b["img"] for _, b in zip(range(2), dm.train_loader)]

    a, b = first_batches(0), first_batches(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 2
