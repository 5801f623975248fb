"""Hooks around the training loop of :class:`~vdreid.engine.trainer.VIEngine` (fast-reid's ``HookBase`` pattern).

The loop only does forward, loss, backward and step. Everything else a run does between steps and epochs is a hook,
called in list order:

* :class:`SamplerEpochHook` gives the sampler its epoch (a DDP requirement, and exact resume);
* :class:`LRSchedulerHook` steps the per-epoch schedule at the start or the end of each epoch;
* :class:`ProgressHook` shows a progress bar and the losses every ``print_freq`` iterations;
* :class:`EvalHook` evaluates on its schedule (``eval_freq``, ``eval_phase``, ``eval_start``, ``eval_last``) and keeps
  the best model for ``selection``;
* :class:`TensorboardHook`, :class:`JSONLogHook`, :class:`EpochSummaryHook` write what happened;
* :class:`CheckpointHook` writes ``latest.pth`` atomically (and ``epoch_NNN.pth`` every N epochs when asked).

A hook sees the trainer as ``self.trainer``, a ``weakref.proxy`` set by ``VIEngine.register_hooks`` (trainer and
hooks do not keep each other alive), and its public state: ``epoch`` (0-based, the running epoch), ``max_epoch``,
``batch_idx``, ``step_summary`` (the last step's loss terms), ``epoch_stats`` (filled during ``after_epoch``),
``save_dir``, ``writer``, ``dist``, ``run_state`` (checkpoint state, the record of written files).
"""

from __future__ import annotations

import json
import logging
import os
import os.path as osp
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from vdreid.engine import distributed as vdist
from vdreid.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint_atomic
from vdreid.engine.options import SELECTIONS
from vdreid.engine.run_dir import LATEST, TRAIN_LOG, repair_train_log
from vdreid.evaluation.progress import is_terminal

logger = logging.getLogger(__name__)

__all__ = ["LATEST", "SELECTIONS", "TRAIN_LOG", "CheckpointHook", "EpochSummaryHook", "EvalHook", "HookBase",
           "JSONLogHook", "LRSchedulerHook", "ProgressHook", "SamplerEpochHook", "TensorboardHook"]

#: ``evaluate(split=..., rerank=...) -> {target: EvalReport}`` (the evaluator's ``evaluate``)
EvaluateFn = Callable[..., dict[str, Any]]


class HookBase:
    """Does nothing at every point; subclasses override what they need."""

    trainer: Any  # a weakref.proxy of the VIEngine that registered the hook

    def before_train(self) -> None:
        """Once, before the first epoch (after a resume has restored the state)."""

    def before_epoch(self) -> None:
        """Before the first step of every epoch."""

    def after_step(self) -> None:
        """After every optimisation step (``trainer.step_summary`` holds its loss terms)."""

    def after_epoch(self) -> None:
        """After the last step of every epoch (``trainer.epoch_stats`` holds its summary)."""

    def after_train(self) -> None:
        """Once, after the last epoch (before the final test)."""

    def after_test(self) -> None:
        """Once, after the final test of a training run (``trainer.last_reports`` holds its reports)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep of this hook (for an exact resume)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""


class SamplerEpochHook(HookBase):
    """``set_epoch`` on the train sampler: batches are a function of (seed, epoch), as ``DistributedSampler``."""

    def before_epoch(self) -> None:
        loader = self.trainer.train_loader
        for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(self.trainer.epoch)
                return


class LRSchedulerHook(HookBase):
    """Steps a per-epoch scheduler. ``step_at='end'`` is torchreid's order (epoch ``e`` trains with step ``e``);
    ``'start'`` steps before each epoch, as the released VD code does (its constructor already took one step, so
    epoch ``e`` trains with step ``e + 1``: see ``docs/vd-recipes.md``), which also expresses AGW's per-epoch rule."""

    def __init__(self, scheduler, step_at: str = "end") -> None:
        if step_at not in ("end", "start"):
            raise ValueError(f"scheduler step_at must be 'end' or 'start', got {step_at!r}")
        self.scheduler, self.step_at = scheduler, step_at

    def before_epoch(self) -> None:
        if self.step_at == "start":
            with warnings.catch_warnings():  # stepping before optimizer.step() is the intended order here
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step")
                self.scheduler.step()
        self.trainer.lr = self.trainer.get_current_lr()

    def after_epoch(self) -> None:
        if self.step_at == "end":
            self.scheduler.step()


