"""The options of a training run and of an evaluation, as two small frozen dataclasses.

:class:`TrainOptions` goes to :class:`~vdreid.engine.trainer.VIEngine` (``options=``), :class:`EvalOptions` to
:class:`~vdreid.engine.evaluator.Evaluator` (``options=``). ``vdreid.builders.engine_kwargs`` fills both from a
config; in Python, name only what differs from the defaults::

    VIEngine(dm, model, optimizer, criterion, scheduler,
             options=TrainOptions(amp="bf16", selection="val", eval_freq=5),
             evaluator=Evaluator(dm, model, EvalOptions(flip=True), provenance={...}))

Values are checked when the object is made (a :class:`~vdreid.errors.ConfigError` naming the config key).
"""

from __future__ import annotations

from dataclasses import dataclass

from vdreid.engine.amp import AMP_MODES
from vdreid.engine.optim import ScheduleSpec
from vdreid.errors import ConfigError
from vdreid.evaluation.approximate import ApproximateSearch
from vdreid.evaluation.features import METRICS

#: which model the final test evaluates (see :class:`TrainOptions`)
SELECTIONS = ("final", "val", "test")


@dataclass(frozen=True)
class TrainOptions:
    """How :class:`~vdreid.engine.trainer.VIEngine` trains (config keys ``train.*`` in brackets).

    Args:
        amp: mixed precision of the training forward: ``'none'``, ``'bf16'`` (CPU or GPU) or ``'fp16'`` (GPU only)
            [``train.amp``].
        channels_last: model and inputs in channels-last memory format [``train.channels_last``].
        grad_clip: max global gradient norm, 0 = off [``train.grad_clip``].
        selection: which model the final test evaluates: ``'final'`` (the last epoch), ``'val'`` (best rank-1 on the
            validation protocol) or ``'test'`` (best rank-1 on the test protocol, the original repositories' habit,
            recorded as selected-on-test) [``train.selection``].
        eval_freq, eval_start: periodic evaluation every ``eval_freq`` epochs from epoch ``eval_start`` (0 = none)
            [``train.eval_freq``, ``train.eval_start``].
        eval_phase: the periodic evaluation follows the 1-based epochs ``d`` with ``d % eval_freq == eval_phase``
            (0: torchreid's epochs ``eval_freq``, ``2 eval_freq``, ...; 1 with ``eval_freq`` 2: epochs 3, 5, ..., as
            AGW's and CAJ's loops test after their 0-based epochs 2, 4, ...) [``train.eval_phase``].
        eval_last: with ``selection`` ``'val'``/``'test'``, also evaluate after the last epoch; False: only when the
            last epoch is periodic (or no epoch of the run is), as the original loops [``train.eval_last``].
        selection_flip: flip test-time augmentation of the selection evaluations; None: the test's
            (``EvalOptions.flip``) [``train.selection_flip`` auto | true | false].
        scheduler_step: the per-epoch lr schedule is stepped at the ``'end'`` (torchreid's order) or the ``'start'``
            (the released VD code's order) of each epoch [``train.scheduler_step``].
        schedule: the :class:`~vdreid.engine.optim.ScheduleSpec` of the scheduler, for the start banner's lr
            events (optional).
        checkpoint_every: also keep ``epoch_NNN.pth`` every N epochs (0: only ``latest.pth`` and the selected
            best) [``train.checkpoint_every``].
        sync_bn, find_unused_parameters: DDP options, used only when ``WORLD_SIZE > 1`` [``train.sync_bn``; the
            method decides the second].
        progress: show the training progress (a bar on a terminal, log lines in a file or pipe; rank 0 only);
            False: log lines only.
        print_freq: iterations between two progress log lines and tensorboard points [``train.print_freq``].
    """

    amp: str = "none"
    channels_last: bool = False
    grad_clip: float = 0.0
    selection: str = "final"
    eval_freq: int = 0
    eval_start: int = 0
    eval_phase: int = 0
    eval_last: bool = True
    selection_flip: bool | None = None
    scheduler_step: str = "end"
    schedule: ScheduleSpec | None = None
    checkpoint_every: int = 0
    sync_bn: bool = False
    find_unused_parameters: bool = False
    progress: bool = True
    print_freq: int = 20

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ConfigError(f"config key 'train.amp': must be one of {AMP_MODES}, got {self.amp!r}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"config key 'train.selection': selection must be one of {SELECTIONS}, got "
                              f"{self.selection!r}")
        if self.grad_clip < 0:
            raise ConfigError(f"config key 'train.grad_clip': must be >= 0 (0 = off), got {self.grad_clip}")
        if self.eval_freq < 0 or self.eval_start < 0:
            raise ConfigError(f"config keys 'train.eval_freq'/'train.eval_start': must be >= 0 (eval_freq 0 = no "
                              f"periodic evaluation), got {self.eval_freq}, {self.eval_start}")
        if self.eval_phase < 0 or (self.eval_freq > 0 and self.eval_phase >= self.eval_freq):
            raise ConfigError(f"config key 'train.eval_phase': must be >= 0 and below train.eval_freq "
                              f"({self.eval_freq}), got {self.eval_phase}")
        if self.selection_flip not in (None, True, False):
            raise ConfigError(f"config key 'train.selection_flip': must be auto (None), true or false, got "
                              f"{self.selection_flip!r}")
        if self.scheduler_step not in ("end", "start"):
            raise ConfigError(f"config key 'train.scheduler_step': must be 'end' or 'start', got "
                              f"{self.scheduler_step!r}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"config key 'train.checkpoint_every': must be >= 0 (0 = only latest and best), got "
                              f"{self.checkpoint_every}")


@dataclass(frozen=True)
class EvalOptions:
    """How :class:`~vdreid.engine.evaluator.Evaluator` extracts and ranks (config keys ``test.*`` in brackets).

    Args:
        metric: ``'cosine'``, ``'euclidean'`` or ``'inner_product'`` [``test.dist_metric``].
        backend: ranking engine, ``'auto'``, ``'faiss'`` or ``'torch'`` [``test.backend``].
        max_rank: length of the reported CMC [``test.max_rank``].
        flip: flip test-time augmentation [``test.flip``].
        approximate: None (exact) or an approximate index: ``'hnsw'``, ``'ivf'`` or a
            :class:`vdreid.evaluation.approximate.ApproximateSearch` with its settings (passed to
            :func:`vdreid.evaluation.run_protocol` as given), flagged in the results [``test.approximate`` and the
            index keys].
        feature_mode: the model's test feature (``model.feature_mode``); None keeps the model's
            [``test.feature_mode`` or the method's default].
        amp: autocast of feature extraction: ``'none'`` (float32 features, the default), ``'bf16'`` or ``'fp16'``
            (GPU only).
    """

    metric: str = "cosine"
    backend: str = "auto"
    max_rank: int = 20
    flip: bool = False
    approximate: str | ApproximateSearch | None = None
    feature_mode: str | None = None
    amp: str = "none"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"config key 'test.dist_metric': must be one of {METRICS}, got {self.metric!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"evaluation amp must be one of {AMP_MODES}, got {self.amp!r}")
        if isinstance(self.max_rank, bool) or int(self.max_rank) < 1:
            raise ConfigError(f"config key 'test.max_rank': must be >= 1, got {self.max_rank!r}")
