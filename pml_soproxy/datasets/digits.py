"""A tiny built-in dataset: scikit-learn's bundled 8x8 digits, no files, no network."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .base import ImageListDataset, Listing, in_split
from .protocol import DatasetProtocol

#: the standard split, for the protocol record
OFFICIAL_SPLIT = "digits 0-4 train, 5-9 test"


class Digits(ImageListDataset):
    """``sklearn.datasets.load_digits`` as a zero-shot retrieval dataset.

    Split ``"train"`` = digits 0-4, ``"test"`` = digits 5-9, ``"all"`` = all ten;
    labels are 0-based within the split (digit 5 is label 0 in ``"test"``).
    Images are 8x8 PIL RGB (grey values 0..16 scaled to 0..255, replicated to
    three channels), left at 8x8: the usual transforms resize them. ``root`` is
    ignored (may be ``None``). ``paths`` are pseudo-paths ``"digits#<index>"``
    into ``load_digits``.
    """

    protocol = DatasetProtocol("digits", (1, 2, 4, 8), 20, OFFICIAL_SPLIT)

    def __init__(self, root=None, split: str = "train", transform=None):
        super().__init__(root, split, transform)

    def locate(self, root) -> None:
        return None  # built in: no folder

    def read_split(self, folder: Optional[Path], split: str) -> Listing:
        from sklearn.datasets import load_digits

        data = load_digits()
        targets = np.asarray(data.target, dtype=np.int64)
        keep = np.flatnonzero([in_split(split, t < 5) for t in targets])
        self.indices = keep
        self.images = (
            np.round(data.images[keep] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        )
        return Listing([f"digits#{i}" for i in keep], targets[keep])

    def load_image(self, index: int) -> Image.Image:
        """The untransformed 8x8 RGB image at ``index``."""
        return Image.fromarray(self.images[index]).convert("RGB")