class ProgressHook(HookBase):
    """Rank 0's progress: on a terminal, a tqdm bar per epoch with every loss term and images/s; written to a file or
    a pipe (or with ``enabled=False``), a plain log line every ``print_freq`` iterations instead, so a log holds no
    carriage-return frames. ``stream``: where the bar would go (default ``sys.stderr``)."""

    def __init__(self, enabled: bool = True, print_freq: int = 20, stream: Any = None) -> None:
        self.enabled, self.print_freq = enabled, int(print_freq)
        self.stream = stream
        self.bar: tqdm | None = None

    def before_epoch(self) -> None:
        t = self.trainer
        self.t0, self.n_img = time.time(), 0
        stream = self.stream if self.stream is not None else sys.stderr
        self.bar = None
        if self.enabled and t.dist.is_main and is_terminal(stream):
            self.bar = tqdm(total=len(t.train_loader), desc=f"epoch {t.epoch + 1}/{t.max_epoch}", leave=False,
                            dynamic_ncols=True, file=stream)

    def after_step(self) -> None:
        t = self.trainer
        self.n_img += t.batch_images
        due = self.print_freq > 0 and (t.batch_idx + 1) % self.print_freq == 0
        if self.bar is not None:
            self.bar.update(1)
            if due or t.batch_idx == 0:
                ips = self.n_img * t.dist.world_size / max(time.time() - self.t0, 1e-9)
                self.bar.set_postfix({**{k: f"{v:.3f}" for k, v in t.step_summary.items()}, "img/s": f"{ips:.1f}"},
                                     refresh=False)
        elif due and t.dist.is_main:
            ips = self.n_img * t.dist.world_size / max(time.time() - self.t0, 1e-9)
            logger.info("epoch [%d/%d][%d/%d] %s  %.1f img/s", t.epoch + 1, t.max_epoch, t.batch_idx + 1,
                        len(t.train_loader), "  ".join(f"{k} {v:.4f}" for k, v in t.step_summary.items()), ips)

    def after_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EvalHook(HookBase):
    """Periodic evaluation and model selection.

    The schedule, over the 1-based epoch ``d`` just completed (``trainer.epoch + 1``):

    * periodic: ``eval_freq > 0``, ``d >= eval_start`` and ``d % eval_freq == eval_phase``. ``eval_phase`` 0 is
      torchreid's rule (epochs ``eval_freq``, ``2 eval_freq``, ...); a loop over 0-based epochs ``e`` that tests when
      ``e % f == 0`` and ``e >= s`` (AGW's, CAJ's, DEEN's and the released VD code's) is ``eval_freq f``,
      ``eval_phase 1 % f``, ``eval_start s + 1``;
    * the last epoch, unless ``selection='final'``: always with ``eval_last`` (the default), otherwise only when it
      is periodic, or when no epoch of the run is, so that a selection always has a candidate.

    It evaluates the validation protocol, or the test protocol when ``selection='test'`` (the habit of the original
    repositories: optimistic, recorded as selected-on-test), with flip test-time augmentation ``flip`` (None: the
    evaluate function's own setting, the test's). The best first-target rank-1 (the first strict improvement, as the
    originals keep it) is kept in ``best_<split>.pth``; after training the selected weights are loaded for the
    final test.
    """

    def __init__(self, evaluate: EvaluateFn, selection: str = "final", eval_freq: int = 0, eval_start: int = 0,
                 rerank: bool = False, eval_phase: int = 0, eval_last: bool = True,
                 flip: bool | None = None) -> None:
        if not callable(evaluate):
            raise TypeError(f"EvalHook: evaluate must be callable (the evaluator's evaluate), got {evaluate!r}")
        self.evaluate = evaluate
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        self.selection, self.rerank = selection, rerank
        self.eval_freq, self.eval_start, self.eval_phase = int(eval_freq), int(eval_start), int(eval_phase)
        self.eval_last, self.flip = bool(eval_last), flip
        self.check_schedule()
        self.best: dict[str, Any] = {"epoch": None, "rank1": None, "split": None}
        self.selection_info: dict[str, Any] = {}

    def check_schedule(self) -> None:
        """A ``ValueError`` for a schedule no epoch can satisfy consistently (also after ``run(eval_freq=...)``)."""
        if self.eval_freq < 0 or self.eval_start < 0 or self.eval_phase < 0:
            raise ValueError(f"eval_freq, eval_start and eval_phase must be >= 0, got {self.eval_freq}, "
                             f"{self.eval_start}, {self.eval_phase}")
        if self.eval_freq > 0 and self.eval_phase >= self.eval_freq:
            raise ValueError(f"eval_phase must be below eval_freq ({self.eval_freq}), got {self.eval_phase}")

    def periodic(self, done: int) -> bool:
        """Whether the periodic rule evaluates after the 1-based epoch ``done``."""
        return self.eval_freq > 0 and done >= self.eval_start and done % self.eval_freq == self.eval_phase

    def evaluates(self, done: int, max_epoch: int) -> bool:
        """Whether :meth:`after_epoch` evaluates after the 1-based epoch ``done`` of a ``max_epoch``-epoch run."""
        if self.periodic(done):
            return True
        if done != max_epoch or self.selection == "final":
            return False
        return self.eval_last or not any(self.periodic(d) for d in range(1, max_epoch + 1))

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state.get("best") or self.best)

    def before_train(self) -> None:
        self.check_schedule()

    def after_epoch(self) -> None:
        t = self.trainer
        done = t.epoch + 1
        if not self.evaluates(done, t.max_epoch):
            return
        split = "test" if self.selection == "test" else "val"
        if split == "val" and not getattr(t.datamanager, "val_protocols", None):
            if t.dist.is_main:
                logger.info("periodic evaluation skipped: no validation protocol (the test set is not used for "
                            "selection unless train.selection is 'test')")
            return
        extra = {} if self.flip is None else {"flip": bool(self.flip)}
        reports = self.evaluate(split=split, rerank=self.rerank, **extra)
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
        t.epoch_stats.update(metrics)
        improved = first is not None and (self.best["rank1"] is None or first > self.best["rank1"])
        if self.selection != "final" and improved:
            self.best = {"epoch": done, "rank1": float(first), "split": split}
            if t.dist.is_main and t.save_dir:
                path = save_checkpoint_atomic(
                    {"state_dict": t.net.state_dict(), "epoch": done, "rank1": float(first), "split": split,
                     "config": t.provenance},
                    osp.join(t.save_dir, f"best_{split}.pth"),
                )
                t.run_state.written.add(path, "checkpoint")
            vdist.barrier()

    def schedule_info(self, max_epoch: int) -> dict[str, Any]:
        """The selection schedule of a ``max_epoch``-epoch run as recorded in the results: its settings, the
        epochs it evaluates (``selection_epochs``, 1-based) and a sentence (``selection_rule``)."""
        epochs = [d for d in range(1, max_epoch + 1) if self.evaluates(d, max_epoch)]
        periodic = [d for d in epochs if self.periodic(d)]
        split = "test" if self.selection == "test" else "val"
        if len(periodic) > 4:
            shown = f"{periodic[0]}, {periodic[1]}, ..., {periodic[-1]}"
        else:
            shown = ", ".join(map(str, periodic))
        rule = f"best {split} rank-1"
        if periodic:
            rule += f" of the evaluations every {self.eval_freq} epoch(s) after epochs {shown} (1-based)"
        if epochs and epochs[-1] not in periodic:
            rule += (" and after the last epoch" if periodic else " of one evaluation after the last epoch") + \
                f" ({epochs[-1]})"
        if self.flip is not None:
            rule += ", with flip" if self.flip else ", without flip"
        return {"selection_rule": rule, "selection_epochs": epochs, "selection_flip": self.flip,
                "selection_schedule": {"eval_freq": self.eval_freq, "eval_phase": self.eval_phase,
                                       "eval_start": self.eval_start, "eval_last": self.eval_last}}

    def after_train(self) -> None:
        """Load the selected weights (best-on-val / best-on-test) and describe the choice for the results JSON."""
        t = self.trainer
        if self.selection == "final" or self.best.get("epoch") is None:
            self.selection_info = {"selection": "final", "selected_epoch": t.max_epoch}
            return
        split = self.best["split"]
        path = osp.join(t.save_dir, f"best_{split}.pth")
        ckpt = load_checkpoint(path, map_location=t.device)
        load_model_weights(t.net, ckpt["state_dict"], source=path)
        label = "best-on-val" if split == "val" else "test-selected (optimistic: chosen on the test set)"
        if t.dist.is_main:
            logger.info("selected epoch %s (%s, rank-1 %.2f)", self.best["epoch"], label, self.best["rank1"])
        self.selection_info = {"selection": label, "selected_epoch": self.best["epoch"],
                               f"selection_{split}_rank1": self.best["rank1"],
                               "selected_on_test": split == "test", **self.schedule_info(t.max_epoch)}


