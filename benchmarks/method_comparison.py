"""Method comparison on synthetic data: VD, AGW, CAJ, DEEN and the plain BNNeck baseline, each on its own recipe
scaled to the CPU, three seeds each, plus VD on ViT-Tiny encoders.

What every run shares (configs/quickstart.yaml, the CPU demo): the synthetic training tree and its test split, the
held-out tree, the input size (64x32), the length (20 epochs), the epoch (AGW's: ``max(#visible, #infrared) /
(identities x instances) + 1`` batches), training from scratch (no ImageNet weights: none are reachable offline, and
the quickstart has none), the final epoch as the tested model (no selection on the test set) and the evaluation
(all-search single-shot, 10 AGW gallery draws).

What each method brings of its own (``RECIPES``; every override of the quickstart is listed there and in
benchmarks/RESULTS.md): its network at a small size (ResNet-10-T, the quickstart's VD encoder, wherever the method
takes a ``model.backbone``: all of them do), its loss, its batch composition (identities x instances, CAJ's two
visible views, AGW's identity draw), its augmentation (AGW's Lanczos resize and pad + crop with the padding scaled to
the input, CAJ's channel augmentation and erasing, DEEN's grayscale + erasing), its test feature and test-time flip.

* ``vd``: configs/quickstart.yaml as it is (``vd_resnet10t``: three ResNet-10-T branches with information
  bottlenecks; Adam; test feature ``shared_v``);
* ``vd_vit``: the same with ``model.backbone vit_tiny_patch16_224`` (ViT-Ti/16 encoders; at 64x32 a 4x2 patch grid,
  the same grid as the ResNet-10-T's final map with last stride 1; docs/encoders.md);
* ``agw``: configs/methods/agw_sysu.yaml scaled (two-stream stems, non-local blocks, GeM, BNNeck; CE + weighted
  regularized triplet);
* ``caj``: configs/methods/caj_sysu.yaml scaled (AGW's network; CE + adaptive weighted triplet; every visible image
  twice, plain and channel-exchanged; channel erasing and adaptive gray);
* ``deen``: configs/methods/deen_sysu.yaml scaled (two-stream, MFA blocks, DEE module; CE + triplet over three
  embeddings + CPM + orthogonal loss; 6 ids x (4 + 4); grayscale + erasing);
* ``bnneck``: configs/methods/bnneck_sysu.yaml scaled (one shared encoder, BNNeck; label-smoothed CE + batch-hard
  triplet; AGW's data pipeline).

One thing is not each method's own: the optimiser and schedule. AGW, CAJ, DEEN and BNNeck fine-tune ImageNet
weights with SGD (lr 0.1, the backbone at 0.1 x that, x0.1 decays after a quarter of the training or earlier). From
scratch in 20 epochs that recipe barely learns, and pilot runs on AGW (seed 9, ``--own-optimiser`` with ``--tag`` and
``--set``; benchmarks/RESULTS.md lists them) showed each step towards the quickstart's optimiser helping on the tuning
tree: one learning rate for every parameter, then the quickstart's schedule shape (decay at 16 of 20), then Adam
at 2e-3. So every recipe trains with the quickstart's Adam, lr 2e-3, one rate for every parameter
(``<method>.backbone_lr_mult 1``) and its schedule (one warm-up epoch from x0.1, x0.1 at 16);
``--own-optimiser`` restores each method's SGD with its schedule's shape scaled to the run's length
(``Schedule.scaled``). Each run's differences from the method's own recipe file are listed in the report.

Data: the trees of ``benchmarks/transfer.py`` (its ``make_trees``), generated under this script's own ``--root``
(default ``datasets/method_comparison``) so that nobody regenerating the shared trees can change them between runs:
training on ``train/hard`` (seed 0, the transfer check's training tree); every model is evaluated by
``vdreid train`` on that tree's test split (other identities; the number in the results JSON and the leaderboard)
and, in this process, on the held-out ``test/shift`` tree (seed 1: other people, a generator style no recipe was
tuned on). Seeds: ``train.seed`` and ``sampler.seed`` both set to each of ``--seeds``.

Outputs: each run trains into ``<out-dir>/<recipe>_seed<k>/`` (checkpoints stay there, untracked); its results JSON
and ``config.yaml`` are copied to ``benchmarks/runs/method_comparison/<recipe>_seed<k>/`` (tracked). Then
``vdreid leaderboard --runs benchmarks/runs`` rebuilds benchmarks/LEADERBOARD.md/.csv (the seeds of a recipe form
one row there: mean ± std over seeds) and the "Method comparison (synthetic)" section of benchmarks/RESULTS.md is
written (mean ± std over seeds, population std; which differences exceed the seed spread; train time per run;
parameter count; chance level; machine, load, command, date).

Resumption: ``--reuse`` keeps every finished training of ``--out-dir`` whose overrides and config file are the ones
asked for (a changed recipe is an error, not a silent reuse), so an interrupted comparison continues where it
stopped. ``--jobs 2`` starts a second training beside the first only while the box is otherwise quiet (no other
``vdreid train`` or benchmark training, 1-minute load below ``--max-load`` plus this script's own trainings).

    python benchmarks/method_comparison.py --threads 1 --jobs 2 --reuse      # 5 methods x 3 seeds + VD-ViT
    python benchmarks/method_comparison.py --recipes agw --seeds 9 --tag pilot --set agw:train.lr=0.05 --no-write
    python benchmarks/method_comparison.py --seeds 0 --epochs 1 --runs-dir /tmp/mc --no-write   # a smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import itertools
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
sys.path.insert(0, HERE)

import transfer  # noqa: E402  (benchmarks/transfer.py: trees, chance, training runner, checkpoint loader)
from synthetic_ablation import write_section  # noqa: E402

QUICKSTART = osp.join(REPO, "configs", "quickstart.yaml")
TARGET = transfer.TARGET
SECTION = "Method comparison (synthetic)"
#: the synthetic generator's sources (their last commit is recorded with the results)
GENERATOR_FILES = ("extensions/vdreid/data/synthetic.py", "extensions/vdreid/data/synthetic_hard.py",
                   "extensions/vdreid/data/synthetic_draw.py")
METRICS = ("R1", "mAP", "mINP")


# ------------------------------------------------------------------------------------------------ recipes


@dataclass(frozen=True)
class Schedule:
    """A recipe's per-epoch learning-rate schedule in vdreid's terms (``warmup_multistep`` stepped at the end of each
    epoch: linear warm-up from ``warmup_factor`` over ``warmup_epochs``, x ``gamma`` at each milestone), at its own
    length ``epochs``."""

    epochs: int
    warmup_epochs: int
    warmup_factor: float
    milestones: tuple[int, ...]

    def scaled(self, epochs: int) -> dict[str, Any]:
        """The same shape over ``epochs``: warm-up and milestones at the same fractions of the training, rounded to
        whole epochs (milestones at least 1 and distinct)."""
        f = epochs / self.epochs
        ms: list[int] = []
        for m in self.milestones:
            v = max(1, round(m * f))
            if not ms or v > ms[-1]:
                ms.append(v)
        return {"warmup_epochs": round(self.warmup_epochs * f), "warmup_factor": self.warmup_factor,
                "stepsize": ms}


#: configs/quickstart.yaml: 20 epochs, one warm-up epoch from 0.1, x0.1 at 16
QUICKSTART_SCHEDULE = Schedule(20, 1, 0.1, (16,))
#: AGW's train.py (configs/methods/_agw_schedule.yaml): lr (e + 1) / 10 for e < 10, x0.1 at 20 and 50, 81 epochs
AGW_SCHEDULE = Schedule(81, 9, 0.1, (20, 50))
#: CAJ's train_ext.py (configs/methods/caj_sysu.yaml): AGW's warm-up and steps over 100 epochs
CAJ_SCHEDULE = Schedule(100, 9, 0.1, (20, 50))
#: DEEN's train.py (configs/methods/deen_sysu.yaml): AGW's warm-up, x0.1 at 20 and x0.01 at 80, 151 epochs
DEEN_SCHEDULE = Schedule(151, 9, 0.1, (20, 80))

#: The SGD recipes' own optimiser: SGD with Nesterov momentum 0.9, weight decay 5e-4, base lr 0.1 (AGW's, CAJ's and
#: DEEN's train.py; _agw_schedule.yaml), everything but BNNeck and classifier at 0.1 x the rate (``--own-optimiser``)
SGD = ("train.optim", "sgd", "train.momentum", "0.9", "train.nesterov", "True", "train.weight_decay", "5.0e-4",
       "train.lr", "0.1")
#: AGW's pad 10 + random crop, the padding scaled to the input (``pad_crop`` without a number: round(10 * 64 / 288) =
#: 2 pixels at 64x32)
PAD_CROP = "pad_crop"
#: AGW's data pipeline, kept by AGW, CAJ, DEEN and BNNeck (configs/methods/_agw_schedule.yaml): images resized with
#: PIL's antialias filter, batches drawn as AGW's IdentitySampler (identities afresh per batch, with replacement)
AGW_DATA = ("data.resize_interpolation", "lanczos", "sampler.draw", "independent")


@dataclass(frozen=True)
class Recipe:
    """One method's recipe for this comparison, as overrides of the quickstart's config file for the method.

    ``overrides``: what the method keeps of its own recipe (network at a small size, batch, augmentation, test);
    ``scratch``: what training from scratch with the quickstart's optimiser needs (the backbone factor 1);
    ``own_optimiser`` / ``own_schedule``: the recipe's own optimiser and schedule (``--own-optimiser``: the pilots);
    ``recipe_file``: the method's own recipe (its differences from the run's config are listed in the report);
    ``summary``: one line per aspect for the table of benchmarks/RESULTS.md."""

    method: str
    model: str
    label: str
    recipe_file: str
    overrides: tuple[str, ...] = ()
    scratch: tuple[str, ...] = ()
    own_optimiser: tuple[str, ...] = ()
    own_schedule: Schedule = QUICKSTART_SCHEDULE
    summary: dict[str, str] = field(default_factory=dict)

    def opts(self, epochs: int, own_optimiser: bool = False) -> list[str]:
        """Every override of the method's quickstart file: the recipe's, then its optimiser and its schedule at
        ``epochs`` (the quickstart's Adam and schedule shape; ``own_optimiser``: the recipe's own, its schedule's
        shape scaled)."""
        opt, sched = (self.own_optimiser, self.own_schedule) if own_optimiser else (self.scratch, QUICKSTART_SCHEDULE)
        s = sched.scaled(epochs)
        return [*self.overrides, *opt, "train.max_epoch", str(epochs), "train.warmup_epochs", str(s["warmup_epochs"]),
                "train.warmup_factor", str(s["warmup_factor"]), "train.stepsize", str(s["stepsize"])]


#: the optimiser every recipe trains with: the quickstart's (Adam, lr 2e-3, wd 5e-4, one rate for every parameter;
#: the pilots of benchmarks/RESULTS.md: AGW's own SGD, even with one rate and the quickstart's schedule shape, stays
#: 2 rank-1 points below it from scratch)
ADAM_TEXT = "Adam lr 2e-3, wd 5e-4 (the quickstart's)"
#: ResNet-10-T (timm resnet10t, the quickstart's VD encoder) in place of each method's ResNet-50
SMALL = ("model.backbone", "resnet10t")


def _sgd_own(section: str | None) -> tuple[str, ...]:
    return (*SGD, f"{section}.backbone_lr_mult", "0.1") if section else SGD


RECIPES: dict[str, Recipe] = {
    "vd": Recipe(
        "vd", "vd_resnet10t", "VD (vd_resnet10t)", "configs/quickstart.yaml",
        summary={"network": "3 ResNet-10-T branches + IB bottlenecks, last stride 1",
                 "loss": "VD, paper recipe (Eq. 16-17)", "batch": "16 ids x (2 + 2)",
                 "augmentation": "flip, channel exchange (p 0.5), channel adaptive gray", "optimiser": ADAM_TEXT,
                 "test": "shared_v"}),
    "vd_vit": Recipe(
        "vd", "vd_resnet10t", "VD (ViT-Ti/16 encoders)", "configs/quickstart.yaml",
        ("model.backbone", "vit_tiny_patch16_224"),
        summary={"network": "3 ViT-Ti/16 branches (4x2 patches at 64x32) + IB bottlenecks",
                 "loss": "VD, paper recipe", "batch": "16 ids x (2 + 2)", "augmentation": "as VD",
                 "optimiser": ADAM_TEXT + "; not tuned for ViT", "test": "shared_v"}),
    "agw": Recipe(
        "agw", "agw_resnet18", "AGW (ResNet-10-T)", "configs/methods/agw_sysu.yaml",
        (*SMALL, "sampler.num_ids", "8", "sampler.num_instances", "4", *AGW_DATA,
         "data.transforms", f"['{PAD_CROP}','random_flip']"),
        ("agw.backbone_lr_mult", "1.0"), _sgd_own("agw"), AGW_SCHEDULE,
        {"network": "two-stream ResNet-10-T, non-local blocks (1 in layer2, 1 in layer3: one block per stage), GeM, "
                    "BNNeck", "loss": "CE + weighted regularized triplet",
         "batch": "8 ids x (4 + 4), AGW's draw", "augmentation": "lanczos resize, pad 2 + crop, flip",
         "optimiser": ADAM_TEXT, "test": "bn"}),
    "caj": Recipe(
        "caj", "caj_resnet18", "CAJ (ResNet-10-T)", "configs/methods/caj_sysu.yaml",
        (*SMALL, "sampler.num_ids", "8", "sampler.num_instances", "4", *AGW_DATA,
         "data.transforms", f"['{PAD_CROP}','random_flip','channel_erase','channel_adap_gray']",
         "data.visible_views", "['channel_exchange:1']", "test.flip", "True"),
        ("caj.backbone_lr_mult", "1.0"), _sgd_own("caj"), CAJ_SCHEDULE,
        {"network": "AGW's (two-stream ResNet-10-T, non-local, GeM, BNNeck)",
         "loss": "CE + adaptive weighted triplet (alpha 1, gamma 1, squared)",
         "batch": "8 ids x (4 + 4), AGW's draw, each visible image twice (plain, channel-exchanged): 96 tensors",
         "augmentation": "lanczos resize, pad 2 + crop, flip, channel erasing 0.5; IR: channel adaptive gray",
         "optimiser": ADAM_TEXT, "test": "bn, flip"}),
    "deen": Recipe(
        "deen", "deen_resnet18", "DEEN (ResNet-10-T)", "configs/methods/deen_sysu.yaml",
        (*SMALL, "sampler.num_ids", "6", "sampler.num_instances", "4", *AGW_DATA,
         "data.transforms", f"['{PAD_CROP}','random_gray:0.5','random_flip','random_erase:0.5']",
         "data.random_erase_area", "[0.2, 0.8]", "test.flip", "True"),
        ("deen.backbone_lr_mult", "1.0"), _sgd_own("deen"), DEEN_SCHEDULE,
        {"network": "two-stream ResNet-10-T, MFA after layers 1-3, DEE before layer 4, BNNeck",
         "loss": "CE + triplet (0.3) over 3 embeddings + 0.8 CPM + 0.01 orthogonal",
         "batch": "6 ids x (4 + 4), AGW's draw",
         "augmentation": "lanczos resize, pad 2, gray 0.5, crop, flip, erasing 0.5 (area 0.2-0.8)",
         "optimiser": ADAM_TEXT, "test": "all (6 normalised parts), flip"}),
    "bnneck": Recipe(
        "bnneck", "bnneck_resnet18", "BNNeck baseline (ResNet-10-T)", "configs/methods/bnneck_sysu.yaml",
        (*SMALL, "sampler.num_ids", "8", "sampler.num_instances", "4", *AGW_DATA,
         "data.transforms", f"['{PAD_CROP}','random_flip']"),
        (), _sgd_own(None), AGW_SCHEDULE,
        {"network": "one shared ResNet-10-T, GAP, BNNeck", "loss": "CE (label smoothing 0.1) + batch-hard triplet 0.3",
         "batch": "8 ids x (4 + 4), AGW's draw", "augmentation": "lanczos resize, pad 2 + crop, flip",
         "optimiser": ADAM_TEXT, "test": "bn"}),
}
ORDER = ("vd", "agw", "caj", "deen", "bnneck", "vd_vit")


# ------------------------------------------------------------------------------------------------ configs


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def quickstart_dict(path: str = QUICKSTART) -> dict[str, Any]:
    """The quickstart file with its ``_base_`` chain merged (plain dict, no defaults)."""
    from vdreid.config import read_yaml_with_bases

    merged: dict[str, Any] = {}
    for _, data in read_yaml_with_bases(path):
        merged = _merge(merged, data)
    return merged


def method_config(q: dict[str, Any], recipe: Recipe) -> tuple[dict[str, Any], list[str]]:
    """The quickstart for the recipe's method: other methods' sections dropped, ``model.method`` / ``model.name`` set.

    Returns the config dict and the dropped keys (sections of other methods; a test feature the method lacks)."""
    from vdreid import methods

    m = methods.get(recipe.method)
    own = {m.section, *m.extra_sections}
    foreign = {s for o in methods.all_methods() for s in (o.section, *o.extra_sections)} - own
    cfg = {k: v for k, v in q.items() if k not in foreign}
    dropped = sorted(f"{k}.{kk}" for k in q if k in foreign for kk in (q[k] or {}))
    test = dict(cfg.get("test") or {})
    if test.get("feature_mode") and test["feature_mode"] not in m.feature_modes:
        dropped.append("test.feature_mode")
        test.pop("feature_mode")
    cfg["test"] = test
    cfg["model"] = {**(cfg.get("model") or {}), "method": recipe.method, "name": recipe.model}
    return cfg, dropped


def write_method_configs(q: dict[str, Any], out_dir: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """``{recipe: {path, dropped, sha1}}``: the quickstart as each method's config file, written at the start (VD's
    too: a snapshot, so that every run of the comparison trains the same quickstart even if the file changes)."""
    out = {}
    os.makedirs(osp.join(out_dir, "configs"), exist_ok=True)
    for name in names:
        cfg, dropped = method_config(q, RECIPES[name])
        text = (f"# configs/quickstart.yaml for method '{RECIPES[name].method}' (benchmarks/method_comparison.py, "
                f"recipe '{name}'); dropped: {', '.join(dropped) or 'nothing'}\n"
                + yaml.safe_dump(cfg, sort_keys=False))
        path = osp.join(out_dir, "configs", f"{name}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        out[name] = {"path": path, "dropped": dropped, "sha1": hashlib.sha1(text.encode()).hexdigest()}
    return out


def parse_sets(items: list[str]) -> dict[str, list[str]]:
    """``--set RECIPE:KEY=VALUE`` -> ``{recipe: [KEY, VALUE, ...]}`` (extra overrides, e.g. for pilot runs)."""
    out: dict[str, list[str]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        name, colon, key = head.partition(":")
        if not (sep and colon and name in RECIPES and key):
            raise SystemExit(f"--set {item!r}: expected RECIPE:KEY=VALUE with RECIPE one of {list(RECIPES)}")
        out.setdefault(name, []).extend([key, value])
    return out


# ------------------------------------------------------------------------------------------------ machine


def _cmdlines() -> list[tuple[int, str]]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append((int(pid), f.read().decode("utf-8", "replace").replace("\0", " ").strip()))
        except OSError:
            continue
    return found


def other_trainings(own_marker: str | None = None) -> list[str]:
    """Command lines of trainings and benchmarks on this machine that are not this script's own (``vdreid train``,
    any ``benchmarks/*.py``; ``own_marker``: a path in this script's trainings' command lines)."""
    out = []
    for pid, cmd in _cmdlines():
        if (own_marker and own_marker in cmd) or "method_comparison" in cmd:
            continue
        argv = cmd.split()
        bench = any(a.endswith(".py") and "benchmarks/" in a for a in argv)
        if bench or (any(a.endswith("vdreid") for a in argv) and "train" in argv):
            out.append(f"{pid}: {cmd[:120]}")
    return out


class Gate:
    """At most ``jobs`` trainings at a time; the second and later start only while the box is otherwise quiet (no
    other training or long benchmark, 1-minute load below ``max_load`` plus the trainings this script runs)."""

    def __init__(self, jobs: int, max_load: float, marker: str, poll_s: float = 60.0):
        self.jobs, self.max_load, self.marker, self.poll_s = max(1, jobs), max_load, marker, poll_s
        self.running = 0
        self.lock = threading.Lock()

    def _may_start(self) -> bool:
        if self.running == 0:
            return True
        if self.running >= self.jobs:
            return False
        return os.getloadavg()[0] < self.max_load + self.running and not other_trainings(self.marker)

    def __enter__(self) -> Gate:
        while True:
            with self.lock:
                if self._may_start():
                    self.running += 1
                    return self
            time.sleep(self.poll_s)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.running -= 1


def wait_quiet(max_wait_s: float, poll_s: float = 60.0, load_max: float = 3.0) -> dict[str, Any]:
    """Wait until the 1-minute load is below ``load_max`` and no other training runs, twice ``poll_s`` apart."""
    t0 = time.time()
    quiet_polls = 0
    while True:
        load = os.getloadavg()[0]
        others = other_trainings()
        quiet_polls = quiet_polls + 1 if load < load_max and not others else 0
        print(f"[wait] load {load:.2f}, other trainings {len(others)}, quiet polls {quiet_polls}", flush=True)
        if quiet_polls >= 2:
            return {"quiet": True, "waited_s": time.time() - t0, "load": load}
        if time.time() - t0 >= max_wait_s:
            return {"quiet": False, "waited_s": time.time() - t0, "load": load, "others": len(others)}
        time.sleep(poll_s)


def cpu_model() -> str:
    """``lscpu``'s model name (else the platform's processor string)."""
    r = subprocess.run(["lscpu"], capture_output=True, text=True, check=False)
    for line in r.stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return r.stdout.strip()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------------------------------------ runs


def train(name: str, config: dict[str, Any], tree: str, opts: list[str], out_dir: str, threads: int, reuse: bool,
          gate: Gate) -> dict:
    """One training by the command line into ``out_dir/name``; returns its folder, command, timing and load.

    ``reuse``: a finished run of the same overrides, config file and tree is returned as it is; one of other
    settings is an error (move it away or drop ``--reuse``)."""
    run_dir = osp.join(out_dir, name)
    meta_path = osp.join(run_dir, "method_comparison_meta.json")
    if reuse and osp.isfile(meta_path) and osp.isfile(osp.join(run_dir, f"results_{TARGET}.json")):
        with open(meta_path) as f:
            meta = json.load(f)
        stored = (meta.get("opts"), meta.get("config_sha1"), osp.abspath(meta.get("tree", "")))
        if stored != (opts, config["sha1"], osp.abspath(tree)):
            raise RuntimeError(f"--reuse: {run_dir} was trained with overrides {meta.get('opts')} of a config file "
                               f"with sha1 {meta.get('config_sha1')} on {meta.get('tree')}, not {opts} of "
                               f"{config['sha1']} on {tree}; move it away or drop --reuse")
        return meta
    cmd = [osp.join(REPO, ".venv", "bin", "vdreid"), "train", "--config-file", osp.relpath(config["path"], REPO),
           "data.root", osp.relpath(tree, REPO), "data.save_dir", osp.relpath(run_dir, REPO), "test.visrank", "false",
           *opts]
    with gate:
        if osp.isdir(run_dir) and os.listdir(run_dir):
            cmd.insert(2, "--overwrite")
        os.makedirs(out_dir, exist_ok=True)
        start = utc_now()
        print(f"[train] {name} starts {start} (load {os.getloadavg()[0]:.2f})", flush=True)
        meta = {"name": name, "run_dir": run_dir, "tree": tree, "opts": opts, "config_sha1": config["sha1"],
                "command": " ".join(cmd[1:]), "start": start,
                **transfer.run_cli_training(cmd, osp.join(out_dir, f"{name}.log"), threads)}
    meta["end"] = utc_now()
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"[train] {name} done {meta['end']}: {meta['wall_s'] / 60:.1f} min wall", flush=True)
    return meta


def evaluate(run_dir: str, roots: dict[str, str]) -> dict[str, Any]:
    """The run's final checkpoint on each tree of ``roots``, evaluated as ``vdreid train`` evaluates it (the data
    manager of its stored config with ``data.root`` replaced: input size, resize filter, normalisation; its test
    feature, distance and flip setting), and, for a flip-tested run, without flip too; its parameter count."""
    import contextlib
    import io

    import torch
    from vdreid import builders
    from vdreid.evaluation.evaluator import evaluate_model

    torch.set_num_threads(1)
    model, cfg = transfer.load_run(run_dir)
    flip = bool(cfg.test.flip)
    out: dict[str, Any] = {"feature_mode": str(model.feature_mode), "flip": flip,
                           "params": int(sum(p.numel() for p in model.parameters())),
                           "checkpoint_mtime": osp.getmtime(osp.join(run_dir, "latest.pth"))}
    for key, root in roots.items():
        c = cfg.clone()
        c.defrost()
        c.data.root = root
        c.data.workers = 1
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
            dm = builders.build_datamanager(c)
            for f in ([True, False] if flip else [False]):
                rep = evaluate_model(model, dm.test_loader[TARGET]["query"], dm.test_loader[TARGET]["gallery"],
                                     dm.protocols[TARGET], "cpu", dm.ir_camids_of(TARGET),
                                     metric=str(cfg.test.dist_metric), flip=f)
                out[key if f == flip else f"{key}_noflip"] = {k: float(rep.mean[k]) for k in METRICS}
    return out


def evaluate_in_child(run_dir: str, roots: dict[str, str], threads: int) -> dict[str, Any]:
    """:func:`evaluate` in a fresh process (the code the training just ran with, not the code this long-running
    script imported hours ago: others edit the shared tree meanwhile), cached in the run folder."""
    path = osp.join(run_dir, "method_comparison_eval.json")
    if osp.isfile(path):
        with open(path) as f:
            ev = json.load(f)
        if (ev.get("checkpoint_mtime") == osp.getmtime(osp.join(run_dir, "latest.pth"))
                and ev.get("roots") == roots):
            return ev
    cmd = [sys.executable, osp.abspath(__file__), "--eval-run", run_dir, "--eval-root",
           *[f"{k}={r}" for k, r in roots.items()]]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    with open(path) as f:
        return json.load(f)


def track(run_dir: str, dest: str) -> str:
    """Copy the run's results JSON and config.yaml (nothing else) to the tracked folder ``dest``."""
    os.makedirs(dest, exist_ok=True)
    for fname in (f"results_{TARGET}.json", "config.yaml"):
        shutil.copy2(osp.join(run_dir, fname), osp.join(dest, fname))
    return osp.join(dest, f"results_{TARGET}.json")


# ------------------------------------------------------------------------------------------------ report


#: keys of a run that say where and how it ran, not what it trains
_INFRA_KEYS = {"data.root", "data.save_dir", "data.workers", "train.seed", "sampler.seed", "train.print_freq",
               "train.use_gpu", "train.threads", "test.threads", "train.flush_denormal", "test.visrank"}


def recipe_diff(recipe: Recipe, run_dir: str) -> list[tuple[str, Any, Any]]:
    """``(key, value in the method's own recipe file, value in the run)`` for every key of the general sections and
    the method's own that differ (the recipe file loaded with the defaults, as ``vdreid train`` would)."""
    from vdreid import methods
    from vdreid.config import load_config
    from vdreid.engine.run_dir import flatten

    m = methods.get(recipe.method)
    sections = ("model", "data", "sampler", "train", "test", m.section, *m.extra_sections)
    own = flatten(yaml.safe_load(load_config(osp.join(REPO, recipe.recipe_file)).dump()))
    with open(osp.join(run_dir, "config.yaml"), encoding="utf-8") as f:
        ran = flatten(yaml.safe_load(f))
    out = []
    for k in sorted(set(own) | set(ran)):
        if k.split(".")[0] not in sections or k in _INFRA_KEYS:
            continue
        a, b = own.get(k, "(none)"), ran.get(k, "(none)")
        if not _same(a, b):
            out.append((k, a, b))
    return out


def _numeric(v: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (v if isinstance(v, list) else [v]))


def _same(a: Any, b: Any) -> bool:
    """Equal config values (numbers and lists of numbers up to float rounding)."""
    if _numeric(a) and _numeric(b) and np.shape(a) == np.shape(b):
        return bool(np.allclose(a, b))
    return a == b


def ms(values: list[float]) -> str:
    """``mean ± std`` (population std over seeds)."""
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


#: the four numbers the reading compares: (tree key, metric, column title)
COMPARED = (("own", "R1", "hard R1"), ("own", "mAP", "hard mAP"), ("shift", "R1", "shift R1"),
            ("shift", "mAP", "shift mAP"))


def spread_verdict(a: list[float], b: list[float]) -> tuple[float, str]:
    """``(mean(a) - mean(b), verdict)``: ``clear`` when the difference exceeds the sum of the two seed stds (the
    mean ± std intervals do not touch), ``> spread`` when it exceeds the larger std only, ``within`` otherwise;
    ``n/a`` when either side has one seed."""
    d = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return d, "n/a (1 seed)"
    sa, sb = float(np.std(a)), float(np.std(b))
    if abs(d) > sa + sb:
        return d, "clear"
    if abs(d) > max(sa, sb):
        return d, "> spread"
    return d, "within"


def values(rs: list[dict], tree: str, metric: str) -> list[float]:
    return [r["eval"][tree][metric] for r in rs]


def report(runs: dict[str, list[dict]], info: dict[str, Any]) -> str:
    names = list(runs)
    lines = [
        "Five methods, each on its own recipe scaled to the CPU, plus VD on ViT-Tiny encoders; every run shares "
        f"the quickstart's tree, input and length (configs/quickstart.yaml at commit {info['quickstart_commit']}"
        f"{info['quickstart_dirty']}: {info['epochs']} epochs, 64x32, AGW's epoch, from scratch, the final epoch "
        "tested) and the evaluation (all-search single-shot, 10 AGW gallery draws). Trained on the `hard` synthetic "
        "tree (seed 0, as benchmarks/transfer.py's `train/hard`, generated under "
        f"{info['root']} by the generator at commit {info['generator_commit']}{info['generator_dirty']}). `hard`: "
        "that tree's test split (other identities; the tuning tree of the quickstart; what the results JSON and "
        "benchmarks/LEADERBOARD.md hold); `shift`: the held-out `test/shift` tree (seed 1, other people, a "
        "generator style no recipe was tuned on). Mean ± std over seeds (train.seed = sampler.seed; population "
        "std over the seeds, not over the gallery draws), percent.",
        "",
        f"Chance (1 / gallery identities): hard {info['chance']['own']:.2f}, shift {info['chance']['shift']:.2f}.",
        "",
        "| method | seeds | hard R1 | hard mAP | hard mINP | shift R1 | shift mAP | shift mINP | test feature | "
        "parameters (incl. classifier) | train time per run (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        walls = [r["meta"]["wall_s"] / 60 for r in rs]
        cpus = [r["meta"]["cpu_s"] / 60 for r in rs]
        cells = [ms(values(rs, t, k)) for t in ("own", "shift") for k in METRICS]
        ev = rs[0]["eval"]
        feat = ev["feature_mode"] + (" + flip" if ev["flip"] else "")
        lines.append(f"| {RECIPES[name].label} | {len(rs)} | " + " | ".join(cells) + f" | {feat} | "
                     f"{ev['params'] / 1e6:.2f} M | {np.mean(walls):.1f} ({min(walls):.1f}-{max(walls):.1f}) / "
                     f"{np.mean(cpus):.1f} min |")
    flipped = [n for n, rs in runs.items() if rs[0]["eval"]["flip"]]
    if flipped:
        lines += ["", "Flip-tested methods without flip (their recipes test with flip; same checkpoints):", "",
                  "| method | hard R1 | hard mAP | shift R1 | shift mAP |", "|---|---|---|---|---|"]
        for n in flipped:
            rs = runs[n]
            lines.append(f"| {RECIPES[n].label} | " + " | ".join(ms(values(rs, f"{t}_noflip", k)) for t, k, _ in
                                                                   COMPARED) + " |")
    lines += ["", "Recipes (every run: the quickstart's config file for the method, then these overrides; the "
              "schedule's shape is the method's own scaled to the run's length, see the script's `Schedule`):", "",
              "| method | network | loss | batch | augmentation | optimiser | schedule | test |",
              "|---|---|---|---|---|---|---|---|"]
    for name in names:
        r = RECIPES[name]
        own = info["own_optimiser"] and r.own_optimiser
        sch = r.own_schedule if own else QUICKSTART_SCHEDULE
        s = sch.scaled(info["epochs"])
        sched = (f"{sch.epochs}-epoch shape: warm-up {s['warmup_epochs']} from x{s['warmup_factor']:g}, "
                 f"x0.1 at {', '.join(map(str, s['stepsize']))}")
        m = r.summary
        optim = "the recipe's own SGD (`--own-optimiser`)" if own else m["optimiser"]
        lines.append(f"| {r.label} | {m['network']} | {m['loss']} | {m['batch']} | {m['augmentation']} | "
                     f"{optim} | {sched} | {m['test']} |")
    lines += ["", "Overrides per method (`KEY VALUE` after `--config-file <the quickstart for the method>`; seeds "
              "and the run folder apart):", ""]
    for name in names:
        lines.append(f"- {name}: `{' '.join(runs[name][0]['meta']['opts']) or '(none)'}`")
    lines += ["", "Differences of each run's config from its method's own recipe file (own -> here; seeds, data "
              "root and run folder apart):", ""]
    for name in names:
        diff = recipe_diff(RECIPES[name], runs[name][0]["meta"]["run_dir"])
        lines.append(f"- {name} ({RECIPES[name].recipe_file}): "
                     + ("; ".join(f"`{k}` {a} -> {b}" for k, a, b in diff) or "none"))
    lines += ["", "Per seed (hard R1 / mAP; shift R1 / mAP):", ""]
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    lines += ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name, rs in runs.items():
        by_seed = {r["seed"]: r["eval"] for r in rs}
        cells = [f"{e['own']['R1']:.2f} / {e['own']['mAP']:.2f}; {e['shift']['R1']:.2f} / {e['shift']['mAP']:.2f}"
                 if (e := by_seed.get(s)) else "-" for s in seeds]
        lines.append(f"| {RECIPES[name].label} | " + " | ".join(cells) + " |")
    lines += ["", "Differences against the seed spread (row minus column method; `clear`: |difference| > the sum of "
              "the two stds, i.e. the mean ± std intervals are disjoint; `> spread`: larger than the larger std "
              "only; `within`: not larger than the larger std):", "",
              "| pair | " + " | ".join(c for _, _, c in COMPARED) + " |", "|---|" + "---|" * len(COMPARED)]
    for a, b in itertools.combinations(names, 2):
        cells = []
        for t, k, _ in COMPARED:
            d, v = spread_verdict(values(runs[a], t, k), values(runs[b], t, k))
            cells.append(f"{d:+.2f} {v}")
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    loads = [r["meta"]["load_before"][0] for rs in runs.values() for r in rs]
    starts = sorted(r["meta"].get("start", "") for rs in runs.values() for r in rs if r["meta"].get("start"))
    ends = sorted(r["meta"].get("end", "") for rs in runs.values() for r in rs if r["meta"].get("end"))
    wait = info["wait"]
    state = "quiet" if wait and wait["quiet"] else "never quiet: run anyway"
    waited = f"; waited {wait['waited_s'] / 60:.0f} min for a quiet box ({state})" if wait else ""
    lines += [
        "",
        "Synthetic data says how the methods rank on this toy problem at this budget only; it is no stand-in for "
        "SYSU-MM01 (ResNet-10-T from scratch at 64x32 for 20 epochs is none of the methods' published settings).",
        "",
        f"Machine: {info['machine']}; at most {info['jobs']} training(s) at a time (a second only while no other "
        f"training ran), each with OMP_NUM_THREADS={info['threads']}; 1-minute load average "
        f"{min(loads):.1f}-{max(loads):.1f} at the starts (other engineers' jobs share the box){waited}; trainings "
        f"{starts[0] if starts else '?'} to {ends[-1] if ends else '?'}. Code: commit {info['commit']} (plus "
        "uncommitted work of others in the shared tree).",
        f"Runs: {info['runs_dir']}/<method>_seed<k>/ (results JSON + config.yaml). Command: `{info['command']}`",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(ORDER), choices=list(RECIPES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--first-seed-only", nargs="+", default=[], metavar="RECIPE", choices=list(RECIPES),
                   help="recipes trained on the first seed only (when the CPU budget does not fit every seed)")
    p.add_argument("--epochs", type=int, default=0, help="train.max_epoch (0: the quickstart's); every schedule is "
                   "scaled to it")
    p.add_argument("--set", nargs="+", default=[], metavar="RECIPE:KEY=VALUE",
                   help="extra overrides of one recipe (pilot runs; use with --tag)")
    p.add_argument("--order", choices=("method", "seed"), default="method",
                   help="train method by method (default) or seed by seed")
    p.add_argument("--tag", default="", help="suffix of the run folders (pilot runs)")
    p.add_argument("--own-optimiser", action="store_true",
                   help="each SGD recipe's own optimiser and schedule shape (scaled) instead of the quickstart's")
    p.add_argument("--root", default=osp.join(REPO, "datasets", "method_comparison"),
                   help="where the trees are generated (this script's own: a shared tree may be regenerated mid-run)")
    p.add_argument("--out-dir", default="",
                   help="run folders (untracked; default log/method_comparison, log/method_comparison_e<N> with "
                   "--epochs N, so that a smoke run never replaces the comparison's trainings)")
    p.add_argument("--runs-dir", default=osp.join(HERE, "runs", "method_comparison"),
                   help="where results JSON + config.yaml are copied (tracked)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each training")
    p.add_argument("--jobs", type=int, default=1, help="trainings at most side by side (the second only on a quiet "
                   "box)")
    p.add_argument("--max-load", type=float, default=1.2,
                   help="a second training starts only while the 1-minute load is below this plus the trainings "
                   "running")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="minutes to wait for load < 3 and no other training before starting (0: start at once)")
    p.add_argument("--reuse", action="store_true", help="reuse finished trainings in --out-dir (same settings)")
    p.add_argument("--no-eval", action="store_true", help="train only (no held-out evaluation, no report)")
    p.add_argument("--results", default=osp.join(HERE, "RESULTS.md"))
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md and the leaderboard alone")
    p.add_argument("--eval-run", default="", help=argparse.SUPPRESS)  # child: evaluate one run folder
    p.add_argument("--eval-root", nargs="+", default=[], help=argparse.SUPPRESS)  # child: KEY=TREE
    args = p.parse_args(argv)
    if args.eval_run:
        roots = dict(item.split("=", 1) for item in args.eval_root)
        ev = {**evaluate(args.eval_run, roots), "roots": roots}
        with open(osp.join(args.eval_run, "method_comparison_eval.json"), "w") as f:
            json.dump(ev, f, indent=1)
        return 0
    sets = parse_sets(args.set)
    if not args.out_dir:
        args.out_dir = osp.join(REPO, "log", "method_comparison" + (f"_e{args.epochs}" if args.epochs else ""))

    t0 = time.time()
    wait = wait_quiet(args.wait_quiet * 60) if args.wait_quiet > 0 else None
    q = quickstart_dict()
    epochs = args.epochs or int((q.get("train") or {}).get("max_epoch", QUICKSTART_SCHEDULE.epochs))
    info: dict[str, Any] = {
        "wait": wait,
        "epochs": epochs,
        "own_optimiser": args.own_optimiser,
        "quickstart_commit": git("log", "-1", "--format=%h", "--", "configs/quickstart.yaml"),
        "quickstart_dirty": " + uncommitted edits" if git("status", "--porcelain", "configs/quickstart.yaml") else "",
        "commit": git("rev-parse", "--short", "HEAD"),
        "generator_commit": git("log", "-1", "--format=%h", "--", *GENERATOR_FILES),
        "generator_dirty": " + uncommitted edits" if git("status", "--porcelain", *GENERATOR_FILES) else "",
        "threads": args.threads,
        "jobs": args.jobs,
        "runs_dir": osp.relpath(args.runs_dir, REPO),
        "root": osp.relpath(args.root, REPO),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, no GPU used",
    }
    names = list(dict.fromkeys(args.recipes))
    configs = write_method_configs(q, args.out_dir, names)
    train_root = transfer.make_trees(osp.join(args.root, "train"), ["hard"], transfer.TRAIN_SEED)["hard"]
    shift_root = transfer.make_trees(osp.join(args.root, "test"), ["shift"], transfer.TEST_SEED)["shift"]
    info["chance"] = {"own": transfer.chance(train_root), "shift": transfer.chance(shift_root)}

    # method by method (each method's seeds finish together), or seed by seed (--order seed: every method's first
    # seed before any second one)
    pairs = ([(seed, name) for name in names for seed in args.seeds] if args.order == "method" else
             [(seed, name) for seed in args.seeds for name in names])
    tasks = [(seed, name) for seed, name in pairs if name not in args.first_seed_only or seed == args.seeds[0]]
    gate = Gate(args.jobs, args.max_load, osp.relpath(args.out_dir, REPO))
    suffix = f"_{args.tag}" if args.tag else ""

    roots = {"own": train_root, "shift": shift_root}

    def run_one(task: tuple[int, str]) -> tuple[dict, dict | None]:
        seed, name = task
        opts = [*RECIPES[name].opts(epochs, args.own_optimiser), *sets.get(name, []), "train.seed", str(seed),
                "sampler.seed", str(seed)]
        run = f"{name}{suffix}_seed{seed}"
        meta = train(run, configs[name], train_root, opts, args.out_dir, args.threads, args.reuse, gate)
        if not args.no_write:  # tracked as soon as it is finished (an interrupted comparison keeps what it made)
            track(meta["run_dir"], osp.join(args.runs_dir, run))
        return meta, None if args.no_eval else evaluate_in_child(meta["run_dir"], roots, args.threads)

    # trainings side by side (each with --threads) as the gate allows, each evaluated by a child process after it
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = list(pool.map(run_one, tasks))
    if args.no_eval:
        return 0
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for (seed, name), (meta, ev) in zip(tasks, done):
        run = f"{name}{suffix}_seed{seed}"
        with open(osp.join(meta["run_dir"], f"results_{TARGET}.json")) as f:
            mean = json.load(f)["mean"]
        if abs(float(mean["R1"]) - ev["own"]["R1"]) > 1e-6:
            raise RuntimeError(f"{run}: rank-1 on the training tree's test split {ev['own']['R1']:.4f} differs from "
                               f"the results JSON's {float(mean['R1']):.4f}: the run folder changed under this script")
        runs[name].append({"seed": seed, "meta": meta, "eval": ev})
        print(f"{run}: hard R1 {ev['own']['R1']:.2f} mAP {ev['own']['mAP']:.2f} | shift R1 {ev['shift']['R1']:.2f} "
              f"mAP {ev['shift']['mAP']:.2f} | {meta['wall_s'] / 60:.1f} min (load {meta['load_before'][0]:.1f})",
              flush=True)
    info["wall_s"] = time.time() - t0
    info["command"] = "python benchmarks/method_comparison.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = report(runs, info)
    print("\n" + body)
    with open(osp.join(args.out_dir, f"method_comparison{suffix}.json"), "w") as f:
        json.dump({"runs": runs, "info": info, "configs": configs}, f, indent=1)
    if not args.no_write:
        subprocess.run([osp.join(REPO, ".venv", "bin", "vdreid"), "leaderboard", "--runs",
                        osp.relpath(osp.join(HERE, "runs"), REPO), "--out",
                        osp.relpath(osp.join(HERE, "LEADERBOARD.md"), REPO)], cwd=REPO, check=True)
        write_section(args.results, SECTION, body)
        print(f"-> {args.results} (section '{SECTION}'), benchmarks/LEADERBOARD.md/.csv")
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
