"""Procedural visible-infrared pedestrians written in the exact SYSU-MM01 and RegDB layouts.

Demos and tests run the real loaders on these trees (``docs/protocols.md``). Each identity is a combination
of discrete attributes chosen so that any two identities differ in at least two attributes that survive the infrared
rendering (body height, build, upper-garment pattern, lower garment type, carried object, hat, garment warmth); the
garment colours and skin tone are visible-only cues. Infrared images are thermal-like: warm skin, lukewarm clothes
whose pattern shows as emissivity bands, cold accessories and a cold background, blurred and noisy, no colour.
Cameras differ in background, illumination, scale, position and image size (SYSU cam3 films cam2's room in the
dark). Everything is drawn from ``numpy.random.default_rng`` seeded by ``seed``, so a tree is a pure function of its
arguments.

Layouts written:

* ``<root>/SYSU-MM01/cam{1..6}/<pid:04d>/<n:04d>.jpg`` and ``exp/{train,val,test,available}_id.{txt,mat}`` (one
  comma-separated line; ``.mat`` key ``id``, 1 x N uint16), optionally ``exp/rand_perm_cam.mat``.
* ``<root>/RegDB/{Visible,Thermal}/<id>/<sex>_<view>_{v,t}_<nnnnn>_<k>.bmp`` and
  ``idx/{train,test}_{visible,thermal}_{1..10}.txt`` (``<relative path> <label>``; labels restart at 0 in each file
  pair, so test label k and train label k are different people).
* ``<root>/LLCM/{vis,nir}/<pid:04d>/<pid:04d>_c<cam:02d>_s<nnnnnn>_f<frame>_{vis,nir}.jpg``, ``idx/test_id.txt``,
  ``idx/{train,test}_{vis,nir}.txt`` and the test images copied into ``test_{vis,nir}/cam{1..9}/<pid:04d>/`` with an
  empty near-infrared ``cam3`` (:func:`make_llcm`).

The SYSU-MM01 and RegDB trees also contain a few "stray" single-modality identity folders that no split file lists,
as the real data does, so tests can check that loaders ignore them.
"""

from __future__ import annotations

import itertools
import json
import os
import os.path as osp
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vdreid.data import synthetic_hard
from vdreid.data.synthetic_draw import box_blur
from vdreid.data.synthetic_layout import MARKER
from vdreid.errors import SyntheticTreeError

# ----------------------------------------------------------------------------------------------- identities

HEIGHTS = (0.80, 0.89, 0.98)  # body height as a fraction of the frame's usable height
BUILDS = (0.19, 0.25, 0.31)  # torso width as a fraction of body height
UPPER_PATTERNS = ("solid", "hstripes_wide", "hstripes_narrow", "vstripes", "checker")
LOWER_TYPES = ("pants", "shorts", "skirt")
CARRY = ("none", "handbag", "backpack")
HATS = (False, True)
WARMTH = (0, 1)  # garment thickness: thin clothes look warmer in infrared

_ATTR_SIZES = (len(HEIGHTS), len(BUILDS), len(UPPER_PATTERNS), len(LOWER_TYPES), len(CARRY), len(HATS), len(WARMTH))

_PALETTE = np.array(
    [
        [0.85, 0.10, 0.10], [0.10, 0.35, 0.85], [0.10, 0.65, 0.20], [0.95, 0.80, 0.10], [0.95, 0.95, 0.95],
        [0.10, 0.10, 0.12], [0.55, 0.20, 0.65], [0.95, 0.50, 0.10], [0.45, 0.30, 0.15], [0.40, 0.75, 0.85],
        [0.90, 0.45, 0.65], [0.50, 0.50, 0.52],
    ],
    dtype=np.float32,
)
_SKIN = np.array([[0.96, 0.80, 0.66], [0.85, 0.64, 0.48], [0.62, 0.44, 0.30], [0.42, 0.28, 0.18]], dtype=np.float32)


@dataclass(frozen=True)
class Identity:
    """One synthetic person: discrete shape attributes (infrared-surviving) and colours (visible-only)."""

    height: int
    build: int
    upper: int
    lower: int
    carry: int
    hat: int
    warmth: int
    upper_rgb: tuple[float, float, float]
    upper2_rgb: tuple[float, float, float]
    lower_rgb: tuple[float, float, float]
    skin_rgb: tuple[float, float, float]
    hat_rgb: tuple[float, float, float]
    female: bool


