"""What a training run saves, restores and announces: the checkpoint state (everything an exact resume needs), the
resume with its configuration policy (``docs/run-folders.md``), the run's ``config.yaml`` and its start banner.
Mixed into :class:`~vdreid.engine.trainer.VIEngine`."""

from __future__ import annotations

import json
import logging
import os.path as osp
from typing import Any

import torch.distributed as dist

from vdreid.engine.checkpoint import (
    check_config_compatible,
    get_rng_state,
    load_checkpoint,
    load_model_weights,
    set_rng_state,
)
from vdreid.engine.hooks import LATEST
from vdreid.errors import CheckpointError

logger = logging.getLogger(__name__)

# provenance fields that must agree between a checkpoint and the run that resumes from it
BASE_RESUME_KEYS = ("method", "model", "num_classes", "backbone")  # + the method's own (provenance resume_keys)


def _json_safe(obj: Any) -> Any:
    """Plain JSON types only (checkpoints load with weights_only=True, which refuses arbitrary objects)."""
    return json.loads(json.dumps(obj, default=str))


class RunStateMixin:
    """Checkpoint state, resume, ``config.yaml`` and the plan banner of a :class:`~vdreid.engine.trainer.VIEngine`."""

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
