"""Training-loader throughput: vdreid's CrossModalDataManager vs torchreid's ImageDataManager, side by side.

All read the same synthetic SYSU-MM01 demo tree with torchreid's default train transforms (resize to 256x128,
random flip, to-tensor, ImageNet normalisation), batch 64. A/B isolates our dataset class (strict reader) on the
identical index stream; A/C compares with torchreid's stock pipeline, whose sampler draws a different image mix
(more of the small outdoor RGB images), so A/C also reflects image sizes. The absolute A number is what training
on this machine can get from the loader.

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
    ap.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds (best is kept)")
    args = ap.parse_args()

    import vdreid  # noqa: F401
    from vdreid import compat
    from vdreid.data import CrossModalDataManager, CrossModalIdentitySampler
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
    print("A = vdreid CrossModalDataManager.train_loader (cross-modal sampler, strict reader)")
    print("B = torchreid ImageDataset on the same items and the same sampler indices (torchreid reader)")
    print("C = torchreid ImageDataManager, RandomIdentitySampler 16 x 4 (its own image mix); best of --rounds")
    print(f"{'workers':>7} | {'A img/s':>8} | {'B img/s':>8} | {'C img/s':>8} | {'A/B':>5} | {'A/C':>5}")
    for w in args.workers:
        with contextlib.redirect_stdout(io.StringIO()):
            ours = CrossModalDataManager(
                root=root, sources="sysu_mm01", height=args.height, width=args.width, workers=w, num_ids=16,
                num_instances=2, use_gpu=False,
            )
            ds = ours.train_loader.dataset
            same = compat.ImageDataset(ds.train, ds.query, ds.gallery, transform=ours.transform_tr, verbose=False)
            sampler_b = CrossModalIdentitySampler(ds.train, num_ids=16, num_instances=2, ir_camids=ds.ir_camids)
            plain = torch.utils.data.DataLoader(same, batch_size=64, sampler=sampler_b, num_workers=w, drop_last=True)
            theirs = compat.ImageDataManager(
                root=root, sources="sysu_mm01", height=args.height, width=args.width, workers=w,
                batch_size_train=64, num_instances=4, train_sampler="RandomIdentitySampler", use_gpu=False,
            )
        best = {"A": 0.0, "B": 0.0, "C": 0.0}
        for _ in range(args.rounds):  # interleaved rounds: the box is shared, so take each pipeline's best
            for key, loader in (("A", ours.train_loader), ("B", plain), ("C", theirs.train_loader)):
                best[key] = max(best[key], images_per_second(loader, args.batches))
        a, b, c = best["A"], best["B"], best["C"]
        print(f"{w:>7} | {a:>8.1f} | {b:>8.1f} | {c:>8.1f} | {a / b:>5.2f} | {a / c:>5.2f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
