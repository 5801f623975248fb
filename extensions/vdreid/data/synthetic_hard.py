"""Harder styles of the synthetic visible-infrared generator: ``style='hard'`` and its held-out sibling ``'shift'``.

The ``classic`` style of :mod:`vdreid.data.synthetic` draws identities from a small grid of discrete attributes and
renders every image with nearly the same pose, fixed infrared levels and a fixed scene per camera: a CNN can learn
those levels and framings instead of the person. These styles remove such shortcuts:

* **Identity** lives in continuous body shape (height, build, shoulder/hip ratio, leg length, head size), garment
  cut (sleeve length, pants / shorts / skirt / long skirt, coat), a texture pattern with an identity-specific period,
  and accessories (handbag, backpack, messenger bag with a diagonal strap, cap, beanie, scarf). In infrared a
  garment shows only its own emissivity level and the pattern's emissivity contrast, drawn independently of the
  visible colours, so colour never predicts the infrared appearance.
* **Per image**: viewpoint (front, back, left or right side: the torso narrows, a backpack shows as a hump or a
  panel, a face or the back of the head), walking stride and arm swing, lean, scale and position, a clipped frame,
  occluders (a low box, a pole, a passer-by who is warm in infrared), a cluttered background, and the sensor:
  infrared automatic gain / offset / gamma, optics blur, noise and column noise; visible white balance, gain,
  gamma, blur and noise.
* **Cameras** keep their own scene (palette, floor line, wall structure, clutter density, background temperature)
  and sensor ranges, as real surveillance cameras do.

``shift`` is the same physics with other choices: other scenes and sensor responses, another viewpoint and occlusion
mix, and a pattern vocabulary that swaps one pattern (``split``) for one the ``hard`` style never draws
(``diagonal``). It exists to check whether a recipe tuned on ``hard`` transfers to a generator it was not tuned on
(``benchmarks/transfer.py``); tune nothing on it.

Everything is drawn from the ``numpy.random.Generator`` handed in, or from ``pose.noise_seed`` inside :func:`render`,
so a tree is a pure function of the generator's arguments. Images are uint8 (H, W, 3); infrared images have three
equal channels.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from vdreid.data.synthetic_draw import box_blur

# ----------------------------------------------------------------------------------------------- vocabularies

SLEEVES = ("none", "short", "long")
LOWERS = ("pants", "shorts", "skirt", "long_skirt")
CARRIES = ("none", "handbag", "backpack", "messenger")
HATS = ("none", "cap", "beanie")
VIEWS = ("front", "back", "left", "right")
OCCLUDERS = ("none", "box", "pole", "passerby")


@dataclass(frozen=True)
class Camera:
    """A camera: its scene and its sensor's per-image ranges (each ``(lo, hi)`` is drawn uniformly per image)."""

    infrared: bool
    bg: tuple[float, float, float]  # wall colour (visible) or temperature (infrared: first entry)
    bg2: tuple[float, float, float]  # floor colour / temperature
    floor: float  # floor line, fraction of the height
    wall_freq: float  # wall panels per frame width (0: none)
    clutter: int  # most background objects per image
    scale: float  # person size
    y_shift: float  # feet position, fraction of the height
    size: float  # image size factor relative to the preset's base size
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # visible colour cast
    gain: tuple[float, float] = (0.8, 1.2)
    offset: tuple[float, float] = (-0.06, 0.06)
    gamma: tuple[float, float] = (0.8, 1.25)
    blur: tuple[int, ...] = (1, 3)  # box-blur widths at a 128-pixel image height (scaled with the height)
    noise: tuple[float, float] = (0.01, 0.04)


