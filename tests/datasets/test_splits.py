"""Class-disjoint validation carve-outs."""

import numpy as np
import pytest

from pml_soproxy.datasets import (
    ClassSubset,
    Digits,
    class_disjoint_split,
    train_val_split,
)


def test_class_disjoint_and_complete():
    labels = np.repeat(np.arange(10), 3)[::-1]
    tr, va = class_disjoint_split(labels, val_fraction=0.2, seed=0)
    assert not set(labels[tr]) & set(labels[va])
    assert len(set(labels[va])) == 2
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(30))
    assert tr.dtype == va.dtype == np.int64


def test_deterministic_and_seeded():
    labels = np.repeat(np.arange(20), 2)
    a = class_disjoint_split(labels, num_val_classes=5, seed=3)
    b = class_disjoint_split(labels.tolist(), num_val_classes=5, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    others = [
        set(labels[class_disjoint_split(labels, num_val_classes=5, seed=s)[1]])
        for s in range(5)
    ]
    assert len({frozenset(o) for o in others}) > 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 classes"):
        class_disjoint_split([0, 0, 0])
    with pytest.raises(ValueError, match="num_val_classes must be in 1..2"):
        class_disjoint_split([0, 1, 2], num_val_classes=3)
    with pytest.raises(ValueError, match="val_fraction"):
        class_disjoint_split([0, 1, 2], val_fraction=1.5)
    assert (
        len(class_disjoint_split([0, 1, 2], val_fraction=0.01)[1]) == 1
    )  # at least one class


def test_train_val_split_relabels():
    ds = Digits(split="train")
    tr, va = train_val_split(ds, num_val_classes=2, seed=1)
    assert tr.num_classes == 3 and va.num_classes == 2 and len(tr) + len(va) == len(ds)
    assert not set(tr.class_names) & set(va.class_names)
    for sub in (tr, va):
        assert sorted(set(sub.labels.tolist())) == list(range(sub.num_classes))
        image, label = sub[0]
        assert image.mode == "RGB" and label == sub.labels[0]
        assert sub.class_names[label] == ds.class_names[ds.labels[sub.indices[0]]]
        assert sub.paths[0] == ds.paths[sub.indices[0]]
    assert (tr.split, va.split) == ("train", "val")


def test_subset_transform_overrides_parent():
    ds = Digits(split="train", transform=lambda im: "train-aug")
    tr, va = train_val_split(ds, val_transform=lambda im: im.size)
    assert tr[0][0] == "train-aug" and va[0][0] == (8, 8)


def test_refuses_test_splits():
    with pytest.raises(ValueError, match="refusing.*'test'"):
        train_val_split(Digits(split="test"))


def test_subset_transform_needs_load_image():
    class Plain:
        labels = np.array([0, 1])

        def __getitem__(self, i):
            return i, int(self.labels[i])

    assert ClassSubset(Plain(), [1])[0] == (1, 0)
    with pytest.raises(TypeError, match="load_image"):
        ClassSubset(Plain(), [0], transform=str)
