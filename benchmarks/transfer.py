"""Transfer check: does a training recipe learn cross-modal identity that carries over to data it was not tuned on?

Trees: synthetic SYSU-MM01 trees (real layout, all-search single-shot protocol, 10 AGW gallery draws) of every
generator style, all of the same size so that a checkpoint evaluates on any of them:

* ``train/<style>`` (seed 0): the training split of the train styles (``--train-styles``; the recipe is tuned on
  ``hard`` seed 0);
* ``test/<style>`` (seed 1): other people and other image draws; only its test split is evaluated.

``shift`` is the held-out style: a sibling generator of ``hard`` (other scenes, sensors, viewpoint and occluder
mix, one pattern ``hard`` never draws) that no recipe was tuned on.

Every model is trained by the command line (``vdreid train --config-file configs/quickstart.yaml <overrides>``, one
subprocess per training, ``OMP_NUM_THREADS=--threads``) and evaluated in this process on every test tree. Anchors
computed here on the same test trees and protocol:

* chance: 1 / number of gallery identities;
* HOG + cosine (:mod:`vdreid.tools.hog`, 128x64, 8-pixel cells, 2x2 blocks, 9 bins): no learning;
* PCA + LDA on HOG fitted on the training split of the train tree (scikit-learn): the best linear map of HOG.

Tables (printed; ``--write`` puts them in the "Transfer" section of benchmarks/RESULTS.md):

1. recipe ladder: each recipe of ``RECIPES`` trained on ``hard``, rank-1 / mAP on ``hard`` and on held-out ``shift``
   with its test feature, wall and CPU time of the training and the load average around it;
2. transfer matrix: the final recipe (the quickstart as it is) trained on each train style, tested on every style;
3. test features: the final recipe's ``hard`` model under every feature mode, on ``hard`` and ``shift``;
4. the bar: the quickstart's rank-1 on ``shift`` against 3x the HOG anchor on ``shift``, checked here.

    python benchmarks/transfer.py                                   # everything (about 8 trainings)
    python benchmarks/transfer.py --recipes quickstart --no-matrix  # the bar only (1 training)
    python benchmarks/transfer.py --reuse ...                       # reuse finished trainings in --out-dir
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import time

import numpy as np

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
sys.path.insert(0, HERE)

from synthetic_ablation import write_section  # noqa: E402

CONFIG = osp.join(REPO, "configs", "quickstart.yaml")
#: every tree of the check has one size (so a checkpoint evaluates on any tree)
TREE = dict(preset="hard")  # 200 ids, 3 images per camera; the style is set per tree
TRAIN_SEED, TEST_SEED = 0, 1
TARGET = "sysu_mm01"

#: the first retune of the quickstart (commit a8ca375: vd_resnet18, 10 epochs, decay at 8), restated as overrides of
#: today's configs/quickstart.yaml
PREV = ["model.name", "vd_resnet18", "train.max_epoch", "10", "train.stepsize", "[8]"]
#: the old quickstart (before any retune), restated as overrides of today's configs/quickstart.yaml
OLD = [*PREV, "data.height", "64", "data.width", "32", "data.transforms", "['random_flip']", "vd.last_stride", "2",
       "vd.feature_mode", "obs_concat", "test.feature_mode", "''"]
CHANNEL_AUG = "['random_flip','channel_exchange','channel_adap_gray']"

#: recipe ladder: name -> (what changed, overrides of configs/quickstart.yaml, test feature or None for the
#: configured one); each adds one change to the one before. Rungs that differ only in the test feature share one
#: training (the first rung with the same overrides trains into a folder of its name; the quickstart, with no
#: overrides, into ``quickstart``). What each part of the last step bought alone: the exploration table of
#: benchmarks/RESULTS.md ("Transfer").
RECIPES: dict[str, tuple[str, list[str], str | None]] = {
    "old": ("the old quickstart (vd_resnet18, 64x32, flip, last stride 2, obs_concat, 10 epochs)", OLD, None),
    "channel_aug": ("+ CAJ channel augmentation (channel_exchange, channel_adap_gray)",
                    [*PREV, "data.height", "64", "data.width", "32", "data.transforms", CHANNEL_AUG, "vd.last_stride",
                     "2", "vd.feature_mode", "obs_concat", "test.feature_mode", "''"], None),
    "last_stride_1": ("+ last stride 1 (4x2 final map); same test feature obs_concat", PREV, "obs_concat"),
    "shared_v": ("+ test feature shared_v (the first retune)", PREV, None),
    "quickstart": ("+ ResNet-10-T encoders (`vd_resnet10t`), 20 epochs with the decay at 16: configs/quickstart.yaml "
                   "as it is", [], None),
}

FEATURE_MODES = ("obs_concat", "z_concat", "shared_v", "shared_z", "v_specific", "z_specific", "v_vis", "v_ir")


# ------------------------------------------------------------------------------------------------ data


def make_trees(root: str, styles: list[str], seed: int) -> dict[str, str]:
    """``{style: data root}`` of one tree per style under ``root/<style>``."""
    from vdreid.data.synthetic import make_sysu

    out = {}
    for style in styles:
        r = osp.join(root, style)
        make_sysu(r, seed=seed, style=style, **TREE)
        out[style] = r
    return out


def datamanager(root: str, cfg):
    from vdreid.data import CrossModalDataManager

    with contextlib.redirect_stdout(io.StringIO()):
        return CrossModalDataManager(
            root=root, sources=TARGET, targets=TARGET, height=cfg.data.height, width=cfg.data.width,
            norm_mean=list(cfg.data.norm_mean), norm_std=list(cfg.data.norm_std), batch_size_test=64, workers=1,
            num_ids=cfg.sampler.num_ids, num_instances=cfg.sampler.num_instances,
        )


def chance(root: str) -> float:
    from vdreid.data import SYSUMM01

    ds = SYSUMM01(root, verbose=False)
    return 100.0 / len({it[1] for it in ds.gallery})


# ------------------------------------------------------------------------------------------------ anchors


def hog_of(items: list) -> np.ndarray:
    from vdreid.tools.hog import hog_features

    return hog_features([it[0] for it in items], height=128, width=64)


def run_features(root: str, qf: np.ndarray, gf: np.ndarray) -> dict[str, float]:
    from vdreid.data import SYSUMM01
    from vdreid.evaluation.evaluator import run_protocol

    ds = SYSUMM01(root, verbose=False)
    rep = run_protocol(ds.protocol, qf, gf, [i[1] for i in ds.query], [i[1] for i in ds.gallery],
                       [i[2] for i in ds.query], [i[2] for i in ds.gallery])
    return {"R1": rep.mean["R1"], "mAP": rep.mean["mAP"]}


def anchors(train_roots: dict[str, str], test_roots: dict[str, str]) -> dict:
    """HOG + cosine per test tree; PCA + LDA on HOG per (train tree, test tree)."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from vdreid.data import SYSUMM01

    hog, lda = {}, {}
    feats = {}
    for style, root in test_roots.items():
        ds = SYSUMM01(root, verbose=False)
        feats[style] = (hog_of(ds.query), hog_of(ds.gallery))
        hog[style] = run_features(root, *feats[style])
    for tstyle, troot in train_roots.items():
        ds = SYSUMM01(troot, verbose=False)
        x, y = hog_of(ds.train), np.array([it[1] for it in ds.train])
        pca = PCA(n_components=min(256, len(x) - 1), random_state=0).fit(x)
        proj = LinearDiscriminantAnalysis(solver="svd").fit(pca.transform(x), y)
        for style, root in test_roots.items():
            qf, gf = feats[style]
            lda[f"{tstyle}->{style}"] = run_features(
                root, proj.transform(pca.transform(qf)), proj.transform(pca.transform(gf)))
    return {"hog": hog, "lda": lda}


