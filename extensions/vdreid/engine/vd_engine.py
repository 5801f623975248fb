"""VDEngine: torchreid's ``Engine`` for the three-branch Variational Distillation network.

One training iteration (DESIGN data flow; paper Eq. 16-17): ``VDNet(x, modality)`` returns a :class:`VDOutput`; the
criterion (``vdreid.losses.VDLoss``) turns it into ``L_ReID + beta (VSD + VCD + VML)`` (or the released code's terms)
and a dict of every term; the engine does the backward pass with optional AMP, gradient clipping and DDP, and logs every
term. Evaluation runs the protocol evaluator (``vdreid.evaluation.evaluate_model``) on each target.

What we add to torchreid's loop, and why it is not torchreid's code:
* mixed precision (bf16 autocast on CPU/GPU, fp16 + GradScaler on GPU), channels_last, gradient clipping;
* a NaN/inf guard that names the loss term and the iteration, before any weights change;
* exact resume: atomic checkpoints with optimiser, scheduler, scaler, criterion, RNG states and sampler epoch
  (torchreid's ``resume_from_checkpoint`` restores model/optimiser/scheduler only and loads unsafely);
* ``torch.distributed`` (DDP) with rank-0 logging/checkpoints; evaluation features extracted in shards by
  every rank and gathered, ranked by rank 0;
* honest model selection: periodic evaluation uses the validation protocol; the test set selects only on request;
* ``train_log.jsonl``: one JSON line per epoch (``epoch`` = epochs completed, 1-based; ``lr``; the mean of every
  loss term; ``images_per_s``; ``time_s``; ``val/<target>/rank1|mAP|mINP`` or ``test/...`` when evaluated).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import os.path as osp
import sys
import time
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from vdreid import compat
from vdreid.engine import distributed as vdist
from vdreid.engine.checkpoint import (
    check_config_compatible,
    get_rng_state,
    load_checkpoint,
    load_model_weights,
    save_checkpoint_atomic,
    set_rng_state,
    unwrap_model,
)
from vdreid.errors import NonFiniteLossError

AMP_MODES = ("none", "bf16", "fp16")
SELECTIONS = ("final", "val", "test")
LATEST = "latest.pth"
TRAIN_LOG = "train_log.jsonl"
# configuration fields that must agree between a checkpoint and the run that resumes from it
RESUME_CHECK_KEYS = ("model", "num_classes", "recipe", "routing", "bottleneck", "backbone")




def _is_infrared(camids: torch.Tensor, ir_camids) -> torch.Tensor:
    from vdreid.data.modality import is_infrared

    return torch.as_tensor(is_infrared(camids, ir_camids), dtype=torch.bool)


def _output_to_float(obj: Any) -> Any:
    """Cast every floating tensor of a (nested) model output to float32: the losses run outside autocast, in fp32
    (softmax/KL/Sinkhorn in bf16 lose too much precision)."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: _output_to_float(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **fields)
    if isinstance(obj, Mapping):
        return type(obj)({k: _output_to_float(v) for k, v in obj.items()})
    if isinstance(obj, list | tuple):
        return type(obj)(_output_to_float(v) for v in obj)
    return obj


def _json_safe(obj: Any) -> Any:
    """Plain JSON types only (checkpoints load with weights_only=True, which refuses arbitrary objects)."""
    return json.loads(json.dumps(obj, default=str))


