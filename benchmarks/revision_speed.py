"""This working tree vs a base git revision, side by side in one process: the SYSU-MM01 all-search evaluation and
one training step of VD and of AGW. Prints the times, the ratios (this tree / base) and whether both give the same
numbers.

Usage (from the repository root)::

    .venv/bin/python benchmarks/revision_speed.py --threads 1                # base 75a3b3d (before the redesign)
    .venv/bin/python benchmarks/revision_speed.py --base HEAD~5 --parts eval  # another base, evaluation only
    .venv/bin/python benchmarks/revision_speed.py --quick                    # smoke run: small sizes, one round

How: the base revision's ``extensions/vdreid`` is exported with ``git archive`` into a temporary folder as the package
``vdreid_base`` (``import vdreid...`` / ``from vdreid...`` and ``"vdreid.<module>"`` strings rewritten), so both
revisions are imported in one process and timed on the same inputs, interleaved (the order alternates from round to
round, after one untimed warm-up call each) and repeated; the reported time of each is its median over rounds.

* ``eval``: 10 trials of 3,803 queries x 301 gallery items, 2048-d identity-clustered random features
  (``rank_speed.make_features``), SYSU-MM01 all-search rules (de-duplicated CMC, cam3 queries never see cam2),
  cosine, each revision's ``vdreid.evaluation.evaluate_features``. Checked: every trial's CMC, mAP and mINP equal
  bit for bit.
* ``vd`` / ``agw``: a model, criterion and optimiser built by each revision's own ``builders`` from one config
  (``VD_OPTS`` / ``AGW_OPTS``: the quickstart's VD network, AGW's ResNet-50 with non-local blocks, both from scratch,
  batches of 4 identities x (2 visible + 2 infrared)); the new model starts from the base model's weights (loaded by
  name); every step runs on the same images under the same seed: forward, loss, backward, optimiser step. Checked:
  the loss of every step (total and every term both revisions name) equal.

Only the public API both revisions share is used (``config.load_config``, ``builders.build_model``,
``build_criterion``, ``build_optim``, ``evaluation.evaluate_features``), so the script keeps working as the package
changes; a base too old for it says which call failed.
"""

from __future__ import annotations

import os
import sys


def _early_threads(argv: list[str]) -> None:
    """Thread-count environment variables must be set before numpy / torch load their thread pools."""
    n = "1"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = n


if __name__ == "__main__":
    _early_threads(sys.argv[1:])

import argparse  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "75a3b3d"  # the state before the one-way-house redesign
SYSU_RULES = dict(metric="cosine", cmc_mode="dedup", exclude_cam_pairs=((2, 1),))
#: quickstart-like VD (configs/quickstart.yaml's network and loss), from scratch
VD_OPTS = ["model.method", "vd", "model.name", "vd_resnet10t", "model.pretrained", "false", "data.height", "64",
           "data.width", "32", "vd.recipe", "paper", "vd.routing", "modality", "vd.last_stride", "1",
           "vd.feature_mode", "shared_v", "sampler.num_ids", "4", "sampler.num_instances", "2", "train.lr", "2e-3",
           "train.use_gpu", "false"]
#: AGW's network (ResNet-50, non-local blocks, GeM, WRT) at a small input, from scratch
AGW_OPTS = ["model.method", "agw", "model.name", "agw", "model.pretrained", "false", "data.height", "128",
            "data.width", "64", "sampler.num_ids", "4", "sampler.num_instances", "2", "train.use_gpu", "false"]
NUM_CLASSES = 8


# ------------------------------------------------------------------------------------------------ the base package
def _rewrite(text: str, name: str) -> str:
    """``vdreid`` -> ``name`` in import statements and in ``"vdreid.<module>"`` strings (module paths, logger
    names); other mentions (docs, the ``'vdreid'`` output mode of a model) are left alone."""
    text = re.sub(r"^(\s*)(from|import)\s+vdreid(?=[\s.,;]|$)", rf"\1\2 {name}", text, flags=re.M)
    return re.sub(r"(?<=[\"'])vdreid\.(?=[A-Za-z_])", f"{name}.", text)