# ------------------------------------------------------------------------------------------------ models


def run_cli_training(cmd: list[str], log_path: str, threads: int) -> dict:
    """Run one ``vdreid train`` command line with ``OMP_NUM_THREADS=threads``, output to ``log_path``.

    Returns wall and CPU time and the load around it. The CPU time is the child's own (``os.wait4``), so it stays
    right when several trainings run side by side from threads of one process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load0 = os.getloadavg()
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed (exit {proc.returncode}); see {log_path}")
    return {"wall_s": time.time() - t0, "cpu_s": usage.ru_utime + usage.ru_stime, "load_before": load0,
            "load_after": os.getloadavg(), "threads": threads}


def train(name: str, tree: str, opts: list[str], out_dir: str, threads: int, reuse: bool) -> dict:
    """Train one model by the command line; returns its run folder and timing."""
    run_dir = osp.join(out_dir, name)
    ckpt = osp.join(run_dir, "latest.pth")
    meta_path = osp.join(run_dir, "transfer_meta.json")
    if reuse and osp.isfile(ckpt) and osp.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["opts"] != opts or osp.abspath(meta["tree"]) != osp.abspath(tree):
            raise RuntimeError(f"--reuse: {run_dir} was trained with overrides {meta['opts']} on {meta['tree']}, "
                               f"not {opts} on {tree}; move it away or drop --reuse")
        return meta
    cmd = [osp.join(REPO, ".venv", "bin", "vdreid"), "train", "--config-file", CONFIG, "data.root", tree,
           "data.save_dir", run_dir, "test.visrank", "false", *opts]
    os.makedirs(run_dir, exist_ok=True)
    meta = {"name": name, "run_dir": run_dir, "tree": tree, "opts": opts,
            **run_cli_training(cmd, osp.join(run_dir, "transfer_train.log"), threads)}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def load_run(run_dir: str):
    """The final model of a run folder (eval mode), rebuilt from its checkpoint's stored config, and that config."""
    from vdreid import builders

    ckpt = osp.join(run_dir, "latest.pth")
    cfg = builders.checkpoint_config(ckpt)
    return builders.build_model_from_checkpoint(ckpt, cfg).eval(), cfg


