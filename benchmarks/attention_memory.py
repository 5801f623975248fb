"""Memory of one VD training step with the released code's channel attention (``ShallowCAM``): the row maximum taken
with ``torch.max(...).values`` (vdreid, as the released code) against ``Tensor.amax`` (vdreid before), side by side.

Two measures:

* **saved for backward** (one process, both forms interleaved): the bytes of the distinct tensors autograd keeps from
  the forward pass until backward, counted with ``torch.autograd.graph.saved_tensors_hooks`` while the engine's real
  ``forward_backward`` runs (forward, loss, backward, Adam step). This is exact and does not depend on the allocator.
  ``amax`` saves its input, the (B, C, C) energy, and its result; ``max`` saves int64 indices of shape (B, C, 1).
* **peak RSS** (``VmHWM`` of a fresh child process per form, forms alternated): what the machine sees, including the
  allocator's behaviour; two steps per child.

The energy tensors scale with the batch and with the number of encoder passes per image, so the difference at
another batch is ``batch x passes x sum(C^2) x 4`` bytes (float32); the script prints that formula's value beside
the measured one, and measures a second batch size to show the scaling.

    python benchmarks/attention_memory.py --threads 1          # official/sysu_all (vd_resnet50_official), batch 8, 16
    python benchmarks/attention_memory.py --threads 1 --batches 8 --rss-rounds 2
"""

from __future__ import annotations

import argparse
import json
import os.path as osp
import subprocess
import sys

import torch
import vdreid  # noqa: F401  (registers the models)
from torch import Tensor
from vdreid import builders
from vdreid.config import load_config
from vdreid.data.synthetic import make_sysu
from vdreid.models.attention import ShallowCAM
from vdreid.recipes import resolve_config

MIB = 2**20
_MAX_FORWARD = ShallowCAM.forward


def _amax_forward(self: ShallowCAM, x: Tensor) -> Tensor:
    """vdreid's block before the change: the same computation with ``Tensor.amax`` for the row maximum."""
    b, c, h, w = x.shape
    q = x.reshape(b, c, h * w)
    energy = torch.bmm(q, q.transpose(1, 2))
    energy = energy.amax(dim=-1, keepdim=True) - energy
    attention = torch.softmax(energy, dim=-1)
    return self.gamma * torch.bmm(attention, q).reshape(b, c, h, w) + x


FORMS = {"max (vdreid)": _MAX_FORWARD, "amax (before)": _amax_forward}


