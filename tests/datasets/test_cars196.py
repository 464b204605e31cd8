"""Cars196: official cars_annos.mat (written with scipy.io.savemat) and class-folder mirrors."""

import re
import shutil

import numpy as np
import pytest
import scipy.io as sio

from pml_soproxy.datasets import Cars196, DatasetFormatError, parse_cars_annos

from .helpers import assert_well_formed
from .trees import (
    cars_annotations,
    kaggle_names,
    make_cars_kaggle,
    make_cars_official,
    make_class_folders,
)


@pytest.fixture
def official(tmp_path):
    return make_cars_official(tmp_path)


@pytest.mark.parametrize("split, n_classes", [("train", 2), ("test", 2), ("all", 4)])
def test_official_splits(official, split, n_classes):
    ds = Cars196(official, split)
    assert_well_formed(ds, 3 * n_classes, n_classes)


def test_official_split_by_class_ignores_test_flag(official):
    train, test = Cars196(official, "train"), Cars196(official, "test")
    assert [p.rsplit("/", 1)[1] for p in train.paths] == [
        f"{i:06d}.jpg" for i in range(1, 7)
    ]
    assert [p.rsplit("/", 1)[1] for p in test.paths] == [
        f"{i:06d}.jpg" for i in range(7, 13)
    ]
    assert train.class_names == ["Make001 Model 1", "Make002 Model 2"]
    assert test.class_names == ["Make099 Model 99", "Make100 Model 100"]
    assert test.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_official_root_may_be_parent(official):
    assert Cars196(official.parent, "test").paths == Cars196(official, "test").paths


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"squeeze_me": True},
        {"squeeze_me": True, "struct_as_record": False},
        {"struct_as_record": False},
    ],
)
def test_parse_cars_annos_any_loadmat_form(official, kwargs):
    mat = sio.loadmat(str(official / "cars_annos.mat"), **kwargs)
    paths, classes, tests, names = parse_cars_annos(mat)
    assert paths[:2] == ["car_ims/000001.jpg", "car_ims/000002.jpg"]
    assert classes == [1] * 3 + [2] * 3 + [99] * 3 + [100] * 3
    assert tests[:3] == [False, True, False]
    assert len(names) == 196 and names[98] == "Make099 Model 99"


def test_parse_single_annotation(tmp_path):
    f = tmp_path / "one.mat"
    sio.savemat(
        str(f), {"annotations": cars_annotations([("car_ims/000001.jpg", 7, 1)])}
    )
    for squeeze in (False, True):
        mat = sio.loadmat(str(f), squeeze_me=squeeze)
        assert (
            parse_cars_annos(mat)[:3] == (["car_ims/000001.jpg"], [7], [True])
            and parse_cars_annos(mat)[3] is None
        )


def test_mat_without_annotations(official):
    sio.savemat(str(official / "cars_annos.mat"), {"something": np.zeros(3)})
    with pytest.raises(
        DatasetFormatError, match=r"cars_annos\.mat has no 'annotations'"
    ):
        Cars196(official, "train")


def test_mat_missing_field(official):
    ann = np.zeros((1, 1), dtype=[("relative_im_path", "O"), ("test", "O")])
    ann[0, 0] = (np.array(["car_ims/000001.jpg"]), np.array([[0]]))
    sio.savemat(str(official / "cars_annos.mat"), {"annotations": ann})
    with pytest.raises(
        DatasetFormatError, match=r"cars_annos\.mat: annotations has no field 'class'"
    ):
        Cars196(official, "train")


def test_mat_class_out_of_range(official):
    ann = cars_annotations(
        [("car_ims/000001.jpg", 1, 0), ("car_ims/000002.jpg", 197, 0)]
    )
    sio.savemat(str(official / "cars_annos.mat"), {"annotations": ann})
    with pytest.raises(
        DatasetFormatError, match=r"cars_annos\.mat: annotation 2 has class 197"
    ):
        Cars196(official, "train")


