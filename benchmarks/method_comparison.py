"""Method comparison on synthetic data: VD vs AGW vs the plain BNNeck baseline under one protocol, three seeds each.

What is compared. Each method trains the quickstart recipe (``configs/quickstart.yaml``, the CPU demo; at the length
of ``SCHEDULE``, 10 epochs, with ResNet-18 encoders for every method) on the SAME
synthetic training tree: the same input size, epochs, sampler (identities x instances per modality, AGW's epoch),
batch, augmentation, optimiser, learning rate, warm-up and decay, initial weights (none: from scratch) and evaluation
(all-search single-shot, 10 AGW gallery draws). Only the method differs: its model and its criterion.

* ``vd``: ``vd_resnet18``, the quickstart with ResNet-18 encoders (three ResNet-18 branches with information
  bottlenecks, the VD loss of the quickstart's recipe, its test feature);
* ``agw``: ``agw_resnet18`` (two-stream stems, shared stages with non-local blocks, GeM, BNNeck; identity loss +
  weighted regularized triplet; test feature ``bn``);
* ``bnneck``: ``bnneck_resnet18`` (one shared ResNet-18, GAP, BNNeck; label-smoothed identity loss + batch-hard
  triplet; test feature ``bn``).

Two model keys are set to the quickstart's choices so that the networks see the data the same way: the last stride
(``agw.last_stride`` / ``bnneck.last_stride`` = the quickstart's ``vd.last_stride``: the same final feature-map size)
and one learning rate for every parameter (``agw.backbone_lr_mult 1``: AGW's 0.1 backbone factor belongs to
fine-tuning ImageNet weights with SGD at lr 0.1, not to Adam from scratch). ``vdreid train`` refuses keys of another
method's section, so for AGW and BNNeck the script writes the quickstart without its ``vd`` section (and without a VD
``test.feature_mode``) as ``<out-dir>/configs/<method>.yaml`` and trains that file (VD's file is the quickstart as it
was when the script started); the run folders' ``config.yaml`` record every value.

What each method's own published recipe would do differently (not done here; CPU budget):

* VD (``configs/sysu_all.yaml``, paper section 4.2): three ResNet-50 branches from ImageNet weights, last stride 1,
  256x128, Adam 2.6e-4 for 300 epochs (x0.1 at 200, 10 warm-up epochs), test feature ``shared_z``;
* AGW (``configs/methods/agw_sysu.yaml``, AGW's ``train.py``): ResNet-50 from ImageNet, last stride 1, 288x144 with
  pad + crop + flip, SGD + Nesterov at lr 0.1 with the backbone at 0.01, warm-up over 10 epochs, x0.1 at 20 and 50,
  81 epochs, 8 ids x (4 visible + 4 infrared) per batch;
* BNNeck (``configs/methods/bnneck_sysu.yaml``): AGW's schedule, sampler and input on one shared ResNet-50.

Data: the trees of ``benchmarks/transfer.py`` (its ``make_trees``), generated under this script's own ``--root``
(default ``datasets/method_comparison``) so that nobody regenerating the shared trees can change them between runs:
training on ``train/hard`` (seed 0, the transfer check's training tree); every model is evaluated by
``vdreid train`` on that tree's test split (other identities; the number in the results JSON and the leaderboard)
and, in this process, on the held-out ``test/shift`` tree (seed 1: other people, a generator style no recipe was
tuned on). Seeds: ``train.seed`` and ``sampler.seed`` both set to each of ``--seeds``.

Outputs: each run trains into ``<out-dir>/<method>_seed<k>/`` (checkpoints stay there, untracked); its results JSON
and ``config.yaml`` are copied to ``benchmarks/runs/method_comparison/<method>_seed<k>/`` (tracked). Then
``vdreid leaderboard --runs benchmarks/runs`` rebuilds benchmarks/LEADERBOARD.md/.csv (the three seeds of a method
form one row there: mean ± std over seeds) and the "Method comparison (synthetic)" section of benchmarks/RESULTS.md
is written (mean ± std over seeds, population std; train time per run; parameter count; chance level; machine,
load, command).

    python benchmarks/method_comparison.py                         # 3 methods x 3 seeds, the quickstart's epochs
    python benchmarks/method_comparison.py --threads 1 --jobs 2    # two trainings side by side on a 2-core box
    python benchmarks/method_comparison.py --seeds 0 --epochs 1 --runs-dir /tmp/mc --no-write   # a smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import os.path as osp
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np
import yaml

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
sys.path.insert(0, HERE)

import transfer  # noqa: E402  (benchmarks/transfer.py: trees, chance)
from synthetic_ablation import write_section  # noqa: E402

QUICKSTART = osp.join(REPO, "configs", "quickstart.yaml")
TARGET = transfer.TARGET
SECTION = "Method comparison (synthetic)"
#: the synthetic generator's sources (their last commit is recorded with the results)
GENERATOR_FILES = ("extensions/vdreid/data/synthetic.py", "extensions/vdreid/data/synthetic_hard.py",
                   "extensions/vdreid/data/synthetic_draw.py")

#: method -> (model.method, model.name)
METHODS: dict[str, tuple[str, str]] = {
    "vd": ("vd", "vd_resnet18"),
    "agw": ("agw", "agw_resnet18"),
    "bnneck": ("bnneck", "bnneck_resnet18"),
}
#: the schedule every method trains: the quickstart's length when the recorded table (benchmarks/RESULTS.md) was made
#: (commit a8ca375; the quickstart has since moved to vd_resnet10t and 20 epochs). Every method uses ResNet-18, so the
#: encoders match across methods.
SCHEDULE = {"max_epoch": 10, "stepsize": [8]}
LABELS = {"vd": "VD (vd_resnet18)", "agw": "AGW (agw_resnet18)", "bnneck": "BNNeck baseline (bnneck_resnet18)"}
METRICS = ("R1", "mAP", "mINP")


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


def method_config(q: dict[str, Any], method: str) -> tuple[dict[str, Any], list[str]]:
    """The quickstart for ``method``: other methods' sections dropped, ``model.method`` / ``model.name`` set.

    Returns the config dict and the dropped keys (sections of other methods; a test feature the method lacks)."""
    from vdreid import methods

    name, model = METHODS[method]
    m = methods.get(name)
    own = {m.section, *m.extra_sections}
    foreign = {s for o in methods.all_methods() for s in (o.section, *o.extra_sections)} - own
    cfg = {k: v for k, v in q.items() if k not in foreign}
    dropped = sorted(f"{k}.{kk}" for k in q if k in foreign for kk in (q[k] or {}))
    test = dict(cfg.get("test") or {})
    if test.get("feature_mode") and test["feature_mode"] not in m.feature_modes:
        dropped.append("test.feature_mode")
        test.pop("feature_mode")
    cfg["test"] = test
    cfg["model"] = {**(cfg.get("model") or {}), "method": name, "name": model}
    cfg["train"] = {**(cfg.get("train") or {}), **SCHEDULE}
    return cfg, dropped


def matched_overrides(q: dict[str, Any], method: str) -> list[str]:
    """KEY VALUE pairs giving AGW / BNNeck the quickstart's last stride and one learning rate for every parameter."""
    from vdreid import methods

    stride = (q.get("vd") or {}).get("last_stride", methods.get("vd").config().last_stride)
    if method == "agw":
        return ["agw.last_stride", str(stride), "agw.backbone_lr_mult", "1.0"]
    if method == "bnneck":
        return ["bnneck.last_stride", str(stride)]
    return []


