"""DecodedImageCache: the cached pixels are the decoded files shrunk by Pillow, in the
dataset's order, with its labels; unreadable images behave as without the cache."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from pml_soproxy.datasets import ClassSubset, ImageFolder, ImageLoadError, SkipBadImages
from pml_soproxy.datasets import cache as cache_module
from pml_soproxy.datasets import read_skipped
from pml_soproxy.datasets.cache import DecodedImageCache
from pml_soproxy.training.loading import LoaderSettings, train_loader

SHORT = 24
#: (class, name, width, height): larger and smaller than SHORT, portrait, landscape
IMAGES = [("a", "0.jpg", 40, 30), ("a", "1.png", 20, 50), ("a", "2.jpg", 12, 12),
          ("b", "3.jpg", 64, 48), ("b", "4.png", 24, 60), ("c", "5.jpg", 30, 31),
          ("c", "6.png", 50, 25)]  # fmt: skip


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls, name, w, h in IMAGES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / cls / name)
    return root


def reference(path, short_side):
    """Independent decode: Pillow open + RGB + bicubic resize of the shorter side."""
    with Image.open(path) as im:
        image = im.convert("RGB")
    w, h = image.size
    if min(w, h) > short_side:
        if w <= h:
            image = image.resize((short_side, int(h * short_side / w + 0.5)),
                                 Image.BICUBIC)  # fmt: skip
        else:
            image = image.resize((int(w * short_side / h + 0.5), short_side),
                                 Image.BICUBIC)  # fmt: skip
    return np.asarray(image)


@pytest.mark.parametrize("mode", ["memory", "mmap"])
def test_pixels_are_an_independent_decode_shrunk(root, tmp_path, mode):
    dataset = ImageFolder(root, "all")
    cache = DecodedImageCache(dataset, SHORT, mode, folder=tmp_path / "c",
                              progress=False)  # fmt: skip
    assert len(cache) == len(IMAGES)
    assert list(cache.labels) == list(dataset.labels)
    assert cache.class_names == dataset.class_names and cache.paths == dataset.paths
    for i, path in enumerate(dataset.paths):
        got = cache.pixels_of(i)
        expected = reference(path, SHORT)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        assert min(got.shape[:2]) == min(SHORT, *np.asarray(Image.open(path)).shape[:2])
        np.testing.assert_array_equal(got, expected)
        assert cache[i][1] == dataset[i][1]
        np.testing.assert_array_equal(np.asarray(cache.load_image(i)), expected)
    assert cache.nbytes == sum(reference(p, SHORT).size for p in dataset.paths)


def test_a_subset_with_a_transform_is_cached_through_load_image(root):
    full = ImageFolder(root, "all")
    subset = ClassSubset(full, [1, 3, 5, 6], transform=lambda im: im.size)
    cache = DecodedImageCache(subset, SHORT, transform=subset.transform, progress=False)
    assert [cache[i] for i in range(4)] == [
        (reference(full.paths[j], SHORT).shape[1::-1], int(subset.labels[i]))
        for i, j in enumerate([1, 3, 5, 6])
    ]


def to_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())


def random_crop(image):
    """A random augmentation drawing from torch and random, as timm's do."""
    import random

    w, h = image.size
    side = min(w, h, 10)
    left = int(torch.randint(w - side + 1, ()))
    top = random.randint(0, h - side)
    return to_tensor(image.crop((left, top, left + side, top + side)))


def batches(dataset, sampler, epochs=2, workers=0):
    settings = LoaderSettings(workers, pin_memory=False, persistent_workers=False)
    loader = train_loader(dataset, 4, sampler, settings, "cpu")
    torch.manual_seed(3)
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(epochs)]


def test_large_enough_cache_gives_the_same_batches_as_the_files(root):
    """No image is shrunk: the cached run is the uncached run, augmentations
    included; with shrinking, the labels (the order) are still the same."""
    sampler = [5, 0, 3, 3, 6, 1, 2, 4]
    plain = ImageFolder(root, "all", random_crop)
    same = DecodedImageCache(ImageFolder(root, "all"), 1000, transform=random_crop,
                             progress=False)  # fmt: skip
    expected = batches(plain, sampler)
    got = batches(same, sampler)
    for epoch_expected, epoch_got in zip(expected, got):
        for (x0, y0), (x1, y1) in zip(epoch_expected, epoch_got):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)
    shrunk = DecodedImageCache(ImageFolder(root, "all"), SHORT,
                               transform=random_crop, progress=False)  # fmt: skip
    labels = [[y.tolist() for _, y in epoch] for epoch in batches(shrunk, sampler)]
    assert labels == [[y.tolist() for _, y in epoch] for epoch in expected]
    assert labels[0] == [[2, 0, 1, 1], [2, 0, 0, 1]]


