"""CUB-200-2011 from the official release files."""

from __future__ import annotations

from pathlib import Path

from .base import (
    DatasetFormatError,
    ImageListDataset,
    Listing,
    in_split,
    parse_int,
    read_rows,
    require_file,
)
from .protocol import DatasetProtocol

NUM_TRAIN_CLASSES = 100  # standard zero-shot split: class ids 1-100 train
#: the standard split, for the protocol record
OFFICIAL_SPLIT = "class ids 1-100 train, 101-200 test"
EXPECTED = (
    "the official CUB_200_2011 release: images.txt, image_class_labels.txt, images/ "
    "(root may be the CUB_200_2011 folder or its parent)"
)


class CUB200(ImageListDataset):
    """Caltech-UCSD Birds-200-2011, standard zero-shot split.

    Reads ``images.txt`` (``<image id> <class dir>/<file>``) and
    ``image_class_labels.txt`` (``<image id> <class id>``); images live in
    ``images/``. Split ``"train"`` = class ids 1-100, ``"test"`` = 101-200,
    ``"all"`` = every class. Labels are 0-based in class-id order within the split.
    """

    protocol = DatasetProtocol("cub200", (1, 2, 4, 8), 4, OFFICIAL_SPLIT)
    expected, marker = EXPECTED, "images.txt"

    def read_split(self, base: Path, split: str) -> Listing:
        name = self.name
        images_txt = base / "images.txt"
        labels_txt = require_file(name, base / "image_class_labels.txt", EXPECTED)

        images = {}
        for lineno, (img_id, rel) in read_rows(name, images_txt, ("image_id", "path")):
            img_id = parse_int(name, images_txt, lineno, "image_id", img_id)
            if img_id in images:
                raise DatasetFormatError(
                    f"{name}: {images_txt}, line {lineno}: duplicate image id {img_id}"
                )
            images[img_id] = (rel, lineno)
        classes = {}
        for lineno, (img_id, cls) in read_rows(
            name, labels_txt, ("image_id", "class_id")
        ):
            img_id = parse_int(name, labels_txt, lineno, "image_id", img_id)
            classes[img_id] = parse_int(name, labels_txt, lineno, "class_id", cls)
        if not images:
            raise DatasetFormatError(
                f"{name}: {images_txt} lists no images; expected {EXPECTED}"
            )

        paths, raw, lines, class_names = [], [], [], {}
        for img_id, (rel, lineno) in images.items():
            if img_id not in classes:
                raise DatasetFormatError(
                    f"{name}: image id {img_id} ({images_txt}, line {lineno}) has no "
                    f"class in {labels_txt}"
                )
            cls = classes[img_id]
            if not in_split(split, cls <= NUM_TRAIN_CLASSES):
                continue
            paths.append(str(base / "images" / rel))
            raw.append(cls)
            lines.append(lineno)
            class_names.setdefault(cls, rel.replace("\\", "/").split("/")[0])
        return Listing(
            paths, raw, class_names=class_names, listed_in=images_txt, lines=lines
        )