def write_method_configs(q: dict[str, Any], out_dir: str) -> dict[str, dict[str, Any]]:
    """``{method: {path, dropped}}``: the quickstart as each method's config file, written once at the start (VD's
    too: a snapshot, so that every run of the comparison trains the same quickstart even if the file changes)."""
    out = {}
    os.makedirs(osp.join(out_dir, "configs"), exist_ok=True)
    for method in METHODS:
        cfg, dropped = method_config(q, method)
        path = osp.join(out_dir, "configs", f"{method}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# configs/quickstart.yaml for method '{method}' (benchmarks/method_comparison.py); dropped: "
                    f"{', '.join(dropped) or 'nothing'}\n")
            yaml.safe_dump(cfg, f, sort_keys=False)
        out[method] = {"path": path, "dropped": dropped}
    return out


# ------------------------------------------------------------------------------------------------ machine


def other_trainings() -> list[str]:
    """Command lines of ``vdreid train`` processes on this machine (not this script's)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if any(a.endswith("vdreid") for a in argv) and "train" in argv:
            found.append(f"{pid}: {' '.join(argv)[:120]}")
    return found


def wait_quiet(max_wait_s: float, poll_s: float = 60.0, load_max: float = 3.0) -> dict[str, Any]:
    """Wait until the 1-minute load is below ``load_max`` and no ``vdreid train`` runs, twice ``poll_s`` apart."""
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


def git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return r.stdout.strip()


# ------------------------------------------------------------------------------------------------ runs


def train(name: str, config: str, tree: str, opts: list[str], out_dir: str, threads: int, reuse: bool) -> dict:
    """One training by the command line into ``out_dir/name``; returns its folder, timing and load."""
    run_dir = osp.join(out_dir, name)
    meta_path = osp.join(run_dir, "method_comparison_meta.json")
    if reuse and osp.isfile(meta_path) and osp.isfile(osp.join(run_dir, f"results_{TARGET}.json")):
        with open(meta_path) as f:
            return json.load(f)
    cmd = [osp.join(REPO, ".venv", "bin", "vdreid"), "train", "--config-file", osp.relpath(config, REPO),
           "data.root", osp.relpath(tree, REPO), "data.save_dir", osp.relpath(run_dir, REPO), "test.visrank", "false",
           *opts]
    if osp.isdir(run_dir) and os.listdir(run_dir):
        cmd.insert(2, "--overwrite")
    os.makedirs(out_dir, exist_ok=True)
    meta = {"name": name, "run_dir": run_dir, "command": " ".join(cmd[1:]),
            **transfer.run_cli_training(cmd, osp.join(out_dir, f"{name}.log"), threads)}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def evaluate_held_out(run_dir: str, root: str) -> dict[str, Any]:
    """R1 / mAP / mINP of the run's final checkpoint on another tree (its own test feature), and its parameter count."""
    import torch

    torch.set_num_threads(1)
    model, cfg = transfer.load_run(run_dir)
    mode = str(model.feature_mode)
    return {"metrics": transfer.evaluate_loaded(model, cfg, root, mode), "feature_mode": mode,
            "params": int(sum(p.numel() for p in model.parameters()))}


