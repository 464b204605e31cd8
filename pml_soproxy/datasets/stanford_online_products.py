"""Stanford Online Products from the official release files."""

from __future__ import annotations

from pathlib import Path

from .base import (
    ImageListDataset,
    Listing,
    check_files_exist,
    check_header,
    contiguous_labels,
    parse_int,
    read_lines,
    read_rows,
    require_file,
)
from .protocol import DatasetProtocol

HEADER = ("image_id", "class_id", "super_class_id", "path")
#: the standard split, for the protocol record
OFFICIAL_SPLIT = (
    "Ebay_train.txt (11,318 classes) train, Ebay_test.txt (11,316 classes) test"
)
EXPECTED = (
    "the official Stanford_Online_Products release: Ebay_train.txt, Ebay_test.txt "
    "(header 'image_id class_id super_class_id path'), <category>_final/ image folders "
    "(root may be the Stanford_Online_Products folder or its parent)"
)


class StanfordOnlineProducts(ImageListDataset):
    """Stanford Online Products (Ebay), standard zero-shot split.

    Split ``"train"`` = ``Ebay_train.txt`` (11,318 classes), ``"test"`` =
    ``Ebay_test.txt`` (11,316 classes), ``"all"`` = both. Labels are 0-based in
    class-id order within the split; ``super_labels`` holds the 0-based
    super-class (category) of each image.
    """

    protocol = DatasetProtocol("sop", (1, 10, 100, 1000), 2, OFFICIAL_SPLIT)
    expected, marker = EXPECTED, "Ebay_train.txt"

    def read_split(self, base: Path, split: str) -> Listing:
        name = self.name
        files = ["Ebay_train.txt", "Ebay_test.txt"]
        if split != "all":
            files = [f"Ebay_{split}.txt"]
        paths, raw, supers = [], [], []
        for fname in files:  # missing images are reported per list file
            list_file = require_file(name, base / fname, EXPECTED)
            header = read_lines(list_file, 1)
            check_header(name, list_file, 1, header[0] if header else "", HEADER)
            rows = read_rows(name, list_file, HEADER, skip=1)
            file_paths, lines = [], []
            for lineno, (_, cls, sup, rel) in rows:
                raw.append(parse_int(name, list_file, lineno, "class_id", cls))
                supers.append(parse_int(name, list_file, lineno, "super_class_id", sup))
                file_paths.append(str(base / rel))
                lines.append(lineno)
            check_files_exist(name, file_paths, list_file, lines)
            paths.extend(file_paths)
        self.super_labels, _ = contiguous_labels(supers)
        return Listing(paths, raw)
