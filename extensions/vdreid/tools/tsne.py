"""t-SNE pictures of the embedding (paper Fig. 5 and Fig. 6) with scikit-learn.

* Fig. 6: the joint embedding of one feature for both modalities (for VD, the shared branch's representation of
  infrared and visible images): colour = identity, marker = modality.
* Fig. 5: one panel per feature mode (the method's ``tsne_modes`` by default), same encoding.

Images come from a test target (query = infrared, gallery = visible on SYSU-MM01 / RegDB), restricted to the first
``num_ids`` test identities so clusters stay readable.
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from vdreid.evaluation.progress import iterate

IR_MARKER, VIS_MARKER = "^", "o"


def pick_items(query_ds, gallery_ds, num_ids: int, per_id: int) -> list[tuple[object, list[int]]]:
    """``[(dataset, indices), ...]``: up to ``per_id`` images per modality set of the first ``num_ids`` identities
    that appear in both the query and the gallery set (sorted pid order)."""
    q_pids = [it[1] for it in query_ds.data]
    g_pids = [it[1] for it in gallery_ds.data]
    common = sorted(set(q_pids) & set(g_pids))[:num_ids]
    if not common:
        raise ValueError("t-SNE: no identity appears in both the query and the gallery set")
    chosen = set(common)
    out = []
    for ds, pids in ((query_ds, q_pids), (gallery_ds, g_pids)):
        count: dict[int, int] = {}
        idx = []
        for i, p in enumerate(pids):
            if p in chosen and count.get(p, 0) < per_id:
                count[p] = count.get(p, 0) + 1
                idx.append(i)
        out.append((ds, idx))
    return out


@torch.no_grad()
def extract_modes(
    model: torch.nn.Module,
    parts: list[tuple[object, list[int]]],
    ir_camids: Sequence[int],
    modes: Sequence[str],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Features of every mode in ``modes`` for the chosen images: ``({mode: (N, D)}, pids, is_ir)``."""
    net = getattr(model, "module", model)
    was_training, old_mode = net.training, net.feature_mode
    net.eval()
    ir = set(int(c) for c in ir_camids)
    feats: dict[str, list[torch.Tensor]] = {m: [] for m in modes}
    pids: list[int] = []
    is_ir: list[bool] = []
    try:
        for ds, idx in parts:
            loader = DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False, num_workers=0)
            for batch in iterate(loader, "t-SNE features", unit="batch"):
                x = batch["img"].to(device)
                m = torch.tensor([int(c) in ir for c in batch["camid"].tolist()], device=device)
                for mode in modes:
                    net.feature_mode = mode
                    feats[mode].append(net(x, modality=m).float().cpu())
                pids += batch["pid"].tolist()
                is_ir += m.cpu().tolist()
    finally:
        net.feature_mode = old_mode
        net.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in feats.items()}, np.asarray(pids), np.asarray(is_ir, dtype=bool)


def embed_2d(feats: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of L2-normalised features (the evaluator's cosine geometry)."""
    from sklearn.manifold import TSNE

    if feats.ndim != 2 or len(feats) < 3:
        raise ValueError(f"t-SNE needs at least 3 feature rows, got shape {feats.shape}")
    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def scatter(ax, xy: np.ndarray, pids: np.ndarray, is_ir: np.ndarray, title: str) -> None:
    """Colour by identity, marker by modality (paper Fig. 6)."""
    import matplotlib.pyplot as plt

    uniq = sorted(set(pids.tolist()))
    cmap = plt.get_cmap("tab20" if len(uniq) <= 20 else "hsv", max(len(uniq), 1))
    colour = {p: cmap(i) for i, p in enumerate(uniq)}
    for flag, marker in ((False, VIS_MARKER), (True, IR_MARKER)):
        sel = is_ir == flag
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], c=[colour[p] for p in pids[sel]], marker=marker, s=22,
                       edgecolors="k", linewidths=0.3)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    # legend proxies in grey: the marker says the modality, the colour (identity) is not part of the legend
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="none", marker=m, markerfacecolor="0.6", markeredgecolor="k", label=lab)
               for m, lab in ((VIS_MARKER, "visible"), (IR_MARKER, "infrared"))]
    ax.legend(handles=handles, fontsize=7, loc="best")


def plot_tsne(
    feats: dict[str, np.ndarray],
    pids: np.ndarray,
    is_ir: np.ndarray,
    out_dir: str,
    joint_mode: str = "shared_z",
    seed: int = 0,
) -> dict[str, str]:
    """Write ``tsne_joint.png`` (Fig. 6, ``joint_mode``) and ``tsne_branches.png`` (Fig. 5, every mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths: dict[str, str] = {}
    xy = {m: embed_2d(f, seed) for m, f in feats.items()}
    if joint_mode in xy:
        fig, ax = plt.subplots(figsize=(5.5, 5))
        scatter(ax, xy[joint_mode], pids, is_ir, f"{joint_mode}: joint embedding (colour = id, marker = modality)")
        fig.tight_layout()
        paths["joint"] = osp.join(out_dir, "tsne_joint.png")
        fig.savefig(paths["joint"], dpi=120)
        plt.close(fig)
    n = len(xy)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False)
    for ax, (mode, pts) in zip(axes[0], xy.items()):
        scatter(ax, pts, pids, is_ir, mode)
    fig.tight_layout()
    paths["branches"] = osp.join(out_dir, "tsne_branches.png")
    fig.savefig(paths["branches"], dpi=110)
    plt.close(fig)
    return paths


def tsne_from_datamanager(
    model, datamanager, target: str, out_dir: str, modes: Sequence[str], num_ids: int = 12, per_id: int = 10,
    device="cpu", joint_mode: str = "shared_z", seed: int = 0,
) -> dict[str, str]:
    """Pick images of ``target``'s test sets, extract every mode, write the pictures."""
    loaders = datamanager.test_loader[target]  # the loaders' datasets carry the test transform
    parts = pick_items(loaders["query"].dataset, loaders["gallery"].dataset, num_ids, per_id)
    feats, pids, is_ir = extract_modes(model, parts, datamanager.ir_camids_of(target), modes, device)
    return plot_tsne(feats, pids, is_ir, out_dir, joint_mode=joint_mode, seed=seed)
