"""ImageFolder: class folders, deterministic class-disjoint split by sorted name."""

import os
import re
from pathlib import Path

import pytest

from pml_soproxy.datasets import DatasetFormatError, ImageFolder

from .helpers import assert_well_formed
from .trees import make_class_folders, write_image

NAMES = [
    "delta",
    "Alpha",
    "charlie",
    "bravo",
    "echo",
]  # sorted: Alpha bravo charlie delta echo


@pytest.fixture
def folder(tmp_path):
    return make_class_folders(tmp_path / "data", NAMES, per_class=2)


def test_split_by_sorted_class_name_odd_count(folder):
    train, test = ImageFolder(folder, "train"), ImageFolder(folder, "test")
    assert train.class_names == [
        "Alpha",
        "bravo",
        "charlie",
    ]  # train gets the extra one
    assert test.class_names == ["delta", "echo"]
    assert_well_formed(train, 6, 3)
    assert_well_formed(test, 4, 2)
    assert_well_formed(ImageFolder(folder, "all"), 10, 5)


def test_split_is_deterministic(folder):
    a, b = ImageFolder(folder, "test"), ImageFolder(str(folder), "test")
    assert a.paths == b.paths and a.labels.tolist() == b.labels.tolist()
    assert a.paths == sorted(a.paths)


def test_train_fraction(folder):
    assert ImageFolder(folder, "train", train_fraction=0.8).num_classes == 4
    assert (
        ImageFolder(folder, "test", train_fraction=0.01).num_classes == 4
    )  # >= 1 train class
    with pytest.raises(ValueError, match="train_fraction"):
        ImageFolder(folder, "train", train_fraction=1.0)


def test_extensions_case_insensitive_and_others_ignored(tmp_path):
    root = tmp_path / "ext"
    for i, ext in enumerate([".jpg", ".JPG", ".jpeg", ".PNG", ".bmp", ".webp"]):
        write_image(root / "a" / f"x{i}{ext}")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / ".hidden.jpg").write_bytes(b"")
    (root / "README.md").write_text("ignored")
    ds = ImageFolder(root, "all")
    assert len(ds) == 6 and all(ds[i][0].mode == "RGB" for i in range(6))


def test_empty_class_folder(folder):
    (folder / "foxtrot").mkdir()
    with pytest.raises(
        DatasetFormatError,
        match=re.escape(f"class folder {folder / 'foxtrot'} holds no images"),
    ):
        ImageFolder(folder, "all")


def test_no_class_folders(tmp_path):
    write_image(tmp_path / "loose.jpg")
    with pytest.raises(
        DatasetFormatError,
        match=re.escape(str(tmp_path))
        + " has no class folders.*<root>/<class name>/<image>",
    ):
        ImageFolder(tmp_path, "all")


def test_parent_of_class_folders_gets_a_hint(folder):
    with pytest.raises(
        DatasetFormatError, match=re.escape(f"did you mean root={folder}")
    ):
        ImageFolder(folder.parent, "train")


def test_single_class_cannot_split(tmp_path):
    make_class_folders(tmp_path, ["only"])
    assert len(ImageFolder(tmp_path, "all")) == 1
    with pytest.raises(DatasetFormatError, match="at least 2"):
        ImageFolder(tmp_path, "train")


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        ImageFolder(tmp_path / "nope", "all")


def _shared_dir() -> Path:
    env = os.environ.get("PML_SOPROXY_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"


CUB100 = _shared_dir() / "datasets" / "cub100" / "images"


@pytest.mark.skipif(not CUB100.is_dir(), reason=f"real data not found at {CUB100}")
def test_real_cub100_folder():
    train, test = ImageFolder(CUB100, "train"), ImageFolder(CUB100, "test")
    assert train.num_classes == test.num_classes == 50
    assert not set(train.class_names) & set(test.class_names)
    assert (
        sorted(train.class_names + test.class_names)
        == train.class_names + test.class_names
    )
    assert len(train) + len(test) == len(ImageFolder(CUB100, "all"))
    for ds in (train, test):
        assert sorted(set(ds.labels.tolist())) == list(range(50))
        for i in (0, len(ds) // 2, len(ds) - 1):
            image, label = ds[i]
            assert image.mode == "RGB" and min(image.size) > 8 and 0 <= label < 50
