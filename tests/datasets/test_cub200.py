"""CUB200 on a tiny official-layout tree: class ids 1, 2 (train) and 101, 102 (test)."""

import re

import pytest

from pml_soproxy.datasets import CUB200, DatasetFormatError

from .helpers import assert_well_formed
from .trees import make_cub


@pytest.fixture
def cub(tmp_path):
    return make_cub(tmp_path)


@pytest.mark.parametrize("split, n_classes", [("train", 2), ("test", 2), ("all", 4)])
def test_splits(cub, split, n_classes):
    ds = CUB200(cub, split)
    assert_well_formed(ds, 3 * n_classes, n_classes)
    assert ds.split == split


def test_standard_split_is_by_class_id(cub):
    train, test = CUB200(cub, "train"), CUB200(cub, "test")
    assert train.class_names == ["001.Bird_1", "002.Bird_2"]
    assert test.class_names == ["101.Bird_101", "102.Bird_102"]
    assert all("/101.Bird_101/" in p for p in test.paths[:3])
    assert test.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_root_may_be_parent(cub):
    a, b = CUB200(cub, "test"), CUB200(cub.parent, "test")
    assert a.paths == b.paths and a.labels.tolist() == b.labels.tolist()


def test_transform_applied(cub):
    ds = CUB200(cub, "train", transform=lambda im: im.size)
    assert ds[0] == ((6, 5), 0)


def test_unknown_split(cub):
    with pytest.raises(ValueError, match="'train', 'test', 'all'"):
        CUB200(cub, "val")


def test_missing_root(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="nowhere.*does not exist.*CUB_200_2011"
    ):
        CUB200(tmp_path / "nowhere", "train")


def test_missing_images_txt(cub):
    (cub / "images.txt").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"images\.txt not found.*image_class_labels"
    ):
        CUB200(cub, "train")


def test_missing_labels_file(cub):
    (cub / "image_class_labels.txt").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"CUB_200_2011/image_class_labels\.txt not found"
    ):
        CUB200(cub, "train")


def test_listed_image_absent(cub):
    victim = cub / "images" / "101.Bird_101" / "Bird_101_0001.jpg"
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(victim)) + ".*line 8"):
        CUB200(cub, "test")
    CUB200(cub, "train")  # only the requested split is checked


def test_wrong_column_count(cub):
    f = cub / "images.txt"
    lines = f.read_text().splitlines()
    lines[2] = lines[2] + " extra"
    f.write_text("\n".join(lines))
    with pytest.raises(
        DatasetFormatError, match=r"images\.txt, line 3: expected 2 columns"
    ):
        CUB200(cub, "train")


def test_non_integer_class_id(cub):
    f = cub / "image_class_labels.txt"
    f.write_text(f.read_text().replace("4 2\n", "4 two\n"))
    with pytest.raises(
        DatasetFormatError,
        match=r"image_class_labels\.txt, line 4: class_id must be an integer, got 'two'",
    ):
        CUB200(cub, "train")


def test_image_without_label(cub):
    f = cub / "image_class_labels.txt"
    f.write_text("\n".join(f.read_text().splitlines()[:-1]))
    with pytest.raises(
        DatasetFormatError, match=r"image id 12 .*images\.txt, line 12.*no class"
    ):
        CUB200(cub, "all")


def test_header_in_headerless_file(cub):
    f = cub / "images.txt"
    f.write_text("id path\n" + f.read_text())
    with pytest.raises(
        DatasetFormatError, match=r"images\.txt, line 1: image_id must be an integer"
    ):
        CUB200(cub, "train")
