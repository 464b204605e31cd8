"""DeepFashion In-Shop Clothes Retrieval from the official release files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (
    DatasetFormatError,
    ImageListDataset,
    Listing,
    check_header,
    read_lines,
    read_rows,
)
from .protocol import DatasetProtocol

HEADER = ("image_name", "item_id", "evaluation_status")
STATUSES = ("train", "query", "gallery")
EXPECTED = (
    "the official In-Shop Clothes Retrieval release: list_eval_partition.txt (line 1: "
    "image count, line 2: header 'image_name item_id evaluation_status', then rows "
    "'img/.../x.jpg id_00000002 train|query|gallery') and the img/ folder, either "
    "beside it or as Img/img/ next to Eval/list_eval_partition.txt"
)


class InShop(ImageListDataset):
    """In-Shop Clothes Retrieval, standard split.

    Splits ``"train"`` (3,997 items), ``"query"`` and ``"gallery"`` (3,985 items
    shared), and ``"all"``. Query and gallery use ONE label space, built over
    their union, so an item has the same label in both; train labels are 0-based
    over the train items. ``class_names`` are the item ids (``id_00000002``);
    ``evaluation_status`` holds each image's official status (``"train"``,
    ``"query"`` or ``"gallery"``, numpy strings), so that the list file is read once.
    Image paths are resolved against the list file's folder, its parent, or
    ``Img/`` beside ``Eval/`` (the first that holds the listed images).
    """

    splits = ("train", "query", "gallery", "all")
    protocol = DatasetProtocol(
        name="inshop",
        recall_at=(1, 10, 20, 30, 40),
        samples_per_class=2,
        official_split="3,997 training items train; the 3,985 test items' images "
        "split into query and gallery images",
        query_split="query",
        gallery_split="gallery",
    )
    expected = EXPECTED
    marker = "list_eval_partition.txt"

    def read_split(self, list_dir: Path, split: str) -> Listing:
        list_file = list_dir / "list_eval_partition.txt"
        rows = self._read_partition(list_file)
        # The label space: train alone, query+gallery together, or everything.
        space = {
            "train": ("train",),
            "query": ("query", "gallery"),
            "gallery": ("query", "gallery"),
            "all": STATUSES,
        }[split]
        keep = STATUSES if split == "all" else (split,)
        items = sorted({item for _, (_, item, st) in rows if st in space})

        image_dir = self._image_dir(list_dir, rows[0][1][0] if rows else "")
        paths, raw, lines, statuses = [], [], [], []
        for lineno, (rel, item, status) in rows:
            if status in keep:
                paths.append(str(image_dir / rel))
                raw.append(item)
                lines.append(lineno)
                statuses.append(status)
        self.evaluation_status = np.asarray(statuses, dtype=str)
        return Listing(
            paths, raw, root=image_dir, keys=items, listed_in=list_file, lines=lines
        )

    def _read_partition(self, list_file: Path):
        """The rows of ``list_eval_partition.txt``, count and header checked."""
        name = self.name
        head = read_lines(list_file, 2)
        try:
            count = int(head[0]) if head else None
        except ValueError:
            count = None
        if count is None:
            raise DatasetFormatError(
                f"{name}: {list_file}, line 1: expected the number of images, got "
                f"{(head[0] if head else '')!r}; expected {EXPECTED}"
            )
        check_header(name, list_file, 2, head[1] if len(head) > 1 else "", HEADER)
        rows = read_rows(name, list_file, HEADER, skip=2)
        if len(rows) != count:
            raise DatasetFormatError(
                f"{name}: {list_file}: line 1 announces {count} images but {len(rows)} "
                "rows follow the header"
            )
        for lineno, (_, _, status) in rows:
            if status not in STATUSES:
                raise DatasetFormatError(
                    f"{name}: {list_file}, line {lineno}: evaluation_status must be one "
                    f"of {', '.join(STATUSES)}, got {status!r}"
                )
        return rows

    @staticmethod
    def _image_dir(list_dir: Path, first: str) -> Path:
        for cand in (
            list_dir,
            list_dir.parent,
            list_dir.parent / "Img",
            list_dir / "Img",
        ):
            if first and (cand / first).exists():
                return cand
        return list_dir
