"""``VIEngine``: torchreid's ``Engine`` for every vdreid method, as a small loop plus hooks.

The loop (:meth:`VIEngine.forward_backward`) does forward, loss, backward and step for any method: the model is
called as ``model(x, modality=is_ir)`` and its output goes to the method's criterion, which returns the total and a
dict of weighted terms (contracts in :mod:`vdreid.methods.base`). Everything around the steps is a hook
(:mod:`vdreid.engine.hooks`): sampler epochs, the lr schedule, progress, periodic evaluation and model selection,
the writers, checkpoints. Mixed precision and DDP are helpers beside the loop (:mod:`vdreid.engine.amp`,
:mod:`vdreid.engine.distributed`). Evaluation (:meth:`VIEngine.evaluate`) extracts each image once with the one
extraction routine and runs each target's :class:`~vdreid.data.Protocol`.

What this adds to torchreid's ``Engine``, and why it is not torchreid's code: torchreid's engines call
``model(imgs)`` with one fixed loss, know no modality, evaluate SYSU/RegDB/LLCM with the wrong protocol (merged
galleries, no camera rule, no deduplicated CMC), resume only model/optimiser/scheduler and load checkpoints unsafely.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os.path as osp
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from vdreid import compat
from vdreid.engine import distributed as vdist
from vdreid.engine.amp import AMP
from vdreid.engine.checkpoint import unwrap_model
from vdreid.engine.hooks import (
    LATEST,
    SELECTIONS,
    CheckpointHook,
    EpochSummaryHook,
    EvalHook,
    HookBase,
    JSONLogHook,
    LRSchedulerHook,
    ProgressHook,
    SamplerEpochHook,
    TensorboardHook,
)
from vdreid.engine.state import RunStateMixin, _json_safe
from vdreid.engine.testing import EvaluationMixin
from vdreid.errors import ConfigError, NonFiniteLossError

logger = logging.getLogger(__name__)


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


def _takes_modality(model: torch.nn.Module) -> bool:
    try:
        return "modality" in inspect.signature(unwrap_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


class VIEngine(RunStateMixin, EvaluationMixin, compat.Engine):
    """Training and evaluation of any registered vdreid method (public surface: torchreid's ``run``, ``train``,
    ``test``).

    Args:
        datamanager: ``vdreid.data.CrossModalDataManager`` (``train_loader``, ``test_loader``, ``protocols``,
            ``train_ir_camids``, ``ir_camids_of(name)``; ``val_loader``/``val_protocols`` for ``selection='val'``).
        model: ``forward(x, modality=None)``; train mode returns what ``criterion`` takes, eval mode the test
            feature (B, D).
        optimizer: over the model's (and the criterion's) parameters; None builds an evaluation-only engine.
        criterion: ``criterion(outputs, pids) -> (total, {term: 0-dim tensor})`` (None for evaluation only).
        scheduler: a per-epoch schedule, stepped at the end (``scheduler_step='end'``, torchreid's order) or the
            start (``'start'``: the released VD code's order; :class:`~vdreid.engine.hooks.LRSchedulerHook`) of each
            epoch.
        use_gpu: train on ``cuda:LOCAL_RANK`` when CUDA is available.
        amp: ``'none'``, ``'bf16'`` (CPU or GPU) or ``'fp16'`` (GPU only).
        channels_last: model and inputs in channels-last memory format.
        grad_clip: max global gradient norm (0 = off).
        selection: which model the final test evaluates: ``'final'`` (the last epoch), ``'val'`` (best rank-1 on the
            validation protocol) or ``'test'`` (best rank-1 on the test protocol, the original repositories' habit:
            recorded as selected-on-test).
        eval_freq, eval_start: periodic evaluation every ``eval_freq`` epochs from epoch ``eval_start`` (0 = none).
        schedule: the :class:`~vdreid.engine.optim.ScheduleSpec` of ``scheduler``, for the start banner's lr events
            (optional).
        metric, backend, max_rank, flip, approximate: passed to the evaluator (``'cosine'|'euclidean'``,
            ``'auto'|'faiss'|'torch'``, the CMC length, flip test-time augmentation, None or an approximate index
            ``'hnsw'|'ivf'``, flagged in the results).
        feature_mode: the model's test feature (``model.feature_mode``); None keeps the model's.
        provenance: JSON-able run description stored in checkpoints and results JSON.
        sync_bn, find_unused_parameters: DDP options (used only when WORLD_SIZE > 1).
        eval_amp: also extract evaluation features under the training autocast dtype (default: fp32 features).
        checkpoint_every: also keep ``epoch_NNN.pth`` every N epochs (0: only ``latest.pth`` and the selected best).
        progress: show a tqdm bar per epoch (rank 0 only); print_freq: iterations between loss updates.
        hooks: extra :class:`~vdreid.engine.hooks.HookBase` objects, run after the built-in ones.
    """

    def __init__(
        self,
        datamanager,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: torch.nn.Module | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        use_gpu: bool = False,
        amp: str = "none",
        channels_last: bool = False,
        grad_clip: float = 0.0,
        selection: str = "final",
        eval_freq: int = 0,
        eval_start: int = 0,
        scheduler_step: str = "end",
        schedule=None,
        metric: str = "cosine",
        backend: str = "auto",
        max_rank: int = 20,
        flip: bool = False,
        approximate: str | None = None,
        feature_mode: str | None = None,
        provenance: dict | None = None,
        sync_bn: bool = False,
        find_unused_parameters: bool = False,
        eval_amp: bool = False,
        checkpoint_every: int = 0,
        progress: bool = True,
        print_freq: int = 20,
        hooks: Sequence[HookBase] = (),
    ) -> None:
        super().__init__(datamanager, use_gpu=use_gpu)
        if selection not in SELECTIONS:
            raise ValueError(f"VIEngine: selection must be one of {SELECTIONS}, got {selection!r}")
        if grad_clip < 0:
            raise ValueError(f"VIEngine: grad_clip must be >= 0 (0 = off), got {grad_clip}")
        if eval_freq < 0:
            raise ValueError(f"VIEngine: eval_freq must be >= 0 (0 = no periodic evaluation), got {eval_freq}")
        if (optimizer is None) != (criterion is None):
            raise ValueError("VIEngine: give both an optimizer and a criterion (training), or neither (evaluation)")
        self.dist = vdist.current()
        if self.use_gpu:
            self.device = torch.device("cuda", self.dist.local_rank if self.dist.is_distributed else 0)
        else:
            self.device = torch.device("cpu")
        try:
            self.amp = AMP(amp, self.device)
        except ValueError as exc:
            raise ConfigError(f"config key 'train.amp': {exc}") from None
        if selection == "val" and not getattr(datamanager, "val_protocols", None):
            raise ConfigError(
                "config key 'train.selection': selection='val' needs a validation protocol; the data manager has none. "
                "For SYSU-MM01 set val_for_selection=True (train on the 296 train ids, select on the 99 val ids), "
                "or use selection='final'."
            )
        self.channels_last = channels_last
        self.grad_clip = float(grad_clip)
        self.selection = selection
        self.metric, self.backend, self.max_rank, self.flip = metric, backend, int(max_rank), bool(flip)
        self.approximate = approximate or None
        self.eval_amp = eval_amp
        self.progress = progress
        self.provenance = _json_safe(dict(provenance or {}))
        self.train_ir_camids = frozenset(getattr(datamanager, "train_ir_camids", ()) or ())

        if feature_mode is not None:
            if not hasattr(unwrap_model(model), "feature_mode"):
                raise ValueError(
                    f"VIEngine: feature_mode={feature_mode!r} given but {type(model).__name__} has no feature_mode"
                )
            unwrap_model(model).feature_mode = feature_mode
        self._takes_modality = _takes_modality(model)
        model = model.to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.criterion = criterion.to(self.device) if criterion is not None else None
        self.model = vdist.wrap_model(model, self.dist, self.device, sync_bn, find_unused_parameters)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model("model", self.model, optimizer, scheduler)
        self._params = [p for g in optimizer.param_groups for p in g["params"]] if optimizer is not None else []
        self._criterion_params = [p for p in self.criterion.parameters() if p.requires_grad] if criterion else []

        self.save_dir = ""
        self.max_epoch = 0
        self.start_epoch = 0
        self.epoch = 0
        self.batch_idx = 0
        self.batch_images = 0
        self.lr = 0.0
        self.step_summary: dict[str, float] = {}
        self.epoch_stats: dict[str, Any] = {}
        self.last_reports: dict[str, Any] = {}
        self.last_features: dict[str, tuple] = {}
        self._log = logger.info if self.dist.is_main else (lambda *a, **k: None)

        self.eval_hook = EvalHook(selection, eval_freq, eval_start)
        self.checkpoint_hook = CheckpointHook(checkpoint_every)
        self.progress_hook = ProgressHook(progress, print_freq)
        built: list[HookBase] = [SamplerEpochHook()]
        if scheduler is not None:
            built.append(LRSchedulerHook(scheduler, scheduler_step))
        built += [self.progress_hook, self.eval_hook, EpochSummaryHook(), TensorboardHook(print_freq), JSONLogHook(),
                  self.checkpoint_hook]
        self.scheduler_step = scheduler_step
        self.schedule = schedule
        self.hooks: list[HookBase] = []
        self.register_hooks(built + list(hooks))

    # ------------------------------------------------------------------------------------------------ helpers
    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    def _call_hooks(self, stage: str) -> None:
        for h in self.hooks:
            getattr(h, stage)()

    @property
    def net(self) -> torch.nn.Module:
        """The model without its DDP wrapper."""
        return unwrap_model(self.model)

    @property
    def best(self) -> dict[str, Any]:
        return self.eval_hook.best

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
            where = f"epoch {self.epoch + 1}, iteration {self.batch_idx + 1}"
            raise NonFiniteLossError(
                f"non-finite loss at {where}: "
                + ", ".join(f"{k}={v}" for k, v in bad.items())
                + f". Training stopped before the optimiser step; the last good checkpoint {latest} is untouched. "
                "Lower the learning rate, set grad_clip, or train with amp='none'."
            )
        return values

    def _batch(self, data: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from vdreid.data.modality import is_infrared

        imgs, pids = self.parse_data_for_train(data)
        is_ir = torch.as_tensor(is_infrared(data["camid"], self.train_ir_camids), dtype=torch.bool)
        imgs = imgs.to(self.device, non_blocking=True)
        if self.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        return imgs, pids.to(self.device, non_blocking=True), is_ir.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------------------------------------ the loop
    def forward_backward(self, data: Mapping[str, Any]) -> dict[str, float]:
        """One optimisation step on a torchreid batch dict: forward, loss, backward, step. Returns every loss term
        (and ``'total'``) as floats."""
        imgs, pids, is_ir = self._batch(data)
        with self.amp.autocast():
            out = self.model(imgs, modality=is_ir) if self._takes_modality else self.model(imgs)
        total, terms = self.criterion(_output_to_float(out), pids)
        summary = self._loss_values(total, terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.amp.backward(total)
        if self.dist.is_distributed and self._criterion_params:
            # parameters owned by the criterion (e.g. an MI estimator) are outside DDP: average their gradients here
            for p in self._criterion_params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(self.dist.world_size)
        self.amp.step(self.optimizer, self._params, self.grad_clip)
        return summary

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0, open_layers=None) -> dict[str, Any]:
        """One epoch of steps (hooks are called by :meth:`run`). Returns the epoch's mean of every loss term, ``lr``,
        ``images_per_s`` and ``time_s``."""
        if self.optimizer is None:
            raise ValueError("VIEngine.train: this engine was built for evaluation only (no optimizer, no criterion)")
        sums: dict[str, float] = {}
        self.set_model_mode("train")
        if fixbase_epoch > 0:
            # only when asked: torchreid's open_all_layers() would also set requires_grad on the BNNeck's frozen bias
            self.two_stepped_transfer_learning(self.epoch, fixbase_epoch, open_layers, model=self.net)
        self.num_batches = len(self.train_loader)
        n_img, steps, t0 = 0, 0, time.time()
        for idx, data in enumerate(self.train_loader):
            self.batch_idx = idx
            self.batch_images = int(data["img"].shape[0])
            self.step_summary = self.forward_backward(data)
            for k, v in self.step_summary.items():
                sums[k] = sums.get(k, 0.0) + v
            n_img += self.batch_images
            steps += 1
            self._call_hooks("after_step")
        elapsed = time.time() - t0
        means = vdist.all_reduce_mean({k: v / max(steps, 1) for k, v in sums.items()})
        return {"epoch": self.epoch + 1, "lr": self.lr, **means,
                "images_per_s": n_img * self.dist.world_size / max(elapsed, 1e-9), "time_s": elapsed}

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
        start_eval: int | None = None,
        rerank: bool = False,
        fixbase_epoch: int = 0,
        open_layers=None,
        overwrite: bool = False,
        **test_kwargs: Any,
    ) -> float | None:
        """Train ``max_epoch`` epochs (from ``start_epoch`` or a ``resume`` checkpoint) and test the selected model.

        Returns the test rank-1 of the first target (percent), or None when the job has no target. ``eval_freq`` /
        ``start_eval`` override the constructor's periodic evaluation; torchreid's test keywords go to :meth:`test`.

        The run folder (``docs/run-folders.md``): it must be writable before any work; a new run refuses a folder
        that holds another run (``overwrite=True`` moves the old files aside); one process writes it at a time (a
        lock, taken over from a crashed run). A resume refuses changed training keys and records allowed changes.
        """
        from vdreid.engine import run_dir

        self.save_dir = save_dir
        if self.dist.is_main and save_dir and test_only:
            run_dir.check_writable(save_dir)
        lock = None
        if self.dist.is_main and save_dir and not test_only:
            lock = run_dir.prepare_run_dir(save_dir, resume=bool(resume), overwrite=overwrite)
        vdist.barrier()
        try:
            return self._run(save_dir, max_epoch, start_epoch, resume, eval_freq, print_freq, test_only, start_eval,
                             rerank, fixbase_epoch, open_layers, **test_kwargs)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, save_dir, max_epoch, start_epoch, resume, eval_freq, print_freq, test_only, start_eval, rerank,
             fixbase_epoch, open_layers, **test_kwargs) -> float | None:
        if eval_freq is not None and eval_freq >= 0:
            self.eval_hook.eval_freq = int(eval_freq)
        if start_eval is not None:
            self.eval_hook.eval_start = int(start_eval)
        self.eval_hook.rerank = rerank
        if test_only:
            return self.test(save_dir=save_dir, rerank=rerank, selection_info={"selection": "checkpoint"},
                             **test_kwargs)
        if self.optimizer is None:
            raise ValueError("VIEngine.run: this engine was built for evaluation only; use test_only=True")
        if resume:
            start_epoch = self.resume_from(resume)
        self.start_epoch, self.max_epoch = start_epoch, max_epoch
        self._write_config()
        t_start = time.time()
        if max_epoch > start_epoch:
            self._log_plan()
        self._call_hooks("before_train")
        self._log("training epochs %d..%d (selection: %s)", start_epoch + 1, max_epoch, self.selection)
        for self.epoch in range(start_epoch, max_epoch):
            self._call_hooks("before_epoch")
            self.epoch_stats = self.train(print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers)
            self._call_hooks("after_epoch")
        if max_epoch <= start_epoch:
            self._log("nothing to train (start epoch %d >= max_epoch %d)", start_epoch, max_epoch)
        self._call_hooks("after_train")
        rank1 = self.test(save_dir=save_dir, rerank=rerank, selection_info=self.eval_hook.selection_info,
                          **test_kwargs)
        self._log("elapsed %.1fs", time.time() - t_start)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return rank1


#: the name every test, benchmark and user script knows
VDEngine = VIEngine
