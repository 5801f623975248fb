"""Histogram of oriented gradients (Dalal & Triggs, CVPR 2005) in numpy: a hand-crafted anchor for learned features.

A learned cross-modal feature should beat a matcher that knows nothing about people. HOG with unsigned orientations
ignores colour and the sign of an edge, so it compares a visible and an infrared image of the same silhouette
fairly; ranked by cosine similarity it is the anchor ``benchmarks/transfer.py`` prints beside every trained model.
scikit-image's ``hog`` computes the same descriptor; it is not a dependency of vdreid, and the definition is short.

Definition used here (Dalal & Triggs's descriptor with hard orientation binning and L2-Hys blocks, the choices
scikit-image documents for a grayscale ``hog(..., block_norm='L2-Hys')``; not compared with scikit-image itself):

* luminance ``0.2125 R + 0.7154 G + 0.0721 B`` for colour input (an infrared image has three equal channels);
* gradients by the centred difference ``[-1, 0, 1]`` along each axis, zero on the first and last row / column;
* unsigned orientation ``atan2(gy, gx) mod 180`` degrees, ``orientations`` equal bins (hard assignment: bin
  ``floor(angle / (180 / orientations))``), each pixel voting its gradient magnitude;
* cells of ``cell x cell`` pixels (the magnitude sum divided by the cell area; pixels beyond the last full cell are
  dropped);
* blocks of ``block x block`` cells at a stride of one cell, each normalised by L2-Hys: ``v / sqrt(|v|^2 + eps^2)``,
  clipped at 0.2, normalised again;
* the descriptor concatenates the blocks row by row, each block cells row-major, each cell its orientation bins.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

LUMA = (0.2125, 0.7154, 0.0721)


def gray(img: np.ndarray) -> np.ndarray:
    """(H, W) float64 luminance of an (H, W) or (H, W, 3) image (any numeric dtype, scale kept)."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        return a[..., 0] * LUMA[0] + a[..., 1] * LUMA[1] + a[..., 2] * LUMA[2]
    if a.ndim != 2:
        raise ValueError(f"hog: expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    return a


def hog(img: np.ndarray, orientations: int = 9, cell: int = 8, block: int = 2, eps: float = 1e-5) -> np.ndarray:
    """HOG descriptor of one image (see the module docstring), float64 of length
    ``(cells_y - block + 1) * (cells_x - block + 1) * block * block * orientations``."""
    g = gray(img)
    h, w = g.shape
    cy, cx = h // cell, w // cell
    if cy < block or cx < block:
        raise ValueError(f"hog: a {h}x{w} image has fewer than {block}x{block} cells of {cell} pixels")
    gx = np.zeros_like(g)
    gy = np.zeros_like(g)
    gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
    gy[1:-1, :] = g[2:, :] - g[:-2, :]
    mag = np.hypot(gx, gy)
    ang = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    bins = np.minimum((ang / (180.0 / orientations)).astype(np.int64), orientations - 1)
    mag, bins = mag[: cy * cell, : cx * cell], bins[: cy * cell, : cx * cell]
    # per-cell histograms: scatter each pixel's magnitude into (cell row, cell col, bin)
    rows = np.arange(cy * cell) // cell
    cols = np.arange(cx * cell) // cell
    flat = (rows[:, None] * cx + cols[None, :]) * orientations + bins
    hist = np.bincount(flat.ravel(), weights=mag.ravel(), minlength=cy * cx * orientations)
    hist = hist.reshape(cy, cx, orientations) / (cell * cell)
    by, bx = cy - block + 1, cx - block + 1
    blocks = np.empty((by, bx, block, block, orientations))
    for i in range(block):
        for j in range(block):
            blocks[:, :, i, j] = hist[i : i + by, j : j + bx]
    v = blocks.reshape(by, bx, -1)
    v = v / np.sqrt((v**2).sum(-1, keepdims=True) + eps**2)
    v = np.minimum(v, 0.2)
    v = v / np.sqrt((v**2).sum(-1, keepdims=True) + eps**2)
    return v.ravel()


def hog_features(
    paths: Iterable[str], height: int = 128, width: int = 64, orientations: int = 9, cell: int = 8, block: int = 2
) -> np.ndarray:
    """(N, D) float32 HOG descriptors of image files, each resized to ``height x width`` (bilinear) first."""
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float64) / 255.0
        out.append(hog(a, orientations, cell, block).astype(np.float32))
    return np.stack(out)
