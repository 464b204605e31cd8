"""Figures of a run (matplotlib, no display needed)."""

import os
from typing import Dict, List

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