class VDEngine(compat.Engine):
    """Training and evaluation of a VD network.

    Args:
        datamanager: ``vdreid.data.CrossModalDataManager`` (``train_loader``, ``test_loader``, ``protocols``,
            ``train_ir_camids``, ``ir_camids_of(name)``; ``val_loader``/``val_protocols`` for ``selection='val'``).
        model: a VDNet (train forward ``model(x, modality=is_ir) -> VDOutput``; eval forward -> features).
        optimizer: e.g. ``vdreid.engine.build_optimizer`` over the model's and the criterion's parameters.
        criterion: ``vdreid.losses.VDLoss``: ``criterion(out, pids) -> (total, {term: 0-dim tensor})``.
        scheduler: stepped once per epoch (``vdreid.engine.build_scheduler``).
        use_gpu: train on ``cuda:LOCAL_RANK`` when CUDA is available.
        amp: ``'none'``, ``'bf16'`` (autocast; CPU or GPU) or ``'fp16'`` (autocast + GradScaler; GPU only).
        channels_last: model and inputs in channels-last memory format.
        grad_clip: max global gradient norm (0 = off).
        selection: which model the final test evaluates: ``'final'`` (the last epoch), ``'val'`` (best rank-1 on the
            validation protocol, e.g. SYSU's val ids with ``val_for_selection=True``) or ``'test'`` (best rank-1 on the
            test protocol: optimistic, only when explicitly asked; recorded as such).
        eval_freq: periodic evaluation every this many epochs (0 = none). It runs on the validation protocol; on the
            test protocol only with ``selection='test'``.
        official_scheduler_offbyone: step the scheduler at the *start* of each epoch as the released code does (epoch
            e uses ``last_epoch = e + 1``, spec 5.4 / trap 16); otherwise torchreid's order (end of epoch).
        metric, backend: passed to the evaluator (``'cosine'|'euclidean'``, ``'auto'|'faiss'|'torch'``).
        feature_mode: test-time feature mode set on the model (``model.feature_mode``); None keeps the model's.
        provenance: JSON-able run description (config, recipe, hash, ...) stored in checkpoints and results JSON.
        sync_bn, find_unused_parameters: DDP options (used only when WORLD_SIZE > 1).
        eval_amp: also run evaluation under the training autocast dtype (default: fp32 features).
        checkpoint_freq: keep a per-epoch checkpoint ``epoch_NNN.pth`` every this many epochs (``latest.pth`` is
            written every epoch); 0 = only ``latest.pth``.
        progress: show a tqdm bar per epoch (rank 0 only).
    """

    def __init__(
        self,
        datamanager,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: torch.nn.Module,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        use_gpu: bool = False,
        amp: str = "none",
        channels_last: bool = False,
        grad_clip: float = 0.0,
        selection: str = "final",
        eval_freq: int = 0,
        official_scheduler_offbyone: bool = False,
        metric: str = "cosine",
        backend: str = "auto",
        feature_mode: str | None = None,
        provenance: dict | None = None,
        sync_bn: bool = False,
        find_unused_parameters: bool = False,
        eval_amp: bool = False,
        checkpoint_freq: int = 1,
        progress: bool = True,
    ) -> None:
        super().__init__(datamanager, use_gpu=use_gpu)
        if amp not in AMP_MODES:
            raise ValueError(f"VDEngine: amp must be one of {AMP_MODES}, got {amp!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"VDEngine: selection must be one of {SELECTIONS}, got {selection!r}")
        if grad_clip < 0:
            raise ValueError(f"VDEngine: grad_clip must be >= 0 (0 = off), got {grad_clip}")
        if eval_freq < 0:
            raise ValueError(f"VDEngine: eval_freq must be >= 0 (0 = no periodic evaluation), got {eval_freq}")
        self.dist = vdist.current()
        if self.use_gpu:
            self.device = torch.device("cuda", self.dist.local_rank if self.dist.is_distributed else 0)
        else:
            self.device = torch.device("cpu")
        if amp == "fp16" and self.device.type != "cuda":
            raise ValueError(
                "VDEngine: amp='fp16' needs a CUDA GPU (its GradScaler has no CPU path here); "
                "on CPU use amp='bf16' or amp='none'"
            )
        if selection == "val" and not getattr(datamanager, "val_protocols", None):
            raise ValueError(
                "VDEngine: selection='val' needs a validation protocol, but the data manager has no val_protocols. "
                "For SYSU-MM01 set val_for_selection=True (train on the 296 train ids, select on the 99 val ids), "
                "or use selection='final'."
            )
        self.amp = amp
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.channels_last = channels_last
        self.grad_clip = float(grad_clip)
        self.selection = selection
        self.eval_freq = int(eval_freq)
        self.offbyone = bool(official_scheduler_offbyone)
        self.metric = metric
        self.backend = backend
        self.eval_amp = eval_amp
        self.checkpoint_freq = int(checkpoint_freq)
        self.progress = progress
        self.provenance = _json_safe(dict(provenance or {}))
        self.train_ir_camids = frozenset(getattr(datamanager, "train_ir_camids", ()) or ())

        if feature_mode is not None:
            if not hasattr(unwrap_model(model), "feature_mode"):
                raise ValueError(
                    f"VDEngine: feature_mode={feature_mode!r} given but {type(model).__name__} has no feature_mode"
                )
            unwrap_model(model).feature_mode = feature_mode
        model = model.to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.criterion = criterion.to(self.device)
        self.model = vdist.wrap_model(model, self.dist, self.device, sync_bn, find_unused_parameters)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model("model", self.model, optimizer, scheduler)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._criterion_params = [p for p in self.criterion.parameters() if p.requires_grad]

        self.save_dir = ""
        self.max_epoch = 0
        self.best: dict[str, Any] = {"epoch": None, "rank1": None, "split": None}
        self.last_reports: dict[str, Any] = {}
        self._log = print if self.dist.is_main else (lambda *a, **k: None)

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def net(self) -> torch.nn.Module:
        """The model without its DDP wrapper."""
        return unwrap_model(self.model)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _train_sampler(self):
        for obj in (getattr(self.train_loader, "sampler", None), getattr(self.train_loader, "batch_sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                return obj
        return None

    def _loss_values(self, total: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Every term and ``'total'`` as floats (one device sync); raises :class:`NonFiniteLossError` naming the
        non-finite term(s) and the iteration."""
        names = list(terms) + ["total"]
        stacked = torch.stack([torch.as_tensor(terms[k]).detach().float().reshape(()) for k in terms]
                              + [total.detach().float().reshape(())])
        values = dict(zip(names, stacked.cpu().tolist()))
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            latest = osp.join(self.save_dir, LATEST) if self.save_dir else "(no save_dir)"
            where = f"epoch {self.epoch + 1}, iteration {getattr(self, 'batch_idx', 0) + 1}"
            raise NonFiniteLossError(
                f"non-finite loss at {where}: "
                + ", ".join(f"{k}={v}" for k, v in bad.items())
                + f". Training stopped before the optimiser step; the last good checkpoint {latest} is untouched. "
                "Lower the learning rate, set grad_clip, or train with amp='none'."
            )
        return values

    # ------------------------------------------------------------------------------------------------ training
    def forward_backward(self, data: Mapping[str, Any]) -> dict[str, float]:
        """One optimisation step on a torchreid batch dict; returns every loss term (and ``'total'``) as floats."""
        imgs, pids = self.parse_data_for_train(data)
        is_ir = _is_infrared(data["camid"], self.train_ir_camids)
        imgs = imgs.to(self.device, non_blocking=True)
        if self.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        pids = pids.to(self.device, non_blocking=True)
        is_ir = is_ir.to(self.device, non_blocking=True)

        with self._autocast():
            out = self.model(imgs, modality=is_ir)
        total, terms = self.criterion(_output_to_float(out), pids)
        summary = self._loss_values(total, terms)

        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        if self.dist.is_distributed and self._criterion_params:
            # parameters owned by the criterion (e.g. an MI estimator) are outside DDP: average their gradients here
            for p in self._criterion_params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(self.dist.world_size)
        if self.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return summary

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0, open_layers=None) -> dict[str, float]:
        """One epoch. Returns the epoch's mean of every loss term, ``lr``, ``images_per_s`` and ``time_s``."""
        losses = compat.utils.MetricMeter()
        self.set_model_mode("train")
        if fixbase_epoch > 0:
            # only when asked: torchreid's open_all_layers() would also set requires_grad on the BNNeck's frozen bias
            self.two_stepped_transfer_learning(self.epoch, fixbase_epoch, open_layers, model=self.net)
        sampler = self._train_sampler()
        if sampler is not None:
            sampler.set_epoch(self.epoch)
        if self.offbyone and self.scheduler is not None:
            with warnings.catch_warnings():  # stepping before optimizer.step() is the released behaviour here
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step")
                self.scheduler.step()  # released code: step at the start of the epoch (trap 16)
        lr = self.get_current_lr()

        self.num_batches = len(self.train_loader)
        bar = tqdm(
            total=self.num_batches,
            desc=f"epoch {self.epoch + 1}/{self.max_epoch}",
            disable=not (self.progress and self.dist.is_main),
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        n_img = 0
        t0 = time.time()
        for batch_idx, data in enumerate(self.train_loader):
            self.batch_idx = batch_idx
            summary = self.forward_backward(data)
            n_img += int(data["img"].shape[0])
            losses.update(summary)
            ips = n_img * self.dist.world_size / max(time.time() - t0, 1e-9)
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in summary.items()}, "img/s": f"{ips:.1f}"}, refresh=False)
            bar.update(1)
            if self.writer is not None:
                n_iter = self.epoch * self.num_batches + self.batch_idx
                for name, meter in losses.meters.items():
                    self.writer.add_scalar("Train/" + name, meter.val, n_iter)
                self.writer.add_scalar("Train/lr", lr, n_iter)
            if not self.progress and print_freq > 0 and (batch_idx + 1) % print_freq == 0:
                self._log(f"epoch [{self.epoch + 1}/{self.max_epoch}][{batch_idx + 1}/{self.num_batches}] {losses}")
        bar.close()
        elapsed = time.time() - t0
        if not self.offbyone and self.scheduler is not None:
            self.scheduler.step()  # torchreid's order: step at the end of the epoch

        means = vdist.all_reduce_mean({k: m.avg for k, m in losses.meters.items()})
        stats = {"epoch": self.epoch + 1, "lr": lr, **means,
                 "images_per_s": n_img * self.dist.world_size / max(elapsed, 1e-9), "time_s": elapsed}
        self._log(
            f"epoch {self.epoch + 1}/{self.max_epoch}  lr {lr:.3g}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in means.items())
            + f"  {stats['images_per_s']:.1f} img/s  {elapsed:.1f}s"
        )
        if self.writer is not None:
            self.writer.add_scalar("Epoch/lr", lr, self.epoch + 1)
            self.writer.add_scalar("Epoch/images_per_s", stats["images_per_s"], self.epoch + 1)
            for k, v in means.items():
                self.writer.add_scalar("Epoch/" + k, v, self.epoch + 1)
        return stats

    # --------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """Everything a resume needs; ``epoch`` = number of completed epochs (the next epoch to run)."""
        rng = get_rng_state()
        if self.dist.is_distributed:
            states: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(states, rng)
            rng_all = states
        else:
            rng_all = [rng]
        return {
            "state_dict": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "criterion": self.criterion.state_dict(),
            "epoch": int(epoch),
            "sampler_epoch": int(epoch),
            "rng": rng_all,
            "best": dict(self.best),
            "scheduler_offbyone": self.offbyone,
            "amp": self.amp,
            "model_class": type(self.net).__name__,
            "config": _json_safe(self.provenance),
        }

    def save_checkpoint(self, epoch: int) -> str | None:
        """Write ``latest.pth`` (and ``epoch_NNN.pth`` every ``checkpoint_freq`` epochs) atomically; rank 0 only."""
        state = self.checkpoint_state(epoch)  # collective under DDP: every rank takes part
        path = None
        if self.dist.is_main and self.save_dir:
            path = save_checkpoint_atomic(state, osp.join(self.save_dir, LATEST))
            if self.checkpoint_freq > 0 and epoch % self.checkpoint_freq == 0:
                save_checkpoint_atomic(state, osp.join(self.save_dir, f"epoch_{epoch:03d}.pth"))
        vdist.barrier()
        return path

    def resume_from(self, path: str) -> int:
        """Restore model, optimiser, scheduler, scaler, criterion, selection state and RNG states from ``path``
        (``'latest'`` = ``save_dir/latest.pth``). Returns the epoch to start from."""
        if path in ("latest", "auto"):
            path = osp.join(self.save_dir, LATEST)
        ckpt = load_checkpoint(path, map_location=self.device)
        required = ("state_dict", "optimizer", "epoch", "rng")
        missing = [k for k in required if k not in ckpt]
        if missing:
            raise KeyError(
                f'cannot resume from "{path}": it lacks {missing} (a weights-only file? load it with '
                "model.load_weights instead of resume)"
            )
        check_config_compatible(ckpt.get("config"), self.provenance, RESUME_CHECK_KEYS, source=path)
        if bool(ckpt.get("scheduler_offbyone", self.offbyone)) != self.offbyone:
            raise ValueError(
                f'cannot resume from "{path}": it was trained with official_scheduler_offbyone='
                f"{ckpt.get('scheduler_offbyone')}, this run uses {self.offbyone}"
            )
        load_model_weights(self.net, ckpt["state_dict"], source=path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None:
            if ckpt.get("scheduler") is None:
                raise KeyError(f'cannot resume from "{path}": it holds no scheduler state but this run has a scheduler')
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("criterion") is not None:
            self.criterion.load_state_dict(ckpt["criterion"])
        self.best = dict(ckpt.get("best") or self.best)
        rng = ckpt["rng"]
        if isinstance(rng, dict):
            rng = [rng]
        set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0])
        epoch = int(ckpt["epoch"])
        self._log(f'=> resumed from "{path}" at epoch {epoch}')
        return epoch

    # ----------------------------------------------------------------------------------------------- logging
    def _truncate_train_log(self, keep_upto: int) -> None:
        """After a resume, drop log lines of epochs that the resumed run will redo."""
        path = osp.join(self.save_dir, TRAIN_LOG)
        if not (self.dist.is_main and osp.isfile(path)):
            return
        with open(path) as f:
            lines = [ln for ln in f if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= keep_upto]
        with open(path, "w") as f:
            f.writelines(kept)

    def _append_train_log(self, stats: dict[str, Any]) -> None:
        if not (self.dist.is_main and self.save_dir):
            return
        with open(osp.join(self.save_dir, TRAIN_LOG), "a") as f:
            f.write(json.dumps(_json_safe(stats)) + "\n")

    # ------------------------------------------------------------------------------------------------ run
    def run(
        self,
        save_dir: str = "log",
        max_epoch: int = 0,
        start_epoch: int = 0,
        resume: str | None = None,
        eval_freq: int | None = None,
        print_freq: int = 10,
        test_only: bool = False,
        start_eval: int = 0,
        rerank: bool = False,
        fixbase_epoch: int = 0,
        open_layers=None,
    ) -> float | None:
        """Train ``max_epoch`` epochs (from ``start_epoch`` or a ``resume`` checkpoint) and test the selected model.

        Returns the test rank-1 of the first target (percent), or None when the job has no target.
        ``eval_freq`` overrides the constructor's value; periodic evaluation starts at epoch ``start_eval``.
        """
        self.save_dir = save_dir
        if self.dist.is_main and save_dir:
            os.makedirs(save_dir, exist_ok=True)
        if eval_freq is not None:
            self.eval_freq = int(eval_freq)
        if test_only:
            return self.test(save_dir=save_dir, rerank=rerank, selection_info={"selection": "checkpoint"})

        if self.writer is None and self.dist.is_main and save_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=save_dir)
        if self.dist.is_main and save_dir:
            for f in os.listdir(save_dir):  # temporary files of a save interrupted by a kill (never loaded)
                if f.endswith(".tmp") and ".pth." in f:
                    os.remove(osp.join(save_dir, f))
        if resume:
            start_epoch = self.resume_from(resume)
        self._truncate_train_log(start_epoch)
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        t_start = time.time()
        self._log(f"=> training epochs {start_epoch + 1}..{max_epoch} (selection: {self.selection})")
        for self.epoch in range(start_epoch, max_epoch):
            stats = self.train(print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers)
            done = self.epoch + 1
            last = done == max_epoch
            periodic = self.eval_freq > 0 and done >= start_eval and done % self.eval_freq == 0
            if periodic or (last and self.selection != "final"):
                stats.update(self._periodic_eval(done, rerank=rerank))
            self._append_train_log(stats)
            self.save_checkpoint(done)

        if max_epoch <= start_epoch:
            self._log("=> nothing to train (start epoch >= max_epoch)")
        selection_info = self._select_final_model()
        rank1 = self.test(save_dir=save_dir, rerank=rerank, selection_info=selection_info)
        self._log(f"=> elapsed {time.time() - t_start:.1f}s")
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return rank1

    # -------------------------------------------------------------------------------------- model selection
    def _periodic_eval(self, done: int, rerank: bool = False) -> dict[str, float]:
        """Evaluate on the validation protocol (or the test protocol with ``selection='test'``); keep the best model
        (first target's rank-1) for ``selection`` in ``best_<split>.pth``."""
        split = "test" if self.selection == "test" else "val"
        if split == "val" and not getattr(self.datamanager, "val_protocols", None):
            self._log("=> periodic evaluation skipped: no validation protocol (the test set is not used for selection)")
            return {}
        reports = self.evaluate(split=split, rerank=rerank)
        metrics: dict[str, float] = {}
        first = None
        for name, rep in reports.items():
            first = rep.rank1 if first is None else first
            for key in ("rank1", "mAP", "mINP"):
                value = rep.rank1 if key == "rank1" else rep.mean.get(key)
                if value is not None:
                    metrics[f"{split}/{name}/{key}"] = float(value)
        obj = vdist.broadcast_object({"metrics": metrics, "first": first})
        metrics, first = obj["metrics"], obj["first"]
        improved = first is not None and (self.best["rank1"] is None or first > self.best["rank1"])
        if self.selection != "final" and improved:
            self.best = {"epoch": done, "rank1": float(first), "split": split}
            if self.dist.is_main and self.save_dir:
                save_checkpoint_atomic(
                    {"state_dict": self.net.state_dict(), "epoch": done, "rank1": float(first), "split": split,
                     "config": _json_safe(self.provenance)},
                    osp.join(self.save_dir, f"best_{split}.pth"),
                )
            vdist.barrier()
        return metrics

    def _select_final_model(self) -> dict[str, Any]:
        """Load the selected weights (best-on-val / best-on-test) and describe the choice for the results JSON."""
        if self.selection == "final" or self.best.get("epoch") is None:
            return {"selection": "final", "selected_epoch": self.max_epoch}
        split = self.best["split"]
        path = osp.join(self.save_dir, f"best_{split}.pth")
        ckpt = load_checkpoint(path, map_location=self.device)
        load_model_weights(self.net, ckpt["state_dict"], source=path)
        label = "best-on-val" if split == "val" else "test-selected (optimistic: chosen on the test set)"
        self._log(f"=> selected epoch {self.best['epoch']} ({label}, rank-1 {self.best['rank1']:.2f})")
        return {"selection": label, "selected_epoch": self.best["epoch"],
                f"selection_{split}_rank1": self.best["rank1"]}

    # ----------------------------------------------------------------------------------------------- testing
    def _shard_features(self, net: torch.nn.Module, loader, ir_camids, desc: str):
        """Features of the whole ``loader.dataset`` in dataset order. Single process: one pass. DDP: each rank
        extracts every ``world_size``-th image (a strided ``Subset``), the shards are gathered on every rank
        (``all_gather_object``) and put back in dataset order."""
        from torch.utils.data import DataLoader, Subset

        from vdreid.evaluation.extract import extract_features

        amp_dtype = self.amp_dtype if self.eval_amp else None
        if not self.dist.is_distributed:
            f, p, c, _ = extract_features(net, loader, self.device, ir_camids, amp_dtype, desc=desc)
            return f.numpy(), p, c
        n = len(loader.dataset)
        idx = list(range(self.dist.rank, n, self.dist.world_size))
        part = None
        if idx:
            shard = DataLoader(Subset(loader.dataset, idx), batch_size=loader.batch_size, shuffle=False,
                               num_workers=loader.num_workers, collate_fn=loader.collate_fn)
            f, p, c, _ = extract_features(net, shard, self.device, ir_camids, amp_dtype, desc=desc)
            part = (idx, f.numpy(), p, c)
        parts: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(parts, part)
        parts = [q for q in parts if q is not None]
        dim = parts[0][1].shape[1]
        feats = np.zeros((n, dim), dtype=np.float32)
        pids = np.zeros(n, dtype=np.int64)
        camids = np.zeros(n, dtype=np.int64)
        for ids, f, p, c in parts:
            feats[ids], pids[ids], camids[ids] = f, p, c
        return feats, pids, camids

    def _broadcast_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm running statistics (each rank updated its own in its last training
        forward), so that every shard of a gathered evaluation sees the model rank 0 checkpoints."""
        if self.dist.is_distributed:
            for b in self.net.buffers():
                dist.broadcast(b.data, src=0)

    @torch.no_grad()
    def evaluate(self, split: str = "test", rerank: bool = False) -> dict[str, Any]:
        """Run the protocol evaluator on every target of ``split`` (``'test'`` or ``'val'``).

        Under DDP the features are extracted in shards by every rank and gathered; rank 0 ranks and scores them
        (the other ranks return ``{}``). Returns ``{target: EvalReport}``.
        """
        from vdreid.evaluation.evaluator import run_protocol

        if split == "test":
            loaders, protocols = self.test_loader, self.datamanager.protocols
        else:
            loaders, protocols = self.datamanager.val_loader, self.datamanager.val_protocols
        reports: dict[str, Any] = {}
        net = self.net
        was_training = net.training
        net.eval()
        self._broadcast_buffers()
        for name in loaders:
            if name not in protocols:
                raise KeyError(f"VDEngine.evaluate: no {split} protocol for target {name!r}")
            t0 = time.perf_counter()
            ir = self.datamanager.ir_camids_of(name)
            qf, qp, qc = self._shard_features(net, loaders[name]["query"], ir, f"{split} query features")
            gf, gp, gc = self._shard_features(net, loaders[name]["gallery"], ir, f"{split} gallery features")
            if not self.dist.is_main:
                continue
            rep = run_protocol(protocols[name], qf, gf, qp, gp, qc, gc, metric=self.metric, backend=self.backend,
                               rerank=rerank)
            rep.wall_time_s = time.perf_counter() - t0
            reports[name] = rep
            self._log(f"##### {split}: {name} ({protocols[name].name}) #####")
            self._log(rep.table())
            if self.writer is not None:
                step = self.epoch + 1
                self.writer.add_scalar(f"{split.capitalize()}/{name}/rank1", float(rep.rank1), step)
                for key in ("mAP", "mINP"):
                    if key in rep.mean:
                        self.writer.add_scalar(f"{split.capitalize()}/{name}/{key}", float(rep.mean[key]), step)
        net.train(was_training)
        vdist.barrier()
        return reports

    def test(self, save_dir: str = "", rerank: bool = False, selection_info: dict | None = None, **_torchreid_kwargs):
        """Evaluate the current model on every test target with its protocol, print the tables, write
        ``save_dir/results_<target>.json`` with provenance (including which model was selected and how), and return
        the first target's rank-1 (percent). torchreid's keyword arguments (``dist_metric``, ``normalize_feature``,
        ``ranks``...) are accepted and ignored: the protocol decides them (the evaluator L2-normalises)."""
        from vdreid.evaluation import provenance_defaults

        save_dir = save_dir or self.save_dir
        reports = self.evaluate(split="test", rerank=rerank)
        self.last_reports = reports
        rank1 = None
        if self.dist.is_main:
            info = {"selection": "final", "selected_epoch": self.epoch + 1, **(selection_info or {})}
            prov = {**provenance_defaults(), **self.provenance, **info,
                    "amp": self.amp, "world_size": self.dist.world_size}
            for name, rep in reports.items():
                rank1 = float(rep.rank1) if rank1 is None else rank1
                if save_dir:
                    rep.to_json(osp.join(save_dir, f"results_{name}.json"), **_json_safe(prov))
        return vdist.broadcast_object(rank1)
