"""InShop on a tiny tree: two header lines, train / query / gallery rows."""

import re

import pytest

from pml_soproxy.datasets import DatasetFormatError, InShop

from .helpers import assert_well_formed
from .trees import INSHOP_ROWS, inshop_text, make_inshop


@pytest.fixture
def inshop(tmp_path):
    return make_inshop(tmp_path)


def test_train(inshop):
    ds = InShop(inshop, "train")
    assert_well_formed(ds, 3, 2)
    assert ds.class_names == ["id_00000002", "id_00000007"]


def test_query_gallery_share_one_label_space(inshop):
    query, gallery = InShop(inshop, "query"), InShop(inshop, "gallery")
    assert len(query) == 2 and len(gallery) == 4
    # items over query U gallery: id_00000003 (gallery only), id_00000005, id_00000010
    assert (
        query.class_names
        == gallery.class_names
        == ["id_00000003", "id_00000005", "id_00000010"]
    )
    assert query.num_classes == gallery.num_classes == 3
    item_of = {p: i for p, i, _ in INSHOP_ROWS}
    for ds in (query, gallery):
        for path, label in zip(ds.paths, ds.labels):
            item = item_of[path.split("InShop/", 1)[1]]
            assert ds.class_names[label] == item
    assert query.labels.tolist() == [2, 1]
    assert gallery.labels.tolist() == [2, 2, 1, 0]
    for i in range(len(query)):
        assert query[i][0].mode == "RGB"


def test_all(inshop):
    assert_well_formed(InShop(inshop, "all"), len(INSHOP_ROWS), 5)


def test_official_eval_img_layout(tmp_path):
    base = make_inshop(tmp_path, official=True)
    for root in (base, base / "Eval", tmp_path):
        ds = InShop(root, "gallery")
        assert len(ds) == 4 and ds.paths[0].startswith(str(base / "Img" / "img"))


def test_unknown_split(inshop):
    with pytest.raises(ValueError, match="'train', 'query', 'gallery', 'all'"):
        InShop(inshop, "test")


def test_first_line_not_a_count(inshop):
    f = inshop / "list_eval_partition.txt"
    f.write_text("\n".join(f.read_text().splitlines()[1:]))
    with pytest.raises(
        DatasetFormatError,
        match=r"list_eval_partition\.txt, line 1: expected the number of images",
    ):
        InShop(inshop, "train")


def test_missing_header(inshop):
    f = inshop / "list_eval_partition.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join([lines[0]] + lines[2:]))
    with pytest.raises(
        DatasetFormatError,
        match=r"list_eval_partition\.txt, line 2: expected the header 'image_name item_id evaluation_status'",
    ):
        InShop(inshop, "train")


def test_count_mismatch(inshop):
    (inshop / "list_eval_partition.txt").write_text(inshop_text(count=99))
    with pytest.raises(
        DatasetFormatError,
        match=r"list_eval_partition\.txt: line 1 announces 99 images but 9 rows",
    ):
        InShop(inshop, "train")


def test_bad_status(inshop):
    rows = list(INSHOP_ROWS)
    rows[4] = (rows[4][0], rows[4][1], "test")
    (inshop / "list_eval_partition.txt").write_text(inshop_text(rows))
    with pytest.raises(
        DatasetFormatError,
        match=r"list_eval_partition\.txt, line 7: evaluation_status must be one of train, query, gallery, got 'test'",
    ):
        InShop(inshop, "train")


def test_wrong_column_count(inshop):
    rows = [r[:2] for r in INSHOP_ROWS]
    text = "9\nimage_name item_id evaluation_status\n" + "\n".join(
        " ".join(r) for r in rows
    )
    (inshop / "list_eval_partition.txt").write_text(text)
    with pytest.raises(
        DatasetFormatError,
        match=r"list_eval_partition\.txt, line 3: expected 3 columns",
    ):
        InShop(inshop, "train")


def test_missing_list_file(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"x/list_eval_partition\.txt not found.*img/"
    ):
        InShop(tmp_path / "x", "train")


def test_listed_image_absent(inshop):
    victim = inshop / INSHOP_ROWS[7][0]
    victim.unlink()
    InShop(inshop, "query")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{victim} (line 10)")):
        InShop(inshop, "gallery")


@pytest.mark.parametrize("split", ["train", "query", "gallery", "all"])
def test_evaluation_status_of_each_image(inshop, split):
    ds = InShop(inshop, split)
    expected = [s for _, _, s in INSHOP_ROWS if split in ("all", s)]
    assert ds.evaluation_status.tolist() == expected
    assert len(ds.evaluation_status) == len(ds)