class TensorboardHook(HookBase):
    """Tensorboard scalars (rank 0, in ``save_dir``), one tag scheme, each value written once:

    * ``Train/<term>`` and ``Train/lr`` every ``print_freq`` iterations (x = iteration);
    * ``Epoch/<term>`` (epoch means, ``lr``, ``images_per_s``, ``time_s``) and ``<split>/<target>/<metric>`` of each
      periodic evaluation (``val/sysu_mm01/rank1``, ...; the keys of ``train_log.jsonl``), x = completed epochs;
    * ``final/<target>/<metric>`` (rank1, mAP, mINP) of the final test of the selected model, x = ``max_epoch``.
    """

    def __init__(self, print_freq: int = 20) -> None:
        self.print_freq = max(1, int(print_freq))
        self._before: set[str] = set()

    def before_train(self) -> None:
        t = self.trainer
        if t.writer is None and t.dist.is_main and t.save_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._before = _event_files(t.save_dir)
            t.writer = SummaryWriter(log_dir=t.save_dir)
            for name in sorted(_event_files(t.save_dir) - self._before):
                t.run_state.written.add(osp.join(t.save_dir, name), "tensorboard")

    def after_step(self) -> None:
        t = self.trainer
        if t.writer is None or (t.batch_idx + 1) % self.print_freq:
            return
        n_iter = t.epoch * len(t.train_loader) + t.batch_idx
        for name, value in t.step_summary.items():
            t.writer.add_scalar("Train/" + name, value, n_iter)
        t.writer.add_scalar("Train/lr", t.lr, n_iter)

    def after_epoch(self) -> None:
        t = self.trainer
        if t.writer is None:
            return
        for k, v in t.epoch_stats.items():
            if k != "epoch" and isinstance(v, (int, float)):
                t.writer.add_scalar(k if "/" in k else "Epoch/" + k, v, t.epoch + 1)

    def after_train(self) -> None:
        t = self.trainer
        if t.writer is not None:
            t.writer.flush()

    def after_test(self) -> None:
        t = self.trainer
        if t.writer is None:
            return
        for name, rep in (t.last_reports or {}).items():
            t.writer.add_scalar(f"final/{name}/rank1", float(rep.rank1), t.max_epoch)
            for key in ("mAP", "mINP"):
                if key in rep.mean:
                    t.writer.add_scalar(f"final/{name}/{key}", float(rep.mean[key]), t.max_epoch)
        t.writer.flush()


