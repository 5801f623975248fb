"""``Evaluator``: every test target's protocol on features extracted once, results JSON with provenance, ranked lists
from the same features. Used by the trainer (periodic evaluation, the final test) and alone by ``vdreid test``.

Each image is extracted once per evaluation, under DDP in shards by every rank (gathered on every rank, ranked and
scored on rank 0: :func:`vdreid.engine.distributed.extract_features_sharded`). torchreid's ``Engine.test`` keywords
are honoured or refused, never ignored (:meth:`Evaluator.test`). It writes nothing to tensorboard: the trainer's
writer records each periodic evaluation once, from the epoch's statistics (:mod:`vdreid.engine.hooks`).

It lives in the engine room, not in :mod:`vdreid.evaluation`, because it shards extraction over the DDP processes
(:mod:`vdreid.engine.distributed`) and shares the trainer's precision modes (:mod:`vdreid.engine.amp`).
"""

from __future__ import annotations

import json
import logging
import os.path as osp
import time
from collections.abc import Mapping
from typing import Any

import torch

from vdreid.engine import distributed as vdist
from vdreid.engine.options import EvalOptions
from vdreid.engine.outputs import Outputs
from vdreid.engine.run_dir import check_writable
from vdreid.errors import ConfigError
from vdreid.evaluation import provenance_defaults, run_protocol, save_ranked_lists_for_protocol
from vdreid.evaluation.features import METRICS
from vdreid.evaluation.rerank import RERANK_METRICS
from vdreid.models.common import unwrap_model

logger = logging.getLogger(__name__)

#: torchreid ``Engine.test`` keywords and what :meth:`Evaluator.test` does with them
TORCHREID_TEST_KWARGS = ("dist_metric", "normalize_feature", "visrank", "visrank_topk", "save_dir",
                         "use_metric_cuhk03", "ranks", "rerank")
#: ranked-list pictures drawn per target unless asked otherwise (the first queries of trial 0)
RANKED_MAX_QUERIES = 24

_AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def json_safe(obj: Any) -> Any:
    """Plain JSON types only (checkpoints load with weights_only=True, which refuses arbitrary objects)."""
    return json.loads(json.dumps(obj, default=str))


def require_cross_modal(datamanager: Any, needs: Mapping[str, str], who: str) -> None:
    """Refuse a data manager that lacks what vdreid's engine reads from it (torchreid's ``ImageDataManager``).

    ``needs``: attribute -> why it is needed. Raises one :class:`~vdreid.errors.ConfigError` naming the class, every
    missing attribute and what to build instead.
    """
    missing = [(name, why) for name, why in needs.items() if not hasattr(datamanager, name)]
    if not missing:
        return
    cls = type(datamanager)
    what = "; ".join(f"'{name}' ({why})" for name, why in missing)
    raise ConfigError(
        f"{who} needs a vdreid.data.CrossModalDataManager, got {cls.__module__}.{cls.__qualname__}, which lacks "
        f"{what}. Build the data with vdreid.data.CrossModalDataManager(root=..., sources=..., targets=...) or "
        "vdreid.builders.build_datamanager(cfg): it samples visible and infrared images of each identity, says which "
        "cameras are infrared and carries each target's protocol"
    )


#: what evaluation reads from the data manager
EVAL_NEEDS = {
    "protocols": "each test target's VI protocol: gallery trials, camera rules, CMC variant",
    "ir_camids_of": "which cameras of a target are infrared, for models that route by modality",
}