@dataclass(frozen=True)
class Style:
    """Distributions of one style: pattern vocabulary, viewpoint and occluder mix, framing, cameras."""

    name: str
    patterns: tuple[str, ...]
    view_p: tuple[float, float, float, float]  # front, back, left, right
    occluder_p: tuple[float, float, float, float]  # none, box, pole, passer-by
    scale: tuple[float, float]
    dx: tuple[float, float]
    dy: tuple[float, float]
    lean: tuple[float, float]
    period: tuple[float, float]  # pattern period, fraction of the body height
    sysu_cameras: tuple[Camera, ...]
    regdb_cameras: tuple[Camera, ...]


def _vis(bg, bg2, floor, wall, clutter, scale, y_shift, size, cast, gain=(0.75, 1.25), blur=(1, 3)) -> Camera:
    return Camera(False, bg, bg2, floor, wall, clutter, scale, y_shift, size, cast, gain=gain, offset=(0.0, 0.0),
                  gamma=(0.8, 1.25), blur=blur, noise=(0.01, 0.04))


def _ir(t, t2, floor, wall, clutter, scale, y_shift, size, blur=(1, 3, 5), noise=(0.015, 0.05), offset=0.08,
        gamma=(0.8, 1.25)) -> Camera:
    return Camera(True, (t, t, t), (t2, t2, t2), floor, wall, clutter, scale, y_shift, size, gain=(0.8, 1.25),
                  offset=(-offset, offset), gamma=gamma, blur=blur, noise=noise)


HARD = Style(
    name="hard",
    patterns=("solid", "hstripes", "vstripes", "checker", "dots", "band", "split"),
    view_p=(0.35, 0.35, 0.15, 0.15),
    occluder_p=(0.7, 0.1, 0.1, 0.1),
    scale=(0.9, 1.06),
    dx=(-0.06, 0.06),
    dy=(-0.02, 0.04),
    lean=(-0.04, 0.04),
    period=(0.05, 0.12),
    sysu_cameras=(
        _vis((0.78, 0.74, 0.66), (0.55, 0.45, 0.35), 0.80, 5.0, 3, 0.95, 0.00, 1.0, (1.05, 1.0, 0.92)),
        _vis((0.60, 0.66, 0.72), (0.35, 0.38, 0.42), 0.76, 0.0, 4, 0.88, -0.02, 1.0, (0.94, 1.0, 1.06)),
        _ir(0.22, 0.15, 0.76, 0.0, 3, 0.88, -0.02, 1.0),
        _vis((0.62, 0.62, 0.60), (0.42, 0.42, 0.44), 0.70, 9.0, 5, 0.76, -0.04, 0.75, (1.0, 1.0, 1.0)),
        _vis((0.35, 0.58, 0.30), (0.50, 0.46, 0.40), 0.82, 0.0, 6, 0.82, -0.03, 0.75, (1.0, 1.04, 0.95)),
        _ir(0.32, 0.25, 0.72, 3.0, 5, 0.84, -0.04, 0.875),
    ),
    regdb_cameras=(
        _vis((0.55, 0.55, 0.50), (0.40, 0.40, 0.38), 0.85, 0.0, 4, 0.92, 0.0, 1.0, (1.0, 1.0, 1.0)),
        _ir(0.25, 0.18, 0.85, 0.0, 4, 0.92, 0.0, 1.0),
    ),
)