def evaluate_loaded(model, cfg, root: str, mode: str, dm=None) -> dict[str, float]:
    """R1 / mAP / mINP of ``model`` under feature ``mode`` on the test split of the tree at ``root`` (``dm``: that
    tree's data manager when the caller already has one)."""
    from vdreid.evaluation.evaluator import evaluate_model

    dm = dm or datamanager(root, cfg)
    model.feature_mode = mode
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        rep = evaluate_model(model, dm.test_loader[TARGET]["query"], dm.test_loader[TARGET]["gallery"],
                             dm.protocols[TARGET], "cpu", dm.ir_camids_of(TARGET))
    return {k: float(rep.mean[k]) for k in ("R1", "mAP", "mINP")}


#: (run folder, checkpoint mtime, tree, feature) -> metrics: the ladder, matrix, feature table and bar evaluate the
#: quickstart's model on the same trees more than once; each (model, tree, feature) is extracted and ranked once
_EVALUATED: dict[tuple[str, float, str, str], dict[str, float]] = {}


def evaluate(run_dir: str, test_roots: dict[str, str], modes: tuple[str, ...] | None = None) -> dict:
    """``{style: {mode: {R1, mAP, mINP}}}`` of the checkpoint in ``run_dir`` (``modes`` None: its configured one)."""
    import torch

    torch.set_num_threads(1)
    model, cfg = load_run(run_dir)
    modes = modes or (model.feature_mode,)
    stamp = osp.getmtime(osp.join(run_dir, "latest.pth"))
    out: dict = {}
    for style, root in test_roots.items():
        out[style] = {}
        dm = None
        for mode in modes:
            key = (osp.abspath(run_dir), stamp, osp.abspath(root), mode)
            if key not in _EVALUATED:
                dm = dm or datamanager(root, cfg)
                _EVALUATED[key] = evaluate_loaded(model, cfg, root, mode, dm)
            out[style][mode] = _EVALUATED[key]
    return out


# ------------------------------------------------------------------------------------------------ main


