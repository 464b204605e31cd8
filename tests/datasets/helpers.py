"""Assertions shared by the dataset tests."""

import numpy as np


def assert_well_formed(ds, n_images, n_classes):
    """Length, 0-based contiguous int64 labels, RGB PIL images, int labels."""
    assert len(ds) == n_images == len(ds.paths) == len(ds.labels)
    labels = np.asarray(ds.labels)
    assert labels.dtype == np.int64
    assert ds.num_classes == n_classes
    assert sorted(set(labels.tolist())) == list(range(n_classes))
    assert len(ds.class_names) == n_classes
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.mode == "RGB"
        assert isinstance(label, int) and label == labels[i]