SHIFT = Style(
    name="shift",
    patterns=("solid", "hstripes", "vstripes", "checker", "dots", "band", "diagonal"),
    view_p=(0.3, 0.3, 0.2, 0.2),
    occluder_p=(0.65, 0.1, 0.05, 0.2),
    scale=(0.88, 1.04),
    dx=(-0.07, 0.07),
    dy=(-0.01, 0.05),
    lean=(-0.05, 0.05),
    period=(0.06, 0.13),
    sysu_cameras=(
        _vis((0.85, 0.82, 0.78), (0.30, 0.28, 0.26), 0.74, 3.0, 4, 0.92, 0.01, 1.0, (1.08, 1.0, 0.88)),
        _vis((0.45, 0.50, 0.58), (0.60, 0.58, 0.52), 0.80, 7.0, 5, 0.86, -0.01, 1.0, (0.90, 0.98, 1.10)),
        _ir(0.30, 0.22, 0.78, 4.0, 4, 0.86, -0.01, 1.0, blur=(3, 5), noise=(0.02, 0.06), offset=0.1, gamma=(0.75, 1.3)),
        _vis((0.70, 0.60, 0.50), (0.38, 0.36, 0.30), 0.72, 0.0, 6, 0.72, -0.05, 0.75, (1.04, 0.96, 0.96)),
        _vis((0.50, 0.52, 0.55), (0.28, 0.30, 0.26), 0.78, 12.0, 6, 0.80, -0.02, 0.75, (0.96, 1.0, 1.04)),
        _ir(0.38, 0.30, 0.70, 0.0, 6, 0.82, -0.03, 0.875, blur=(3, 5), noise=(0.02, 0.06), offset=0.1),
    ),
    regdb_cameras=(
        _vis((0.62, 0.58, 0.54), (0.35, 0.33, 0.30), 0.82, 4.0, 5, 0.90, 0.0, 1.0, (1.05, 1.0, 0.95)),
        _ir(0.32, 0.24, 0.82, 4.0, 5, 0.90, 0.0, 1.0, blur=(3, 5), noise=(0.02, 0.06), offset=0.1),
    ),
)

STYLES: dict[str, Style] = {"hard": HARD, "shift": SHIFT}


def get_style(name: str) -> Style:
    if name not in STYLES:
        raise ValueError(f"unknown synthetic style {name!r}: expected 'classic' or one of {sorted(STYLES)}")
    return STYLES[name]


# ----------------------------------------------------------------------------------------------- identities

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Identity:
    """One person of the hard styles. Shape, cut, texture and accessories survive infrared; colours do not."""

    height: float  # fraction of the frame's usable height
    build: float  # hip width / height
    shoulder: float  # shoulder width / hip width
    leg: float  # hip-to-feet / height
    head: float  # head radius / height
    sleeve: int
    lower: int
    coat: bool
    pattern: str
    period: float  # pattern period / height
    carry: int
    carry_side: int  # -1 or 1: the side a handbag or messenger bag hangs on (mirrored in back views)
    hat: int
    scarf: bool
    # infrared levels (temperature-like, 0..1), independent of the colours below
    t_upper: float
    t_pattern: float  # emissivity contrast of the pattern (signed)
    t_lower: float
    t_hat: float
    t_scarf: float
    t_bag: float
    t_hair: float
    # visible colours
    upper_rgb: RGB
    pattern_rgb: RGB
    lower_rgb: RGB
    skin_rgb: RGB
    hair_rgb: RGB
    hat_rgb: RGB
    scarf_rgb: RGB
    bag_rgb: RGB
    shoe_rgb: RGB
    female: bool


_SKIN = np.array([[0.96, 0.80, 0.66], [0.85, 0.64, 0.48], [0.62, 0.44, 0.30], [0.42, 0.28, 0.18]], dtype=np.float64)


def _colour(rng: np.random.Generator, s: tuple[float, float] = (0.15, 0.95), v: tuple[float, float] = (0.12, 0.95),
            ) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(*s)), float(rng.uniform(*v)))
    return (float(r), float(g), float(b))


def _contrasting(rng: np.random.Generator, base: RGB) -> RGB:
    """A second garment colour that differs from ``base`` in value or hue enough to show."""
    h, s, v = colorsys.rgb_to_hsv(*base)
    v2 = float(np.clip(v + rng.choice((-1, 1)) * rng.uniform(0.3, 0.6), 0.05, 0.98))
    h2 = (h + rng.uniform(0.15, 0.85)) % 1.0 if rng.random() < 0.6 else h
    r, g, b = colorsys.hsv_to_rgb(h2, float(rng.uniform(0.1, 0.9)), v2)
    return (float(r), float(g), float(b))


