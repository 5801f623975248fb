"""Small VIEngine setups shared by the engine tests, and a command-line worker for the subprocess tests
(SIGKILL-and-resume, two-process gloo DDP under torchrun).

The model is ``build_vd_net('test_resnet')`` (timm's ~0.4M-parameter test ResNet per branch) at 32x16 input, so a
training step takes tens of milliseconds on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import os.path as osp
import random
import sys
import time

import numpy as np
import torch

HEIGHT, WIDTH = 32, 16  # the tiny synthetic tree's own size


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_engine(
    root: str,
    seed: int = 0,
    amp: str = "none",
    selection: str = "final",
    eval_freq: int = 0,
    val: bool = False,
    lr: float = 1e-3,
    num_ids: int = 4,
    num_instances: int = 2,
    recipe: str = "paper",
    engine_cls=None,
    criterion_wrapper=None,
    rank: int = 0,
    world_size: int = 1,
    warmup_epochs: int = 2,
    height: int = HEIGHT,
    width: int = WIDTH,
    method: str = "vd",
    transforms: tuple[str, ...] = ("random_flip",),
    eval_options=None,
    hooks=(),
    **options,
):
    """A VIEngine on the synthetic SYSU tree under ``root`` (workers=0, deterministic). ``method``: 'vd' (the VD
    network and loss) or 'agw' (AGW's network and criterion), both on timm's tiny test ResNet. ``options``: fields
    of ``vdreid.engine.TrainOptions`` (progress off unless given); ``eval_options``: a ``vdreid.engine.EvalOptions``.
    """
    import vdreid  # noqa: F401
    from vdreid.data import CrossModalDataManager
    from vdreid.engine import Evaluator, TrainOptions, VIEngine, build_optimizer, build_scheduler
    from vdreid.losses import VDLoss, VDLossConfig
    from vdreid.models import build_vd_net

    seed_all(seed)
    dm = CrossModalDataManager(
        root=root,
        sources="sysu_mm01",
        targets="sysu_mm01",
        height=height,
        width=width,
        transforms=list(transforms),
        batch_size_test=64,
        workers=0,
        num_ids=num_ids,
        num_instances=num_instances,
        seed=seed,
        dataset_kwargs={"val_for_selection": val},
        rank=rank,
        world_size=world_size,
        use_gpu=False,
    )
    if method == "agw":
        from vdreid.losses import AGWCriterion
        from vdreid.models import build_agw

        model = build_agw("test_resnet", num_classes=dm.num_train_pids)
        criterion = AGWCriterion()
    else:
        model = build_vd_net("test_resnet", num_classes=dm.num_train_pids, bottleneck_dims=(64, 32, 32))
        cfg = VDLossConfig.paper() if recipe == "paper" else VDLossConfig.official()
        criterion = VDLoss(cfg, dm.num_train_pids)
    if criterion_wrapper is not None:
        criterion = criterion_wrapper(criterion)
    opt = build_optimizer(list(model.parameters()) + list(criterion.parameters()), lr=lr)
    sched = build_scheduler(opt, milestones=(100,), warmup_epochs=warmup_epochs, warmup_factor=0.1)
    cls = engine_cls or VIEngine
    prov = {"model": "test_resnet", "num_classes": dm.num_train_pids, "seed": seed, "method": method}
    if method == "vd":  # what vdreid.builders.provenance records for VD (the method's resume_keys included)
        from vdreid.methods import get

        prov.update(recipe=recipe, resume_keys=list(get("vd").resume_keys))
    options.setdefault("progress", False)
    evaluator = Evaluator(dm, model, eval_options, provenance=prov)
    return cls(dm, model, opt, criterion, sched, evaluator=evaluator, hooks=hooks,
               options=TrainOptions(amp=amp, selection=selection, eval_freq=eval_freq, **options))


def weights_digest(model: torch.nn.Module, params_only: bool = False) -> str:
    """SHA-256 of every tensor of the state dict (or only of the parameters: under DDP each rank's BatchNorm running
    statistics see its own last batch, only the parameters are kept identical)."""
    h = hashlib.sha256()
    items = dict(model.named_parameters()) if params_only else model.state_dict()
    for k, v in sorted(items.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--save-dir", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--resume", default="")
    ap.add_argument("--hang-at", default="", help="EPOCH,ITER (1-based): write save_dir/HANGING there, then sleep")
    ap.add_argument("--ddp", action="store_true")
    ap.add_argument("--method", default="vd", choices=("vd", "agw"))
    ap.add_argument("--report-dir", required=True, help="where the worker writes worker_rank<r>.json (test-only)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")  # vdreid logs, as the CLI shows

    from vdreid.engine import VIEngine, init_distributed

    hang = tuple(int(x) for x in args.hang_at.split(",")) if args.hang_at else None

    class Worker(VIEngine):
        def forward_backward(self, data):
            if hang and (self.epoch + 1, self.batch_idx + 1) == hang:
                open(osp.join(args.save_dir, "HANGING"), "w").close()
                time.sleep(600)  # the test kills us here with SIGKILL
            if args.ddp:
                self.seen_pids.append(sorted({int(p) for p in data["pid"]}))
            return super().forward_backward(data)

    info = init_distributed(use_gpu=False) if args.ddp else None
    rank, world = (info.rank, info.world_size) if info else (0, 1)
    eng = build_engine(args.root, engine_cls=Worker, rank=rank, world_size=world, method=args.method)
    eng.seen_pids = []
    rank1 = eng.run(save_dir=args.save_dir, max_epoch=args.epochs, resume=args.resume or None)
    report = {"rank": rank, "world_size": world, "start_epoch": eng.start_epoch, "rank1": rank1,
              "digest": weights_digest(eng.net, params_only=args.ddp), "step_pids": eng.seen_pids}
    with open(osp.join(args.report_dir, f"worker_rank{rank}.json"), "w") as f:
        json.dump(report, f)
    if info is not None:
        from vdreid.engine.distributed import cleanup

        cleanup()


if __name__ == "__main__":
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _main()