def make_identities(n: int, rng: np.random.Generator) -> list[Identity]:
    """``n`` identities whose infrared-surviving attribute tuples differ pairwise in at least two positions.

    Greedy selection from a shuffled grid of all 810 attribute combinations; when ``n`` is too large for a Hamming
    distance of 2 the remaining identities are taken with distance 1 (still all distinct).
    """
    grid = np.array(list(itertools.product(*[range(s) for s in _ATTR_SIZES])), dtype=np.int64)
    if n > len(grid):
        raise ValueError(f"make_identities: at most {len(grid)} distinct identities, asked for {n}")
    grid = grid[rng.permutation(len(grid))]
    chosen: list[np.ndarray] = []
    for min_dist in (2, 1):
        for row in grid:
            if len(chosen) == n:
                break
            if all(int((row != c).sum()) >= min_dist for c in chosen):
                chosen.append(row)
        if len(chosen) == n:
            break
    ids = []
    for row in chosen:
        cu, cl, ch = rng.choice(len(_PALETTE), size=3, replace=False)
        second = _PALETTE[cu] * 0.3 if _PALETTE[cu].mean() > 0.45 else np.minimum(_PALETTE[cu] * 0.3 + 0.65, 1.0)
        ids.append(
            Identity(
                *[int(v) for v in row],
                upper_rgb=tuple(float(v) for v in _PALETTE[cu]),
                upper2_rgb=tuple(float(v) for v in second),
                lower_rgb=tuple(float(v) for v in _PALETTE[cl]),
                skin_rgb=tuple(float(v) for v in _SKIN[rng.integers(len(_SKIN))]),
                hat_rgb=tuple(float(v) for v in _PALETTE[ch]),
                female=bool(rng.integers(2)),
            )
        )
    return ids


# ----------------------------------------------------------------------------------------------- cameras


@dataclass(frozen=True)
class Camera:
    """How one camera films people: modality, scene and framing."""

    infrared: bool
    bg_rgb: tuple[float, float, float]  # scene base colour (visible) or base temperature (infrared, first entry)
    bg2_rgb: tuple[float, float, float]  # floor / second scene colour
    floor: float  # floor line as a fraction of the height
    wall_freq: float  # vertical wall stripes per frame width (0 = none)
    foliage: bool  # blotchy low-frequency texture (outdoor garden)
    light: float  # illumination gain
    cast: tuple[float, float, float]  # colour cast (visible only)
    scale: float  # person size
    y_shift: float  # feet position shift, fraction of height
    size: float  # image size factor relative to the preset's base size


SYSU_CAMERAS = (
    Camera(False, (0.78, 0.74, 0.66), (0.55, 0.45, 0.35), 0.80, 5.0, False, 1.05, (1.05, 1.0, 0.92), 0.95, 0.00, 1.0),
    Camera(False, (0.60, 0.66, 0.72), (0.35, 0.38, 0.42), 0.76, 0.0, False, 0.90, (0.94, 1.0, 1.06), 0.88, -0.02, 1.0),
    Camera(True, (0.20, 0.20, 0.20), (0.12, 0.12, 0.12), 0.76, 0.0, False, 1.00, (1.0, 1.0, 1.0), 0.88, -0.02, 1.0),
    Camera(False, (0.62, 0.62, 0.60), (0.42, 0.42, 0.44), 0.70, 9.0, False, 1.15, (1.0, 1.0, 1.0), 0.74, -0.05, 0.75),
    Camera(False, (0.35, 0.58, 0.30), (0.50, 0.46, 0.40), 0.82, 0.0, True, 1.10, (1.0, 1.04, 0.95), 0.80, -0.03, 0.75),
    Camera(True, (0.30, 0.30, 0.30), (0.22, 0.22, 0.22), 0.72, 3.0, False, 1.00, (1.0, 1.0, 1.0), 0.84, -0.04, 0.875),
)

REGDB_CAMERAS = (
    Camera(False, (0.55, 0.55, 0.50), (0.40, 0.40, 0.38), 0.85, 0.0, True, 1.00, (1.0, 1.0, 1.0), 0.92, 0.0, 1.0),
    Camera(True, (0.25, 0.25, 0.25), (0.18, 0.18, 0.18), 0.85, 0.0, False, 1.00, (1.0, 1.0, 1.0), 0.92, 0.0, 1.0),
)


# ----------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Pose:
    """Per-image nuisance: position, size, stride, brightness, texture phase, noise."""

    dx: float
    dy: float
    scale: float
    stride: float
    gain: float
    phase: float
    noise_seed: int
    bag_side: int


def random_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        dx=float(rng.uniform(-0.08, 0.08)),
        dy=float(rng.uniform(-0.02, 0.02)),
        scale=float(rng.uniform(0.94, 1.06)),
        stride=float(rng.uniform(0.0, 0.09)),
        gain=float(rng.uniform(0.85, 1.15)),
        phase=float(rng.uniform(0, 1)),
        noise_seed=int(rng.integers(2**31)),
        bag_side=int(rng.choice((-1, 1))),
    )


