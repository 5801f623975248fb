"""Training-loader throughput: vdreid's CrossModalDataManager vs torchreid's ImageDataManager, side by side.

Both read the same synthetic SYSU-MM01 demo tree with torchreid's default train transforms (resize to 256x128,
random flip, to-tensor, ImageNet normalisation). vdreid's loader uses the cross-modal identity sampler and the
strict image reader; torchreid's uses its RandomIdentitySampler and reader. The ratio shows what our sampler and
dataset cost relative to torchreid's own pipeline; the absolute number is what training on this machine can get.

    .venv/bin/python benchmarks/loader_speed.py [--root DIR] [--batches 20] [--workers 0 2]
        [--height 256 --width 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time

import torch


def images_per_second(loader: torch.utils.data.DataLoader, batches: int, warmup: int = 2) -> float:
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        n += b["img"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="data root holding SYSU-MM01/ (default: a fresh demo tree in /tmp)")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process")
    args = ap.parse_args()

    import vdreid  # noqa: F401
    from vdreid import compat
    from vdreid.data import CrossModalDataManager
    from vdreid.data.synthetic import make_sysu

    tmp = None
    root = args.root
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = tmp.name
        t0 = time.perf_counter()
        make_sysu(root, preset="demo", seed=0)
        print(f"generated the demo SYSU-MM01 tree in {time.perf_counter() - t0:.1f} s")
    # the per-image transforms are tiny tensor ops: with workers=0 they run in this process, where more than one
    # intra-op thread on a busy 2-core box makes them ~10x slower (OpenMP spinning); DataLoader workers use 1 thread
    torch.set_num_threads(args.threads)
    print(
        f"root={root} size={args.height}x{args.width} batch=64 transforms=['random_flip'] cpus={os.cpu_count()} "
        f"main-process threads={args.threads} load average={os.getloadavg()[0]:.1f}"
    )
    print(f"{'workers':>7} | {'vdreid img/s':>12} | {'torchreid img/s':>15} | {'ratio vdreid/torchreid':>22}")
    for w in args.workers:
        quiet = contextlib.redirect_stdout(io.StringIO())
        with quiet:
            ours = CrossModalDataManager(
                root=root, sources="sysu_mm01", height=args.height, width=args.width, workers=w, num_ids=16,
                num_instances=2, use_gpu=False,
            )
            theirs = compat.ImageDataManager(
                root=root, sources="sysu_mm01", height=args.height, width=args.width, workers=w,
                batch_size_train=64, num_instances=4, train_sampler="RandomIdentitySampler", use_gpu=False,
            )
        a = images_per_second(ours.train_loader, args.batches)
        b = images_per_second(theirs.train_loader, args.batches)
        print(f"{w:>7} | {a:>12.1f} | {b:>15.1f} | {a / b:>22.2f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
