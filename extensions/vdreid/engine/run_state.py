"""``RunState``: what a training run saves, restores and announces, held by :class:`~vdreid.engine.trainer.VIEngine`.

* :meth:`RunState.checkpoint_state` / :meth:`RunState.resume_from`: everything an exact resume needs (model,
  optimiser, scheduler, scaler, criterion, selection state, every rank's RNG states), and the resume policy: a
  checkpoint of another model or method is refused, changed training keys are refused and allowed changes are
  recorded with the epoch they took effect (:func:`vdreid.engine.run_dir.check_resume_config`,
  ``docs/run-folders.md``);
* :meth:`RunState.write_config`: the run's ``config.yaml``;
* :meth:`RunState.log_plan`: the start banner (:mod:`vdreid.engine.plan`), with room for extra lines
  (``banner_lines``);
* ``written``: the record of the files the run wrote (:class:`~vdreid.engine.outputs.Outputs`).

It holds its collaborators (model, optimiser, ...) itself; it does not know the trainer.
"""

from __future__ import annotations

import logging
import os.path as osp
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import yaml

from vdreid.atomic import atomic_write
from vdreid.config import get_default_config, to_dict
from vdreid.engine.amp import AMP
from vdreid.engine.checkpoint import (
    check_config_compatible,
    get_rng_state,
    load_checkpoint,
    load_model_weights,
    set_rng_state,
)
from vdreid.engine.distributed import DistInfo
from vdreid.engine.evaluator import json_safe
from vdreid.engine.options import TrainOptions
from vdreid.engine.outputs import Outputs
from vdreid.engine.plan import CheckpointPolicy, estimate_checkpoint_bytes, log_plan, make_plan
from vdreid.engine.run_dir import LATEST, check_resume_config
from vdreid.errors import CheckpointError

logger = logging.getLogger(__name__)

# provenance fields that must agree between a checkpoint and the run that resumes from it
BASE_RESUME_KEYS = ("method", "model", "num_classes", "backbone")  # + the method's own (provenance resume_keys)


