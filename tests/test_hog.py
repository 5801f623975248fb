"""HOG descriptor (vdreid.tools.hog) against a per-pixel restatement of its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from vdreid.tools.hog import hog, hog_features


def hog_reference(img: np.ndarray, orientations: int, cell: int, block: int, eps: float = 1e-5) -> np.ndarray:
    """Dalal-Triggs HOG written loop by loop from the definition (hard binning, L2-Hys blocks)."""
    if img.ndim == 3:
        img = 0.2125 * img[..., 0] + 0.7154 * img[..., 1] + 0.0721 * img[..., 2]
    h, w = img.shape
    cy, cx = h // cell, w // cell
    hist = np.zeros((cy, cx, orientations))
    for y in range(cy * cell):
        for x in range(cx * cell):
            gx = img[y, x + 1] - img[y, x - 1] if 0 < x < w - 1 else 0.0
            gy = img[y + 1, x] - img[y - 1, x] if 0 < y < h - 1 else 0.0
            angle = math.degrees(math.atan2(gy, gx)) % 180.0
            b = min(int(angle // (180.0 / orientations)), orientations - 1)
            hist[y // cell, x // cell, b] += math.hypot(gx, gy) / (cell * cell)
    out = []
    for by in range(cy - block + 1):
        for bx in range(cx - block + 1):
            v = np.concatenate([hist[by + i, bx + j] for i in range(block) for j in range(block)])
            v = v / math.sqrt(float(v @ v) + eps**2)
            v = np.minimum(v, 0.2)
            v = v / math.sqrt(float(v @ v) + eps**2)
            out.append(v)
    return np.concatenate(out)


@pytest.mark.parametrize("shape, cell, block, bins", [((24, 16), 4, 2, 9), ((19, 13, 3), 4, 2, 6), ((16, 16), 8, 1, 9),
                                                      ((30, 18), 5, 3, 4)])
def test_hog_matches_the_definition(shape, cell, block, bins):
    img = np.random.default_rng(sum(shape)).random(shape)
    np.testing.assert_allclose(hog(img, bins, cell, block), hog_reference(img, bins, cell, block), rtol=0, atol=1e-12)


def test_hog_properties():
    rng = np.random.default_rng(0)
    img = rng.random((32, 16))
    d = hog(img, 9, 4, 2)
    assert d.shape == ((8 - 1) * (4 - 1) * 2 * 2 * 9,)
    np.testing.assert_allclose(hog(1.0 - img, 9, 4, 2), d, atol=1e-12)  # unsigned orientation: polarity-free
    np.testing.assert_allclose(hog(img + 0.3, 9, 4, 2), d, atol=1e-12)  # gradients ignore a brightness offset
    flat = hog(np.full((16, 16), 0.5), 9, 4, 2)
    assert np.all(flat == 0)  # no gradient, no votes (eps keeps the normalisation finite)
    with pytest.raises(ValueError, match="fewer than 2x2 cells"):
        hog(img[:6], 9, 4, 2)
    with pytest.raises(ValueError, match="image"):
        hog(np.zeros((2, 3, 4, 5)))


def test_hog_features_reads_and_resizes(tmp_path):
    from PIL import Image

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (50, 30, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    f = hog_features(paths, height=32, width=16, cell=8)
    assert f.shape == (3, 3 * 1 * 36) and f.dtype == np.float32
    with Image.open(paths[1]) as im:
        a = np.asarray(im.convert("RGB").resize((16, 32), Image.BILINEAR), dtype=np.float64) / 255.0
    np.testing.assert_allclose(f[1], hog(a, 9, 8, 2), atol=1e-6)
