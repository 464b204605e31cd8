"""create_dataset: build by name."""

import pytest

from pml_soproxy.datasets import (
    CUB200,
    DATASETS,
    Cars196,
    Digits,
    ImageFolder,
    InShop,
    StanfordOnlineProducts,
    create_dataset,
)

from .trees import make_class_folders, make_cub


def test_names():
    assert DATASETS == {
        "cub200": CUB200,
        "cars196": Cars196,
        "sop": StanfordOnlineProducts,
        "inshop": InShop,
        "folder": ImageFolder,
        "digits": Digits,
    }


def test_create(tmp_path):
    cub = make_cub(tmp_path)
    ds = create_dataset("CUB-200", tmp_path, "test", transform=lambda im: 1)
    assert isinstance(ds, CUB200) and ds.root == str(cub) and ds[0] == (1, 0)
    make_class_folders(tmp_path / "f", ["a", "b", "c", "d"])
    assert (
        create_dataset(
            "folder", tmp_path / "f", "train", train_fraction=0.75
        ).num_classes
        == 3
    )
    assert create_dataset("digits", None, "test").num_classes == 5


def test_unknown_name():
    with pytest.raises(
        ValueError,
        match="unknown dataset 'mnist'; available: cars196, cub200, digits, folder, inshop, sop",
    ):
        create_dataset("mnist", None, "train")
