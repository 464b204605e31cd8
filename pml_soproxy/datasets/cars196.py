"""Stanford Cars (Cars196): official ``cars_annos.mat`` or a class-folder mirror."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .base import (
    DatasetFormatError,
    ImageListDataset,
    Listing,
    find_one_dir,
    in_split,
    list_images,
    list_subdirs,
)
from .protocol import DatasetProtocol

NUM_CLASSES = 196
NUM_TRAIN_CLASSES = 98  # standard zero-shot split: classes 1-98 train, 99-196 test
FIELDS = ("relative_im_path", "class")
#: the standard split, for the protocol record
OFFICIAL_SPLIT = "class ids 1-98 train, 99-196 test (the test flag ignored)"
EXPECTED = (
    "either the official release (cars_annos.mat with its car_ims/ folder beside it) "
    "or a class-folder mirror: train/<class name>/ and test/<class name>/ (e.g. "
    "Kaggle's car_data/car_data/{train,test}/, optionally with names.csv giving the "
    "official class order), or a folder of exactly 196 class folders"
)


def _scalar(value):
    """Unwrap the nested 1-element arrays scipy.io.loadmat produces."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            if value.dtype.kind in "US" and value.ndim <= 1 and value.size == 0:
                return ""
            raise ValueError(f"expected one value, got an array of shape {value.shape}")
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        value = value.decode()
    return value


def parse_cars_annos(mat: dict, source: str = "cars_annos.mat"):
    """``(relative paths, class ids 1..196, test flags, class names)`` from a loaded mat.

    Works with ``scipy.io.loadmat`` output under any ``squeeze_me`` /
    ``struct_as_record`` setting. ``class_names`` is ``None`` when absent.
    """
    if "annotations" not in mat:
        raise DatasetFormatError(
            f"Cars196: {source} has no 'annotations' struct array; expected the official "
            "cars_annos.mat (fields relative_im_path, bbox_x1..bbox_y2, class, test)"
        )
    ann = np.atleast_1d(mat["annotations"]).reshape(-1)
    if ann.dtype.names is not None:
        get_field = lambda a, f: a[f] if f in ann.dtype.names else None  # noqa: E731
    else:  # struct_as_record=False: an object array of mat_struct
        get_field = lambda a, f: getattr(a, f, None)  # noqa: E731
    paths, classes, tests = [], [], []
    for i, a in enumerate(ann):
        values = {f: get_field(a, f) for f in FIELDS + ("test",)}
        for f in FIELDS:
            if values[f] is None:
                raise DatasetFormatError(
                    f"Cars196: {source}: annotations has no field {f!r}; expected fields "
                    "relative_im_path, bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, test"
                )
        try:
            rel = str(_scalar(values["relative_im_path"]))
            cls = int(_scalar(values["class"]))
            test = (
                bool(_scalar(values["test"])) if values["test"] is not None else False
            )
        except (ValueError, TypeError) as e:
            raise DatasetFormatError(
                f"Cars196: {source}: annotation {i + 1} is malformed ({e})"
            ) from None
        paths.append(rel)
        classes.append(cls)
        tests.append(test)
    names = None
    if "class_names" in mat:
        names = [str(_scalar(n)) for n in np.atleast_1d(mat["class_names"]).reshape(-1)]
    return paths, classes, tests, names


