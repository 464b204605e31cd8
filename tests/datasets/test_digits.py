"""Digits: scikit-learn's bundled 8x8 digits, classes 0-4 train, 5-9 test."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pml_soproxy.datasets import Digits

from .helpers import assert_well_formed


def test_split_sizes_and_labels():
    target = load_digits().target
    train, test = Digits(None, "train"), Digits(None, "test")
    assert_well_formed(train, int((target < 5).sum()), 5)
    assert_well_formed(test, int((target >= 5).sum()), 5)
    assert len(train) + len(test) == len(target) == len(Digits(split="all"))
    assert train.class_names == ["0", "1", "2", "3", "4"]
    assert test.class_names == ["5", "6", "7", "8", "9"]
    assert np.array_equal(test.labels + 5, target[target >= 5])


def test_images_rgb_8x8_scaled():
    ds = Digits(split="test")
    image, _ = ds[0]
    assert image.mode == "RGB" and image.size == (8, 8)
    arr = np.asarray(image)
    expected = np.round(load_digits().images[ds.indices[0]] * 255 / 16)
    assert np.array_equal(arr[..., 0], expected) and np.array_equal(
        arr[..., 0], arr[..., 2]
    )
    assert Digits(split="train", transform=lambda im: im.resize((32, 32)))[0][
        0
    ].size == (32, 32)


def test_unknown_split():
    with pytest.raises(ValueError, match="'train', 'test', 'all'"):
        Digits(split="val")