def make_batch(batch: int, height: int, width: int, num_classes: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = batch // 4
    return {"img": torch.randn(batch, 3, height, width, generator=g),
            "pid": torch.arange(ids).repeat_interleave(4) % num_classes,
            "camid": torch.tensor([0, 0, 2, 2] * ids)}  # 2 visible (cam1) + 2 infrared (cam3) per identity


def build_engine(recipe: str, root: str, batch: int, threads: int):
    """The recipe's engine as ``vdreid train`` builds it (builders), on the synthetic tree under ``root``."""
    cfg = load_config(resolve_config(recipe), ["data.root", root, "data.workers", "0", "train.use_gpu", "false",
                                               "model.pretrained", "false", "sampler.num_ids", str(batch // 4),
                                               "sampler.num_instances", "2", "train.threads", str(threads)])
    dm = builders.build_datamanager(cfg)
    builders.seed_everything(0)
    model = builders.build_model(cfg, dm.num_train_pids)
    criterion = builders.build_criterion(cfg, dm.num_train_pids, model)
    opt, sched = builders.build_optim(cfg, model, criterion)
    eng = builders.build_engine(cfg, dm, model, criterion, opt, sched, progress=False)
    eng.set_model_mode("train")
    for cam in model.modules():  # gamma starts at 0; make the attention path part of the step as after training
        if isinstance(cam, ShallowCAM):
            with torch.no_grad():
                cam.gamma.fill_(0.1)
    return eng, dm.num_train_pids


def saved_step(eng, batch: dict) -> tuple[int, int, int]:
    """One step; returns (bytes saved for backward, bytes one float32 (B, C, C) energy per block call would take, summed
    over the calls (the formula), number of block calls)."""
    storages: dict[int, int] = {}
    energy = [0, 0]
    inner = ShallowCAM.forward

    def pack(t: Tensor) -> Tensor:
        storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    def counting(self: ShallowCAM, x: Tensor) -> Tensor:
        energy[0] += x.shape[0] * x.shape[1] ** 2 * 4
        energy[1] += 1
        return inner(self, x)

    ShallowCAM.forward = counting
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            eng.forward_backward(batch)
    finally:
        ShallowCAM.forward = inner
    return sum(storages.values()), energy[0], energy[1]


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    ShallowCAM.forward = FORMS[args.child]
    eng, num_classes = build_engine(args.recipe, args.root, args.child_batch, args.threads)
    batch = make_batch(args.child_batch, args.height, args.width, num_classes)
    eng.forward_backward(batch)
    eng.forward_backward(batch)
    print(json.dumps({"peak_kib": _vm_hwm_kib()}))


def _vm_hwm_kib() -> int:
    """This process's peak resident set (``VmHWM``). Not ``ru_maxrss``: Linux carries a forked parent's peak
    through ``exec`` into the child's ``ru_maxrss``, so every child would report at least the parent's size."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="official/sysu_all", help="a recipe whose model has the channel attention")
    ap.add_argument("--root", default="/tmp/vdreid_bench_tree", help="synthetic SYSU-MM01 tree (made when missing)")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16], help="multiples of 4")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rss-rounds", type=int, default=2, help="child processes per form for peak RSS (0: skip)")
    ap.add_argument("--extrapolate", type=int, default=128, help="batch to extrapolate the difference to")
    ap.add_argument("--child", choices=list(FORMS), help=argparse.SUPPRESS)
    ap.add_argument("--child-batch", type=int, default=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    torch.set_num_threads(args.threads)
    if not osp.isdir(osp.join(args.root, "SYSU-MM01")):
        make_sysu(args.root, preset="demo", seed=0)
    print(f"recipe {args.recipe}, input {args.height}x{args.width}, threads {args.threads}, torch {torch.__version__}")
    print("\nsaved for backward (MiB), one process, forms interleaved:")
    print(f"{'batch':>5s} {'form':14s} {'saved':>9s} {'block calls':>11s}")
    diffs = {}
    for b in args.batches:
        eng, num_classes = build_engine(args.recipe, args.root, b, args.threads)
        batch = make_batch(b, args.height, args.width, num_classes)
        res = {}
        for name, fwd in FORMS.items():
            ShallowCAM.forward = fwd
            res[name] = saved_step(eng, batch)
            total, _, calls = res[name]
            print(f"{b:5d} {name:14s} {total / MIB:9.1f} {calls:11d}")
        ShallowCAM.forward = _MAX_FORWARD
        del eng
        diff = res["amax (before)"][0] - res["max (vdreid)"][0]
        _, formula, calls = res["max (vdreid)"]
        diffs[b] = diff
        print(f"{b:5d} amax - max: {diff / MIB:+.1f} MiB; one float32 (B, C, C) energy per block call: "
              f"{formula / MIB:.1f} MiB over {calls} calls")
    if diffs:
        b0 = min(diffs)
        per_image = diffs[b0] / b0
        print(f"linear in the batch: {per_image / MIB:.2f} MiB per image; at batch {args.extrapolate}: "
              f"{per_image * args.extrapolate / 2**30:.2f} GiB (extrapolated, not measured)")

    if args.rss_rounds:
        b = min(args.batches)
        print(f"\npeak RSS (MiB) of a fresh process per form, batch {b}, two steps:")
        peaks: dict[str, list[float]] = {name: [] for name in FORMS}
        for _ in range(args.rss_rounds):
            for name in FORMS:
                out = subprocess.run([sys.executable, __file__, "--child", name, "--child-batch", str(b), "--recipe",
                                      args.recipe, "--root", args.root, "--height", str(args.height), "--width",
                                      str(args.width), "--threads", str(args.threads)],
                                     capture_output=True, text=True, check=True)
                peaks[name].append(json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"] / 1024)
        for name, v in peaks.items():
            print(f"{name:14s} " + " ".join(f"{p:8.0f}" for p in v))
        d = [a - m for a, m in zip(peaks["amax (before)"], peaks["max (vdreid)"])]
        print("amax - max per round: " + " ".join(f"{x:+.0f}" for x in d) + " MiB")


if __name__ == "__main__":
    main()
