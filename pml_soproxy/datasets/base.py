"""Shared machinery for the image datasets: base class, errors, list-file parsing."""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

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


class ImageLoadError(OSError):
    """An image file cannot be read, decoded or is over the pixel limit.

    The message is one line: ``"<dataset>: ... <path> ..."``. Raised by
    :func:`load_rgb`, which also sets ``path`` (the file) and ``reason`` (the
    message without dataset and path); both are ``None`` when built elsewhere.
    """

    path: Optional[str] = None
    reason: Optional[str] = None


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


def find_dataset_dir(
    dataset: str, root, marker: str, expected: str, max_depth: int = 2
) -> Path:
    """The folder holding ``marker``: ``root`` itself or one of its sub-folders.

    Lets ``root`` be the dataset folder or a parent of it. Several candidates at
    the same depth are refused as ambiguous.
    """
    root = check_root(dataset, root, expected)
    hits = find_dirs(root, lambda d: (d / marker).is_file(), max_depth)
    if not hits:
        raise FileNotFoundError(
            f"{dataset}: {root / marker} not found (nor in sub-folders of {root}); "
            f"expected {expected}"
        )
    if len(hits) > 1:
        raise DatasetFormatError(
            f"{dataset}: ambiguous root {root}: {marker} found in several folders "
            f"({', '.join(str(h) for h in hits)}); pass one of them as root"
        )
    return hits[0]


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


# Pillow's own default ``Image.MAX_IMAGE_PIXELS`` (1024 * 1024 * 1024 // 4 // 3),
# written out so that a process-wide change of that global does not move it.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# Only held while an image over Pillow's *global* bomb limit is decoded with that
# global check switched off (see ``load_rgb``); ordinary images never take it.
_BOMB_CHECK_LOCK = threading.Lock()

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_EIGHT_BIT_RAWMODES = ("1", "L", "P", "I;8", "I;8S")


def one_line(text) -> str:
    """``text`` with every run of whitespace (newlines, tabs) collapsed to a space."""
    return " ".join(str(text).split())


def show_path(path) -> str:
    """``path`` as text for a one-line message (``repr`` if it holds a line break)."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return path if path.isprintable() else repr(path)


def image_error(message: str, path=None, reason: Optional[str] = None):
    """An :class:`ImageLoadError` carrying ``path`` and ``reason`` attributes."""
    error = ImageLoadError(message)
    error.path = None if path is None else show_path(path)
    error.reason = reason
    return error


def check_max_pixels(value) -> Optional[int]:
    """``value`` as a pixel limit: ``None`` (no limit) or an integer >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"max_image_pixels must be an integer >= 1 or None (no limit), got {value!r}"
        )
    return int(value)


def set_max_image_pixels(dataset, limit: Optional[int]):
    """Set ``max_image_pixels`` on ``dataset`` and every dataset it wraps.

    Follows ``.dataset`` links (``ClassSubset``, ``SkipBadImages``...), so the
    limit reaches the :class:`ImageListDataset` that decodes the files whatever
    wraps it. Returns ``dataset``.
    """
    limit = check_max_pixels(limit)
    seen, node = set(), dataset
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, ImageListDataset):
            node.max_image_pixels = limit
        node = vars(node).get("dataset") if hasattr(node, "__dict__") else None
    return dataset


def _source_bits(im: Image.Image) -> Optional[int]:
    """Bits per sample of the file behind a lazily opened image, if known.

    Read from the decoder's raw mode (``im.tile``, so before the image is
    loaded): ``I;16B`` -> 16, ``L`` -> 8 ...; PPM/PGM with a maxval above 255
    count as 16 (Pillow rescales those to 0..65535); TIFF ``BitsPerSample``
    otherwise.
    """
    for tile in getattr(im, "tile", None) or ():
        codec, args = tile[0], tile[3]
        rawmode = args if isinstance(args, str) else None
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            rawmode = args[0]
        if codec == "ppm" and isinstance(args, tuple) and len(args) > 1:
            try:
                return 16 if int(args[1]) > 255 else 8
            except (TypeError, ValueError):
                pass
        if rawmode in _EIGHT_BIT_RAWMODES:
            return 8
        match = re.match(r"I;(\d+)", rawmode or "")
        if match:
            return int(match.group(1))
        break
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        bits = tags.get(258)
        if isinstance(bits, tuple) and bits:
            bits = bits[0]
        if isinstance(bits, int):
            return bits
    return None


def _scale_float(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if 0.0 <= lo and hi <= 1.0:
        scaled = values * 255.0
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:  # a constant image outside [0, 1]
        scaled = np.zeros(values.shape)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


def _scale_int(values: np.ndarray, bits: Optional[int]) -> np.ndarray:
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if bits is not None and bits <= 8 and 0 <= lo and hi <= 255:
        return values.astype(np.uint8)
    if 0 <= lo and hi <= 65535:  # exact integer round(v * 255 / 65535)
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if hi > lo:
        scaled = (values.astype(np.float64) - lo) * (255.0 / (hi - lo))
    else:  # a constant image outside 0..65535
        scaled = np.zeros(values.shape)
    return np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


def image_to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``im``, high-bit-depth and float data scaled properly.

    Pass the image straight from ``Image.open`` (not yet loaded): for mode
    ``I`` the file's bit depth is read from the decoder set-up. Rules:

    * ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit grey PNG/TIFF): values
      0..65535 times 255/65535, rounded.
    * ``I`` (32-bit integer container): from an 8-bit source with values in
      0..255, as is; otherwise values within 0..65535 times 255/65535 (a 16-bit
      PNG/PGM opened as ``I`` holds 0..65535, as do PGMs with a smaller maxval,
      which Pillow rescales to that range); anything else (negative or above
      65535, e.g. signed or 32-bit data) min-max scaled to 0..255.
    * ``F`` (float, e.g. float TIFF): finite values all in [0, 1] times 255,
      otherwise min-max over the finite values to 0..255; NaN and -inf give 0,
      +inf 255; a constant image outside [0, 1] becomes black.
    * ``P`` with transparency and ``PA`` go through ``RGBA``; every other mode
      (``1``, ``L``, ``LA``, ``RGBA``, ``CMYK``, ``YCbCr``...) through Pillow's
      ``convert("RGB")``; alpha is dropped, not composited. 16-bit RGB(A) and
      grey+alpha PNGs are already decoded by Pillow to 8 bits (the high byte,
      within one level of ``round(v * 255 / 65535)``).

    The result is grey replicated to three channels for single-channel input.
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        bits = 16 if mode != "I" else _source_bits(im)
        values = np.asarray(im)
        if values.ndim != 2:
            raise ValueError(f"unexpected array shape {values.shape} for mode {mode}")
        return Image.fromarray(_scale_int(values, bits)).convert("RGB")
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        return Image.fromarray(_scale_float(values)).convert("RGB")
    if mode == "PA" or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    return im.convert("RGB")


