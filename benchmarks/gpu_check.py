"""One GPU check: every path only a GPU exercises, one table. Under 8 minutes on one data-centre GPU.

Usage (from the repository root, on a machine with a CUDA GPU)::

    .venv/bin/python benchmarks/gpu_check.py            # the full check
    .venv/bin/python benchmarks/gpu_check.py --smoke    # tiny sizes, also runs on a CPU (tests the script itself)

Without a CUDA GPU (and without ``--smoke``) it says so and exits 0.

Rows of the table:

1. ranking: SYSU-MM01 all-search size (3803 queries x 301 gallery, D=2048, 10 trials), ``evaluate_features`` with
   the counting on CUDA (float64 blocks at D >= 1024) vs on the CPU: metrics must be identical, bit for bit;
2. faiss GPU top-k (when faiss sees a GPU): ``search`` on faiss's GPU kNN vs the CPU lists (identical), and the time
   of faiss GPU vs torch CUDA for top-20 of 10k x 1M, D=256 (the ``auto`` choice on GPUs);
3. re-ranking: ``evaluate_features(rerank=True)`` at 5k images, kNN graph and blocks on the GPU vs on the CPU;
4. training steps at batch 64 (16 ids x (2 visible + 2 infrared)), 256x128, for ``vd_resnet50`` (criterion
   ``VDLoss(VDLossConfig.paper(), 395)``) and ``agw`` (``AGWCriterion()``) when registered, built through
   torchreid's ``build_model`` after ``import vdreid`` (pretrained=False): fp32, bf16 autocast, fp16 autocast with
   GradScaler, each with and without channels_last: images/s and peak GPU memory;
5. one DistributedDataParallel step with the nccl backend in a 1-process group.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rank_speed import make_features  # noqa: E402

ROWS: list[tuple[str, str, str]] = []


def row(check: str, result: str, detail: str = "") -> None:
    ROWS.append((check, result, detail))
    print(f"  [{result}] {check}: {detail}", flush=True)


@contextlib.contextmanager
def hidden_cuda():
    """Run the CPU reference: torch (and vdreid's backend choice) see no CUDA device."""
    orig = torch.cuda.is_available
    torch.cuda.is_available = lambda: False
    try:
        yield
    finally:
        torch.cuda.is_available = orig


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def same_metrics(a: dict, b: dict) -> bool:
    return a["mAP"] == b["mAP"] and a["mINP"] == b["mINP"] and np.array_equal(a["cmc"], b["cmc"])


def check_ranking(smoke: bool) -> None:
    from vdreid.evaluation import evaluate_features

    nq, ng, dim, trials = (200, 40, 64, 2) if smoke else (3803, 301, 2048, 10)
    t_gpu = t_cpu = 0.0
    ok = True
    for t in range(trials):
        qf, gf, qp, gp, qc, gc = make_features(nq, ng, dim, 96, seed=t, pure_noise=False)
        kw = dict(cmc_mode="dedup", exclude_cam_pairs=((2, 1),), backend="torch")
        t0 = time.perf_counter()
        a = evaluate_features(qf, gf, qp, gp, qc, gc, **kw)
        t_gpu += time.perf_counter() - t0
        with hidden_cuda():
            t0 = time.perf_counter()
            b = evaluate_features(qf, gf, qp, gp, qc, gc, **kw)
            t_cpu += time.perf_counter() - t0
        ok &= same_metrics(a, b)
    row(f"ranking SYSU size {nq}x{ng} D={dim}, {trials} trials", "PASS" if ok else "FAIL",
        f"{a['backend']} {t_gpu:.2f} s vs {b['backend']} {t_cpu:.2f} s; metrics identical: {ok}")


def check_faiss_gpu(smoke: bool) -> None:
    from vdreid.evaluation import backend, search

    faiss = backend.import_faiss()
    if faiss is None or backend.faiss_gpus(faiss) == 0:
        row("faiss GPU top-k", "SKIP", "faiss has no GPU here (faiss-cpu installed?): pip install 'vdreid[gpu]'")
        return
    nq, ng, dim = (300, 5000, 32) if smoke else (10_000, 1_000_000, 256)
    qf, gf, *_ = make_features(nq, ng, dim, max(10, ng // 10), seed=0, pure_noise=False)
    t0 = time.perf_counter()
    fg = search(qf, gf, 20, backend="faiss")
    t_f = time.perf_counter() - t0
    t0 = time.perf_counter()
    tg = search(qf, gf, 20, backend="torch")
    t_t = time.perf_counter() - t0
    with hidden_cuda():
        ref = search(qf[:1000], gf, 20, backend="torch")
    ok = np.array_equal(fg.indices[:1000], ref.indices) and np.array_equal(tg.indices, fg.indices)
    row(f"faiss GPU top-20 {nq}x{ng} D={dim}", "PASS" if ok else "FAIL",
        f"{fg.backend} {t_f:.2f} s, {tg.backend} {t_t:.2f} s (faiss/torch {t_f / t_t:.2f}); lists = CPU: {ok}")


def check_rerank(smoke: bool) -> None:
    from vdreid.evaluation import evaluate_features

    n = 600 if smoke else 5000
    qf, gf, qp, gp, qc, gc = make_features(n // 5, n - n // 5, 64 if smoke else 256, n // 10, seed=1,
                                           pure_noise=False)
    t0 = time.perf_counter()
    a = evaluate_features(qf, gf, qp, gp, qc, gc, rerank=True, cmc_mode="standard")
    t_g = time.perf_counter() - t0
    with hidden_cuda():
        t0 = time.perf_counter()
        b = evaluate_features(qf, gf, qp, gp, qc, gc, rerank=True, cmc_mode="standard", backend="torch")
        t_c = time.perf_counter() - t0
    ok = same_metrics(a, b)
    row(f"re-ranking {n} images", "PASS" if ok else "FAIL",
        f"{a['backend']} {t_g:.2f} s vs {b['backend']} {t_c:.2f} s; metrics identical: {ok}")


def _model_and_criterion(name: str, num_classes: int):
    import vdreid  # noqa: F401  (registers the models)
    from vdreid import compat

    model = compat.models.build_model(name, num_classes=num_classes, pretrained=False)
    if name.startswith("vd_"):
        from vdreid.losses import VDLoss, VDLossConfig

        return model, VDLoss(VDLossConfig.paper(), num_classes)
    from vdreid.losses import AGWCriterion

    return model, AGWCriterion()


def _batch(batch: int, h: int, w: int, dev: torch.device):
    ids = batch // 4
    pids = torch.arange(ids, device=dev).repeat_interleave(4)
    is_ir = torch.tensor([False, False, True, True], device=dev).repeat(ids)
    x = torch.randn(batch, 3, h, w, device=dev)
    return x, pids, is_ir


def check_training(smoke: bool, dev: torch.device) -> None:
    names = ["vd_resnet18" if smoke else "vd_resnet50"]
    agw = "agw_resnet18" if smoke else "agw"
    try:
        _model_and_criterion(agw, 4)
        names.append(agw)
    except (KeyError, ImportError, AttributeError) as exc:
        row(f"training step {agw}", "SKIP", f"not available: {type(exc).__name__}: {exc}")
    batch, h, w, steps = (8, 64, 32, 1) if smoke else (64, 256, 128, 5)
    num_classes = 395
    for name in names:
        for prec in ("fp32", "bf16", "fp16"):
            if prec == "fp16" and dev.type == "cpu":
                continue  # fp16 autocast + GradScaler is a CUDA path
            for cl in (False, True):
                label = f"train {name} b{batch} {h}x{w} {prec}{' channels_last' if cl else ''}"
                try:
                    ips, peak = _train_steps(name, num_classes, prec, cl, batch, h, w, steps, dev)
                    row(label, "PASS", f"{ips:.1f} img/s, peak {peak:.2f} GiB")
                except Exception as exc:  # one failing variant must not hide the others
                    row(label, "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
                    traceback.print_exc()


def _train_steps(name, num_classes, prec, cl, batch, h, w, steps, dev) -> tuple[float, float]:
    model, crit = _model_and_criterion(name, num_classes)
    model, crit = model.to(dev).train(), crit.to(dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    params = list(model.parameters()) + [p for p in crit.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if prec == "fp16" else None
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
    x, pids, is_ir = _batch(batch, h, w, dev)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        amp = torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with amp:
            out = model(x, modality=is_ir)
        loss, _ = crit(out, pids)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()}")

    step()  # warm-up (cuDNN autotuning, allocator)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    return batch / dt, peak


def check_ddp(smoke: bool, dev: torch.device) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if dev.type != "cuda" or not dist.is_nccl_available():
        row("DDP nccl 1 process", "SKIP", "needs CUDA and NCCL")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=dev)
        name = "vd_resnet18" if smoke else "vd_resnet50"
        model, crit = _model_and_criterion(name, 395)
        net = DDP(model.to(dev).train(), device_ids=[dev.index or 0], find_unused_parameters=True)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        x, pids, is_ir = _batch(32, 256, 128, dev)
        t0 = time.perf_counter()
        loss, _ = crit.to(dev)(net(x, modality=is_ir), pids)
        loss.backward()
        opt.step()
        sync(dev)
        ok = bool(torch.isfinite(loss))
        row(f"DDP nccl 1 process, {name} batch 32", "PASS" if ok else "FAIL",
            f"one step {time.perf_counter() - t0:.2f} s, loss {loss.item():.3f}")
    except Exception as exc:
        row("DDP nccl 1 process", "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
        traceback.print_exc()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; runs on the CPU when there is no GPU")
    ap.add_argument("--skip", nargs="*", default=[], choices=["ranking", "faiss", "rerank", "train", "ddp"])
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        print("gpu_check: no CUDA GPU visible to torch: nothing to check here. Run it on a GPU machine.")
        return 0
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    name = torch.cuda.get_device_name(dev) if cuda else "CPU (smoke run)"
    print(f"gpu_check on {name}: torch {torch.__version__} (CUDA {torch.version.cuda}), smoke={a.smoke}", flush=True)
    t0 = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    steps = [("ranking", lambda: check_ranking(a.smoke)), ("faiss", lambda: check_faiss_gpu(a.smoke)),
             ("rerank", lambda: check_rerank(a.smoke)), ("train", lambda: check_training(a.smoke, dev)),
             ("ddp", lambda: check_ddp(a.smoke, dev))]
    for key, fn in steps:
        if key in a.skip:
            continue
        try:
            fn()
        except Exception as exc:  # report and go on: one table with every check
            row(key, "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}")
            traceback.print_exc()
    w = max(len(r[0]) for r in ROWS) if ROWS else 10
    print(f"\n| {'check':<{w}} | result | detail |")
    print(f"|{'-' * (w + 2)}|--------|--------|")
    for c, r, d in ROWS:
        print(f"| {c:<{w}} | {r:<6} | {d} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s on {name}")
    return 1 if any(r == "FAIL" for _, r, _ in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
