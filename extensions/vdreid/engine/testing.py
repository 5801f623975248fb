"""Testing of a :class:`~vdreid.engine.trainer.VIEngine`: every target's protocol on features extracted once (under
DDP in shards by every rank), results JSON with provenance, and ranked lists from the same features. torchreid's
``Engine.test`` keywords are honoured or refused, never ignored."""

from __future__ import annotations

import logging
import os.path as osp
import time
from typing import Any

import torch

from vdreid.engine import distributed as vdist
from vdreid.engine.state import _json_safe
from vdreid.errors import ConfigError

logger = logging.getLogger(__name__)

# torchreid ``Engine.test`` keywords and what we do with them (see ``EvaluationMixin.test``)
_TORCHREID_TEST_KWARGS = ("dist_metric", "normalize_feature", "visrank", "visrank_topk", "save_dir",
                          "use_metric_cuhk03", "ranks", "rerank")


class EvaluationMixin:
    """``evaluate``, ``test`` and ``write_ranked_lists`` of a :class:`~vdreid.engine.trainer.VIEngine`."""

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
                               backend=self.backend, rerank=rerank, max_rank=self.max_rank, flip=self.flip,
                               approximate=self.approximate)
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
            metric=self.metric, topk=topk, max_queries=max_queries, backend=self.backend, width=dm.width,
            height=dm.height,
        )
        return out_dir
