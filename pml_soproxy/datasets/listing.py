"""Finding a dataset on disk and reading its list files: folders, rows, headers,
integers, missing images, contiguous labels. Every error names the dataset, the
file and the line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".png",
    ".bmp",
    ".webp",
    ".gif",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)


class DatasetFormatError(ValueError):
    """A list file or folder tree does not have the expected layout."""


def is_image_file(name: str) -> bool:
    """True for a non-hidden file name with a known image extension (any case)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str) -> List[str]:
    """Sorted image files directly inside ``folder`` (full paths)."""
    with os.scandir(folder) as it:
        names = [e.name for e in it if is_image_file(e.name) and e.is_file()]
    return [os.path.join(folder, n) for n in sorted(names)]


def list_subdirs(folder: str) -> List[str]:
    """Sorted names of the non-hidden sub-folders of ``folder``."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def check_split(dataset: str, split: str, valid: Sequence[str]) -> str:
    if split not in valid:
        raise ValueError(
            f"{dataset}: unknown split {split!r}; valid splits: "
            + ", ".join(repr(s) for s in valid)
        )
    return split


def check_root(dataset: str, root, expected: str) -> Path:
    if root is None or not os.path.isdir(root):
        what = (
            "is not a folder"
            if root is not None and os.path.exists(root)
            else "does not exist"
        )
        raise FileNotFoundError(
            f"{dataset}: root folder {root} {what}; expected {expected}"
        )
    return Path(root).resolve()


def find_dirs(
    root: Path, predicate: Callable[[Path], bool], max_depth: int = 2
) -> List[Path]:
    """Folders satisfying ``predicate`` at the shallowest depth (0 = root) that has any."""
    level = [root]
    for _ in range(max_depth + 1):
        hits = [d for d in level if predicate(d)]
        if hits:
            return hits
        level = [d / name for d in level for name in list_subdirs(str(d))]
    return []


def find_one_dir(
    dataset: str, root: Path, predicate: Callable[[Path], bool], what: str, depth: int
) -> Optional[Path]:
    """The one folder (``root`` or below) satisfying ``predicate``, or ``None``;
    several at the shallowest depth are refused as ambiguous (``what`` found in...)."""
    hits = find_dirs(root, predicate, depth)
    if len(hits) > 1:
        raise DatasetFormatError(
            f"{dataset}: ambiguous root {root}: {what} found in several folders "
            f"({', '.join(str(h) for h in hits)}); pass one of them as root"
        )
    return hits[0] if hits else None


def find_dataset_dir(
    dataset: str, root, marker: str, expected: str, max_depth: int = 2
) -> Path:
    """The folder holding ``marker``: ``root`` itself or one of its sub-folders.

    Lets ``root`` be the dataset folder or a parent of it. Several candidates at
    the same depth are refused as ambiguous.
    """
    root = check_root(dataset, root, expected)
    found = find_one_dir(
        dataset, root, lambda d: (d / marker).is_file(), marker, max_depth
    )
    if found is None:
        raise FileNotFoundError(
            f"{dataset}: {root / marker} not found (nor in sub-folders of {root}); "
            f"expected {expected}"
        )
    return found


def require_file(dataset: str, path: Path, expected: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: {path} not found; expected {expected}")
    return path


def read_rows(
    dataset: str,
    path: Path,
    columns: Sequence[str],
    skip: int = 0,
) -> List[Tuple[int, List[str]]]:
    """Whitespace-separated rows of ``path`` as ``(line_number, tokens)``.

    The first ``skip`` lines are left out, blank lines are ignored, and any row
    without exactly ``len(columns)`` fields raises, naming file and line.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno <= skip or not line.strip():
                continue
            tokens = line.split()
            if len(tokens) != len(columns):
                raise DatasetFormatError(
                    f"{dataset}: {path}, line {lineno}: expected {len(columns)} "
                    f"columns ({' '.join(columns)}), got {len(tokens)}: {line.strip()!r}"
                )
            rows.append((lineno, tokens))
    return rows


def read_lines(path: Path, n: int) -> List[str]:
    """The first ``n`` lines of ``path`` (stripped; fewer if the file is shorter)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(line.strip())
            if len(out) == n:
                break
    return out


def check_header(
    dataset: str, path: Path, lineno: int, line: str, header: Sequence[str]
):
    if [t.lower() for t in line.split()] != [h.lower() for h in header]:
        raise DatasetFormatError(
            f"{dataset}: {path}, line {lineno}: expected the header "
            f"{' '.join(header)!r}, got {line!r}"
        )


def parse_int(dataset: str, path: Path, lineno: int, column: str, token: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise DatasetFormatError(
            f"{dataset}: {path}, line {lineno}: {column} must be an integer, got {token!r}"
        ) from None


def check_files_exist(
    dataset: str, paths: Sequence[str], listed_in, where: Optional[Sequence[int]] = None
):
    """One ``os.path.exists`` pass; raise naming the first missing file and the count."""
    missing = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    if missing:
        i = missing[0]
        line = f" (line {where[i]})" if where is not None else ""
        raise FileNotFoundError(
            f"{dataset}: {len(missing)} image(s) listed in {listed_in} are missing, "
            f"e.g. {paths[i]}{line}"
        )


def contiguous_labels(
    raw: Iterable, keys: Optional[Sequence] = None
) -> Tuple[np.ndarray, list]:
    """Map raw class keys to 0-based labels in ``keys`` order (default: sorted keys)."""
    raw = list(raw)
    keys = sorted(set(raw)) if keys is None else list(keys)
    index = {k: i for i, k in enumerate(keys)}
    return np.asarray([index[r] for r in raw], dtype=np.int64), keys