class RunState:
    """Checkpoint state, resume, ``config.yaml``, the start banner and the written-files record of one run.

    Args:
        net: the model without its DDP wrapper. optimizer, scheduler (may be None), criterion, amp
            (:class:`~vdreid.engine.amp.AMP`): what a checkpoint saves and a resume restores.
        selection: the object keeping the model-selection state (the trainer's ``EvalHook``:
            ``state_dict()`` / ``load_state_dict()`` with ``{'best': ...}``).
        options: the run's :class:`~vdreid.engine.options.TrainOptions` (scheduler step, selection, checkpoint
            policy, schedule for the banner).
        provenance: the run description stored in checkpoints; the dict is shared with the evaluator, so resume
            changes and the plan recorded here reach the results JSON.
        dist, device: the process's place in the job and where checkpoints are loaded to.

    ``save_dir`` is set by the trainer when a run starts. ``banner_lines``: extra lines for the start banner (a
    runtime summary, say), logged after the plan's own.
    """

    def __init__(self, *, net: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 criterion: torch.nn.Module, amp: AMP, selection: Any, options: TrainOptions,
                 provenance: dict[str, Any], dist: DistInfo, device: torch.device) -> None:
        self.net, self.optimizer, self.scheduler, self.criterion, self.amp = net, optimizer, scheduler, criterion, amp
        self.selection, self.options, self.provenance = selection, options, provenance
        self.dist, self.device = dist, device
        self.save_dir = ""
        self.written = Outputs()
        self.banner_lines: list[str] = []
        #: turns a configuration saved by an older vdreid into today's tree (renamed keys translated, new keys at
        #: their defaults) before the resume policy compares it; the builders set it (methods own their renames)
        self.upgrade_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def _log(self, msg: str, *args: Any) -> None:
        if self.dist.is_main:
            logger.info(msg, *args)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """Everything a resume needs; ``epoch`` = number of completed epochs (the next epoch to run). Collective
        under DDP (every rank's RNG states are gathered): call it on every rank."""
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
            "best": dict(self.selection.state_dict()["best"]),
            "scheduler_step": self.options.scheduler_step,
            "amp": self.amp.mode,
            "model_class": type(self.net).__name__,
            "config": self.provenance,
        }

    def resume_from(self, path: str) -> int:
        """Restore model, optimiser, scheduler, scaler, criterion, selection state and RNG states from ``path``
        (``'latest'`` or ``'auto'`` = ``save_dir/latest.pth``). Returns the epoch to start from."""
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
        if isinstance(saved_cfg, dict) and self.upgrade_config is not None:
            saved_cfg = self.upgrade_config(saved_cfg)
        if isinstance(saved_cfg, dict) and isinstance(current_cfg, dict):
            allowed = check_resume_config(saved_cfg, current_cfg, completed_epochs=int(ckpt["epoch"]),
                                          defaults=to_dict(get_default_config()), source=f'"{path}"')
            if allowed:  # recorded with the epoch they took effect: the results say what ran
                changes = dict(ckpt["config"].get("resume_changes") or {})
                changes.update({k: {"before": old, "after": new, "from_epoch": int(ckpt["epoch"]) + 1}
                                for k, (old, new) in allowed.items()})
                self.provenance["resume_changes"] = json_safe(changes)
                self._log("resume changes %s", ", ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in allowed.items()))
        saved_step = ckpt.get("scheduler_step", "start" if ckpt.get("scheduler_offbyone") else "end")
        if saved_step != self.options.scheduler_step:
            raise CheckpointError(
                f'cannot resume from "{path}": it was trained with the scheduler stepped at the {saved_step} of each '
                f"epoch, this run steps it at the {self.options.scheduler_step} (train.scheduler_step)"
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
        self.selection.load_state_dict({"best": ckpt.get("best")})
        rng = ckpt["rng"]
        if isinstance(rng, dict):
            rng = [rng]
        set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0])
        epoch = int(ckpt["epoch"])
        self._log('resumed from "%s" at epoch %d', path, epoch)
        return epoch

    # ------------------------------------------------------------------------------------------------ config, banner
    def write_config(self) -> str | None:
        """``config.yaml`` of the run: the configuration that runs from now on (written after the run folder and
        resume checks passed, so a refused start never rewrites it). Returns its path (None when not written: no
        save_dir, not rank 0, or no stored config)."""
        cfg = self.provenance.get("config")
        if not (self.dist.is_main and self.save_dir and isinstance(cfg, dict)):
            return None
        text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
        path = atomic_write(osp.join(self.save_dir, "config.yaml"), lambda f: f.write(text), binary=False)
        self.written.add(path, "config")
        return path

    def log_plan(self, train_loader: Any, max_epoch: int, start_epoch: int,
                 extra_lines: Sequence[str] = ()) -> None:
        """The start banner: iterations per epoch and in total, where warm-up ends and the lr decays (epochs and
        iterations), the disk the run's checkpoints will take (:mod:`vdreid.engine.plan`), then ``banner_lines``
        and ``extra_lines``. The plan is recorded in the provenance."""
        sampler = getattr(train_loader, "sampler", None)
        policy = CheckpointPolicy(keep_best=self.options.selection != "final", every=self.options.checkpoint_every)
        group = self.optimizer.param_groups[0]
        plan = make_plan(
            len(train_loader), max_epoch, start_epoch, schedule=self.options.schedule, policy=policy,
            bytes_per_checkpoint=estimate_checkpoint_bytes(self.net, self.optimizer, self.criterion),
            base_lr=group.get("initial_lr", group["lr"]), epoch_definition=getattr(sampler, "epoch_definition", None),
            batch_size=getattr(sampler, "batch_size", None), notes=tuple(self.banner_lines) + tuple(extra_lines),
        )
        if self.dist.is_main:
            log_plan(plan, logger)
        self.provenance["plan"] = json_safe(plan.as_dict())
