"""The retrieval grid: each query, then its top-k results with their similarity;
borders green (same class) / red (other class) where both labels are known."""

from typing import Callable, Optional, Sequence

import numpy as np

THUMB = 96
COLOURS = {True: "#1a9850", False: "#d73027", None: "#999999"}


def retrieval_grid(
    load_image: Callable[[int], object],
    query_images: Sequence[object],
    query_labels: Sequence[Optional[str]],
    result_ids: np.ndarray,
    similarities: np.ndarray,
    labels: Sequence[Optional[str]],
    path: str,
    title: str = "",
    query_names: Optional[Sequence[str]] = None,
) -> str:
    """Write the grid to ``path`` (PNG). ``load_image(i)`` gives gallery image
    ``i`` (a PIL image); ``query_images`` are PIL images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, k = result_ids.shape
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.25 * (k + 1), 1.45 * rows),
                             squeeze=False)  # fmt: skip
    for r in range(rows):
        name = query_names[r] if query_names is not None else "query"
        _show(axes[r, 0], query_images[r], "#000000", _short(name), 3)
        for c in range(k):
            i = int(result_ids[r, c])
            ax = axes[r, c + 1]
            if i < 0:
                ax.axis("off")
                continue
            same = (None if query_labels[r] is None or labels[i] is None
                    else query_labels[r] == labels[i])  # fmt: skip
            _show(ax, load_image(i), COLOURS[same], f"{similarities[r, c]:.4f}", 3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _short(text: str, width: int = 14) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _show(ax, image, colour: str, caption: str, width: float):
    thumb = image.copy()
    thumb.thumbnail((THUMB, THUMB))
    ax.imshow(np.asarray(thumb.convert("RGB")))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)
    ax.set_title(caption, fontsize=7)
