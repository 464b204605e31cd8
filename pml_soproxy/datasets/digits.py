"""A tiny built-in dataset: scikit-learn's bundled 8x8 digits, no files, no network."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from PIL import Image

from .base import ImageListDataset, check_split


class Digits(ImageListDataset):
    """``sklearn.datasets.load_digits`` as a zero-shot retrieval dataset.

    Split ``"train"`` = digits 0-4, ``"test"`` = digits 5-9, ``"all"`` = all ten;
    labels are 0-based within the split (digit 5 is label 0 in ``"test"``).
    Images are 8x8 PIL RGB (grey values 0..16 scaled to 0..255, replicated to
    three channels), left at 8x8: the usual transforms resize them. ``root`` is
    ignored (may be ``None``). ``paths`` are pseudo-paths ``"digits#<index>"``
    into ``load_digits``.
    """

    splits = ("train", "test", "all")

    def __init__(
        self, root=None, split: str = "train", transform: Optional[Callable] = None
    ):
        from sklearn.datasets import load_digits

        check_split(type(self).__name__, split, self.splits)
        data = load_digits()
        targets = np.asarray(data.target, dtype=np.int64)
        if split == "train":
            keep = np.flatnonzero(targets < 5)
        elif split == "test":
            keep = np.flatnonzero(targets >= 5)
        else:
            keep = np.arange(len(targets))
        self.indices = keep
        self.images = (
            np.round(data.images[keep] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        )
        super().__init__([f"digits#{i}" for i in keep], targets[keep], split, transform)

    def load_image(self, index: int) -> Image.Image:
        """The untransformed 8x8 RGB image at ``index``."""
        return Image.fromarray(self.images[index]).convert("RGB")