#: discrete attributes that survive the infrared rendering, with their probabilities (pattern: the style's, uniform)
_DISCRETE_P = {
    "sleeve": (0.2, 0.4, 0.4),
    "lower": (0.4, 0.2, 0.2, 0.2),
    "coat": (0.8, 0.2),
    "carry": (0.35, 0.2, 0.25, 0.2),
    "hat": (0.6, 0.2, 0.2),
    "scarf": (0.8, 0.2),
    "coarse": (0.5, 0.5),  # pattern period: fine or coarse half of the style's range
}


def _discrete_codes(n: int, rng: np.random.Generator, style: Style) -> np.ndarray:
    """(n, 8) codes (sleeve, lower, coat, carry, hat, scarf, coarse, pattern) whose rows differ pairwise in at least
    two positions, as the classic style guarantees: greedy acceptance of random draws (distance 1, then any, only
    when the space runs out)."""
    sizes = [len(p) for p in _DISCRETE_P.values()] + [len(style.patterns)]
    probs = [*_DISCRETE_P.values(), tuple([1.0 / len(style.patterns)] * len(style.patterns))]
    chosen = np.empty((0, len(sizes)), np.int64)
    for min_dist, tries in ((2, 60 * n + 200), (1, 20 * n + 50), (0, n)):
        for _ in range(tries):
            if len(chosen) == n:
                return chosen
            row = np.array([rng.choice(k, p=p) for k, p in zip(sizes, probs)], np.int64)
            if row[-2] and style.patterns[row[-1]] == "solid":
                row[-2] = 0  # a solid garment has no period
            if not len(chosen) or int((chosen != row).sum(1).min()) >= min_dist:
                chosen = np.vstack([chosen, row])
    return chosen


def make_identities(n: int, rng: np.random.Generator, style: Style = HARD) -> list[Identity]:
    """``n`` people drawn from the style's distributions. Their discrete infrared-surviving attributes (sleeves,
    lower garment, coat, bag, hat, scarf, pattern and its coarseness) differ pairwise in at least two positions while
    the space allows (:func:`_discrete_codes`); shape, pattern period and infrared levels are continuous on top."""
    people = []
    lo, hi = style.period
    for sleeve, lower, coat, carry, hat, scarf, coarse, pat in _discrete_codes(n, rng, style):
        pattern = style.patterns[int(pat)]
        contrast = 0.0 if pattern == "solid" else float(rng.choice((-1, 1)) * rng.uniform(0.1, 0.25))
        skin = np.clip(_SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.92, 1.08), 0, 1)
        hv = float(rng.uniform(0.05, 0.45))
        mid = (lo + hi) / 2
        people.append(
            Identity(
                height=float(rng.uniform(0.80, 1.0)),
                build=float(rng.uniform(0.17, 0.33)),
                shoulder=float(rng.uniform(0.95, 1.3)),
                leg=float(rng.uniform(0.42, 0.52)),
                head=float(rng.uniform(0.065, 0.085)),
                sleeve=int(sleeve),
                lower=int(lower),
                coat=bool(coat),
                pattern=pattern,
                period=float(rng.uniform(mid, hi) if coarse else rng.uniform(lo, mid)),
                carry=int(carry),
                carry_side=int(rng.choice((-1, 1))),
                hat=int(hat),
                scarf=bool(scarf),
                t_upper=float(rng.uniform(0.35, 0.72)),
                t_pattern=contrast,
                t_lower=float(rng.uniform(0.30, 0.70)),
                t_hat=float(rng.uniform(0.20, 0.50)),
                t_scarf=float(rng.uniform(0.30, 0.60)),
                t_bag=float(rng.uniform(0.05, 0.35)),
                t_hair=float(rng.uniform(0.45, 0.62)),
                upper_rgb=(up := _colour(rng)),
                pattern_rgb=_contrasting(rng, up),
                lower_rgb=_colour(rng),
                skin_rgb=tuple(float(c) for c in skin),
                hair_rgb=(hv * 0.9, hv * 0.7, hv * 0.5),
                hat_rgb=_colour(rng),
                scarf_rgb=_colour(rng),
                bag_rgb=_colour(rng, s=(0.1, 0.7), v=(0.1, 0.7)),
                shoe_rgb=_colour(rng, s=(0.0, 0.4), v=(0.05, 0.5)),
                female=bool(rng.integers(2)),
            )
        )
    return people