def export_revision(rev: str, name: str = "vdreid_base") -> str:
    """Export ``rev``'s ``extensions/vdreid`` as the package ``name`` into a new temporary folder (returned; put it
    on ``sys.path`` to import it)."""
    tar = subprocess.run(["git", "archive", "--format=tar", rev, "extensions/vdreid"], cwd=REPO,
                         capture_output=True, check=True).stdout
    tmp = tempfile.mkdtemp(prefix=f"{name}_")
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(tmp, filter="data")
    dst = os.path.join(tmp, name)
    os.rename(os.path.join(tmp, "extensions", "vdreid"), dst)
    for dirpath, _, files in os.walk(dst):
        for f in files:
            if f.endswith(".py"):
                p = os.path.join(dirpath, f)
                with open(p, encoding="utf-8") as fh:
                    src = fh.read()
                with open(p, "w", encoding="utf-8") as fh:
                    fh.write(_rewrite(src, name))
    return tmp


def import_revision(rev: str, name: str = "vdreid_base"):
    """The package of revision ``rev``, imported as ``name`` beside this tree's ``vdreid``."""
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, export_revision(rev, name))
    return importlib.import_module(name)


def commit_of(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


# ------------------------------------------------------------------------------------------------ timing
def _interleaved(fns: dict[str, Any], rounds: int, label: str) -> tuple[dict[str, Any], dict[str, list]]:
    """Median seconds of each callable over ``rounds`` rounds after one untimed warm-up call each, the order
    alternating from round to round, and (key ``'ratio'``) the median over rounds of the ratio new / base within a
    round (the two calls of a round run back to back, so a change of load between rounds cancels); the results of
    the last round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    last: dict[str, Any] = {}
    names = list(fns)
    for k in names:
        fns[k]()
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            last[k] = fns[k]()
            times[k].append(time.perf_counter() - t0)
        print(f"  {label} round {r}: " + ", ".join(f"{k} {times[k][-1]:.3f} s" for k in names)
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    med: dict[str, Any] = {k: float(np.median(v)) for k, v in times.items()}
    med["ratio"] = float(np.median(np.array(times["new"]) / np.array(times["base"])))
    return med, last


def _ratio_line(what: str, med: dict[str, float], same: str) -> str:
    return (f"{what}: this tree {med['new']:.3f} s, base {med['base']:.3f} s (medians); this tree / base = "
            f"{med['ratio']:.3f} (median of per-round ratios); {same}")


# ------------------------------------------------------------------------------------------------ evaluation
def bench_eval(pkgs: dict[str, Any], rounds: int, quick: bool) -> str:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from rank_speed import make_features

    nq, ng, trials = (380, 60, 2) if quick else (3803, 301, 10)
    feats = [make_features(nq, ng, 2048, 96, seed=t, pure_noise=False) for t in range(trials)]
    fns = {}
    for k, pkg in pkgs.items():
        ev = importlib.import_module(f"{pkg.__name__}.evaluation").evaluate_features
        fns[k] = lambda ev=ev: [ev(qf, gf, qp, gp, qc, gc, **SYSU_RULES) for qf, gf, qp, gp, qc, gc in feats]
    med, last = _interleaved(fns, rounds, "eval")
    same = all(a["mAP"] == b["mAP"] and a["mINP"] == b["mINP"] and np.array_equal(a["cmc"], b["cmc"])
               for a, b in zip(last["new"], last["base"]))
    r1 = np.mean([o["cmc"][0] for o in last["new"]]) * 100
    return _ratio_line(f"SYSU all-search evaluation ({trials} trials, {nq} x {ng}, 2048-d; R1 {r1:.2f})", med,
                       f"identical metrics: {same}")


# ------------------------------------------------------------------------------------------------ training step
def _batch(cfg, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 identities x (2 visible + 2 infrared) images, identity-major as vdreid's sampler lays out a batch."""
    g = torch.Generator().manual_seed(seed)
    p, k = int(cfg.sampler.num_ids), int(cfg.sampler.num_instances)
    ids = torch.randperm(NUM_CLASSES, generator=g)[:p]
    pids = ids.repeat_interleave(2 * k)
    is_ir = torch.tensor(([False] * k + [True] * k) * p)
    imgs = torch.randn(pids.numel(), 3, int(cfg.data.height), int(cfg.data.width), generator=g)
    return imgs, pids, is_ir


class _Trainer:
    """One revision's model, criterion and optimiser, built by its own builders from ``opts``."""

    def __init__(self, pkg, opts: list[str], seed: int) -> None:
        cfg_mod = importlib.import_module(f"{pkg.__name__}.config")
        builders = importlib.import_module(f"{pkg.__name__}.builders")
        self.cfg = cfg_mod.load_config(None, opts)
        torch.manual_seed(seed)
        self.model = builders.build_model(self.cfg, NUM_CLASSES)
        self.criterion = builders.build_criterion(self.cfg, NUM_CLASSES, self.model)
        opt = builders.build_optim(self.cfg, self.model, self.criterion)
        self.optimizer = opt[0] if isinstance(opt, tuple) else opt
        import inspect

        self.takes_modality = "modality" in inspect.signature(self.model.forward).parameters
        self.model.train()

    def step(self, imgs: torch.Tensor, pids: torch.Tensor, is_ir: torch.Tensor, seed: int) -> dict[str, float]:
        torch.manual_seed(seed)
        out = self.model(imgs, modality=is_ir) if self.takes_modality else self.model(imgs)
        total, terms = self.criterion(out, pids)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        vals = {k: float(torch.as_tensor(v).detach()) for k, v in terms.items()}
        vals["total"] = float(total.detach())
        return vals


def bench_step(pkgs: dict[str, Any], method: str, opts: list[str], rounds: int, steps: int) -> str:
    tr = {k: _Trainer(pkg, opts, seed=0) for k, pkg in pkgs.items()}
    shared = "from the same seed"
    try:  # the same starting weights, whatever order the revisions create their parameters in
        tr["new"].model.load_state_dict(tr["base"].model.state_dict())
        tr["new"].criterion.load_state_dict(tr["base"].criterion.state_dict())
        shared = "from the base model's weights"
    except (RuntimeError, KeyError) as exc:
        print(f"  {method}: weights not shared ({str(exc).splitlines()[0]}); both start from the same seed")
    data = [_batch(tr["new"].cfg, seed=100 + i) for i in range(steps)]
    losses: dict[str, list[dict[str, float]]] = {k: [] for k in tr}

    def run(k: str):
        out = []
        for i, (x, y, ir) in enumerate(data):
            out.append(tr[k].step(x, y, ir, seed=1000 + len(losses[k]) + i))
        losses[k].extend(out)
        return out

    med, _ = _interleaved({k: (lambda k=k: run(k)) for k in tr}, rounds, method)
    med = {k: (v if k == "ratio" else v / steps) for k, v in med.items()}
    worst, n_terms = 0.0, 0
    for a, b in zip(losses["new"], losses["base"]):
        for term in set(a) & set(b):
            n_terms += 1
            worst = max(worst, abs(a[term] - b[term]) / max(abs(b[term]), 1e-12))
    same = "equal losses (bit for bit)" if worst == 0 else f"losses differ by up to {worst:.2e} (relative)"
    first = losses["base"][0]["total"]
    return _ratio_line(f"{method} training step (per step, {steps} steps x {rounds} rounds, {shared}; first loss "
                       f"{first:.4f}; {n_terms} loss values compared)", med, same)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=BASE, help=f"git revision to compare with (default {BASE})")
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS / faiss threads (default 1)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per part (median reported)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per round")
    ap.add_argument("--parts", nargs="+", default=["eval", "vd", "agw"], choices=["eval", "vd", "agw"])
    ap.add_argument("--quick", action="store_true", help="small evaluation, one round, one step (smoke run)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(a.threads)
    except ImportError:
        pass
    import vdreid

    base = import_revision(a.base)
    pkgs = {"new": vdreid, "base": base}
    rounds, steps = (1, 1) if a.quick else (a.rounds, a.steps)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"base {a.base} ({commit_of(a.base)}) vs this working tree (HEAD {commit_of('HEAD')} + changes); "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}; {cpu}", flush=True)
    lines = []
    if "eval" in a.parts:
        lines.append(bench_eval(pkgs, rounds, a.quick))
    if "vd" in a.parts:
        lines.append(bench_step(pkgs, "VD", VD_OPTS, rounds, steps))
    if "agw" in a.parts:
        lines.append(bench_step(pkgs, "AGW", AGW_OPTS, rounds, steps))
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