def test_mmap_is_reused_and_rebuilt_when_a_file_changes(root, tmp_path, monkeypatch):
    folder = tmp_path / "c"
    first = DecodedImageCache(ImageFolder(root, "all"), SHORT, "mmap", folder,
                              progress=False)  # fmt: skip
    assert not first.reused and sorted(os.listdir(folder)) == sorted(
        [os.path.basename(first.path), os.path.basename(first.path)[:-3] + ".json"]
    )

    def no_decoding(*args):
        raise AssertionError("decoded although the cache was complete")

    monkeypatch.setattr(cache_module._Decode, "__getitem__", no_decoding)
    again = DecodedImageCache(ImageFolder(root, "all"), SHORT, "mmap", folder,
                              progress=False)  # fmt: skip
    assert again.reused and again.path == first.path
    np.testing.assert_array_equal(again.pixels_of(3), first.pixels_of(3))
    monkeypatch.undo()
    path = ImageFolder(root, "all").paths[0]
    Image.new("RGB", (9, 7), (1, 2, 3)).save(path)
    changed = DecodedImageCache(ImageFolder(root, "all"), SHORT, "mmap", folder,
                                progress=False)  # fmt: skip
    assert not changed.reused and changed.path != first.path
    np.testing.assert_array_equal(changed.pixels_of(0), reference(path, SHORT))


def test_a_truncated_data_file_is_not_reused(root, tmp_path):
    folder = tmp_path / "c"
    first = DecodedImageCache(ImageFolder(root, "all"), SHORT, "mmap", folder,
                              progress=False)  # fmt: skip
    with open(first.path, "r+b") as f:
        f.truncate(100)
    again = DecodedImageCache(ImageFolder(root, "all"), SHORT, "mmap", folder,
                              progress=False)  # fmt: skip
    assert not again.reused
    np.testing.assert_array_equal(again.pixels_of(6), first.pixels_of(6))


def test_mmap_pickles_without_its_pixels_and_workers_read_them(root, tmp_path):
    cache = DecodedImageCache(ImageFolder(root, "all"), SHORT, "mmap", tmp_path,
                              transform=to_tensor, progress=False)  # fmt: skip
    cache.pixels_of(0)  # maps the file in this process
    assert len(pickle.dumps(cache)) < cache.nbytes / 2
    copy = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(copy.pixels_of(4), cache.pixels_of(4))
    loader = DataLoader(cache, batch_size=None, num_workers=2)
    for i, (image, label) in enumerate(loader):
        np.testing.assert_array_equal(image.numpy(), cache.pixels_of(i))
        assert label == cache.labels[i]


def test_unreadable_image_behaves_as_without_the_cache(root, tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    bad = root / "b" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    dataset = ImageFolder(root, "all", to_tensor)
    index = dataset.paths.index(str(bad))
    for mode in ("memory", "mmap"):
        cache = DecodedImageCache(ImageFolder(root, "all"), SHORT, mode, tmp_path / "c",
                                  transform=to_tensor, progress=False)  # fmt: skip
        with pytest.raises(ImageLoadError) as plain:
            dataset[index]
        with pytest.raises(ImageLoadError) as cached:
            cache[index]
        assert str(cached.value) == str(plain.value)
        assert (cached.value.path, cached.value.reason) == (
            plain.value.path, plain.value.reason)  # fmt: skip
        records = [tmp_path / f"{mode}-plain.txt", tmp_path / f"{mode}-cached.txt"]
        substitute_plain = SkipBadImages(dataset, records[0])[index]
        substitute_cached = SkipBadImages(cache, records[1])[index]
        assert substitute_plain[1] == substitute_cached[1]
        np.testing.assert_array_equal(
            substitute_cached[0].numpy(),
            reference(dataset.paths[index + 1], SHORT),  # next image of class b
        )
        assert read_skipped(records[0]) == read_skipped(records[1]) != []


def test_bad_arguments_are_refused(root):
    dataset = ImageFolder(root, "all")
    with pytest.raises(ValueError, match="memory or mmap"):
        DecodedImageCache(dataset, SHORT, "disk")
    with pytest.raises(ValueError, match="needs a folder"):
        DecodedImageCache(dataset, SHORT, "mmap")
    with pytest.raises(ValueError, match="interpolation"):
        DecodedImageCache(dataset, SHORT, interpolation="cubic")


def test_unwritable_folder_is_one_sentence(root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write the image cache .*cache_dir"):
        DecodedImageCache(ImageFolder(root, "all"), SHORT, "mmap", blocker / "c",
                          progress=False)  # fmt: skip
