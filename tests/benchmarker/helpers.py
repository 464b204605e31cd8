"""Shared by the powerful-benchmarker tests: availability check, trees, records."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from pathlib import Path
from typing import Dict, List

import pytest

from ..datasets.trees import inshop_text, make_cars_official, make_cub, write_image

#: Modules powerful-benchmarker needs at run time (requirements/benchmarker.txt).
NEEDED = (
    "powerful_benchmarker",
    "easy_module_attribute_getter",
    "pretrainedmodels",
    "six",
    "gdown",
    "pandas",
    "tensorboard",
)
INSTALL = (
    "pip install -r requirements/benchmarker.txt && "
    "pip install --no-deps powerful-benchmarker==0.9.33"
)


def require_benchmarker():
    """Skip the calling test module when powerful-benchmarker (or one of its
    dependencies) is missing; in CI (``CI`` set) fail instead, so that CI cannot
    silently stop running these tests."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"powerful-benchmarker tests need {', '.join(missing)}: {INSTALL}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


#############
### trees ###
#############

N_CLASSES = 8  # 4 test classes + 4 for 2 class-disjoint folds
PER_CLASS = 4


def make_sop(tmp: Path) -> Path:
    """``tmp/Stanford_Online_Products``: Ebay_train.txt (classes 1-4) and
    Ebay_test.txt (5-8), 4 images each, in ``<category>_final/`` folders."""
    base = tmp / "Stanford_Online_Products"
    image_id = 1
    for split, classes in (("train", range(1, 5)), ("test", range(5, 9))):
        lines = ["image_id class_id super_class_id path"]
        for cls in classes:
            category = ("bicycle", "chair")[cls % 2]
            for k in range(PER_CLASS):
                rel = f"{category}_final/{cls}_{k}.JPG"
                write_image(base / rel, ("RGB", "L")[k % 2])
                lines.append(f"{image_id} {cls} {cls % 2 + 1} {rel}")
                image_id += 1
        (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def make_inshop(tmp: Path) -> Path:
    """``tmp/InShop`` in the official layout (``Eval/list_eval_partition.txt``,
    ``Img/img/...``): 4 training items x 4 images, 4 test items with 1 query and
    3 gallery images each."""
    base = tmp / "InShop"
    rows = []
    for item in range(1, 9):
        item_id = f"id_{item:08d}"
        for k in range(PER_CLASS):
            rel = f"img/WOMEN/Dresses/{item_id}/{k + 1:02d}_{k + 1}_front.jpg"
            status = "train" if item <= 4 else ("query" if k == 0 else "gallery")
            rows.append((rel, item_id, status))
            write_image(base / "Img" / rel, ("RGB", "L", "CMYK")[k % 3])
    (base / "Eval").mkdir(parents=True, exist_ok=True)
    (base / "Eval" / "list_eval_partition.txt").write_text(inshop_text(rows))
    return base


def make_tree(dataset: str, tmp: Path) -> Path:
    """A small tree of ``dataset`` in its official layout under ``tmp``."""
    ids = range(1, N_CLASSES + 1)
    if dataset == "cub200":
        return make_cub(tmp, class_ids=ids, per_class=PER_CLASS)
    if dataset == "cars196":
        return make_cars_official(tmp, class_ids=ids, per_class=PER_CLASS)
    if dataset == "sop":
        return make_sop(tmp)
    if dataset == "inshop":
        return make_inshop(tmp)
    raise ValueError(dataset)


###############
### records ###
###############


def read_tables(csv_folder: Path) -> Dict[str, List[dict]]:
    """Every table of ``csv_folder/logs.db`` as a list of row dicts."""
    conn = sqlite3.connect(str(Path(csv_folder) / "logs.db"))
    conn.row_factory = sqlite3.Row
    try:
        names = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if r[0] != "sqlite_sequence"
        ]
        return {
            n: [dict(r) for r in conn.execute(f"SELECT * FROM [{n}] ORDER BY id")]
            for n in names
        }
    finally:
        conn.close()