# ----------------------------------------------------------------------------------------------- poses


@dataclass(frozen=True)
class Pose:
    """Per-image nuisance: viewpoint, framing, gait, occluder and the seed of the scene and sensor draws."""

    view: int  # index into VIEWS
    dx: float
    dy: float
    scale: float
    stride: float
    swing: float
    lean: float
    occluder: int  # index into OCCLUDERS
    occ_x: float  # occluder position (fraction of the width) ...
    occ_y: float  # ... and of the height
    occ_size: float
    noise_seed: int


def random_pose(rng: np.random.Generator, style: Style = HARD) -> Pose:
    return Pose(
        view=int(rng.choice(4, p=style.view_p)),
        dx=float(rng.uniform(*style.dx)),
        dy=float(rng.uniform(*style.dy)),
        scale=float(rng.uniform(*style.scale)),
        stride=float(rng.uniform(0.0, 0.12)),
        swing=float(rng.uniform(-1, 1)),
        lean=float(rng.uniform(*style.lean)),
        occluder=int(rng.choice(4, p=style.occluder_p)),
        occ_x=float(rng.uniform(0, 1)),
        occ_y=float(rng.uniform(0.6, 0.85)),
        occ_size=float(rng.uniform(0, 1)),
        noise_seed=int(rng.integers(2**31)),
    )


