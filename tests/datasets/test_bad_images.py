"""SkipBadImages: substitute unreadable images by one of the same class, record them."""

import copy
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from pml_soproxy.datasets import (
    ClassSubset,
    ImageFolder,
    ImageLoadError,
    SkipBadImages,
    read_skipped,
)


def to_tensor(image):
    return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.uint8).copy())


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """Classes a (3 images, the middle one a truncated JPEG) and b (2 images);
    every image has its own colour so substitutes can be identified."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    root = tmp_path / "images"
    for i, rel in enumerate(["a/0.png", "a/2.png", "b/3.png", "b/4.png"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * i, 255 - 40 * i, 7)).save(root / rel)
    bad = root / "a" / "1.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return root, bad


def test_dataloader_workers_substitute_same_class(tree, tmp_path):
    root, bad = tree
    ds = ImageFolder(root, "all", transform=to_tensor)
    record = tmp_path / "run" / "logs" / "skipped.tsv"  # folder does not exist yet
    wrapped = SkipBadImages(ds, record)
    loader = DataLoader(wrapped, batch_size=2, num_workers=2)
    for _ in range(2):  # two epochs: the bad image is met twice
        images, labels = zip(*loader)
        assert torch.cat(labels).tolist() == ds.labels.tolist()
    bad_index = ds.paths.index(str(bad))
    images = torch.cat(images)
    assert torch.equal(images[bad_index], images[bad_index + 1])  # next of class a
    lines = record.read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{bad}\t") for line in lines)
    assert "truncated" in lines[0]
    assert read_skipped(record) == [(str(bad), lines[0].split("\t", 1)[1])]


def test_dataloader_without_wrapper_names_the_file(tree):
    root, bad = tree
    loader = DataLoader(
        ImageFolder(root, "all", to_tensor), batch_size=2, num_workers=2
    )
    # torch's worker re-raise (ExceptionWrapper.reraise) rebuilds the exception
    # as ImageLoadError(msg) where msg is "Caught ImageLoadError in DataLoader
    # worker process N.\nOriginal Traceback (most recent call last): ...", i.e.
    # our one-line message is kept but on the last line of a multi-line text.
    # torch's re-raised exception is in a reference cycle with its traceback
    # (the reraise frame holds it), and that traceback holds the DataLoader
    # iterator: left to the garbage collector, the worker shutdown then takes
    # ~10 s (join timeouts). Clearing __traceback__ frees it at once.
    try:
        list(loader)
    except Exception as e:
        error_type, message = type(e), str(e)
        e.__traceback__ = None
    else:
        pytest.fail("no exception")
    assert error_type is ImageLoadError
    assert "Caught ImageLoadError in DataLoader worker process" in message
    assert f"ImageFolder: cannot read image {bad}: " in message


def test_substitute_wraps_around_and_all_bad_class(tree, tmp_path):
    root, bad = tree
    (root / "a" / "2.png").write_bytes(b"")  # last of class a: wraps to index 0
    ds = ImageFolder(root, "all", to_tensor)
    wrapped = SkipBadImages(ds, tmp_path / "skipped.tsv")
    assert torch.equal(wrapped[2][0], ds[0][0]) and wrapped[2][1] == 0
    # index 1 (bad) -> 2 (bad) -> 0: both failures are recorded
    assert torch.equal(wrapped[1][0], ds[0][0])
    assert [p for p, _ in read_skipped(tmp_path / "skipped.tsv")] == [
        str(root / "a" / "2.png"),
        str(bad),
    ]
    (root / "a" / "0.png").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match=r"every image of class 'a' \(label 0"):
        wrapped[0]
    assert torch.equal(wrapped[3][0], ds[3][0])  # class b unaffected


def test_forwards_attributes_and_pickles(tree, tmp_path):
    root, bad = tree
    ds = ImageFolder(root, "all", to_tensor)
    wrapped = SkipBadImages(ds, tmp_path / "skipped.tsv")
    assert len(wrapped) == len(ds) == 5
    assert wrapped.labels is ds.labels and wrapped.paths is ds.paths
    assert wrapped.num_classes == 2 and wrapped.class_names == ["a", "b"]
    assert wrapped.split == "all" and wrapped.name == "ImageFolder"
    assert wrapped.max_image_pixels == ds.max_image_pixels
    assert wrapped.load_image(1).size == (8, 8)  # substituted, untransformed
    with pytest.raises(AttributeError):
        wrapped.no_such_attribute
    for clone in (pickle.loads(pickle.dumps(wrapped)), copy.deepcopy(wrapped)):
        assert clone.labels.tolist() == ds.labels.tolist()
        assert clone[1][1] == 0
    assert len(read_skipped(tmp_path / "skipped.tsv")) == 1
    # ClassSubset with its own transform goes through the wrapper's load_image
    sub = ClassSubset(wrapped, [0, 1, 2], transform=to_tensor)
    assert torch.equal(sub[1][0], ds[2][0])


def test_class_balanced_sampling_through_wrapper(tree, tmp_path):
    """What PML's MPerClassSampler does with a dataset: indices per class from
    ``labels``, then ``dataset[i]`` for a mix of classes (PML itself is not
    imported here: 3 s)."""
    root, _ = tree
    wrapped = SkipBadImages(ImageFolder(root, "all", to_tensor), tmp_path / "s.tsv")
    labels = np.asarray(wrapped.labels)
    per_class = [np.flatnonzero(labels == c)[:2] for c in range(wrapped.num_classes)]
    loader = DataLoader(wrapped, batch_size=4, sampler=np.concatenate(per_class))
    images, batch_labels = next(iter(loader))
    assert images.shape == (4, 8, 8, 3) and batch_labels.tolist() == [0, 0, 1, 1]


def test_no_labels_refused():
    with pytest.raises(TypeError, match="no labels"):
        SkipBadImages([1, 2, 3], "x.tsv")


def test_read_skipped_missing_and_dedup(tmp_path):
    assert read_skipped(tmp_path / "none.tsv") == []
    record = tmp_path / "s.tsv"
    record.write_text("b\tr1\na\tr2\n\nb\tr3\na\tr2\n")
    assert read_skipped(record) == [("b", "r1"), ("a", "r2")]
