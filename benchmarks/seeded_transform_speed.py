"""Cost of running the train transform under a per-sample seed (``VIImageDataset[(index, seed)]``) next to the cost
of reading the image, in one process, interleaved rounds, with ratios.

Three ways to load one training image through ``VIImageDataset.__getitem__``: an int key (the transform draws from
the worker's global generators), an ``(index, seed)`` key (``vdreid.data.transforms.seeded``: fork torch's CPU
generator, seed it and Python's ``random``, restore both), and the seeding alone around an empty block.

    .venv/bin/python benchmarks/seeded_transform_speed.py [--n 400] [--rounds 3] [--height 256 --width 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="images per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import torchvision.transforms as T
    from vdreid.data.base import VIImageDataset
    from vdreid.data.transforms import seeded

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        items = []
        for i in range(32):  # SYSU-MM01-like jpgs (the real images are about 144 x 288 before resizing)
            p = os.path.join(tmp, f"{i:04d}.jpg")
            Image.fromarray(rng.integers(0, 255, (288, 144, 3), dtype=np.uint8)).save(p, quality=90)
            items.append((p, i % 4, i % 2, 0))
        tfm = T.Compose([T.Resize((args.height, args.width)), T.RandomHorizontalFlip(), T.ToTensor(),
                         T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # the paper's train transform
        ds = VIImageDataset(items, items, items, transform=tfm, mode="train", verbose=False)

        def plain() -> None:
            for k in range(args.n):
                ds[k % len(items)]

        def with_seed() -> None:
            for k in range(args.n):
                ds[(k % len(items), 1000 + k)]

        def seeding_only() -> None:
            for k in range(args.n):
                with seeded(1000 + k):
                    pass

        best = {"int key": float("inf"), "(index, seed) key": float("inf"), "seeding alone": float("inf")}
        fns = {"int key": plain, "(index, seed) key": with_seed, "seeding alone": seeding_only}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], (time.perf_counter() - t0) / args.n)
    print(f"per image, best of {args.rounds} rounds of {args.n} images, {args.height}x{args.width}, "
          f"{args.threads} thread(s):")
    for name, t in best.items():
        print(f"  {name:<18} {t * 1e6:9.1f} us")
    print(f"(index, seed) / int key: {best['(index, seed) key'] / best['int key']:.3f}; seeding alone / int key: "
          f"{best['seeding alone'] / best['int key']:.3f}")


if __name__ == "__main__":
    main()
