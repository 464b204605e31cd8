"""StanfordOnlineProducts on a tiny tree: Ebay_train.txt / Ebay_test.txt, .JPG files."""

import re

import pytest

from pml_soproxy.datasets import DatasetFormatError, StanfordOnlineProducts

from .helpers import assert_well_formed
from .trees import make_sop


@pytest.fixture
def sop(tmp_path):
    return make_sop(tmp_path)


@pytest.mark.parametrize("split, n_classes", [("train", 3), ("test", 2), ("all", 5)])
def test_splits(sop, split, n_classes):
    ds = StanfordOnlineProducts(sop, split)
    assert_well_formed(ds, 2 * n_classes, n_classes)
    assert all(p.endswith(".JPG") for p in ds.paths)


def test_labels_and_super_labels(sop):
    test = StanfordOnlineProducts(sop, "test")
    assert test.labels.tolist() == [0, 0, 1, 1]  # class ids 4, 5 -> 0, 1
    assert test.super_labels.tolist() == [0, 0, 1, 1]


def test_root_may_be_parent(sop):
    assert (
        StanfordOnlineProducts(sop.parent, "train").paths
        == StanfordOnlineProducts(sop, "train").paths
    )


def test_missing_test_list(sop):
    (sop / "Ebay_test.txt").unlink()
    StanfordOnlineProducts(sop, "train")
    with pytest.raises(
        FileNotFoundError,
        match=r"Ebay_test\.txt not found.*Ebay_train\.txt, Ebay_test\.txt",
    ):
        StanfordOnlineProducts(sop, "test")


def test_missing_root_marker(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/Ebay_train\.txt not found"):
        StanfordOnlineProducts(tmp_path / "empty", "train")


def test_headerless_list(sop):
    f = sop / "Ebay_train.txt"
    f.write_text("\n".join(f.read_text().splitlines()[1:]))
    with pytest.raises(
        DatasetFormatError,
        match=r"Ebay_train\.txt, line 1: expected the header 'image_id class_id super_class_id path'",
    ):
        StanfordOnlineProducts(sop, "train")


def test_wrong_column_count(sop):
    f = sop / "Ebay_train.txt"
    lines = f.read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:3])
    f.write_text("\n".join(lines))
    with pytest.raises(
        DatasetFormatError, match=r"Ebay_train\.txt, line 4: expected 4 columns"
    ):
        StanfordOnlineProducts(sop, "train")


def test_non_integer_class(sop):
    f = sop / "Ebay_test.txt"
    lines = f.read_text().splitlines()
    tok = lines[2].split()
    tok[1] = "4a"
    lines[2] = " ".join(tok)
    f.write_text("\n".join(lines))
    with pytest.raises(
        DatasetFormatError, match=r"Ebay_test\.txt, line 3: class_id must be an integer"
    ):
        StanfordOnlineProducts(sop, "test")


def test_listed_image_absent(sop):
    ds = StanfordOnlineProducts(sop, "train")
    victim = ds.paths[-1]
    (sop / victim).unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"1 image\(s\) listed in .*Ebay_train\.txt are missing, e\.g\. "
        + re.escape(f"{victim} (line 7)"),
    ):
        StanfordOnlineProducts(sop, "train")
