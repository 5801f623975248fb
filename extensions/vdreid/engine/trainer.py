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
import json
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
from vdreid.engine.checkpoint import (
    check_config_compatible,
    get_rng_state,
    load_checkpoint,
    load_model_weights,
    set_rng_state,
    unwrap_model,
)
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
from vdreid.errors import CheckpointError, ConfigError, NonFiniteLossError

logger = logging.getLogger(__name__)

# provenance fields that must agree between a checkpoint and the run that resumes from it
BASE_RESUME_KEYS = ("method", "model", "num_classes", "recipe", "routing", "bottleneck", "backbone")
# torchreid ``Engine.test`` keywords and what we do with them (see ``VIEngine.test``)
_TORCHREID_TEST_KWARGS = ("dist_metric", "normalize_feature", "visrank", "visrank_topk", "save_dir",
                          "use_metric_cuhk03", "ranks", "rerank")


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


def _takes_modality(model: torch.nn.Module) -> bool:
    try:
        return "modality" in inspect.signature(unwrap_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


class VIEngine(compat.Engine):
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
        metric, backend, max_rank, flip: passed to the evaluator (``'cosine'|'euclidean'``,
            ``'auto'|'faiss'|'torch'``, the CMC length, flip test-time augmentation).
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

    # ------------------------------------------------------------------------------------------------ checkpoints
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
            "scaler": self.amp.state_dict(),
            "criterion": self.criterion.state_dict(),
            "epoch": int(epoch),
            "rng": rng_all,
            "best": dict(self.best),
            "scheduler_step": self.scheduler_step,
            "amp": self.amp.mode,
            "model_class": type(self.net).__name__,
            "config": self.provenance,
        }

    def resume_from(self, path: str) -> int:
        """Restore model, optimiser, scheduler, scaler, criterion, selection state and RNG states from ``path``
        (``'latest'`` = ``save_dir/latest.pth``). Returns the epoch to start from."""
        if path in ("latest", "auto"):
            path = osp.join(self.save_dir, LATEST)
        ckpt = load_checkpoint(path, map_location=self.device)
        missing = [k for k in ("state_dict", "optimizer", "epoch", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(
                f'cannot resume from "{path}": it lacks {missing} (a weights-only file? initialise from it with '
                "model.load_weights instead of resuming)"
            )
        keys = tuple(dict.fromkeys(BASE_RESUME_KEYS + tuple(self.provenance.get("resume_keys", ()))))
        check_config_compatible(ckpt.get("config"), self.provenance, keys, source=path)
        saved_cfg, current_cfg = (ckpt.get("config") or {}).get("config"), self.provenance.get("config")
        if isinstance(saved_cfg, dict) and isinstance(current_cfg, dict):
            from vdreid.config import get_default_config, to_dict
            from vdreid.engine.run_dir import check_resume_config

            allowed = check_resume_config(saved_cfg, current_cfg, completed_epochs=int(ckpt["epoch"]),
                                          defaults=to_dict(get_default_config()), source=f'"{path}"')
            if allowed:  # recorded with the epoch they took effect: the results say what ran
                changes = dict(ckpt["config"].get("resume_changes") or {})
                changes.update({k: {"before": old, "after": new, "from_epoch": int(ckpt["epoch"]) + 1}
                                for k, (old, new) in allowed.items()})
                self.provenance["resume_changes"] = _json_safe(changes)
                self._log("resume changes %s", ", ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in allowed.items()))
        saved_step = ckpt.get("scheduler_step", "start" if ckpt.get("scheduler_offbyone") else "end")
        if saved_step != self.scheduler_step:
            raise CheckpointError(
                f'cannot resume from "{path}": it was trained with the scheduler stepped at the {saved_step} of each '
                f"epoch, this run steps it at the {self.scheduler_step} (train.scheduler_step)"
            )
        load_model_weights(self.net, ckpt["state_dict"], source=path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None:
            if ckpt.get("scheduler") is None:
                raise CheckpointError(f'cannot resume from "{path}": it holds no scheduler state but this run has one')
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.amp.load_state_dict(ckpt.get("scaler"))
        if ckpt.get("criterion") is not None:
            self.criterion.load_state_dict(ckpt["criterion"])
        self.eval_hook.load_state_dict({"best": ckpt.get("best")})
        rng = ckpt["rng"]
        if isinstance(rng, dict):
            rng = [rng]
        set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0])
        epoch = int(ckpt["epoch"])
        self._log('resumed from "%s" at epoch %d', path, epoch)
        return epoch

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

    def _write_config(self) -> None:
        """``config.yaml`` of the run: the configuration that runs from now on (written after the run folder and
        resume checks passed, so a refused start never rewrites it)."""
        cfg = self.provenance.get("config")
        if not (self.dist.is_main and self.save_dir and isinstance(cfg, dict)):
            return
        import yaml

        from vdreid.atomic import atomic_write

        text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
        atomic_write(osp.join(self.save_dir, "config.yaml"), lambda f: f.write(text), binary=False)

    def _log_plan(self) -> None:
        """The start banner: iterations per epoch and in total, where warm-up ends and the lr decays (epochs and
        iterations), and the disk the run's checkpoints will take (:mod:`vdreid.engine.plan`)."""
        from vdreid.engine.plan import CheckpointPolicy, estimate_checkpoint_bytes, log_plan, make_plan

        sampler = getattr(self.train_loader, "sampler", None)
        policy = CheckpointPolicy(keep_best=self.selection != "final", every=self.checkpoint_hook.every)
        group = self.optimizer.param_groups[0]
        plan = make_plan(
            len(self.train_loader), self.max_epoch, self.start_epoch, schedule=self.schedule, policy=policy,
            bytes_per_checkpoint=estimate_checkpoint_bytes(self.net, self.optimizer, self.criterion),
            base_lr=group.get("initial_lr", group["lr"]), epoch_definition=getattr(sampler, "epoch_definition", None),
            batch_size=getattr(sampler, "batch_size", None),
        )
        if self.dist.is_main:
            log_plan(plan, logger)
        self.provenance["plan"] = _json_safe(plan.as_dict())

    # ----------------------------------------------------------------------------------------------- testing
    @torch.no_grad()
    def evaluate(self, split: str = "test", rerank: bool = False, metric: str | None = None) -> dict[str, Any]:
        """Run the protocol evaluator on every target of ``split`` (``'test'`` or ``'val'``).

        Each image is extracted once (under DDP in shards by every rank, gathered); rank 0 ranks and scores them
        (the other ranks return ``{}``). The features stay in ``last_features[target]`` for ranked lists and plots.
        Returns ``{target: EvalReport}``.
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
        vdist.broadcast_buffers(net, self.dist)
        amp_dtype = self.amp.dtype if self.eval_amp else None
        extra = {"flip": True} if self.flip else {}
        for name in loaders:
            if name not in protocols:
                raise KeyError(f"VIEngine.evaluate: no {split} protocol for target {name!r}")
            t0 = time.perf_counter()
            ir = self.datamanager.ir_camids_of(name)
            q = vdist.extract_features_sharded(net, loaders[name]["query"], self.device, ir, self.dist, amp_dtype,
                                               desc=f"{split} query features", **extra)
            g = vdist.extract_features_sharded(net, loaders[name]["gallery"], self.device, ir, self.dist, amp_dtype,
                                               desc=f"{split} gallery features", **extra)
            if not self.dist.is_main:
                continue
            (qf, qp, qc), (gf, gp, gc) = q, g
            rep = run_protocol(protocols[name], qf, gf, qp, gp, qc, gc, metric=metric or self.metric,
                               backend=self.backend, rerank=rerank, max_rank=self.max_rank, flip=self.flip)
            rep.wall_time_s = time.perf_counter() - t0
            reports[name] = rep
            if split == "test":
                self.last_features[name] = (qf, gf, qp, gp, qc, gc)
            self._log("##### %s: %s (%s) #####\n%s", split, name, protocols[name].name, rep.table())
            if self.writer is not None:
                step = self.epoch + 1
                self.writer.add_scalar(f"{split.capitalize()}/{name}/rank1", float(rep.rank1), step)
                for key in ("mAP", "mINP"):
                    if key in rep.mean:
                        self.writer.add_scalar(f"{split.capitalize()}/{name}/{key}", float(rep.mean[key]), step)
        net.train(was_training)
        vdist.barrier()
        return reports

    def test(self, save_dir: str = "", rerank: bool = False, selection_info: dict | None = None,
             **torchreid_kwargs: Any) -> float | None:
        """Evaluate the current model on every test target with its protocol, log the tables, write
        ``save_dir/results_<target>.json`` with provenance (including which model was selected and how), and return
        the first target's rank-1 (percent).

        torchreid's keywords are honoured or refused, never ignored: ``dist_metric`` ('cosine' | 'euclidean')
        replaces the configured metric for this call; ``normalize_feature=True`` ranks L2-normalised features (the
        same ranking as cosine); ``visrank``/``visrank_topk`` write ranked-list pictures; ``ranks`` are logged from the
        CMC; ``use_metric_cuhk03=True`` is refused (not a VI protocol); ``rerank`` applies k-reciprocal re-ranking.
        """
        from vdreid.evaluation import provenance_defaults

        unknown = sorted(set(torchreid_kwargs) - set(_TORCHREID_TEST_KWARGS))
        if unknown:
            raise TypeError(f"VIEngine.test: unexpected keyword arguments {unknown}")
        if torchreid_kwargs.get("use_metric_cuhk03"):
            raise ConfigError("VIEngine.test: use_metric_cuhk03=True is CUHK03's metric; VI datasets use their own "
                              "protocol (protocol.eval_kwargs())")
        metric = torchreid_kwargs.get("dist_metric") or self.metric
        if metric not in ("cosine", "euclidean"):
            raise ConfigError(f"VIEngine.test: dist_metric must be 'cosine' or 'euclidean', got {metric!r}")
        if torchreid_kwargs.get("normalize_feature"):
            metric = "cosine"  # squared Euclidean distance of unit vectors is 2 - 2 cos: the cosine ranking
        rerank = bool(rerank or torchreid_kwargs.get("rerank"))
        save_dir = save_dir or torchreid_kwargs.get("save_dir") or self.save_dir
        reports = self.evaluate(split="test", rerank=rerank, metric=metric)
        self.last_reports = reports
        rank1 = None
        if self.dist.is_main:
            info = {"selection": "final", "selected_epoch": self.epoch + 1, **(selection_info or {})}
            prov = {**provenance_defaults(), **self.provenance, **info, "amp": self.amp.mode,
                    "world_size": self.dist.world_size}
            for name, rep in reports.items():
                rank1 = float(rep.rank1) if rank1 is None else rank1
                ranks = torchreid_kwargs.get("ranks")
                if ranks:
                    cmc = rep.cmc_mean
                    self._log("CMC %s: %s", name, ", ".join(f"rank-{r} {cmc[min(r, len(cmc)) - 1]:.2f}%"
                                                            for r in ranks))
                if save_dir:
                    rep.to_json(osp.join(save_dir, f"results_{name}.json"), **_json_safe(prov))
                if torchreid_kwargs.get("visrank") and save_dir:
                    self.write_ranked_lists(name, save_dir, topk=int(torchreid_kwargs.get("visrank_topk", 10)))
        return vdist.broadcast_object(rank1)

    def write_ranked_lists(self, name: str, save_dir: str, topk: int = 10, max_queries: int = 24) -> str:
        """Ranked-list pictures of target ``name`` from the features the last test extracted (the one writer:
        :func:`vdreid.evaluation.save_ranked_lists_for_protocol`)."""
        from vdreid.evaluation import save_ranked_lists_for_protocol

        if name not in self.last_features:
            raise ValueError(f"write_ranked_lists: no test features of {name!r}; run test() first")
        qf, gf, *_ = self.last_features[name]
        dm = self.datamanager
        out_dir = osp.join(save_dir, f"ranked_{name}")
        save_ranked_lists_for_protocol(
            dm.protocols[name], qf, gf, dm.test_dataset[name]["query"], dm.test_dataset[name]["gallery"], out_dir,
            metric=self.metric, topk=topk, max_queries=max_queries,
        )
        return out_dir


#: the name every test, benchmark and user script knows
VDEngine = VIEngine