def render(person: Identity, cam: Camera, pose: Pose, height: int, width: int) -> np.ndarray:
    """Render one image as uint8 (H, W, 3); infrared images have three equal channels."""
    H, W = height, width
    Y, X = np.mgrid[0:H, 0:W].astype(np.float32)
    nrng = np.random.default_rng(pose.noise_seed)

    # --- background (scene of this camera)
    yn, xn = Y / H, X / W
    bg = np.empty((H, W, 3), np.float32)
    bg[:] = np.asarray(cam.bg_rgb, np.float32)
    floor = yn > cam.floor
    bg[floor] = np.asarray(cam.bg2_rgb, np.float32)
    bg *= (0.9 + 0.2 * (1 - yn))[..., None]
    if cam.wall_freq > 0:
        stripes = (np.floor(xn * cam.wall_freq + pose.phase) % 2 == 0) & ~floor
        bg[stripes] *= 0.8
    if cam.foliage:
        blot = nrng.random((6, 3)).astype(np.float32)
        blot = np.kron(blot, np.ones((H // 6 + 1, W // 3 + 1), np.float32))[:H, :W]
        bg *= (0.75 + 0.5 * box_blur(blot, max(3, W // 8)))[..., None]

    # --- person geometry (pixels)
    hp = HEIGHTS[person.height] * cam.scale * pose.scale * H * 0.94
    feet = H * (0.985 + cam.y_shift + pose.dy)
    cx = W * (0.5 + pose.dx)
    top = feet - hp
    r_head = 0.075 * hp
    head_cy = top + r_head
    shoulder = top + 2.15 * r_head
    hip = feet - 0.47 * hp
    knee = hip + 0.24 * hp
    torso_hw = BUILDS[person.build] * hp / 2
    arm_w = 0.055 * hp
    leg_w = 0.085 * hp
    u = (X - cx) / hp
    v = (Y - shoulder) / hp

    head = (X - cx) ** 2 + (Y - head_cy) ** 2 * 1.1 <= r_head**2
    hair = head & (Y < head_cy - 0.35 * r_head)
    torso = (np.abs(X - cx) <= torso_hw) & (Y >= shoulder) & (Y <= hip)
    arms = (np.abs(X - cx) > torso_hw) & (np.abs(X - cx) <= torso_hw + arm_w) & (Y >= shoulder + 0.01 * hp)
    arms &= Y <= hip + 0.04 * hp
    hands = arms & (Y > hip - 0.02 * hp)
    arms &= ~hands
    stride = pose.stride * hp
    leg_l = (np.abs(X - (cx - 0.06 * hp - stride * (Y - hip) / (feet - hip))) <= leg_w / 2) & (Y > hip) & (Y <= feet)
    leg_r = (np.abs(X - (cx + 0.06 * hp + stride * (Y - hip) / (feet - hip))) <= leg_w / 2) & (Y > hip) & (Y <= feet)
    legs = leg_l | leg_r
    shoes = legs & (Y > feet - 0.035 * hp)
    lower_kind = LOWER_TYPES[person.lower]
    if lower_kind == "pants":
        garment_lo = legs & ~shoes
    elif lower_kind == "shorts":
        garment_lo = legs & (Y <= knee)
    else:  # skirt: trapezoid from hip to knee, wider at the hem (silhouette cue)
        half = torso_hw * (1.0 + 0.6 * (Y - hip) / (knee - hip))
        garment_lo = (np.abs(X - cx) <= half) & (Y > hip) & (Y <= knee + 0.02 * hp)
    skin_legs = legs & ~shoes & ~garment_lo

    pattern_kind = UPPER_PATTERNS[person.upper]
    if pattern_kind == "solid":
        pat = np.zeros_like(u, dtype=bool)
    elif pattern_kind == "hstripes_wide":
        pat = np.floor(v / 0.085) % 2 == 1
    elif pattern_kind == "hstripes_narrow":
        pat = np.floor(v / 0.042) % 2 == 1
    elif pattern_kind == "vstripes":
        pat = np.floor((u + 1.0) / 0.05) % 2 == 1
    else:
        pat = (np.floor(v / 0.07) + np.floor((u + 1.0) / 0.07)) % 2 == 1
    upper = torso | arms

    hat = np.zeros_like(head)
    if HATS[person.hat]:
        hat = ((X - cx) ** 2 + (Y - head_cy) ** 2 * 1.1 <= (r_head * 1.12) ** 2) & (Y < head_cy - 0.1 * r_head)
        hat |= (np.abs(X - cx) <= r_head * 1.6) & (np.abs(Y - (head_cy - 0.1 * r_head)) <= 0.02 * hp)

    carry_kind = CARRY[person.carry]
    bag = np.zeros_like(head)
    straps = np.zeros_like(head)
    if carry_kind == "handbag":
        bx = cx + pose.bag_side * (torso_hw + arm_w + 0.06 * hp)
        bag = (np.abs(X - bx) <= 0.065 * hp) & (Y >= hip - 0.06 * hp) & (Y <= hip + 0.1 * hp)
    elif carry_kind == "backpack":
        bag = (np.abs(X - cx) <= torso_hw + 0.05 * hp) & (Y >= shoulder - 0.05 * hp) & (Y <= shoulder + 0.03 * hp)
        bag &= ~head
        straps = torso & (np.abs(np.abs(X - cx) - 0.55 * torso_hw) <= 0.02 * hp)

    # --- paint
    if cam.infrared:
        # temperatures: skin hot, thin clothes lukewarm, thick clothes cooler, pattern = emissivity bands,
        # accessories and hair cold (infrared keeps shape and pattern, loses colour)
        t_cloth = 0.50 + 0.12 * WARMTH[person.warmth]
        img = bg[..., :1].copy()
        img[upper] = t_cloth
        img[upper & pat] = t_cloth - 0.2
        img[garment_lo] = t_cloth - 0.06
        img[head | hands | skin_legs] = 0.95
        img[hair] = 0.55
        img[shoes] = 0.35
        img[hat] = 0.28
        img[bag] = 0.04
        img[straps] = 0.3
        img = box_blur(img, 3 if H >= 64 else 1)
        img = img * pose.gain * cam.light + nrng.normal(0, 0.03, img.shape).astype(np.float32)
        img = np.repeat(img, 3, axis=2)
    else:
        img = bg
        img[upper] = person.upper_rgb
        img[upper & pat] = person.upper2_rgb
        img[garment_lo] = person.lower_rgb
        img[head | hands | skin_legs] = person.skin_rgb
        img[hair] = (0.12, 0.08, 0.05)
        img[shoes] = (0.08, 0.08, 0.08)
        img[hat] = person.hat_rgb
        img[bag] = (0.30, 0.20, 0.12)
        img[straps] = (0.15, 0.15, 0.15)
        img = img * np.asarray(cam.cast, np.float32) * pose.gain * cam.light
        img = img + nrng.normal(0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- presets

SYSU_PRESETS: dict[str, dict] = {
    # tests: ~300 images of 32x16, generates in well under a second
    "tiny": dict(num_ids=16, images_per_cam=2, height=32, width=16, num_stray=2, rand_perm=False),
    # demo (`make demo`): 110 ids (64 train / 10 val / 36 test) at 128x64, 2 images per camera (sized so that the
    # quickstart's 20 epochs take about 5 minutes on 2 CPU cores), a few seconds
    "demo": dict(num_ids=110, images_per_cam=2, height=128, width=64, num_stray=4, rand_perm=True),
    # the transfer check (benchmarks/transfer.py): hard style, 200 ids (116 train / 18 val / 66 test), ~3,000 images
    # at 128x64
    "hard": dict(num_ids=200, images_per_cam=3, height=128, width=64, num_stray=4, rand_perm=True, style="hard"),
}
REGDB_PRESETS: dict[str, dict] = {
    "tiny": dict(num_ids=12, images_per_id=3, height=32, width=16, num_stray=1),
    "demo": dict(num_ids=90, images_per_id=8, height=128, width=64, num_stray=2),
    "hard": dict(num_ids=200, images_per_id=6, height=128, width=64, num_stray=2, style="hard"),
}


def _resolve(presets: dict[str, dict], preset: str, overrides: dict) -> dict:
    if preset not in presets:
        raise ValueError(f"unknown synthetic preset {preset!r}: expected one of {sorted(presets)}")
    cfg = dict(presets[preset])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


@dataclass(frozen=True)
class StyleKit:
    """What a style draws and renders with: ``people(n, rng)``, ``pose(rng)``, ``render(person, cam, pose, h, w)`` and
    its SYSU (6) and RegDB (visible, thermal) cameras (each with ``infrared`` and ``size``)."""

    people: Callable[[int, np.random.Generator], list]
    pose: Callable[[np.random.Generator], object]
    render: Callable[..., np.ndarray]
    sysu_cameras: tuple
    regdb_cameras: tuple


STYLES = ("classic", "hard", "shift")


def style_kit(style: str) -> StyleKit:
    """The generator of ``style``: ``'classic'`` (this module: discrete attributes, fixed framing; fast tests and the
    old demo), ``'hard'`` or its held-out sibling ``'shift'`` (:mod:`vdreid.data.synthetic_hard`: continuous shape,
    viewpoints, occluders, clutter, sensor variation)."""
    if style == "classic":
        return StyleKit(make_identities, random_pose, render, SYSU_CAMERAS, REGDB_CAMERAS)
    st = synthetic_hard.get_style(style)
    return StyleKit(
        lambda n, rng: synthetic_hard.make_identities(n, rng, st), lambda rng: synthetic_hard.random_pose(rng, st),
        synthetic_hard.render, st.sysu_cameras, st.regdb_cameras,
    )


def _split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) sizes with the real 296/99/96 flavour but a larger test share (>= 30 test ids on demo)."""
    n_test = max(3, round(n * 0.33))
    n_val = max(2, round(n * 0.09))
    n_train = n - n_test - n_val
    if n_train < 2:
        raise ValueError(f"num_ids={n} is too small: need at least 7 identities (train, val and test)")
    return n_train, n_val, n_test


def _image_numbers(n: int, rng: np.random.Generator) -> list[int]:
    """``n`` increasing 1-based image numbers with occasional gaps (contiguity is not guaranteed on real data)."""
    nums, k = [], 1
    while len(nums) < n:
        if rng.random() > 0.15:
            nums.append(k)
        k += 1
    return nums




def _prepare(base: str, args: dict, overwrite: bool) -> bool:
    """Decide what to do with an existing tree at ``base``; True if an identical synthetic tree is already there.

    A marker file records the generator arguments. Same arguments: nothing to do (re-running a demo is instant).
    Different arguments: error unless ``overwrite`` (then the old synthetic tree is deleted). A non-empty folder
    without the marker (e.g. the real dataset) is never touched.
    """
    marker = osp.join(base, MARKER)
    if not osp.isdir(base) or not os.listdir(base):
        return False
    if not osp.isfile(marker):
        raise SyntheticTreeError(
            f'"{base}" exists and was not written by vdreid.data.synthetic (no {MARKER}); refusing to write a '
            "synthetic tree into it. Choose another root."
        )
    with open(marker) as f:
        old = json.load(f)
    if old == args:
        return True
    if not overwrite:
        raise SyntheticTreeError(
            f'"{base}" holds a synthetic tree made with different arguments ({old}); pass overwrite=True '
            "(CLI: --overwrite, which deletes that synthetic tree) to replace it, or choose another root."
        )
    shutil.rmtree(base)
    return False


def _save(img: np.ndarray, path: str) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    if path.endswith(".jpg"):
        Image.fromarray(img).save(path, quality=92)
    else:
        Image.fromarray(img).save(path)


def make_sysu(
    root: str,
    num_ids: int | None = None,
    seed: int = 0,
    preset: str = "demo",
    images_per_cam: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_stray: int | None = None,
    rand_perm: bool | None = None,
    overwrite: bool = False,
    style: str | None = None,
) -> str:
    """Write a synthetic SYSU-MM01 tree to ``<root>/SYSU-MM01`` and return that path.

    Args:
        root: data root (the folder that will hold ``SYSU-MM01/``).
        num_ids: identities listed in the split files (train/val/test about 58/9/33 %).
        seed: everything (identities, camera coverage, poses, noise) is a function of the seed.
        preset: ``'tiny'`` (tests), ``'demo'`` or ``'hard'`` (benchmarks/transfer.py's: hard style, 200 identities);
            explicit arguments override the preset.
        images_per_cam: images per (identity, camera) folder.
        height, width: base image size; cameras scale it (surveillance cams 4/5 are smaller).
        num_stray: extra single-modality identity folders that no split file lists.
        rand_perm: also write ``exp/rand_perm_cam.mat`` for the official gallery sampler (10 permutation rows).
        overwrite: replace an existing synthetic tree made with other arguments (an identical one is kept as is;
            a folder not written by this module is never touched).
        style: ``'classic'``, ``'hard'`` or ``'shift'`` (see :func:`style_kit`); default the preset's (``'hard'``
            for the ``hard`` preset, else ``'classic'``). Layout, splits and camera coverage are those of every style.

    Camera coverage mimics the real data: cam1/cam2 hold the same subset of identities (about 60 %), so some test
    identities have no indoor gallery; a few test identities lack cam3; every train/val identity has both modalities.
    """
    cfg = _resolve(
        SYSU_PRESETS,
        preset,
        dict(
            num_ids=num_ids, images_per_cam=images_per_cam, height=height, width=width, num_stray=num_stray,
            rand_perm=rand_perm, style=style,
        ),
    )
    style = cfg.pop("style", "classic")
    n, k, H, W = cfg["num_ids"], cfg["images_per_cam"], cfg["height"], cfg["width"]
    n_stray = cfg["num_stray"]
    if k < 1 or H < 8 or W < 4:
        raise ValueError(f"make_sysu: images_per_cam >= 1 and size >= 8x4 expected, got {k}, {H}x{W}")
    base = osp.join(osp.abspath(root), "SYSU-MM01")
    kit = style_kit(style)
    args = {"layout": "sysu", "seed": seed, **cfg, **({} if style == "classic" else {"style": style})}
    if _prepare(base, args, overwrite):
        return base
    rng = np.random.default_rng(seed)
    n_train, n_val, n_test = _split_sizes(n)
    total = n + n_stray
    numbers = np.sort(rng.choice(np.arange(1, int(total * 1.3) + 3), size=total, replace=False))
    perm = rng.permutation(total)
    test_ids = sorted(int(numbers[i]) for i in perm[:n_test])
    val_ids = sorted(int(numbers[i]) for i in perm[n_test : n_test + n_val])
    train_ids = sorted(int(numbers[i]) for i in perm[n_test + n_val : n])
    stray_ids = sorted(int(numbers[i]) for i in perm[n:])
    people = kit.people(total, rng)
    person_of = {int(numbers[i]): people[j] for j, i in enumerate(perm)}

    cams_of: dict[int, list[int]] = {}
    test_perm = rng.permutation(test_ids)
    n_indoor = max(1, min(len(test_ids) - 1, round(0.6 * len(test_ids))))
    indoor = set(int(p) for p in test_perm[:n_indoor])
    no_cam3 = {int(test_perm[-1])}  # outside the indoor subset, as cam3 films cam2's room
    for pid in test_ids:
        cams = []
        if pid in indoor:
            cams += [1, 2]
        if pid not in no_cam3:
            cams.append(3)
        if pid in indoor or rng.random() > 0.1:
            cams.append(4)
        cams += [5, 6]
        cams_of[pid] = sorted(cams)
    for pid in train_ids + val_ids:
        cams = []
        if rng.random() < 0.6:
            cams += [1, 2]
        if rng.random() < 0.9:
            cams.append(3)
        if 3 not in cams or rng.random() < 0.7:
            cams.append(6)
        if rng.random() < 0.9:
            cams.append(4)
        if not {1, 2, 4} & set(cams) or rng.random() < 0.9:
            cams.append(5)
        cams_of[pid] = sorted(cams)
    for j, pid in enumerate(stray_ids):  # single-modality folders (real data: id 9 in cam4+5, id 26 in cam6)
        cams_of[pid] = [4, 5] if j % 2 == 0 else [6]

    for c in range(1, 7):
        os.makedirs(osp.join(base, f"cam{c}"), exist_ok=True)
    for pid in sorted(cams_of):
        for c in cams_of[pid]:
            cam = kit.sysu_cameras[c - 1]
            h, w = max(8, round(H * cam.size)), max(4, round(W * cam.size))
            for num in _image_numbers(k, rng):
                img = kit.render(person_of[pid], cam, kit.pose(rng), h, w)
                _save(img, osp.join(base, f"cam{c}", f"{pid:04d}", f"{num:04d}.jpg"))

    exp = osp.join(base, "exp")
    os.makedirs(exp, exist_ok=True)
    from scipy.io import savemat

    available = sorted(train_ids + val_ids + test_ids)
    for name, ids in (("train", train_ids), ("val", val_ids), ("test", test_ids), ("available", available)):
        with open(osp.join(exp, f"{name}_id.txt"), "w") as f:
            f.write(",".join(str(i) for i in ids) + "\n")
        savemat(osp.join(exp, f"{name}_id.mat"), {"id": np.asarray(ids, dtype=np.uint16).reshape(1, -1)})
    if cfg["rand_perm"]:
        write_rand_perm_cam(base, osp.join(exp, "rand_perm_cam.mat"), num_trials=10, seed=seed)
    with open(osp.join(base, MARKER), "w") as f:
        json.dump(args, f)
    return base


def write_rand_perm_cam(sysu_dir: str, out_path: str, num_trials: int = 10, seed: int = 0) -> str:
    """Write an official-kit style ``rand_perm_cam.mat`` for the tree at ``sysu_dir``.

    ``rand_perm_cam{cam}{pid}`` is a ``num_trials x n`` matrix of 1-based positions into the sorted image list of
    ``cam<cam>/<pid:04d>`` (each row a permutation of 1..n); cells of missing folders are empty. The real file comes
    with the official evaluation kit; this one lets the synthetic tree exercise ``gallery_sampler='official'``.
    """
    from scipy.io import savemat

    rng = np.random.default_rng([seed, 7919])
    cams = np.empty((6, 1), dtype=object)
    for c in range(1, 7):
        cam_dir = osp.join(sysu_dir, f"cam{c}")
        pids = [int(p) for p in os.listdir(cam_dir) if p.isdigit()] if osp.isdir(cam_dir) else []
        n_p = max(pids, default=0)
        cells = np.empty((n_p, 1), dtype=object)
        for p in range(1, n_p + 1):
            d = osp.join(cam_dir, f"{p:04d}")
            if osp.isdir(d):
                n_img = len(os.listdir(d))
                cells[p - 1, 0] = np.stack([rng.permutation(n_img) + 1 for _ in range(num_trials)]).astype(np.float64)
            else:
                cells[p - 1, 0] = np.zeros((0, 0))
        cams[c - 1, 0] = cells
    savemat(out_path, {"rand_perm_cam": cams})
    return out_path


def make_regdb(
    root: str,
    num_ids: int | None = None,
    seed: int = 0,
    preset: str = "demo",
    images_per_id: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_stray: int | None = None,
    num_trials: int = 10,
    overwrite: bool = False,
    style: str | None = None,
) -> str:
    """Write a synthetic RegDB tree to ``<root>/RegDB`` and return that path.

    Each identity has ``images_per_id`` co-registered visible/thermal pairs (the same pose in both, as RegDB's two
    aligned cameras). For each trial t in 1..``num_trials`` the identities are split in half at random (seeded by
    ``seed`` and t): ``idx/train_{visible,thermal}_t.txt`` list the train half with labels 0..n-1 in ascending id
    order, ``idx/test_*_t.txt`` the other half with labels restarting at 0 (``docs/protocols.md``, "RegDB"). ``preset``,
    ``overwrite`` and ``style`` work as in :func:`make_sysu`.
    """
    cfg = _resolve(
        REGDB_PRESETS,
        preset,
        dict(num_ids=num_ids, images_per_id=images_per_id, height=height, width=width, num_stray=num_stray,
             style=style),
    )
    style = cfg.pop("style", "classic")
    n, k, H, W, n_stray = cfg["num_ids"], cfg["images_per_id"], cfg["height"], cfg["width"], cfg["num_stray"]
    if n < 4 or k < 1:
        raise ValueError(f"make_regdb: num_ids >= 4 and images_per_id >= 1 expected, got {n}, {k}")
    base = osp.join(osp.abspath(root), "RegDB")
    kit = style_kit(style)
    args = {"layout": "regdb", "seed": seed, "num_trials": num_trials, **cfg,
            **({} if style == "classic" else {"style": style})}
    if _prepare(base, args, overwrite):
        return base
    rng = np.random.default_rng([seed, 412])
    people = kit.people(n + n_stray, rng)
    files: dict[int, tuple[list[str], list[str]]] = {}
    counter = 0
    for pid in range(1, n + n_stray + 1):
        person = people[pid - 1]
        sex = "female" if person.female else "male"
        vis, thr = [], []
        for j in range(1, k + 1):
            counter += 1
            pose = kit.pose(rng)
            view = "front" if rng.random() < 0.5 else "back"
            stem = f"{sex}_{view}_{{}}_{counter:05d}_{j}.bmp"
            rel_v = f"Visible/{pid}/" + stem.format("v")
            rel_t = f"Thermal/{pid}/" + stem.format("t")
            _save(kit.render(person, kit.regdb_cameras[0], pose, H, W), osp.join(base, rel_v))
            if pid <= n:  # strays are visible-only and listed nowhere
                _save(kit.render(person, kit.regdb_cameras[1], pose, H, W), osp.join(base, rel_t))
            vis.append(rel_v)
            thr.append(rel_t)
        files[pid] = (vis, thr)
    os.makedirs(osp.join(base, "Thermal"), exist_ok=True)
    idx = osp.join(base, "idx")
    os.makedirs(idx, exist_ok=True)
    for t in range(1, num_trials + 1):
        perm = np.random.default_rng([seed, t]).permutation(np.arange(1, n + 1))
        half = n // 2
        for split, ids in (("train", sorted(perm[:half].tolist())), ("test", sorted(perm[half:].tolist()))):
            for m, modality in enumerate(("visible", "thermal")):
                with open(osp.join(idx, f"{split}_{modality}_{t}.txt"), "w") as f:
                    for label, pid in enumerate(ids):
                        for rel in files[pid][m]:
                            f.write(f"{rel} {label}\n")
    with open(osp.join(base, MARKER), "w") as f:
        json.dump(args, f)
    return base


# ----------------------------------------------------------------------------------------------- LLCM

#: nine low-light cameras, each with a visible and a near-infrared sensor filming the same scene
LLCM_CAMERAS: tuple[tuple[Camera, Camera], ...] = tuple(
    (
        Camera(False, (0.30 + 0.04 * (k % 3), 0.32, 0.40 - 0.03 * (k % 4)), (0.22, 0.22, 0.26), 0.74 + 0.02 * (k % 5),
               float(k % 4) * 2.0, k % 3 == 2, 0.42 + 0.05 * (k % 5), (0.92, 0.97, 1.10), 0.80 + 0.03 * (k % 4),
               -0.01 * (k % 3), 1.0 if k % 2 else 0.875),
        Camera(True, (0.18 + 0.02 * (k % 4), 0.2, 0.2), (0.12, 0.12, 0.12), 0.74 + 0.02 * (k % 5),
               float(k % 4) * 2.0, False, 1.0, (1.0, 1.0, 1.0), 0.80 + 0.03 * (k % 4), -0.01 * (k % 3),
               1.0 if k % 2 else 0.875),
    )
    for k in range(1, 10)
)
LLCM_NIR_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)  # NIR cam3 holds no images in the release (its folder is empty)
LLCM_PRESETS: dict[str, dict] = {
    # tests: 8 train + 8 test ids, 1-2 images per (id, camera, modality), 32x16
    "tiny": dict(num_train=8, num_test=8, max_images=2, height=32, width=16),
    # demo: 64 train + 32 test ids at 128x64
    "demo": dict(num_train=64, num_test=32, max_images=3, height=128, width=64),
}


def make_llcm(
    root: str,
    seed: int = 0,
    preset: str = "demo",
    num_train: int | None = None,
    num_test: int | None = None,
    max_images: int | None = None,
    height: int | None = None,
    width: int | None = None,
    overwrite: bool = False,
    num_ids: int | None = None,
    style: str = "classic",
) -> str:
    """Write a synthetic LLCM tree in the real layout to ``<root>/LLCM`` and return that path.

    Layout (``docs/protocols.md``, "LLCM"): ``vis/<pid:04d>/`` and ``nir/<pid:04d>/`` hold every image, named
    ``<pid:04d>_c<cam:02d>_s<6 digits>_f<frame>_<vis|nir>.jpg`` with *unpadded* frame numbers (so string order differs
    from numeric order); ``idx/train_{vis,nir}.txt`` list the training images (``<path> <label>``, labels 0..n-1 in
    ascending id order, the same in both files); ``idx/test_{vis,nir}.txt`` the test images (not read by vdreid);
    ``idx/test_id.txt`` the test ids on one line, in *shuffled* order; ``test_vis/cam1..cam9/<pid:04d>/`` and
    ``test_nir/cam1..cam9/<pid:04d>/`` byte copies of the test images by camera. ``test_nir/cam3/`` exists and is
    empty, as reported for the release.

    Camera coverage: every identity appears in a random subset of the cameras of each modality, so ids are missing
    from some cameras; the first test id (in ascending order) is seen by one camera only, in both modalities, so
    every one of its positives is removed by the same-camera rule; the second has no near-infrared images at all.
    ``preset`` (``'tiny'`` for tests, ``'demo'``), ``seed`` and ``overwrite`` work as in :func:`make_sysu`;
    ``num_ids`` (when given) sets the identities of both splits, a third of them for testing. Only the ``'classic'``
    rendering style has low-light LLCM cameras.
    """
    if style != "classic":
        raise ValueError(f"make_llcm: style {style!r} is not available for the LLCM layout; use style='classic'")
    if num_ids is not None:
        num_test = num_test if num_test is not None else max(3, num_ids // 3)
        num_train = num_train if num_train is not None else num_ids - num_test
    cfg = _resolve(LLCM_PRESETS, preset, dict(num_train=num_train, num_test=num_test, max_images=max_images,
                                              height=height, width=width))
    n_tr, n_te, kmax, H, W = cfg["num_train"], cfg["num_test"], cfg["max_images"], cfg["height"], cfg["width"]
    if n_tr < 2 or n_te < 3 or kmax < 1 or H < 8 or W < 4:
        raise ValueError(f"make_llcm: num_train >= 2, num_test >= 3, max_images >= 1 and size >= 8x4 expected, got "
                         f"{n_tr}, {n_te}, {kmax}, {H}x{W}")
    base = osp.join(osp.abspath(root), "LLCM")
    args = {"layout": "llcm", "seed": seed, **cfg}
    if _prepare(base, args, overwrite):
        return base
    rng = np.random.default_rng([seed, 1064])
    total = n_tr + n_te
    pids = np.sort(rng.choice(np.arange(1, int(total * 1.5) + 3), size=total, replace=False))
    perm = rng.permutation(total)
    test_ids = sorted(int(pids[i]) for i in perm[:n_te])
    train_ids = sorted(int(pids[i]) for i in perm[n_te:])
    people = make_identities(total, rng)
    person_of = {int(pids[i]): people[j] for j, i in enumerate(perm)}

    def cams_for(pid: int) -> dict[str, list[int]]:
        if pid == test_ids[0]:  # one camera in both modalities: all its positives are removed by the LLCM rule
            c = int(rng.choice(LLCM_NIR_CAMS))
            return {"vis": [c], "nir": [c]}
        vis = sorted(int(c) for c in rng.choice(np.arange(1, 10), size=int(rng.integers(1, 6)), replace=False))
        if pid == test_ids[1]:  # visible only
            return {"vis": vis, "nir": []}
        nir = sorted(int(c) for c in rng.choice(LLCM_NIR_CAMS, size=int(rng.integers(1, 5)), replace=False))
        return {"vis": vis, "nir": nir}

    files: dict[str, dict[int, list[tuple[int, str]]]] = {"vis": {}, "nir": {}}  # modality -> pid -> [(cam, rel)]
    for pid in sorted(person_of):
        for modality, cams in cams_for(pid).items():
            used_frames: set[int] = set()
            for c in cams:
                cam = LLCM_CAMERAS[c - 1][modality == "nir"]
                h, w = max(8, round(H * cam.size)), max(4, round(W * cam.size))
                for _ in range(int(rng.integers(1, kmax + 1))):
                    frame = int(rng.integers(1, 20000))
                    while frame in used_frames:
                        frame += 1
                    used_frames.add(frame)
                    name = f"{pid:04d}_c{c:02d}_s{int(rng.integers(100000, 999999)):06d}_f{frame}_{modality}.jpg"
                    rel = f"{modality}/{pid:04d}/{name}"
                    _save(render(person_of[pid], cam, random_pose(rng), h, w), osp.join(base, rel))
                    files[modality].setdefault(pid, []).append((c, rel))

    idx = osp.join(base, "idx")
    os.makedirs(idx, exist_ok=True)
    for split, ids in (("train", train_ids), ("test", test_ids)):
        for modality in ("vis", "nir"):
            with open(osp.join(idx, f"{split}_{modality}.txt"), "w") as f:
                for label, pid in enumerate(ids):
                    for _, rel in files[modality].get(pid, []):
                        f.write(f"{rel} {label}\n")
    with open(osp.join(idx, "test_id.txt"), "w") as f:
        f.write(",".join(str(p) for p in rng.permutation(test_ids).tolist()) + "\n")
    for modality, top in (("vis", "test_vis"), ("nir", "test_nir")):
        for c in range(1, 10):
            os.makedirs(osp.join(base, top, f"cam{c}"), exist_ok=True)
        for pid in test_ids:
            for c, rel in files[modality].get(pid, []):
                dst = osp.join(base, top, f"cam{c}", f"{pid:04d}", osp.basename(rel))
                os.makedirs(osp.dirname(dst), exist_ok=True)
                shutil.copyfile(osp.join(base, rel), dst)
    with open(osp.join(base, MARKER), "w") as f:
        json.dump(args, f)
    return base
