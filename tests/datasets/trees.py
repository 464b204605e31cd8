"""Tiny on-disk trees in each official layout, built in a tmp folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io as sio
from PIL import Image

COLORS = {
    "RGB": (200, 30, 30),
    "L": 128,
    "CMYK": (10, 200, 30, 0),
    "P": 3,
    "RGBA": (1, 2, 3, 4),
}


def write_image(path: Path, mode: str = "RGB", size=(6, 5)) -> Path:
    """A tiny image in ``mode``; the format follows the extension (any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    fmt = {
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".png": "PNG",
        ".bmp": "BMP",
        ".webp": "WEBP",
    }[ext]
    Image.new(mode, size, COLORS[mode]).save(path, format=fmt)
    return path


def modes(n: int):
    """Cycle through colour modes so every tree holds grey and CMYK JPEGs."""
    cycle = ["RGB", "L", "CMYK"]
    return [cycle[i % len(cycle)] for i in range(n)]


def make_cub(tmp: Path, class_ids=(1, 2, 101, 102), per_class: int = 3) -> Path:
    """``tmp/CUB_200_2011`` with images.txt, image_class_labels.txt, classes.txt, images/."""
    base = tmp / "CUB_200_2011"
    images, labels, classes = [], [], []
    img_id = 1
    for c in class_ids:
        cdir = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {cdir}")
        for k, mode in enumerate(modes(per_class)):
            rel = f"{cdir}/Bird_{c}_{k:04d}.jpg"
            write_image(base / "images" / rel, mode)
            images.append(f"{img_id} {rel}")
            labels.append(f"{img_id} {c}")
            img_id += 1
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text("\n".join(classes) + "\n")
    return base


def make_sop(tmp: Path) -> Path:
    """``tmp/Stanford_Online_Products`` with Ebay_train.txt / Ebay_test.txt and .JPG files."""
    base = tmp / "Stanford_Online_Products"
    spec = {
        "train": [(1, 1, "bicycle"), (2, 1, "bicycle"), (3, 2, "chair")],
        "test": [(4, 1, "bicycle"), (5, 2, "chair")],
    }
    img_id = 1
    for split, classes in spec.items():
        lines = ["image_id class_id super_class_id path"]
        for cls, sup, cat in classes:
            for k, mode in enumerate(modes(2)):
                rel = f"{cat}_final/{cls}{k:02d}_{k}.JPG"
                write_image(base / rel, mode)
                lines.append(f"{img_id} {cls} {sup} {rel}")
                img_id += 1
        (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return base


INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
    ("img/MEN/Denim/id_00000007/01_1_front.jpg", "id_00000007", "train"),
    ("img/WOMEN/Blouses/id_00000010/01_1_front.jpg", "id_00000010", "query"),
    ("img/WOMEN/Blouses/id_00000010/01_2_side.jpg", "id_00000010", "gallery"),
    ("img/WOMEN/Blouses/id_00000010/01_3_back.jpg", "id_00000010", "gallery"),
    ("img/MEN/Tees/id_00000005/01_1_front.jpg", "id_00000005", "query"),
    ("img/MEN/Tees/id_00000005/01_2_side.jpg", "id_00000005", "gallery"),
    ("img/MEN/Tees/id_00000003/01_1_front.jpg", "id_00000003", "gallery"),
]


def inshop_text(rows=INSHOP_ROWS, count=None) -> str:
    lines = [str(len(rows) if count is None else count)]
    lines.append("image_name item_id evaluation_status")
    lines += [f"{p}    {i}    {s}" for p, i, s in rows]  # the real file pads columns
    return "\n".join(lines) + "\n"


def make_inshop(tmp: Path, official: bool = False) -> Path:
    """In-Shop: ``list_eval_partition.txt`` + ``img/`` together, or the official
    ``Eval/list_eval_partition.txt`` + ``Img/img/`` layout when ``official``."""
    base = tmp / "InShop"
    list_dir = base / "Eval" if official else base
    image_dir = base / "Img" if official else base
    for (rel, _, _), mode in zip(INSHOP_ROWS, modes(len(INSHOP_ROWS))):
        write_image(image_dir / rel, mode)
    list_dir.mkdir(parents=True, exist_ok=True)
    (list_dir / "list_eval_partition.txt").write_text(inshop_text())
    return base


CARS_FIELDS = (
    "relative_im_path",
    "bbox_x1",
    "bbox_y1",
    "bbox_x2",
    "bbox_y2",
    "class",
    "test",
)


def cars_annotations(entries):
    """A 1xN struct array like the official ``annotations`` (nested MATLAB arrays)."""
    ann = np.zeros((1, len(entries)), dtype=[(f, "O") for f in CARS_FIELDS])
    for i, (rel, cls, test) in enumerate(entries):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 1, 5, 4)]
        ann[0, i] = (
            np.array([rel]),
            *box,
            np.array([[cls]], dtype=np.uint8),
            np.array([[test]], dtype=np.uint8),
        )
    return ann


def make_cars_official(
    tmp: Path, class_ids=(1, 2, 99, 100), per_class: int = 3
) -> Path:
    """``tmp/stanford_cars`` with ``cars_annos.mat`` (scipy.io.savemat) and ``car_ims/``."""
    base = tmp / "stanford_cars"
    entries, n = [], 1
    for c in class_ids:
        for k, mode in enumerate(modes(per_class)):
            rel = f"car_ims/{n:06d}.jpg"
            write_image(base / rel, mode)
            entries.append((rel, c, k % 2))
            n += 1
    names = np.empty((1, 196), dtype=object)
    names[0, :] = [f"Make{i:03d} Model {i}" for i in range(1, 197)]
    sio.savemat(
        str(base / "cars_annos.mat"),
        {"annotations": cars_annotations(entries), "class_names": names},
    )
    return base


def kaggle_names(n: int = 196):
    """Official-style names in a deliberately non-alphabetical order, one with '/'."""
    names = [f"Make {(3 * i) % n:03d} Model" for i in range(n)]
    names[5] = "Ram C/V Cargo Van Minivan 2012"
    return names


def make_cars_kaggle(
    tmp: Path, class_ids=(1, 2, 6, 99, 100), per_class: int = 2, names_csv=True
) -> Path:
    """Kaggle mirror: names.csv + ``car_data/car_data/{train,test}/<class name>/``."""
    base = tmp / "stanford-car-dataset-by-classes-folder"
    names = kaggle_names()
    n = 0
    for c in class_ids:
        folder = names[c - 1].replace("/", "-")
        for part in ("train", "test"):
            for k in range(per_class):
                n += 1
                write_image(
                    base / "car_data" / "car_data" / part / folder / f"{n:05d}.jpg"
                )
    if names_csv:
        (base / "names.csv").write_text("\n".join(names) + "\n")
    return base


def make_class_folders(
    root: Path, names, per_class: int = 1, ext: str = ".jpg"
) -> Path:
    for i, name in enumerate(names):
        for k in range(per_class):
            write_image(root / name / f"img_{k}{ext}", modes(per_class + i)[k])
    return root