def test_corrupt_mat(official):
    (official / "cars_annos.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DatasetFormatError, match=r"cannot read .*cars_annos\.mat"):
        Cars196(official, "train")


def test_official_listed_image_absent(official):
    (official / "car_ims" / "000008.jpg").unlink()
    Cars196(official, "train")
    with pytest.raises(
        FileNotFoundError,
        match=r"listed in .*cars_annos\.mat are missing, e\.g\. .*car_ims/000008\.jpg",
    ):
        Cars196(official, "test")


def test_two_official_copies_are_ambiguous(official, tmp_path):
    shutil.copytree(official, tmp_path / "copy")
    with pytest.raises(DatasetFormatError, match="ambiguous root.*cars_annos.mat"):
        Cars196(tmp_path, "train")


def test_official_preferred_over_mirror(tmp_path):
    official = make_cars_official(tmp_path / "both")
    make_class_folders(official / "train", ["A"])
    make_class_folders(official / "test", ["B"])
    assert len(Cars196(official, "train")) == 6


# -- Kaggle mirror with names.csv -------------------------------------------------


@pytest.fixture
def kaggle(tmp_path):
    return make_cars_kaggle(tmp_path)


def test_kaggle_split_by_names_csv_index(kaggle):
    names = kaggle_names()
    train, test = Cars196(kaggle, "train"), Cars196(kaggle, "test")
    # class ids 1, 2, 6 train; 99, 100 test; train+test folders pooled (2 + 2 each)
    assert_well_formed(train, 12, 3)
    assert_well_formed(test, 8, 2)
    assert train.class_names == [names[0], names[1], "Ram C-V Cargo Van Minivan 2012"]
    assert test.class_names == [names[98], names[99]]
    assert any("/car_data/car_data/test/" in p for p in test.paths)


@pytest.mark.parametrize("sub", [".", "..", "car_data", "car_data/car_data"])
def test_kaggle_root_levels(kaggle, sub):
    assert Cars196(kaggle / sub, "test").paths == Cars196(kaggle, "test").paths


def test_kaggle_folder_not_in_names_csv(kaggle):
    make_class_folders(kaggle / "car_data" / "car_data" / "train", ["Not A Car 2012"])
    with pytest.raises(
        DatasetFormatError,
        match=r"class folder 'Not A Car 2012' .*not listed in .*names\.csv",
    ):
        Cars196(kaggle, "train")


def test_kaggle_empty_class_folder(kaggle):
    (kaggle / "car_data" / "car_data" / "test" / "Make 000 Model").mkdir(exist_ok=True)
    empty = kaggle / "car_data" / "car_data" / "test" / kaggle_names()[3]
    empty.mkdir()
    with pytest.raises(
        DatasetFormatError, match=re.escape(f"class folder {empty} holds no images")
    ):
        Cars196(kaggle, "train")


def test_mirror_without_names_csv_needs_196_classes(tmp_path):
    base = make_cars_kaggle(tmp_path, names_csv=False)
    with pytest.raises(
        DatasetFormatError,
        match=r"holds 5 class folders .* needs all 196 classes.*names\.csv",
    ):
        Cars196(base, "train")


def test_two_mirrors_are_ambiguous(tmp_path):
    for part in ("a", "b"):
        make_class_folders(tmp_path / part / "train", ["X"])
        make_class_folders(tmp_path / part / "test", ["Y"])
    with pytest.raises(DatasetFormatError, match="ambiguous root.*train/ and test/"):
        Cars196(tmp_path, "train")


def test_no_layout_found(tmp_path):
    (tmp_path / "stuff" / "more").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError,
        match=r"no cars_annos\.mat and no class-folder mirror.*expected",
    ):
        Cars196(tmp_path, "train")


# -- mirrors without names.csv: all 196 classes, sorted by folder name ------------


def test_sorted_name_rule_with_196_pooled_classes(tmp_path):
    names = sorted(n.replace("/", "-") for n in kaggle_names())
    base = tmp_path / "mirror"
    make_class_folders(base / "train", names[::2])
    make_class_folders(base / "test", names[1::2])
    train, test = Cars196(base, "train"), Cars196(base, "test")
    assert train.class_names == names[:98] and test.class_names == names[98:]
    assert len(train) == len(test) == 98 and set(test.labels.tolist()) == set(range(98))


def test_flat_folder_of_196_classes(tmp_path):
    names = [f"Class {i:03d}" for i in range(196)]
    make_class_folders(tmp_path, names)
    test = Cars196(tmp_path, "test")
    assert test.class_names == names[98:] and test.num_classes == 98
    assert test[0][0].mode == "RGB"