def fmt(r: dict) -> str:
    return f"{r['R1']:.2f} / {r['mAP']:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=osp.join(REPO, "datasets", "transfer"), help="where the trees are written")
    p.add_argument("--out-dir", default=osp.join(REPO, "log", "transfer"))
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--train-styles", nargs="+", default=["classic", "hard"])
    p.add_argument("--test-styles", nargs="+", default=["classic", "hard", "shift"])
    p.add_argument("--held-out", default="shift", help="the style the bar is checked on")
    p.add_argument("--no-matrix", action="store_true", help="skip the transfer matrix (trainings on other styles)")
    p.add_argument("--no-modes", action="store_true", help="skip the test-feature table")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each training")
    p.add_argument("--reuse", action="store_true", help="reuse trainings already in --out-dir")
    p.add_argument("--write", action="store_true", help="write the tables to benchmarks/RESULTS.md ('Transfer')")
    p.add_argument("--results", default=osp.join(HERE, "RESULTS.md"))
    args = p.parse_args(argv)
    if args.held_out not in args.test_styles:
        p.error(f"--held-out {args.held_out} must be one of --test-styles")

    t_start = time.time()
    train_styles = list(dict.fromkeys(["hard", *(args.train_styles if not args.no_matrix else [])]))
    train_roots = make_trees(osp.join(args.root, "train"), train_styles, TRAIN_SEED)
    test_roots = make_trees(osp.join(args.root, "test"), args.test_styles, TEST_SEED)
    ch = {s: chance(r) for s, r in test_roots.items()}
    anc = anchors(train_roots, test_roots)
    print("anchors:", json.dumps({"chance": ch, **anc}, indent=1), flush=True)

    ladder = {}
    trained: dict[tuple[str, ...], dict] = {}
    for name in args.recipes:
        _, opts, feature = RECIPES[name]
        key = tuple(opts)
        if key not in trained:  # the first rung with these overrides trains; later ones reuse it
            run = "quickstart" if not opts else name
            trained[key] = train(run, train_roots["hard"], opts, args.out_dir, args.threads, args.reuse)
        meta = trained[key]
        ladder[name] = {"meta": meta, "eval": evaluate(meta["run_dir"], test_roots, (feature,) if feature else None)}
        print(name, json.dumps(ladder[name]["eval"]), f"{meta['wall_s']:.0f}s", flush=True)

    matrix = {}
    if not args.no_matrix:
        for style in args.train_styles:
            name = "quickstart" if style == "hard" else f"quickstart_on_{style}"
            meta = train(name, train_roots[style], [], args.out_dir, args.threads, True if style == "hard" else
                         args.reuse)
            matrix[style] = {"meta": meta, "eval": evaluate(meta["run_dir"], test_roots)}
            print(name, json.dumps(matrix[style]["eval"]), flush=True)

    modes = {}
    if not args.no_modes:
        meta = train("quickstart", train_roots["hard"], [], args.out_dir, args.threads, True)
        modes = evaluate(meta["run_dir"], {s: test_roots[s] for s in ("hard", args.held_out)}, FEATURE_MODES)

    # ---- the bar
    final = train("quickstart", train_roots["hard"], [], args.out_dir, args.threads, True)
    final_eval = evaluate(final["run_dir"], {args.held_out: test_roots[args.held_out]})[args.held_out]
    final_r1 = next(iter(final_eval.values()))["R1"]
    hog_r1 = anc["hog"][args.held_out]["R1"]
    passed = final_r1 >= 3 * hog_r1

    # ---- tables
    styles = args.test_styles
    lines = [
        "Trees: synthetic SYSU-MM01 layout, preset `hard` (200 ids, 3 images per camera) in each style, "
        f"train trees seed {TRAIN_SEED}, test trees seed {TEST_SEED} (other people); all-search single-shot, 10 AGW "
        "gallery draws, rank-1 / mAP in percent. `shift` is the held-out style (never used for tuning).",
        "",
        "Anchors on the test trees:",
        "",
        "| anchor | " + " | ".join(styles) + " |",
        "|---|" + "---|" * len(styles),
        "| chance (1 / gallery ids) | " + " | ".join(f"{ch[s]:.2f}" for s in styles) + " |",
        "| HOG + cosine | " + " | ".join(fmt(anc["hog"][s]) for s in styles) + " |",
    ]
    for tstyle in train_styles:
        lines.append(f"| PCA+LDA on HOG fitted on {tstyle} train ids | "
                     + " | ".join(fmt(anc["lda"][f"{tstyle}->{s}"]) for s in styles) + " |")
    if ladder:
        lines += ["", "Recipe ladder (trained on `hard`; each row adds one change to the row above):", "",
                  "| recipe | change | hard | shift (held out) | train wall / CPU | load before -> after |",
                  "|---|---|---|---|---|---|"]
        for name, r in ladder.items():
            m, ev = r["meta"], r["eval"]
            cell = {s: fmt(next(iter(ev[s].values()))) for s in ev}
            lines.append(f"| {name} | {RECIPES[name][0]} | {cell.get('hard', '-')} | {cell.get(args.held_out, '-')} "
                         f"| {m['wall_s'] / 60:.1f} / {m['cpu_s'] / 60:.1f} min | "
                         f"{m['load_before'][0]:.1f} -> {m['load_after'][0]:.1f} |")
    if matrix:
        lines += ["", "Transfer matrix (configs/quickstart.yaml trained on the row's style, tested on the column's):",
                  "", "| trained on | " + " | ".join(styles) + " |", "|---|" + "---|" * len(styles)]
        for tstyle, r in matrix.items():
            lines.append(f"| {tstyle} | " + " | ".join(fmt(next(iter(r['eval'][s].values()))) for s in styles) + " |")
    if modes:
        lines += ["", "Test features of the quickstart model trained on `hard` (`vd.routing` modality):", "",
                  f"| feature | hard | {args.held_out} |", "|---|---|---|"]
        for mode in FEATURE_MODES:
            lines.append(f"| {mode} | {fmt(modes['hard'][mode])} | {fmt(modes[args.held_out][mode])} |")
    lines += [
        "",
        f"**Bar**: quickstart rank-1 on held-out `{args.held_out}` = {final_r1:.2f} vs 3 x HOG = {3 * hog_r1:.2f} "
        f"(HOG {hog_r1:.2f}, chance {ch[args.held_out]:.2f}): **{'met' if passed else 'NOT met'}**.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, trainings with "
        f"OMP_NUM_THREADS={args.threads}; whole script {(time.time() - t_start) / 60:.1f} min.",
        "Command: `python benchmarks/transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
    ]
    body = "\n".join(lines)
    print("\n" + body)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, "transfer.json"), "w") as f:
        json.dump({"chance": ch, "anchors": anc, "ladder": ladder, "matrix": matrix, "modes": modes,
                   "bar": {"final_r1": final_r1, "hog_r1": hog_r1, "passed": passed}}, f, indent=1)
    if args.write:
        write_section(args.results, "Transfer", body)
        print(f"-> {args.results} (section 'Transfer')")
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