class Evaluator:
    """Evaluation of ``model`` on the data manager's test (or validation) targets.

    Args:
        datamanager: a :class:`vdreid.data.CrossModalDataManager` (``test_loader``, ``protocols``,
            ``ir_camids_of(name)``; ``val_loader``/``val_protocols`` for ``split='val'``; ``test_dataset``,
            ``width``, ``height`` for ranked lists).
        model: in eval mode ``forward(x[, modality])`` returns the test feature (B, D); a DDP wrapper is unwrapped.
        options: :class:`~vdreid.engine.options.EvalOptions` (metric, backend, flip, test feature, ...).
        provenance: the run description written into every results JSON (and, by the trainer, into checkpoints).
            The dict is kept, not copied: what the trainer adds (resume changes, the plan) reaches the results.
        device: move the model there now; None evaluates where the model's parameters are.

    After :meth:`evaluate` / :meth:`test`: ``last_reports`` ``{target: EvalReport}``, ``last_features``
    ``{target: (qf, gf, q_pids, g_pids, q_camids, g_camids)}`` (test split), ``written`` (the files written).
    """

    def __init__(self, datamanager: Any, model: torch.nn.Module, options: EvalOptions | None = None,
                 provenance: dict[str, Any] | None = None, device: str | torch.device | None = None) -> None:
        require_cross_modal(datamanager, {"test_loader": "the test targets' query and gallery loaders", **EVAL_NEEDS},
                            "vdreid's Evaluator")
        self.datamanager = datamanager
        self.options = options or EvalOptions()
        self.net = unwrap_model(model)
        if self.options.feature_mode is not None:
            if not hasattr(self.net, "feature_mode"):
                raise ConfigError(f"test feature_mode={self.options.feature_mode!r} given but "
                                  f"{type(self.net).__name__} has no feature_mode")
            self.net.feature_mode = self.options.feature_mode
        if device is not None:
            self.net.to(torch.device(device))
        self.provenance: dict[str, Any] = provenance if provenance is not None else {}
        self.dist = vdist.current()
        self.last_reports: dict[str, Any] = {}
        self.last_features: dict[str, tuple] = {}
        self.written = Outputs()
        self._last_metric: dict[str, str] = {}
        self._log = logger.info if self.dist.is_main else (lambda *a, **k: None)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters (or buffers) are; CPU for a model with neither."""
        for t in self.net.parameters():
            return t.device
        for t in self.net.buffers():
            return t.device
        return torch.device("cpu")

    @torch.no_grad()
    def evaluate(self, split: str = "test", rerank: bool = False, metric: str | None = None,
                 flip: bool | None = None) -> dict[str, Any]:
        """Run every target of ``split`` (``'test'`` or ``'val'``) through its protocol; ``metric`` / ``flip``
        (None: the options') replace the configured metric / flip test-time augmentation for this call.

        Each image is extracted once (under DDP in shards by every rank, gathered); rank 0 ranks and scores them
        (the other ranks return ``{}``). The test split's features stay in ``last_features[target]`` for ranked
        lists and plots. Returns ``{target: EvalReport}``.
        """
        dm = self.datamanager
        if split == "test":
            loaders, protocols = dm.test_loader, dm.protocols
        elif split == "val":
            loaders, protocols = getattr(dm, "val_loader", None), getattr(dm, "val_protocols", None)
            if not loaders or not protocols:
                raise ConfigError("evaluate(split='val'): the data manager has no validation protocol (for "
                                  "SYSU-MM01 set val_for_selection=True)")
        else:
            raise ValueError(f"Evaluator.evaluate: split must be 'test' or 'val', got {split!r}")
        metric = metric or self.options.metric
        opts = self.options
        reports: dict[str, Any] = {}
        net, device = self.net, self.device
        was_training = net.training
        net.eval()
        vdist.broadcast_buffers(net, self.dist)
        amp_dtype = _AMP_DTYPES[opts.amp]
        flip = opts.flip if flip is None else bool(flip)
        extra = {"flip": True} if flip else {}
        try:
            for name in loaders:
                if name not in protocols:
                    raise KeyError(f"Evaluator.evaluate: no {split} protocol for target {name!r}")
                t0 = time.perf_counter()
                ir = dm.ir_camids_of(name)
                q = vdist.extract_features_sharded(net, loaders[name]["query"], device, ir, self.dist, amp_dtype,
                                                   desc=f"{split} query features", **extra)
                g = vdist.extract_features_sharded(net, loaders[name]["gallery"], device, ir, self.dist, amp_dtype,
                                                   desc=f"{split} gallery features", **extra)
                if not self.dist.is_main:
                    continue
                (qf, qp, qc), (gf, gp, gc) = q, g
                rep = run_protocol(protocols[name], qf, gf, qp, gp, qc, gc, metric=metric, backend=opts.backend,
                                   rerank=rerank, max_rank=opts.max_rank, flip=flip,
                                   approximate=opts.approximate)
                rep.wall_time_s = time.perf_counter() - t0
                reports[name] = rep
                if split == "test":
                    self.last_features[name] = (qf, gf, qp, gp, qc, gc)
                    self._last_metric[name] = metric
                self._log("##### %s: %s (%s) #####\n%s", split, name, protocols[name].name, rep.table())
        finally:
            net.train(was_training)
        vdist.barrier()
        return reports

    def test(self, save_dir: str = "", rerank: bool = False, selection_info: Mapping[str, Any] | None = None,
             record: Mapping[str, Any] | None = None, **torchreid_kwargs: Any) -> float | None:
        """Evaluate every test target with its protocol, log the tables, write ``save_dir/results_<target>.json``
        (the report, ``provenance``, ``selection_info`` (which model was selected and how) and ``record``), and
        return the first target's rank-1 (percent; on every rank).

        torchreid's keywords are honoured or refused, never ignored: ``dist_metric`` ('cosine' | 'euclidean' |
        'inner_product') replaces the configured metric for this call; ``normalize_feature=True`` ranks
        L2-normalised features (the same ranking as cosine); ``visrank``/``visrank_topk`` write ranked-list
        pictures from the features just extracted (:meth:`write_ranked_lists`: the first queries of trial 0);
        ``ranks`` are logged from the CMC;
        ``use_metric_cuhk03=True`` is refused (not a VI protocol); ``rerank`` applies k-reciprocal re-ranking.
        """
        unknown = sorted(set(torchreid_kwargs) - set(TORCHREID_TEST_KWARGS))
        if unknown:
            raise TypeError(f"test: unexpected keyword arguments {unknown}")
        if torchreid_kwargs.get("use_metric_cuhk03"):
            raise ConfigError("test: use_metric_cuhk03=True is CUHK03's metric; VI datasets use their own protocol "
                              "(protocol.eval_kwargs())")
        metric = torchreid_kwargs.get("dist_metric") or self.options.metric
        if metric not in METRICS:
            raise ConfigError(f"test: dist_metric must be 'cosine' or 'euclidean' or 'inner_product', got {metric!r}")
        if torchreid_kwargs.get("normalize_feature"):
            # squared Euclidean distance of unit vectors is 2 - 2 cos, their inner product is cos: the cosine ranking
            metric = "cosine"
        rerank = bool(rerank or torchreid_kwargs.get("rerank"))
        if rerank and metric not in RERANK_METRICS:  # refused before any extraction (see evaluation.rerank)
            raise ConfigError(f"test: re-ranking (test.rerank) needs test.dist_metric in {RERANK_METRICS}, got "
                              f"{metric!r}")
        save_dir = save_dir or torchreid_kwargs.get("save_dir") or ""
        if save_dir and self.dist.is_main:
            check_writable(save_dir)  # before any extraction: a results folder that cannot be written fails now
        reports = self.evaluate(split="test", rerank=rerank, metric=metric)
        self.last_reports = reports
        rank1 = None
        if self.dist.is_main:
            prov = {**provenance_defaults(), **self.provenance, **(selection_info or {}), **(record or {}),
                    "eval_amp": self.options.amp, "world_size": self.dist.world_size}
            for name, rep in reports.items():
                rank1 = float(rep.rank1) if rank1 is None else rank1
                ranks = torchreid_kwargs.get("ranks")
                if ranks:
                    cmc = rep.cmc_mean
                    self._log("CMC %s: %s", name, ", ".join(f"rank-{r} {cmc[min(r, len(cmc)) - 1]:.2f}%"
                                                            for r in ranks))
                if save_dir:
                    path = rep.to_json(osp.join(save_dir, f"results_{name}.json"), **json_safe(prov))
                    self.written.add(path, "results")
                if torchreid_kwargs.get("visrank") and save_dir:
                    self.write_ranked_lists(name, save_dir, topk=int(torchreid_kwargs.get("visrank_topk", 10)))
        return vdist.broadcast_object(rank1)

    def write_ranked_lists(self, name: str, save_dir: str, topk: int = 10,
                           max_queries: int | None = RANKED_MAX_QUERIES) -> str:
        """Ranked-list pictures of target ``name`` into ``save_dir/ranked_<name>/``, from the features and with the
        metric of the last :meth:`test` (nothing is extracted again; the one writer:
        :func:`vdreid.evaluation.save_ranked_lists_for_protocol`). Returns the folder.

        Which pictures: one per query of the protocol's first trial (trial 0) against that trial's gallery, the
        first ``max_queries`` of them in the dataset's query order (None: every query of the trial). A ranked list
        belongs to one trial: each trial has its own gallery draw, and LLCM's swapped variant draws its queries per
        trial too, so trial 0 holds only part of the target's queries. The log line says how many were drawn,
        out of how many queries in the trial and in the target.
        """
        if name not in self.last_features:
            raise ValueError(f"write_ranked_lists: no test features of {name!r}; run test() first")
        if max_queries is not None and int(max_queries) < 1:
            raise ValueError(f"write_ranked_lists: max_queries must be >= 1 or None (all), got {max_queries!r}")
        qf, gf, *_ = self.last_features[name]
        dm = self.datamanager
        protocol = dm.protocols[name]
        out_dir = osp.join(save_dir, f"ranked_{name}")
        pictures = save_ranked_lists_for_protocol(
            protocol, qf, gf, dm.test_dataset[name]["query"], dm.test_dataset[name]["gallery"], out_dir,
            metric=self._last_metric.get(name, self.options.metric), topk=topk, max_queries=max_queries,
            backend=self.options.backend, width=dm.width, height=dm.height,
        )
        in_trial = len(protocol.query_of(0)) if hasattr(protocol, "query_of") else len(protocol.query)
        cap = "every query of the trial" if max_queries is None else f"at most {int(max_queries)}"
        self._log("ranked lists of %s: %d pictures (top-%d each) for %d of the %d queries of trial 0 (%s; the "
                  "target has %d queries) -> %s", name, len(pictures), topk, len(pictures), in_trial, cap,
                  len(protocol.query), out_dir)
        self.written.add(out_dir, "pictures")
        return out_dir