class Cars196(ImageListDataset):
    """Stanford Cars, standard zero-shot split: class ids 1-98 train, 99-196 test.

    Layouts, tried in this order (``root`` may be the dataset folder or a parent):

    1. Official: ``cars_annos.mat`` (struct array ``annotations`` with
       ``relative_im_path`` like ``car_ims/000001.jpg``, bbox, ``class`` 1..196,
       ``test``) and ``car_ims/`` beside it. The ``test`` flag (the
       classification split) is ignored: all 16,185 images are pooled and split
       by class.
    2. Class-folder mirror with ``train/`` and ``test/`` folders of class folders
       (Kaggle "stanford-car-dataset-by-classes-folder":
       ``car_data/car_data/{train,test}/<class name>/``). Both are pooled, then
       split by class index. If a ``names.csv`` (one official class name per
       line, in official order) sits in that folder or up to two levels above,
       the index of a folder is the line of its name (``/`` written as ``-``),
       as in pytorch-metric-learning's Cars196. Otherwise the
       mirror must hold all 196 classes and the index is the position in the
       sorted folder names: train = the first 98, test = the last 98. That equals
       the official 1-98 / 99-196 split: the official list is grouped by make in
       alphabetical make order and the 98/99 boundary ("Eagle Talon Hatchback
       1998" / "FIAT 500 Abarth 2012") falls between makes (checked against the
       official class list, case-sensitive or not).
    3. A folder holding exactly the 196 class folders (same sorted-name rule).

    Labels are 0-based in class-index order within the split; ``class_names``
    are the official names (layout 1, when the mat has them) or folder names.
    """

    protocol = DatasetProtocol("cars196", (1, 2, 4, 8), 4, OFFICIAL_SPLIT)
    expected = EXPECTED

    def read_split(self, root: Path, split: str) -> Listing:
        mat_dir = find_one_dir(
            self.name,
            root,
            lambda d: (d / "cars_annos.mat").is_file(),
            "cars_annos.mat",
            2,
        )
        if mat_dir is not None:
            base = mat_dir
            paths, classes, names = self._official(base / "cars_annos.mat")
            listed_in = base / "cars_annos.mat"
        else:
            base, paths, classes, names = self._mirror(root)
            listed_in = base
        keep = [
            i for i, c in enumerate(classes) if in_split(split, c <= NUM_TRAIN_CLASSES)
        ]
        return Listing(
            [paths[i] for i in keep],
            [classes[i] for i in keep],
            root=base,
            class_names=names,
            listed_in=listed_in,
        )

    @staticmethod
    def _official(mat_path: Path):
        from scipy.io import loadmat

        try:
            mat = loadmat(str(mat_path), squeeze_me=True)
        except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
            raise DatasetFormatError(
                f"Cars196: {mat_path} is a MATLAB v7.3 file, which scipy cannot read "
                f"({e}); expected the official cars_annos.mat"
            ) from None
        except Exception as e:
            raise DatasetFormatError(
                f"Cars196: cannot read {mat_path} ({e}); expected the official "
                "cars_annos.mat"
            ) from None
        rel, classes, _, class_names = parse_cars_annos(mat, str(mat_path))
        for i, c in enumerate(classes):
            if not 1 <= c <= NUM_CLASSES:
                raise DatasetFormatError(
                    f"Cars196: {mat_path}: annotation {i + 1} has class {c}, "
                    f"expected 1..{NUM_CLASSES}"
                )
        paths = [str(mat_path.parent / r) for r in rel]
        names = None
        if class_names:
            names = {i + 1: n for i, n in enumerate(class_names)}
        return paths, classes, names

    @classmethod
    def _mirror(cls, root: Path) -> Tuple[Path, List[str], List[int], Dict[int, str]]:
        split_dir = find_one_dir(
            "Cars196",
            root,
            lambda d: (d / "train").is_dir() and (d / "test").is_dir(),
            "train/ and test/",
            3,
        )
        if split_dir is not None:
            base = split_dir
            parts = [base / "train", base / "test"]
        else:
            sub = list_subdirs(str(root))
            if not sub or not all(list_images(str(root / s)) for s in sub):
                raise FileNotFoundError(
                    f"Cars196: no cars_annos.mat and no class-folder mirror found under "
                    f"{root}; expected {EXPECTED}"
                )
            base, parts = root, [root]

        folders: Dict[str, List[str]] = {}
        for part in parts:
            for cname in list_subdirs(str(part)):
                images = list_images(str(part / cname))
                if not images:
                    raise DatasetFormatError(
                        f"Cars196: class folder {part / cname} holds no images; "
                        f"expected {EXPECTED}"
                    )
                folders.setdefault(cname, []).extend(images)
        if not folders:
            raise DatasetFormatError(
                f"Cars196: {', '.join(str(p) for p in parts)} hold no class folders; "
                f"expected {EXPECTED}"
            )

        index = cls._class_index(base, folders)
        paths, classes = [], []
        for cname in sorted(folders, key=lambda f: index[f]):
            paths.extend(folders[cname])
            classes.extend([index[cname]] * len(folders[cname]))
        names = {index[f]: f for f in folders}
        return base, paths, classes, names

    @classmethod
    def _class_index(cls, base: Path, folders) -> Dict[str, int]:
        """Official class index (1..196) of each class folder: its line in
        names.csv, else its position among all 196 sorted folder names."""
        names_csv = cls._find_names_csv(base)
        if names_csv is not None:
            index = cls._read_names_csv(names_csv)
            unknown = sorted(set(folders) - set(index))
            if unknown:
                raise DatasetFormatError(
                    f"Cars196: class folder {unknown[0]!r} under {base} is not listed in "
                    f"{names_csv} ({len(unknown)} unknown folder(s)); expected folder "
                    "names equal to the names in names.csv with '/' written as '-'"
                )
        else:
            if len(folders) != NUM_CLASSES:
                raise DatasetFormatError(
                    f"Cars196: {base} holds {len(folders)} class folders (train and test "
                    f"pooled), but without names.csv the standard split needs all "
                    f"{NUM_CLASSES} classes, sorted by name (first {NUM_TRAIN_CLASSES} = "
                    "train); add names.csv or use the 'folder' dataset"
                )
            index = {f: i + 1 for i, f in enumerate(sorted(folders))}
        return index

    @staticmethod
    def _find_names_csv(base: Path) -> Optional[Path]:
        """names.csv in ``base`` or up to two levels above (Kaggle keeps it there)."""
        for d in (base, base.parent, base.parent.parent):
            if (d / "names.csv").is_file():
                return d / "names.csv"
        return None

    @staticmethod
    def _read_names_csv(path: Path) -> Dict[str, int]:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f]
        while names and not names[-1]:
            names.pop()
        index = {}
        for i, n in enumerate(names, start=1):
            if not n:
                raise DatasetFormatError(
                    f"Cars196: {path}, line {i}: empty class name; expected one official "
                    "class name per line"
                )
            index[n.replace("/", "-")] = i
        if len(index) != len(names):
            raise DatasetFormatError(f"Cars196: {path} lists a class name twice")
        return index
