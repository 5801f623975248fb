"""``VIEngine``: torchreid's ``Engine`` for every vdreid method, as a small loop plus hooks, built from its
collaborators.

The loop (:meth:`VIEngine.forward_backward`) does forward, loss, backward and step for any method: the model is
called as ``model(x, modality=is_ir)`` and its output goes to the method's criterion, which returns the total and a
dict of weighted terms (contracts in :mod:`vdreid.methods.base`). Everything around the steps is a hook
(:mod:`vdreid.engine.hooks`): sampler epochs, the lr schedule, progress, periodic evaluation and model selection,
the writers, checkpoints. The trainer holds, rather than inherits, the rest: an
:class:`~vdreid.engine.evaluator.Evaluator` (every target's protocol on features extracted once, results JSON,
ranked lists), a :class:`~vdreid.engine.run_state.RunState` (checkpoint state, resume and its policy,
``config.yaml``, the start banner, the record of written files), and mixed precision and DDP helpers
(:mod:`vdreid.engine.amp`, :mod:`vdreid.engine.distributed`).

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
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from vdreid import compat
from vdreid.data.modality import is_infrared
from vdreid.engine import distributed as vdist
from vdreid.engine import run_dir
from vdreid.engine.amp import AMP
from vdreid.engine.checkpoint import unwrap_model
from vdreid.engine.evaluator import EVAL_NEEDS, Evaluator, require_cross_modal
from vdreid.engine.hooks import (
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
from vdreid.engine.options import EvalOptions, TrainOptions
from vdreid.engine.outputs import Outputs
from vdreid.engine.run_dir import LATEST
from vdreid.engine.run_state import RunState
from vdreid.errors import ConfigError, NonFiniteLossError

logger = logging.getLogger(__name__)

#: what training reads from the data manager (besides what evaluation reads: ``EVAL_NEEDS``)
TRAIN_NEEDS = {
    "train_ir_camids": "which training cameras are infrared; without it every image would train as visible",
}

#: constructor keywords of earlier versions that moved into the options objects: keyword -> where it goes now
_MOVED = {**{f.name: f"evaluator=Evaluator(datamanager, model, EvalOptions({f.name}=...))"
             for f in dataclasses.fields(EvalOptions)},
          **{f.name: f"options=TrainOptions({f.name}=...)" for f in dataclasses.fields(TrainOptions)},
          "eval_amp": "evaluator=Evaluator(datamanager, model, EvalOptions(amp=...))",
          "provenance": "evaluator=Evaluator(datamanager, model, provenance=...)"}


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


class VIEngine(compat.Engine):
    """Training and evaluation of any registered vdreid method (public surface: torchreid's ``run``, ``train``,
    ``test``).

    Args:
        datamanager: a :class:`vdreid.data.CrossModalDataManager` (``train_loader``, ``test_loader``,
            ``protocols``, ``train_ir_camids``, ``ir_camids_of(name)``; ``val_loader``/``val_protocols`` for
            ``selection='val'``). torchreid's own ``ImageDataManager`` is refused (a ``ConfigError``): it knows no
            modality and no VI protocol.
        model: ``forward(x, modality=None)``; train mode returns what ``criterion`` takes, eval mode the test
            feature (B, D).
        optimizer: over the model's (and the criterion's) parameters; None (with ``criterion=None``) builds an
            evaluation-only engine.
        criterion: ``criterion(outputs, pids) -> (total, {term: 0-dim tensor})``.
        scheduler: a per-epoch schedule, stepped at the end or the start of each epoch
            (``options.scheduler_step``; :class:`~vdreid.engine.hooks.LRSchedulerHook`).
        evaluator: the :class:`~vdreid.engine.evaluator.Evaluator` of ``model`` (its options and the run's
            provenance); default ``Evaluator(datamanager, model)``.
        options: :class:`~vdreid.engine.options.TrainOptions` (amp, selection, periodic evaluation, checkpoints,
            progress, ...); default ``TrainOptions()``.
        hooks: extra :class:`~vdreid.engine.hooks.HookBase` objects, run after the built-in ones.
        use_gpu: train on ``cuda:LOCAL_RANK`` when CUDA is available (torchreid's keyword).

    After a run: ``outputs`` (the files it wrote), ``last_reports`` (the final test's reports), ``best`` (the
    selection state), ``provenance`` (the run description, the evaluator's).
    """

    def __init__(
        self,
        datamanager,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: torch.nn.Module | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        *,
        evaluator: Evaluator | None = None,
        options: TrainOptions | None = None,
        hooks: Sequence[HookBase] = (),
        use_gpu: bool = False,
        **moved: Any,
    ) -> None:
        if moved:
            where = {k: _MOVED.get(k) for k in moved}
            unknown = sorted(k for k, v in where.items() if v is None)
            if unknown:
                raise TypeError(f"VIEngine: unexpected keyword arguments {unknown}")
            raise TypeError("VIEngine takes its options as objects now: " + "; ".join(
                f"{k} -> {v}" for k, v in sorted(where.items())))
        if (optimizer is None) != (criterion is None):
            raise ValueError("VIEngine: give both an optimizer and a criterion (training), or neither (evaluation)")
        needs = dict(EVAL_NEEDS, **(TRAIN_NEEDS if optimizer is not None else {}))
        require_cross_modal(datamanager, needs, "vdreid.engine.VIEngine")
        super().__init__(datamanager, use_gpu=use_gpu)
        opts = options or TrainOptions()
        self.options = opts
        self.dist = vdist.current()
        self.device = vdist.device_for(self.use_gpu, self.dist)
        try:
            self.amp = AMP(opts.amp, self.device)
        except ValueError as exc:
            raise ConfigError(f"config key 'train.amp': {exc}") from None
        if opts.selection == "val" and not getattr(datamanager, "val_protocols", None):
            raise ConfigError(
                "config key 'train.selection': selection='val' needs a validation protocol; the data manager has none. "
                "For SYSU-MM01 set val_for_selection=True (train on the 296 train ids, select on the 99 val ids), "
                "or use selection='final'."
            )
        if evaluator is not None and evaluator.net is not unwrap_model(model):
            raise ValueError("VIEngine: the evaluator evaluates another model than the one given; build it as "
                             "Evaluator(datamanager, model, ...) with the same model")
        self.evaluator = evaluator if evaluator is not None else Evaluator(datamanager, model)
        self.train_ir_camids = frozenset(getattr(datamanager, "train_ir_camids", ()) or ())

        self._takes_modality = _takes_modality(model)
        model = model.to(self.device)
        if opts.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.criterion = criterion.to(self.device) if criterion is not None else None
        self.model = vdist.wrap_model(model, self.dist, self.device, opts.sync_bn, opts.find_unused_parameters)
        self.evaluator.net = self.net  # SyncBatchNorm conversion may have replaced the root module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model("model", self.model, optimizer, scheduler)
        self._params = [p for g in optimizer.param_groups for p in g["params"]] if optimizer is not None else []
        self._criterion_params = [p for p in self.criterion.parameters() if p.requires_grad] if criterion else []

        self.max_epoch = 0
        self.start_epoch = 0
        self.epoch = 0
        self.batch_idx = 0
        self.batch_images = 0
        self.lr = 0.0
        self.step_summary: dict[str, float] = {}
        self.epoch_stats: dict[str, Any] = {}
        self._log = logger.info if self.dist.is_main else (lambda *a, **k: None)

        # the selection evaluations' flip: the option, else the test's (resolved here so that the results record it)
        selection_flip = self.evaluator.options.flip if opts.selection_flip is None else opts.selection_flip
        self.eval_hook = EvalHook(self.evaluator.evaluate, opts.selection, opts.eval_freq, opts.eval_start,
                                  eval_phase=opts.eval_phase, eval_last=opts.eval_last, flip=bool(selection_flip))
        self.checkpoint_hook = CheckpointHook(opts.checkpoint_every)
        self.progress_hook = ProgressHook(opts.progress, opts.print_freq)
        self.run_state = RunState(net=self.net, optimizer=optimizer, scheduler=scheduler, criterion=self.criterion,
                                  amp=self.amp, selection=self.eval_hook, options=opts,
                                  provenance=self.evaluator.provenance, dist=self.dist, device=self.device)
        built: list[HookBase] = [SamplerEpochHook()]
        if scheduler is not None:
            built.append(LRSchedulerHook(scheduler, opts.scheduler_step))
        built += [self.progress_hook, self.eval_hook, EpochSummaryHook(), TensorboardHook(opts.print_freq),
                  JSONLogHook(), self.checkpoint_hook]
        self.hooks: list[HookBase] = []
        self.register_hooks(built + list(hooks))

    # ------------------------------------------------------------------------------------------------ helpers
    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Append ``hooks``; each sees this trainer as ``hook.trainer``, a ``weakref.proxy`` (the trainer holds its
        hooks, a hook does not keep the trainer alive)."""
        proxy = weakref.proxy(self)
        for h in hooks:
            h.trainer = proxy
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
        """The selection state: ``{'epoch', 'rank1', 'split'}`` of the best periodic evaluation so far."""
        return self.eval_hook.best

    @property
    def provenance(self) -> dict[str, Any]:
        """The run description stored in checkpoints and results JSON (the evaluator's dict)."""
        return self.evaluator.provenance

    @property
    def save_dir(self) -> str:
        return self.run_state.save_dir

    @save_dir.setter
    def save_dir(self, value: str) -> None:
        self.run_state.save_dir = value

    @property
    def outputs(self) -> Outputs:
        """Every file this engine wrote (checkpoints, ``config.yaml``, ``train_log.jsonl``, tensorboard events,
        results JSON, ranked-list folders), in the order of the first write: :class:`~vdreid.engine.outputs.Outputs`
        (``items()`` gives ``(path, kind)``)."""
        return self.run_state.written.merged(self.evaluator.written)

    @property
    def last_reports(self) -> dict[str, Any]:
        """``{target: EvalReport}`` of the last test."""
        return self.evaluator.last_reports

    @property
    def last_features(self) -> dict[str, tuple]:
        return self.evaluator.last_features

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
        imgs, pids = self.parse_data_for_train(data)
        is_ir = torch.as_tensor(is_infrared(data["camid"], self.train_ir_camids), dtype=torch.bool)
        imgs = imgs.to(self.device, non_blocking=True)
        if self.options.channels_last:
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
        self.amp.step(self.optimizer, self._params, self.options.grad_clip)
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

    # ------------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, split: str = "test", rerank: bool = False, metric: str | None = None) -> dict[str, Any]:
        """Every target of ``split`` through its protocol (:meth:`Evaluator.evaluate
        <vdreid.engine.evaluator.Evaluator.evaluate>`). Returns ``{target: EvalReport}`` on rank 0."""
        return self.evaluator.evaluate(split=split, rerank=rerank, metric=metric)

    def test(self, save_dir: str = "", rerank: bool = False, selection_info: dict | None = None,
             **torchreid_kwargs: Any) -> float | None:
        """Test the current model on every target (:meth:`Evaluator.test <vdreid.engine.evaluator.Evaluator.test>`:
        torchreid's keywords honoured or refused), write ``results_<target>.json`` into ``save_dir`` (default: the
        run's) with the run's provenance, which model was selected (``selection_info``; default the current
        epoch) and the training precision; return the first target's rank-1 (percent)."""
        info = {"selection": "final", "selected_epoch": self.epoch + 1, **(selection_info or {})}
        return self.evaluator.test(save_dir=save_dir or self.save_dir, rerank=rerank, selection_info=info,
                                   record={"amp": self.amp.mode}, **torchreid_kwargs)

    def write_ranked_lists(self, name: str, save_dir: str, topk: int = 10, max_queries: int | None = 24) -> str:
        """Ranked-list pictures of target ``name`` from the last test's features
        (:meth:`Evaluator.write_ranked_lists <vdreid.engine.evaluator.Evaluator.write_ranked_lists>`)."""
        return self.evaluator.write_ranked_lists(name, save_dir, topk=topk, max_queries=max_queries)

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
        ``start_eval`` override the options' periodic evaluation; torchreid's test keywords go to :meth:`test`.

        The run folder (``docs/run-folders.md``): it must be writable before any work; a new run refuses a folder
        that holds another run (``overwrite=True`` moves the old files aside); one process writes it at a time (a
        lock, taken over from a crashed run). A resume refuses changed training keys and records allowed changes.
        What the run wrote is in :attr:`outputs`.
        """
        self.save_dir = save_dir
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
        self.eval_hook.check_schedule()
        self.eval_hook.rerank = rerank
        if test_only:
            return self.test(save_dir=save_dir, rerank=rerank, selection_info={"selection": "checkpoint"},
                             **test_kwargs)
        if self.optimizer is None:
            raise ValueError("VIEngine.run: this engine was built for evaluation only; use test_only=True")
        if resume:
            start_epoch = self.run_state.resume_from(resume)
        self.start_epoch, self.max_epoch = start_epoch, max_epoch
        self.run_state.write_config()
        t_start = time.time()
        if max_epoch > start_epoch:
            self.run_state.log_plan(self.train_loader, max_epoch, start_epoch)
        self._call_hooks("before_train")
        self._log("training epochs %d..%d (selection: %s)", start_epoch + 1, max_epoch, self.options.selection)
        for self.epoch in range(start_epoch, max_epoch):
            self._call_hooks("before_epoch")
            self.epoch_stats = self.train(print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers)
            self._call_hooks("after_epoch")
        if max_epoch <= start_epoch:
            self._log("nothing to train (start epoch %d >= max_epoch %d)", start_epoch, max_epoch)
        self._call_hooks("after_train")
        rank1 = self.test(save_dir=save_dir, rerank=rerank, selection_info=self.eval_hook.selection_info,
                          **test_kwargs)
        self._call_hooks("after_test")
        self._log("elapsed %.1fs", time.time() - t_start)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return rank1


def __getattr__(name: str) -> Any:
    """``VDEngine``: the deprecated old name of :class:`VIEngine` (a ``DeprecationWarning`` on use)."""
    if name == "VDEngine":
        warnings.warn("vdreid.engine.VDEngine is deprecated: use vdreid.engine.VIEngine (the same class); the old "
                      "name will be removed", DeprecationWarning, stacklevel=2)
        return VIEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
