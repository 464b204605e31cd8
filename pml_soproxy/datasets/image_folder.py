"""Any folder of class folders, with a deterministic class-disjoint split."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

from .base import (
    IMAGE_EXTENSIONS,
    DatasetFormatError,
    ImageListDataset,
    Listing,
    list_images,
    list_subdirs,
)
from .protocol import DatasetProtocol

#: the standard split, for the protocol record
OFFICIAL_SPLIT = (
    "none: the first half of the class folders (by name) train, the rest test"
)
EXPECTED = (
    "one sub-folder per class holding its images: <root>/<class name>/<image>"
    + (" (extensions " + " ".join(IMAGE_EXTENSIONS) + ", any case)")
)


class ImageFolder(ImageListDataset):
    """``root/<class name>/<image>``, split by class for zero-shot retrieval.

    Classes are sorted by folder name; split ``"train"`` takes the first
    ``round(train_fraction * n)`` classes (halves round up, so with an odd count
    train gets the extra class), ``"test"`` the rest, ``"all"`` every class.
    Only image files directly inside each class folder count (hidden files and
    other extensions are ignored). Labels are 0-based in class-name order within
    the split; ``class_names`` are the folder names.
    """

    protocol = DatasetProtocol("folder", (1, 2, 4, 8), 4, OFFICIAL_SPLIT)
    expected = EXPECTED

    def __init__(
        self,
        root,
        split: str = "all",
        transform: Optional[Callable] = None,
        train_fraction: float = 0.5,
    ):
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(
                f"{self.name}: train_fraction must be in (0, 1), got {train_fraction}"
            )
        self.train_fraction = train_fraction
        super().__init__(root, split, transform)

    def read_split(self, rootp: Path, split: str) -> Listing:
        name = self.name
        classes = list_subdirs(str(rootp))
        if not classes:
            raise DatasetFormatError(
                f"{name}: {rootp} has no class folders; expected {EXPECTED}"
            )
        images = {c: list_images(str(rootp / c)) for c in classes}
        empty = [c for c in classes if not images[c]]
        if empty:
            hint = ""
            if len(classes) == 1 and list_subdirs(str(rootp / classes[0])):
                hint = f" (did you mean root={rootp / classes[0]}?)"
            raise DatasetFormatError(
                f"{name}: class folder {rootp / empty[0]} holds no images "
                f"({len(empty)} empty class folder(s)){hint}; expected {EXPECTED}"
            )
        if split != "all":
            if len(classes) < 2:
                raise DatasetFormatError(
                    f"{name}: {rootp} has {len(classes)} class folder; a train/test "
                    "split needs at least 2"
                )
            n_train = min(
                max(math.floor(self.train_fraction * len(classes) + 0.5), 1),
                len(classes) - 1,
            )
            classes = classes[:n_train] if split == "train" else classes[n_train:]
        paths, raw = [], []
        for c in classes:
            paths.extend(images[c])
            raw.extend([c] * len(images[c]))
        return Listing(paths, raw)
