"""Class-disjoint validation carve-outs: models are chosen on validation classes
carved from the training split, never on the test split."""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset

TEST_SPLITS = ("test", "query", "gallery")


def class_disjoint_split(
    labels: Sequence[int],
    val_fraction: float = 0.2,
    num_val_classes: Optional[int] = None,
    seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """``(train_indices, val_indices)`` holding disjoint sets of whole classes.

    ``num_val_classes`` (or else ``round(val_fraction * num_classes)``, at least
    one) classes are drawn with ``numpy.random.default_rng(seed)``: the same
    labels and seed always give the same split. Indices are sorted int64 arrays.
    """
    labels = np.asarray(labels).reshape(-1)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(
            f"class_disjoint_split: need at least 2 classes, got {len(classes)} "
            "(without a validation carve-out, select the last epoch: val_fraction 0)"
        )
    if num_val_classes is None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"class_disjoint_split: val_fraction must be in (0, 1), got {val_fraction}"
            )
        num_val_classes = max(1, math.floor(val_fraction * len(classes) + 0.5))
    num_val_classes = int(num_val_classes)
    if not 1 <= num_val_classes < len(classes):
        raise ValueError(
            f"class_disjoint_split: num_val_classes must be in 1..{len(classes) - 1} "
            f"for {len(classes)} classes, got {num_val_classes}"
        )
    rng = np.random.default_rng(seed)
    val_classes = rng.permutation(classes)[:num_val_classes]
    is_val = np.isin(labels, val_classes)
    return (
        np.flatnonzero(~is_val).astype(np.int64),
        np.flatnonzero(is_val).astype(np.int64),
    )


class ClassSubset(Dataset):
    """A subset of a labelled dataset, relabelled to 0-based contiguous labels.

    New labels follow the sorted order of the original labels. With
    ``transform`` given, images come untransformed from ``dataset.load_image``
    and go through this transform instead (e.g. eval transforms for a
    validation subset of a training set); otherwise ``dataset[i]`` is used as
    is. Exposes ``labels``, ``num_classes``, ``class_names``, ``paths`` (when
    the parent has them), ``indices``, ``dataset`` and ``split``.
    """

    def __init__(
        self,
        dataset,
        indices: Sequence[int],
        transform: Optional[Callable] = None,
        split: Optional[str] = None,
    ):
        if transform is not None and not hasattr(dataset, "load_image"):
            raise TypeError(
                f"ClassSubset: a transform needs a dataset with load_image(), "
                f"{type(dataset).__name__} has none"
            )
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.transform = transform
        self.split = split if split is not None else getattr(dataset, "split", None)
        parent = np.asarray(dataset.labels)[self.indices]
        keys, self.labels = np.unique(parent, return_inverse=True)
        self.labels = self.labels.astype(np.int64).reshape(-1)
        self.parent_classes = keys.astype(np.int64)
        names = getattr(dataset, "class_names", None)
        self.class_names = (
            [names[k] for k in keys] if names is not None else [str(k) for k in keys]
        )
        paths = getattr(dataset, "paths", None)
        self.paths = [paths[i] for i in self.indices] if paths is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.parent_classes)

    def __len__(self) -> int:
        return len(self.indices)

    def load_image(self, index: int):
        return self.dataset.load_image(int(self.indices[index]))

    def __getitem__(self, index: int):
        i = int(self.indices[index])
        if self.transform is not None:
            image = self.transform(self.dataset.load_image(i))
        else:
            image = self.dataset[i][0]
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"ClassSubset(split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes}, of={self.dataset!r})"
        )


def train_val_split(
    dataset,
    val_fraction: float = 0.2,
    num_val_classes: Optional[int] = None,
    seed: int = 0,
    train_transform: Optional[Callable] = None,
    val_transform: Optional[Callable] = None,
) -> Tuple[ClassSubset, ClassSubset]:
    """Carve class-disjoint ``(train, val)`` subsets out of a training split.

    Refuses test-side splits (``test``, ``query``, ``gallery``): model selection
    must never see them. See :func:`class_disjoint_split` and :class:`ClassSubset`.
    """
    split = getattr(dataset, "split", None)
    if split in TEST_SPLITS:
        raise ValueError(
            f"train_val_split: refusing to carve a validation set out of the {split!r} "
            "split; model selection must use classes of the training split only"
        )
    train_idx, val_idx = class_disjoint_split(
        dataset.labels, val_fraction, num_val_classes, seed
    )
    return (
        ClassSubset(dataset, train_idx, train_transform, split="train"),
        ClassSubset(dataset, val_idx, val_transform, split="val"),
    )
