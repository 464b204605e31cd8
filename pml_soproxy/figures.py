"""Figures of a run (matplotlib, no display needed)."""

import os
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .report import COSINE_BINS  # noqa: E402


def recall_per_epoch(runs: Dict[str, dict], path: str) -> str:
    """Validation Recall@K per epoch, one line style per run, one colour per K."""
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ["-", "--", ":", "-."]
    for style, (name, results) in zip(styles, runs.items()):
        history: List[dict] = results["history"]
        keys = sorted(
            (k for k in history[0] if k.startswith("recall_at_")),
            key=lambda k: int(k.rsplit("_", 1)[1]),
        )
        epochs = [h["epoch"] for h in history]
        for colour, key in enumerate(keys):
            ax.plot(
                epochs,
                [100 * h[key] for h in history],
                linestyle=style,
                color=f"C{colour}",
                label=f"{name} R@{key.rsplit('_', 1)[1]}",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Recall@K (%)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def proxy_cosine_histograms(runs: Dict[str, dict], path: str) -> str:
    """Pairwise proxy cosines at initialisation and after training, per run."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5), squeeze=False)
    centres = (COSINE_BINS[:-1] + COSINE_BINS[1:]) / 2
    width = COSINE_BINS[1] - COSINE_BINS[0]
    for ax, (name, results) in zip(axes[0], runs.items()):
        for when, colour in (("init", "C7"), ("final", "C3")):
            stats = results[f"proxy_cosines_{when}"]
            counts = np.asarray(stats["histogram"], dtype=float)
            ax.bar(
                centres,
                counts / max(counts.sum(), 1),
                width=width,
                alpha=0.6,
                color=colour,
                label=f"{when}: mean|cos| {stats['mean_abs_cos']:.3f}, "
                f"max {stats['max_abs_cos']:.3f}",
            )
        ax.set_title(name)
        ax.set_xlabel("cosine between two proxies")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("fraction of proxy pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_run_figures(runs: Dict[str, dict], folder: str) -> List[str]:
    os.makedirs(folder, exist_ok=True)
    return [
        recall_per_epoch(runs, os.path.join(folder, "recall_per_epoch.png")),
        proxy_cosine_histograms(runs, os.path.join(folder, "proxy_cosines.png")),
    ]


#####################################
### figures of a run's test split ###
#####################################

MAP_CLASSES, MAP_POINTS, GRID_QUERIES, GRID_K = 20, 2000, 8, 8


def _project(x: np.ndarray, seed: int):
    """2-d coordinates: UMAP if installed, else t-SNE; PCA for a handful of points."""
    if len(x) < 16:  # too few neighbours for UMAP / t-SNE
        u = np.linalg.svd(x - x.mean(0), full_matrices=False)[0][:, :2]
        return np.pad(u, ((0, 0), (0, 2 - u.shape[1]))), "PCA"
    try:
        import umap

        return umap.UMAP(random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, (len(x) - 1) // 3))
        tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed,
                    metric="cosine")  # fmt: skip
        return tsne.fit_transform(x), "t-SNE"


def embedding_map(
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: str,
    seed: int = 0,
) -> str:
    """2-d map of (at most MAP_CLASSES classes, MAP_POINTS points of) a set of
    embeddings, coloured by class: UMAP when umap-learn is installed (extra
    ``[umap]``), else scikit-learn's t-SNE."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    shown = np.sort(rng.choice(classes, min(MAP_CLASSES, len(classes)), replace=False))
    idx = np.flatnonzero(np.isin(labels, shown))
    idx = np.sort(rng.choice(idx, min(MAP_POINTS, len(idx)), replace=False))
    x = np.asarray(embeddings, dtype=np.float32)[idx]
    xy, method = _project(x, seed)
    fig, ax = plt.subplots(figsize=(6, 6))
    cmap = plt.get_cmap("tab20")
    for n, c in enumerate(shown):
        mask = labels[idx] == c
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=cmap(n % 20),
                   label=str(class_names[c]))  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{method} of {len(x)} test embeddings, {len(shown)} of "
                 f"{len(classes)} classes", fontsize=9)  # fmt: skip
    if len(shown) <= 20:
        ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _names(dataset, labels) -> List[str]:
    names = getattr(dataset, "class_names", None)
    return [str(names[int(c)]) if names else str(int(c)) for c in labels]


def test_split_figures(kept: Dict, folder: str, seed: int = 0) -> List[str]:
    """The retrieval grid of GRID_QUERIES test queries and the embedding map,
    from what ``builder.evaluate_test(keep=...)`` kept (no second pass)."""
    import torch

    from .retrieval.grid import retrieval_grid

    os.makedirs(folder, exist_ok=True)
    query, references, sets = kept["query"], kept["references"], kept["datasets"]
    q_emb, q_lab = kept["embeddings"][query]
    r_emb = torch.cat([kept["embeddings"][r][0] for r in references])
    r_names = [n for r in references
               for n in _names(sets[r], kept["embeddings"][r][1][:, 0])]  # fmt: skip
    # gallery items map back to (dataset, index) for their thumbnails
    owners = [(sets[r], i) for r in references for i in range(len(sets[r]))]
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(q_emb), min(GRID_QUERIES, len(q_emb)), False))
    sims = q_emb[picks].float() @ r_emb.float().T
    itself = query in references  # self-retrieval: a query does not find itself
    if itself:
        sims[torch.arange(len(picks)), torch.as_tensor(picks)] = -float("inf")
    k = min(GRID_K, sims.shape[1] - itself)
    top, ids = sims.topk(k, dim=1)
    q_names = _names(sets[query], q_lab[:, 0])
    grid = retrieval_grid(
        lambda i: owners[i][0].load_image(owners[i][1]),
        [sets[query].load_image(int(i)) for i in picks],
        [q_names[i] for i in picks], ids.numpy(), top.numpy(), r_names,
        os.path.join(folder, "retrieval_grid.png"),
        title=f"test split{'' if itself else f' ({query} vs {references[0]})'}: "
        f"top {k} of each query (green: same class, red: another)",
        query_names=[f"{q_names[i]}: #{int(i)}" for i in picks],
    )  # fmt: skip
    lab = q_lab[:, 0].numpy()
    names = getattr(sets[query], "class_names", None) or [
        str(c) for c in range(lab.max() + 1)
    ]
    mapped = embedding_map(q_emb.float().numpy(), lab, names,
                           os.path.join(folder, "embedding_map.png"), seed)  # fmt: skip
    return [grid, mapped]
