"""Model size and CPU speed of the VD networks (issue 4).

Prints parameter counts per branch and in total, then times, per batch, the eval forward (``obs_concat``
features) and one training forward+backward (official routing: 4 encoder passes per image) with the default
(NCHW-contiguous) memory format and with channels_last, side by side in one process. Variants are interleaved
rep by rep so that load from other processes hits both alike; the ratio column is channels_last / contiguous.

    .venv/bin/python benchmarks/model_speed.py                      # vd_resnet18 and vd_resnet50, batch 8, 256x128
    .venv/bin/python benchmarks/model_speed.py --models vd_resnet18 --reps 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import vdreid  # noqa: F401  (registers the models)
from vdreid import compat


def count_params(num_classes: int) -> list[str]:
    rows = [
        "| model | encoder / branch | bottleneck / branch | branch | total | branch + unused ImageNet fc |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("vd_resnet50", "vd_resnet50_official"):
        m = compat.models.build_model(name, num_classes=num_classes, pretrained=False)
        c = m.num_parameters()
        fc = 2048 * 1000 + 1000  # ResNet-50's 1000-way fc, built but unused by the released code
        rows.append(
            f"| {name} | {c['ir.encoder'] / 1e6:.2f}M | {c['ir.bottleneck'] / 1e6:.2f}M | {c['ir'] / 1e6:.2f}M | "
            f"{c['total'] / 1e6:.2f}M | {(c['ir'] + fc) / 1e6:.2f}M |"
        )
        del m
    return rows


def time_model(name: str, batch: int, height: int, width: int, reps: int, num_classes: int) -> list[str]:
    torch.manual_seed(0)
    model = compat.models.build_model(name, num_classes=num_classes, pretrained=False)
    x = torch.randn(batch, 3, height, width)
    is_ir = torch.arange(batch) % 2 == 1
    results: dict[tuple[str, str], list[float]] = {}

    def fwd(m, inp):
        m.eval()
        with torch.no_grad():
            m(inp)

    def fwd_bwd(m, inp):
        m.train()
        out = m(inp, is_ir)
        loss = sum(b.v_logits.logsumexp(1).mean() + b.z_logits.logsumexp(1).mean() for b in out.branches().values())
        loss.backward()
        m.zero_grad(set_to_none=True)

    variants = {
        "contiguous": (model, x),
        "channels_last": (None, x.contiguous(memory_format=torch.channels_last)),
    }
    for rep in range(reps + 1):  # rep 0 is the warm-up
        for fmt in variants:
            m = model.to(memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format)
            inp = variants[fmt][1]
            for task, fn in (("forward (eval)", fwd), ("forward+backward (train)", fwd_bwd)):
                t = time.perf_counter()
                fn(m, inp)
                if rep:
                    results.setdefault((task, fmt), []).append(time.perf_counter() - t)
    rows = []
    for task in ("forward (eval)", "forward+backward (train)"):
        a, b = results[(task, "contiguous")], results[(task, "channels_last")]
        ma, mb = statistics.median(a), statistics.median(b)
        rows.append(
            f"| {name} | {task} | {ma:.2f} s (min {min(a):.2f}) | {mb:.2f} s (min {min(b):.2f}) | {mb / ma:.2f} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vd_resnet18", "vd_resnet50"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--num-classes", type=int, default=395)
    ap.add_argument("--no-params", action="store_true", help="skip the parameter table")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.no_params:
        print(f"\nParameters ({args.num_classes} classes):\n")
        print("\n".join(count_params(args.num_classes)))
    print(f"\nCPU time per batch of {args.batch} at {args.height}x{args.width}, median of {args.reps} reps:\n")
    print("| model | task | contiguous | channels_last | ratio cl/contig |")
    print("|---|---|---|---|---|")
    for name in args.models:
        for row in time_model(name, args.batch, args.height, args.width, args.reps, args.num_classes):
            print(row, flush=True)


if __name__ == "__main__":
    main()