def _too_large(dataset: str, path, size, limit: int) -> ImageLoadError:
    width, height = size
    pixels = width * height
    reason = (
        f"{width}x{height} = {pixels:,} pixels exceeds the limit of {limit:,} pixels"
    )
    return image_error(
        f"{dataset}: image {show_path(path)} is too large: {reason}; raise the limit "
        "with the config key max_image_pixels (flag --max-image-pixels)",
        path,
        reason,
    )


def _open_rgb(path, dataset: str, max_pixels: Optional[int]) -> Image.Image:
    with Image.open(path) as im:  # lazy: only the header has been read
        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise _too_large(dataset, path, (width, height), max_pixels)
        return image_to_rgb(im)


def _failure_reason(path, error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError:
            head = None
        if head == b"":
            return "empty file (0 bytes)"
        return "not a recognised image format" + (
            f" (file starts with {head!r})" if head else ""
        )
    if isinstance(error, OSError) and error.strerror:
        return one_line(error.strerror)
    return one_line(error) or type(error).__name__


def load_rgb(
    path: str,
    dataset: str = "dataset",
    max_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Open ``path`` as a fully loaded 8-bit RGB PIL image (see :func:`image_to_rgb`).

    ``max_pixels`` (``None``: no limit) is checked against the header before
    anything is decoded. It replaces Pillow's decompression-bomb guard, whose
    process-wide ``Image.MAX_IMAGE_PIXELS`` is not consulted: its warning is
    silenced and an image it refuses is decoded with it switched off (under a
    lock, restored at once) when ``max_pixels`` allows it.

    Every failure raises :class:`ImageLoadError` with a one-line message that
    starts with ``dataset`` and names the file; ``.path`` and ``.reason`` hold
    the two parts.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                return _open_rgb(path, dataset, max_pixels)
            except Image.DecompressionBombError:
                pass  # over Pillow's global limit: ours decides, from the header
            with _BOMB_CHECK_LOCK:
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
                try:
                    return _open_rgb(path, dataset, max_pixels)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except ImageLoadError:
        raise
    except Exception as e:  # decoders raise OSError, SyntaxError, EOFError, ...
        reason = _failure_reason(path, e)
        raise image_error(
            f"{dataset}: cannot read image {show_path(path)}: {reason}", path, reason
        ) from e


class ImageListDataset(Dataset):
    """A list of image files with 0-based contiguous integer labels.

    Items are ``(image, label)``: ``image`` a PIL RGB image passed through
    ``transform`` when given, ``label`` an int. Attributes: ``paths``,
    ``labels`` (numpy int64), ``num_classes``, ``class_names``, ``split``, ``root``.

    ``max_image_pixels`` (default Pillow's default limit, 89,478,485; ``None``
    for no limit) refuses larger images in :meth:`load_image` with an
    :class:`ImageLoadError`. Set it on the instance (or with
    :func:`set_max_image_pixels`); it is pickled with the dataset, so DataLoader
    workers apply the same limit whatever their ``Image.MAX_IMAGE_PIXELS``.
    """

    splits: Tuple[str, ...] = ("train", "test", "all")
    max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS

    def __init__(
        self,
        paths: Sequence[str],
        raw_labels: Sequence,
        split: str,
        transform: Optional[Callable] = None,
        class_names: Optional[dict] = None,
        root=None,
        keys: Optional[Sequence] = None,
    ):
        if len(paths) == 0:
            raise DatasetFormatError(
                f"{type(self).__name__}: split {split!r} has no images under {root}"
            )
        self.paths = [str(p) for p in paths]
        self.labels, keys = contiguous_labels(raw_labels, keys)
        self.class_keys = keys
        self.class_names = (
            [str(class_names.get(k, k)) for k in keys]
            if class_names is not None
            else [str(k) for k in keys]
        )
        self.split = split
        self.transform = transform
        self.root = str(root) if root is not None else None

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def num_classes(self) -> int:
        return len(self.class_keys)

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> Image.Image:
        """The untransformed RGB image at ``index``; :class:`ImageLoadError` if bad."""
        return load_rgb(self.paths[index], self.name, self.max_image_pixels)

    def __getitem__(self, index: int):
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"{self.name}(split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes}, root={self.root!r})"
        )


class WrapsDataset(Dataset):
    """A dataset that wraps ``self.dataset`` and forwards every other attribute to it
    (``labels``, ``class_names``, ``paths`` ...). ``dataset`` is looked up in
    ``__dict__`` so that a half-built instance (unpickling, copy) raises
    AttributeError, not recursion."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        try:
            dataset = self.__dict__["dataset"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(dataset, name)