def track(run_dir: str, dest: str) -> str:
    """Copy the run's results JSON and config.yaml (nothing else) to the tracked folder ``dest``."""
    os.makedirs(dest, exist_ok=True)
    for fname in (f"results_{TARGET}.json", "config.yaml"):
        shutil.copy2(osp.join(run_dir, fname), osp.join(dest, fname))
    return osp.join(dest, f"results_{TARGET}.json")


# ------------------------------------------------------------------------------------------------ report


def ms(values: list[float]) -> str:
    """``mean ± std`` (population std over seeds)."""
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def report(runs: dict[str, list[dict]], seeds: list[int], info: dict[str, Any]) -> str:
    lines = [
        "VD, AGW and the plain BNNeck baseline trained with the quickstart recipe (configs/quickstart.yaml at commit "
        f"{info['quickstart_commit']}{info['quickstart_dirty']}: {info['recipe']}) on the same synthetic training "
        f"tree (`hard` style, seed 0, as benchmarks/transfer.py's `train/hard`, generated under {info['root']} by "
        f"the generator at commit {info['generator_commit']}{info['generator_dirty']}); only the method (model + "
        "criterion) differs, with "
        "the quickstart's last stride for all three and one learning rate for every parameter (AGW's backbone "
        "factor 1). All-search single-shot, 10 AGW gallery draws; "
        f"mean ± std over seeds {seeds} (train.seed = sampler.seed; population std over the seeds, not over the "
        "gallery draws), percent. `quickstart test tree`: the training tree's test split (other identities; "
        "what the results JSON and benchmarks/LEADERBOARD.md hold); `held-out shift`: the `test/shift` tree "
        "(seed 1, other people, a generator style no recipe was tuned on). What each method's own published recipe "
        "does differently is listed in the script's docstring.",
        "",
        f"Chance (1 / gallery identities): quickstart test tree {info['chance']['own']:.2f}, held-out shift "
        f"{info['chance']['shift']:.2f}. R1 / mAP / mINP: the quickstart test tree; shift R1 / mAP / mINP: the "
        "held-out tree.",
        "",
        "| method | R1 | mAP | mINP | shift R1 | shift mAP | shift mINP | test feature | parameters (incl. classifier) "
        "| "
        "train time per run (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, rs in runs.items():
        own = [r["own"] for r in rs]
        held = [r["held_out"]["metrics"] for r in rs]
        walls = [r["meta"]["wall_s"] / 60 for r in rs]
        cpus = [r["meta"]["cpu_s"] / 60 for r in rs]
        cells = [ms([o[k] for o in own]) for k in METRICS] + [ms([h[k] for h in held]) for k in METRICS]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {rs[0]['held_out']['feature_mode']} | "
                     f"{rs[0]['held_out']['params'] / 1e6:.2f} M | {np.mean(walls):.1f} "
                     f"({min(walls):.1f}-{max(walls):.1f}) / {np.mean(cpus):.1f} min |")
    lines += ["", "Per seed (quickstart test tree R1 / mAP; held-out shift R1 / mAP):", "",
              "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for method, rs in runs.items():
        cells = [f"{r['own']['R1']:.2f} / {r['own']['mAP']:.2f}; {r['held_out']['metrics']['R1']:.2f} / "
                 f"{r['held_out']['metrics']['mAP']:.2f}" for r in rs]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    loads = [r["meta"]["load_before"][0] for rs in runs.values() for r in rs]
    wait = info["wait"]
    state = "quiet" if wait and wait["quiet"] else "never quiet: run anyway"
    waited = f"waited {wait['waited_s'] / 60:.0f} min for a quiet box ({state})" if wait else "no wait"
    lines += [
        "",
        "Synthetic data says how the methods rank on this toy problem at this budget only; it is no stand-in for "
        "SYSU-MM01 (and the recipes are not the methods' own: ResNet-18 from scratch, 64x32 inputs, a few epochs).",
        "",
        f"Machine: {info['machine']}; {info['jobs']} training(s) at a time, each with "
        f"OMP_NUM_THREADS={info['threads']}, "
        f"1-minute load average {min(loads):.1f}-{max(loads):.1f} at the starts (other engineers' jobs share the "
        f"box), {waited}; wall time {info['wall_s'] / 60:.0f} min for {sum(len(v) for v in runs.values())} "
        f"trainings. Code: commit {info['commit']} (plus uncommitted work of others in the shared tree).",
        f"Runs: {info['runs_dir']}/<method>_seed<k>/ (results JSON + config.yaml). Command: "
        f"`{info['command']}`",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=0, help="override train.max_epoch (0: the quickstart's)")
    p.add_argument("--root", default=osp.join(REPO, "datasets", "method_comparison"),
                   help="where the trees are generated (this script's own: a shared tree may be regenerated mid-run)")
    p.add_argument("--out-dir", default=osp.join(REPO, "log", "method_comparison"), help="run folders (untracked)")
    p.add_argument("--runs-dir", default=osp.join(HERE, "runs", "method_comparison"),
                   help="where results JSON + config.yaml are copied (tracked)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each training")
    p.add_argument("--jobs", type=int, default=1, help="trainings run side by side (e.g. 2 with --threads 1)")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="minutes to wait for load < 3 and no other `vdreid train` (0: start at once)")
    p.add_argument("--reuse", action="store_true", help="reuse finished trainings in --out-dir")
    p.add_argument("--results", default=osp.join(HERE, "RESULTS.md"))
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md and the leaderboard alone")
    args = p.parse_args(argv)

    t0 = time.time()
    wait = wait_quiet(args.wait_quiet * 60) if args.wait_quiet > 0 else None
    info: dict[str, Any] = {
        "wait": wait,
        "quickstart_commit": git("log", "-1", "--format=%h", "--", "configs/quickstart.yaml"),
        "quickstart_dirty": " + uncommitted edits" if git("status", "--porcelain", "configs/quickstart.yaml") else "",
        "commit": git("rev-parse", "--short", "HEAD"),
        "generator_commit": git("log", "-1", "--format=%h", "--", *GENERATOR_FILES),
        "generator_dirty": " + uncommitted edits" if git("status", "--porcelain", *GENERATOR_FILES) else "",
        "threads": args.threads,
        "jobs": args.jobs,
        "runs_dir": osp.relpath(args.runs_dir, REPO),
        "root": osp.relpath(args.root, REPO),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, no GPU used",
    }
    q = quickstart_dict()
    tr = q.get("train") or {}
    data = q.get("data") or {}
    sampler = q.get("sampler") or {}
    info["recipe"] = (f"{data.get('height')}x{data.get('width')}, "
                      f"{args.epochs or tr.get('max_epoch')} epochs, {tr.get('optim', 'adam')} lr {tr.get('lr')}, "
                      f"batch {sampler.get('num_ids')} ids x ({sampler.get('num_instances')} visible + "
                      f"{sampler.get('num_instances')} infrared), train transforms "
                      f"{data.get('transforms', 'the default')}, from scratch")
    configs = write_method_configs(q, args.out_dir)
    train_root = transfer.make_trees(osp.join(args.root, "train"), ["hard"], transfer.TRAIN_SEED)["hard"]
    shift_root = transfer.make_trees(osp.join(args.root, "test"), ["shift"], transfer.TEST_SEED)["shift"]
    info["chance"] = {"own": transfer.chance(train_root), "shift": transfer.chance(shift_root)}

    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    tasks = [(seed, method) for seed in args.seeds for method in args.methods]

    def run_one(task: tuple[int, str]) -> dict:
        seed, method = task
        opts = ["train.seed", str(seed), "sampler.seed", str(seed), *matched_overrides(q, method)]
        if args.epochs:
            opts += ["train.max_epoch", str(args.epochs)]
        return train(f"{method}_seed{seed}", configs[method]["path"], train_root, opts, args.out_dir, args.threads,
                     args.reuse)

    # --jobs > 1: trainings run side by side (each with --threads); the held-out evaluation follows in this process
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        metas = list(pool.map(run_one, tasks))
    for (seed, method), meta in zip(tasks, metas):
        name = f"{method}_seed{seed}"
        tracked = track(meta["run_dir"], osp.join(args.runs_dir, name))
        with open(tracked) as f:
            mean = json.load(f)["mean"]
        own = {k: float(mean[k]) for k in METRICS}
        held = evaluate_held_out(meta["run_dir"], shift_root)
        runs[method].append({"seed": seed, "meta": meta, "own": own, "held_out": held})
        print(f"{name}: own R1 {own['R1']:.2f} mAP {own['mAP']:.2f} | shift R1 {held['metrics']['R1']:.2f} "
              f"mAP {held['metrics']['mAP']:.2f} | {meta['wall_s'] / 60:.1f} min "
              f"(load {meta['load_before'][0]:.1f})", flush=True)
    info["wall_s"] = time.time() - t0
    info["command"] = "python benchmarks/method_comparison.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = report(runs, args.seeds, info)
    print("\n" + body)
    with open(osp.join(args.out_dir, "method_comparison.json"), "w") as f:
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