def _event_files(folder: str) -> set[str]:
    try:
        return {f for f in os.listdir(folder) if f.startswith("events.out.tfevents")}
    except OSError:
        return set()


class JSONLogHook(HookBase):
    """``train_log.jsonl``: one JSON line per epoch (``epoch`` = epochs completed, 1-based; ``lr``; the mean of every
    loss term; ``images_per_s``; ``time_s``; evaluation metrics when evaluated). On resume, lines of epochs the run
    will redo are dropped, and a damaged last line (a crash mid-write) is dropped with a warning."""

    def before_train(self) -> None:
        t = self.trainer
        path = osp.join(t.save_dir, TRAIN_LOG)
        if not (t.dist.is_main and t.save_dir and osp.isfile(path)):
            return
        rows = repair_train_log(path)
        kept = [r for r in rows if r.get("epoch", 0) <= t.start_epoch]
        if len(kept) != len(rows) or len(rows) != _count_lines(path):
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    def after_epoch(self) -> None:
        t = self.trainer
        if not (t.dist.is_main and t.save_dir):
            return
        path = osp.join(t.save_dir, TRAIN_LOG)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json.loads(json.dumps(t.epoch_stats, default=str))) + "\n")
        t.run_state.written.add(path, "train log")


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for ln in f if ln.strip())


class EpochSummaryHook(HookBase):
    """One compact log line per epoch: lr, every loss term, speed, time, and metrics when evaluated."""

    def after_epoch(self) -> None:
        t = self.trainer
        if not t.dist.is_main:
            return
        s = t.epoch_stats
        terms = "  ".join(f"{k} {v:.4f}" for k, v in s.items()
                          if k not in ("epoch", "lr", "images_per_s", "time_s") and "/" not in k)
        evals = "  ".join(f"{k} {v:.2f}" for k, v in s.items() if "/" in k)
        logger.info("epoch %d/%d  lr %.3g  %s  %.1f img/s  %.1fs%s", s["epoch"], t.max_epoch, s["lr"], terms,
                    s["images_per_s"], s["time_s"], f"  | {evals}" if evals else "")


class CheckpointHook(HookBase):
    """``latest.pth`` after every epoch (atomic; everything an exact resume needs), and ``epoch_NNN.pth`` every
    ``every`` epochs only when asked, so a run's disk use is bounded by default: latest + the selected best."""

    def __init__(self, every: int = 0) -> None:
        if every < 0:
            raise ValueError(f"checkpoint every must be >= 0 (0 = only latest and best), got {every}")
        self.every = int(every)

    def after_epoch(self) -> None:
        t = self.trainer
        done = t.epoch + 1
        state = t.run_state.checkpoint_state(done)  # collective under DDP: every rank takes part
        if t.dist.is_main and t.save_dir:
            written = t.run_state.written
            written.add(save_checkpoint_atomic(state, osp.join(t.save_dir, LATEST)), "checkpoint")
            if self.every > 0 and done % self.every == 0:
                written.add(save_checkpoint_atomic(state, osp.join(t.save_dir, f"epoch_{done:03d}.pth")), "checkpoint")
        vdist.barrier()
