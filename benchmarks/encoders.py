"""Cost of the timm encoders vdreid can use (docs/encoders.md): parameters, activation memory and CPU time of one
training step of the BNNeck baseline (one encoder; VD has three), side by side in one process, as ratios to the
first backbone (ResNet-50 with last stride 1, the papers' encoder).

Measures, per backbone at the recipe's input size (default 288x144):

* **parameters** of the network (millions);
* **saved for backward** per image: the bytes of the distinct tensors autograd keeps from forward until backward,
  counted with ``torch.autograd.graph.saved_tensors_hooks`` over one forward (exact, allocator-independent; the
  activation memory a GPU needs per image, on top of weights, gradients and optimiser state);
* **train step time** per image: forward, cross-entropy on the logits, backward; median of ``--repeats`` timed
  steps after one warm-up, backbones interleaved round by round so that machine load affects them alike.

    python benchmarks/encoders.py --threads 1
    python benchmarks/encoders.py --threads 1 --height 256 --width 128 --backbones resnet50 vit_small_patch16_224
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from vdreid.models import build_bnneck

MIB = 2**20
DEFAULT = ["resnet50", "resnet18", "convnext_tiny", "vit_small_patch16_224", "vit_base_patch16_224",
           "deit_small_distilled_patch16_224", "swin_tiny_patch4_window7_224"]


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward during one training forward of ``x``."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values())


def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    F.cross_entropy(model(x).logits, y).backward()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=DEFAULT)
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=144)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = (args.height, args.width)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, *size, generator=g)
    y = torch.arange(args.batch) % 395
    models, rows = {}, {}
    for name in args.backbones:
        torch.manual_seed(0)
        m = build_bnneck(name, num_classes=395, input_size=size).train()
        models[name] = m
        rows[name] = {
            "params": sum(p.numel() for p in m.parameters()) / 1e6,
            "saved": saved_bytes(m, x) / args.batch / MIB,
            "times": [],
            "line": m.describe_encoder(),
        }
        step(m, x, y)  # warm-up
    for _ in range(args.repeats):
        for name, m in models.items():
            rows[name]["times"].append(step(m, x, y) / args.batch)
    base = args.backbones[0]
    b = rows[base]
    print(f"BNNeck baseline, {args.height}x{args.width}, batch {args.batch}, {args.threads} thread(s), median of "
          f"{args.repeats} steps; ratios to {base}")
    print("| backbone | params (M) | saved for backward / image (MiB) | train step / image (s) | x params | x memory "
          "| x time |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        t = statistics.median(r["times"])
        tb = statistics.median(b["times"])
        print(f"| {name} | {r['params']:.1f} | {r['saved']:.1f} | {t:.3f} | {r['params'] / b['params']:.2f} "
              f"| {r['saved'] / b['saved']:.2f} | {t / tb:.2f} |")
    for r in rows.values():
        print(f"- {r['line']}")


if __name__ == "__main__":
    main()