# ----------------------------------------------------------------------------------------------- rendering


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Pattern mask in body coordinates (u across, v down from the shoulders, both in body heights)."""
    if kind == "solid":
        return np.zeros(u.shape, bool)
    if kind == "hstripes":
        return np.floor(v / period) % 2 == 1
    if kind == "vstripes":
        return np.floor((u + 2.0) / period) % 2 == 1
    if kind == "checker":
        return (np.floor(v / period) + np.floor((u + 2.0) / period)) % 2 == 1
    if kind == "diagonal":
        return np.floor((u + v + 4.0) / period) % 2 == 1
    if kind == "dots":
        a = (u + 2.0) % period - period / 2
        b = v % period - period / 2
        return a * a + b * b <= (0.3 * period) ** 2
    if kind == "band":  # one wide chest band
        return np.abs(v - 0.1) <= period
    if kind == "split":  # two-tone garment: lower half in the second colour
        return v > 0.14
    raise ValueError(f"unknown pattern {kind!r}")


def _background(cam: Camera, H: int, W: int, rng: np.random.Generator) -> np.ndarray:
    """Scene of ``cam`` with per-image clutter: wall, floor, panels, random objects (warm ones in infrared)."""
    Y, X = np.mgrid[0:H, 0:W].astype(np.float32)
    yn, xn = Y / H, X / W
    bg = np.empty((H, W, 3), np.float32)
    bg[:] = np.asarray(cam.bg, np.float32) * rng.uniform(0.9, 1.1)
    floor_line = cam.floor + rng.uniform(-0.03, 0.03)
    floor = yn > floor_line
    bg[floor] = np.asarray(cam.bg2, np.float32) * rng.uniform(0.9, 1.1)
    bg *= (0.88 + 0.24 * (1 - yn))[..., None]
    if cam.wall_freq > 0:
        panels = (np.floor(xn * cam.wall_freq + rng.random()) % 2 == 0) & ~floor
        bg[panels] *= rng.uniform(0.75, 0.9)
    for _ in range(int(rng.integers(0, cam.clutter + 1))):
        w, h = rng.uniform(0.08, 0.45) * W, rng.uniform(0.08, 0.5) * H
        x0, y0 = rng.uniform(-0.2, 1.0) * W, rng.uniform(0.0, floor_line + 0.1) * H
        box = (X >= x0) & (X < x0 + w) & (Y >= y0) & (Y < y0 + h)
        if cam.infrared:
            bg[box] = rng.uniform(0.05, 0.5) if rng.random() < 0.85 else rng.uniform(0.65, 0.95)
        else:
            bg[box] = np.asarray(cam.bg, np.float32) * rng.uniform(0.5, 1.3, 3).astype(np.float32)
    return bg


def render(person: Identity, cam: Camera, pose: Pose, height: int, width: int) -> np.ndarray:
    """Render one image as uint8 (H, W, 3); infrared images have three equal channels."""
    H, W = height, width
    nrng = np.random.default_rng(pose.noise_seed)
    img = _background(cam, H, W, nrng)
    Y, X = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    view = VIEWS[pose.view]
    side = view in ("left", "right")
    facing = {"front": 0, "back": 0, "left": -1, "right": 1}[view]
    squash = 0.62 if side else 1.0
    mirror = -1 if view == "back" else 1  # a bag on the person's right hangs on the image's other side from behind

    # --- geometry (pixels)
    hp = person.height * cam.scale * pose.scale * H * 0.94
    feet = H * (0.985 + cam.y_shift + pose.dy)
    cx = W * (0.5 + pose.dx)
    top = feet - hp
    xs = X - cx - pose.lean * (feet - Y)  # leaning body: shear about the feet
    r_head = person.head * hp
    head_cy = top + r_head
    shoulder = top + 2.25 * r_head
    hip = feet - person.leg * hp
    knee = hip + 0.5 * (feet - hip)
    hw_hip = person.build * hp / 2 * squash
    hw_sh = hw_hip * (person.shoulder if not side else 1.05)
    t = np.clip((Y - shoulder) / max(hip - shoulder, 1e-3), 0, 1)
    half = hw_sh + (hw_hip - hw_sh) * t
    u = xs / hp / squash
    v = (Y - shoulder) / hp

    head_x = xs - facing * 0.12 * r_head
    head = head_x**2 + (Y - head_cy) ** 2 * 1.1 <= r_head**2
    neck = (np.abs(xs) <= 0.45 * r_head) & (Y >= head_cy) & (Y < shoulder + 1)
    torso = (np.abs(xs) <= half) & (Y >= shoulder) & (Y <= hip)
    arm_w = 0.055 * hp
    arm_len = 0.37 * hp
    if side:
        arm_c = facing * pose.swing * 0.15 * (Y - shoulder)  # the near arm swings across the torso
        arms = (np.abs(xs - arm_c) <= arm_w * 0.6) & (Y >= shoulder + 0.01 * hp) & (Y <= shoulder + arm_len)
    else:
        ext = arm_len * (1 - 0.12 * abs(pose.swing))
        out = np.abs(xs) - half
        arms = (out > 0) & (out <= arm_w) & (Y >= shoulder + 0.01 * hp) & (Y <= shoulder + ext)
    # hands (the last 14 % of the arm) stay skin under long sleeves
    sleeve_end = {"none": shoulder, "short": shoulder + 0.4 * arm_len, "long": shoulder + 0.86 * arm_len}
    sleeves = arms & (Y <= sleeve_end[SLEEVES[person.sleeve]])
    skin_arms = arms & ~sleeves

    leg_w = 0.085 * hp * (1.1 if side else 1.0)
    frac = np.clip((Y - hip) / max(feet - hip, 1e-3), 0, 1)
    spread = pose.stride * hp * frac * (1.0 if side else 0.3)
    sep = 0.06 * hp * squash * (0.3 if side else 1.0)
    in_leg = (Y > hip) & (Y <= feet)
    legs = ((np.abs(xs + sep + spread) <= leg_w / 2) | (np.abs(xs - sep - spread) <= leg_w / 2)) & in_leg
    shoes = legs & (Y > feet - 0.035 * hp)
    lower = LOWERS[person.lower]
    if lower == "pants":
        garment_lo = legs & ~shoes
    elif lower == "shorts":
        garment_lo = legs & (Y <= hip + 0.6 * (knee - hip))
    else:
        hem = knee + 0.02 * hp if lower == "skirt" else feet - 0.07 * hp
        flare = hw_hip * (1.0 + 0.55 * (Y - hip) / max(hem - hip, 1e-3))
        garment_lo = (np.abs(xs) <= flare) & (Y > hip) & (Y <= hem)
    upper = torso | sleeves
    if person.coat:
        upper = upper | ((np.abs(xs) <= hw_hip * 1.12) & (Y > hip) & (Y <= hip + 0.6 * (knee - hip)))
    pat = upper & _pattern(person.pattern, u, v, person.period)

    if view == "back":
        hair = head & (Y < head_cy + 0.55 * r_head)
    elif side:
        hair = head & ((Y < head_cy - 0.25 * r_head) | (head_x * facing < -0.25 * r_head))
    else:
        hair = head & (Y < head_cy - 0.35 * r_head)
    hat = np.zeros_like(head)
    if HATS[person.hat] == "cap":
        hat = ((head_x**2 + (Y - head_cy) ** 2 * 1.1) <= (r_head * 1.1) ** 2) & (Y < head_cy - 0.15 * r_head)
        brim_y = np.abs(Y - (head_cy - 0.15 * r_head)) <= 0.018 * hp
        if side:
            hat |= brim_y & (head_x * facing >= 0) & (head_x * facing <= 1.9 * r_head)
        elif view == "front":
            hat |= brim_y & (np.abs(head_x) <= 1.3 * r_head)
    elif HATS[person.hat] == "beanie":
        hat = ((head_x**2 + (Y - head_cy) ** 2) <= (r_head * 1.15) ** 2) & (Y < head_cy - 0.05 * r_head)
    scarf = np.zeros_like(head)
    if person.scarf:
        scarf = np.abs(xs) <= 0.75 * r_head + 0.3 * hw_sh
        scarf &= (Y >= head_cy + 0.6 * r_head) & (Y <= shoulder + 0.03 * hp)

    bag = np.zeros_like(head)
    straps = np.zeros_like(head)
    carry = CARRIES[person.carry]
    s = person.carry_side * mirror
    if carry == "handbag":
        if side:
            bag = (np.abs(xs - facing * 0.05 * hp) <= 0.05 * hp) & (Y >= hip - 0.03 * hp) & (Y <= hip + 0.1 * hp)
        else:
            bx = cx + s * (hw_hip + arm_w + 0.05 * hp)
            bag = (np.abs(xs - (bx - cx)) <= 0.06 * hp) & (Y >= hip - 0.05 * hp) & (Y <= hip + 0.1 * hp)
    elif carry == "backpack":
        top_b, bot_b = shoulder + 0.01 * hp, shoulder + 0.26 * hp
        if view == "back":
            bag = (np.abs(xs) <= 0.85 * hw_sh) & (Y >= top_b) & (Y <= bot_b)
        elif side:
            edge = -facing * xs
            bag = (edge >= half * 0.6) & (edge <= half + 0.11 * hp) & (Y >= top_b) & (Y <= bot_b)
        else:
            straps = torso & (np.abs(np.abs(xs) - 0.55 * half) <= 0.02 * hp) & (Y <= bot_b)
    elif carry == "messenger":
        k = (hip - shoulder) / max(2 * hw_sh, 1e-3)
        line = (xs * s + hw_sh) * k - (Y - shoulder)  # strap from one shoulder down to the other hip
        straps = torso & (np.abs(line) <= 0.025 * hp * max(k, 1.0))
        bx = cx - s * (hw_hip + 0.02 * hp) if not side else cx - facing * 0.02 * hp
        bag = (np.abs(xs - (bx - cx)) <= 0.07 * hp) & (Y >= hip - 0.06 * hp) & (Y <= hip + 0.06 * hp)

    # --- occluders and passers-by (drawn after the person)
    occ = np.zeros_like(head)
    occ_kind = OCCLUDERS[pose.occluder]
    if occ_kind == "box":
        w = (0.35 + 0.5 * pose.occ_size) * W
        x0 = (pose.occ_x * 1.2 - 0.2) * W
        occ = (X >= x0) & (X <= x0 + w) & (Y >= pose.occ_y * H)
    elif occ_kind == "pole":
        w = (0.06 + 0.12 * pose.occ_size) * W
        x0 = (0.15 + 0.7 * pose.occ_x) * W
        occ = np.abs(X - x0) <= w / 2
    elif occ_kind == "passerby":
        side_x = (-0.05 if pose.occ_x < 0.5 else 1.05) * W
        r = (0.08 + 0.06 * pose.occ_size) * H
        bh = (0.6 + 0.3 * pose.occ_size) * H
        occ = ((X - side_x) ** 2 + (Y - (H - bh)) ** 2 <= (r * 0.5) ** 2) | (
            (np.abs(X - side_x) <= r * 0.9) & (Y >= H - bh + r * 0.45)
        )

    # --- paint
    if cam.infrared:
        warm = nrng.uniform(-0.04, 0.04)  # the same person is a little warmer or cooler from day to day
        skin_t = nrng.uniform(0.85, 0.97)
        img = img[..., :1].copy()
        img[legs & ~shoes] = skin_t
        img[garment_lo] = person.t_lower + warm
        img[shoes] = 0.35
        img[neck | head] = skin_t
        img[hair] = person.t_hair
        img[upper] = person.t_upper + warm
        img[pat] = person.t_upper + person.t_pattern + warm
        img[skin_arms] = skin_t
        img[hat] = person.t_hat
        img[scarf] = person.t_scarf
        img[straps] = person.t_bag + 0.1
        img[bag] = person.t_bag
        if occ_kind == "passerby":
            img[occ] = nrng.uniform(0.6, 0.9)
        elif occ.any():
            img[occ] = nrng.uniform(0.05, 0.55)
        k = int(nrng.choice(cam.blur))
        img = box_blur(img, max(1, round(k * H / 128)))
        img = (img - 0.5) * nrng.uniform(*cam.gain) + 0.5 + nrng.uniform(*cam.offset)
        img = np.clip(img, 0, 1) ** nrng.uniform(*cam.gamma)
        img = img + nrng.normal(0, nrng.uniform(*cam.noise), img.shape).astype(np.float32)
        img = img + nrng.normal(0, 0.015, (1, W, 1)).astype(np.float32)  # column (fixed-pattern) noise
        img = np.repeat(img, 3, axis=2)
    else:
        img[legs & ~shoes] = person.skin_rgb
        img[garment_lo] = person.lower_rgb
        img[shoes] = person.shoe_rgb
        img[neck | head] = person.skin_rgb
        img[hair] = person.hair_rgb
        img[upper] = person.upper_rgb
        img[pat] = person.pattern_rgb
        img[skin_arms] = person.skin_rgb
        img[hat] = person.hat_rgb
        img[scarf] = person.scarf_rgb
        img[straps] = np.asarray(person.bag_rgb) * 0.6
        img[bag] = person.bag_rgb
        if occ.any():
            img[occ] = _colour(nrng, v=(0.1, 0.9))
        wb = nrng.uniform(0.88, 1.12, 3).astype(np.float32)
        img = img * np.asarray(cam.cast, np.float32) * wb * nrng.uniform(*cam.gain)
        img = np.clip(img, 0, 1) ** nrng.uniform(*cam.gamma)
        k = int(nrng.choice(cam.blur))
        img = box_blur(img, max(1, round(k * H / 128)))
        img = img + nrng.normal(0, nrng.uniform(*cam.noise), img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
