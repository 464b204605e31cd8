"""Decoded training images kept in memory or in a memory-mapped file.

Decoding a JPEG costs more than augmenting it: for small datasets (CUB, Cars) the
decoded images, shrunk once so that their shorter side is ``short_side`` pixels,
fit in memory (CUB's 5,994 training images at 256 px: about 1.5 GB as uint8), and
the per-epoch work is left to the random augmentation alone. Hand-written: torch,
timm and PML have no image cache of this kind (FFCV and DALI are whole pipelines
of their own, with their own file formats and augmentations).

What the cache changes, exactly: each image is decoded once (``load_image`` of the
wrapped dataset: RGB, the pixel limit) and, when its shorter side is longer than
``short_side``, resized with Pillow (``interpolation``, bicubic for the DeiT
transforms; Pillow antialiases when shrinking) so that its shorter side is
``short_side`` and its aspect ratio is kept (the longer side rounded to the nearest
pixel). Images whose shorter side is ``short_side`` or less are stored exactly as
decoded. The training transform then runs on the stored image at every draw, with
fresh random parameters, as it would on the decoded file. A random-resized crop
draws its box relative to the image size, so the distribution of crops is the same;
the crop is cut from the shrunk image, so a crop whose side is larger than the
output (224 px) in the shrunk image loses nothing, a smaller one is upsampled
from fewer pixels than the original had (a crop of 8 % of the area of a 500 x 375
CUB image has a side of about 122 px in the original, 83 px at 256 px). Nothing
else changes: labels, order, the images that fail to load (their error is kept
and raised at every access, so ``SkipBadImages`` records and substitutes them as
without the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .base import ImageLoadError, WrapsDataset, image_error

CACHE_MODES = ("none", "memory", "mmap")
FORMAT_VERSION = 1
INTERPOLATIONS = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}


def shrink(image: Image.Image, short_side: int, interpolation: str = "bicubic"):
    """``image`` resized so that its shorter side is ``short_side`` (never enlarged)."""
    width, height = image.size
    shorter = min(width, height)
    if shorter <= short_side:
        return image
    scale = short_side / shorter
    if width <= height:
        size = (short_side, max(1, round(height * scale)))
    else:
        size = (max(1, round(width * scale)), short_side)
    return image.resize(size, INTERPOLATIONS[interpolation])


class _Decode(Dataset):
    """What a worker returns for index i: ``(i, uint8 HxWx3 array, None)`` or
    ``(i, None, (message, path, reason))`` for an image that cannot be loaded."""

    def __init__(self, dataset, short_side: int, interpolation: str):
        self.dataset = dataset
        self.short_side = short_side
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image = self.dataset.load_image(index)
        except ImageLoadError as e:
            return index, None, (str(e), e.path, e.reason)
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = shrink(image, self.short_side, self.interpolation)
        return index, np.ascontiguousarray(np.asarray(image, dtype=np.uint8)), None


def _as_is(item):
    return item


def cache_key(dataset, short_side: int, interpolation: str, extra: Dict) -> str:
    """What the cached pixels depend on: each file's path, size and modification
    time (a path that is no file, e.g. the built-in digits, by name only), the
    size and interpolation, ``extra`` (e.g. the pixel limit) and the format."""
    items: List[Any] = []
    for path in getattr(dataset, "paths", None) or range(len(dataset)):
        try:
            st = os.stat(path)
            items.append([str(path), st.st_size, st.st_mtime_ns])
        except (OSError, TypeError, ValueError):
            items.append([str(path)])
    text = json.dumps([FORMAT_VERSION, short_side, interpolation, extra, items])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class DecodedImageCache(WrapsDataset):
    """``dataset`` with its images decoded once and kept as uint8 pixels.

    ``self[i]`` is ``(transform(image), label)`` where ``image`` is
    ``load_image(i)``: ``dataset.load_image(i)`` shrunk by :func:`shrink`, read from
    the cache. ``mode`` ``"memory"`` keeps one uint8 tensor (shared with the
    DataLoader workers: copy-on-write after fork, shared memory otherwise);
    ``"mmap"`` writes it to ``folder/<key>.u8`` with an index ``<key>.json``
    (atomically, reused by any later cache of the same images and settings; the
    workers map the file, nothing is pickled). Every other attribute (``labels``,
    ``num_classes``, ``class_names``, ``paths``, ``split``) is the wrapped dataset's.
    The build decodes with ``num_workers`` processes and a progress bar.
    """

    def __init__(
        self,
        dataset,
        short_side: int = 256,
        mode: str = "memory",
        folder: Optional[str] = None,
        interpolation: str = "bicubic",
        transform=None,
        num_workers: int = 0,
        key_extra: Optional[Dict] = None,
        progress: bool = True,
    ):
        if mode not in ("memory", "mmap"):
            raise ValueError(f"cache mode must be memory or mmap, got {mode!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"cache interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {interpolation!r}"
            )
        if mode == "mmap" and folder is None:
            raise ValueError("an mmap image cache needs a folder")
        self.dataset = dataset
        self.short_side = int(short_side)
        self.mode = mode
        self.interpolation = interpolation
        self.transform = transform
        self.errors: Dict[int, Tuple[str, Optional[str], Optional[str]]] = {}
        self.path: Optional[str] = None
        self.reused = False
        if mode == "memory":
            self._build_in_memory(num_workers, progress)
        else:
            key = cache_key(dataset, self.short_side, interpolation, key_extra or {})
            self.path = os.path.join(os.path.abspath(folder), f"{key}.u8")
            self._open_or_build_file(num_workers, progress)

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.mode == "mmap":
            state["pixels"] = None  # each worker maps the file itself
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    # ------------------------------------------------------------------ build
    def _decoded(self, num_workers: int, progress: bool):
        import tqdm

        loader = DataLoader(
            _Decode(self.dataset, self.short_side, self.interpolation),
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
            generator=torch.Generator(),  # leaves the global random stream alone
        )
        bar = tqdm.tqdm(loader, desc="caching images", unit="img",
                        disable=not progress, leave=False)  # fmt: skip
        for index, pixels, error in bar:
            if error is not None:
                self.errors[index] = error
            yield index, pixels

    def _set_index(self, shapes: List[Tuple[int, int]]):
        self.shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 2)
        sizes = self.shapes[:, 0] * self.shapes[:, 1] * 3
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def _build_in_memory(self, num_workers: int, progress: bool):
        arrays: List[Optional[np.ndarray]] = []
        for _, pixels in self._decoded(num_workers, progress):
            arrays.append(pixels)
        self._set_index([a.shape[:2] if a is not None else (0, 0) for a in arrays])
        self.pixels = torch.empty(int(self.offsets[-1]), dtype=torch.uint8)
        flat = self.pixels.numpy()
        for i in range(len(arrays)):  # copy and free one at a time: ~1x the memory
            if arrays[i] is not None:
                flat[self.offsets[i] : self.offsets[i + 1]] = arrays[i].reshape(-1)
            arrays[i] = None

    def _open_or_build_file(self, num_workers: int, progress: bool):
        from ..training.checkpoints import atomic_write, atomic_write_json

        index_path = self.path[: -len(".u8")] + ".json"
        index = self._read_index(index_path)
        if index is None:
            shapes: List[Tuple[int, int]] = []

            def write(tmp):
                with open(tmp, "wb") as f:
                    for _, pixels in self._decoded(num_workers, progress):
                        shapes.append(
                            pixels.shape[:2] if pixels is not None else (0, 0)
                        )
                        if pixels is not None:
                            f.write(pixels.tobytes())

            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                atomic_write(self.path, write)
                index = {"format": FORMAT_VERSION, "images": len(self.dataset),
                         "shapes": [list(map(int, s)) for s in shapes],
                         "errors": {str(i): list(e) for i, e in self.errors.items()}}  # fmt: skip
                atomic_write_json(index_path, index)
            except OSError as err:
                raise OSError(
                    f"cannot write the image cache {self.path}: "
                    f"{err.strerror or err}; free some space there, pass another "
                    "cache_dir, or use cache_images memory"
                ) from None
        else:
            self.reused = True
        self.errors = {int(i): tuple(e) for i, e in index["errors"].items()}
        self._set_index([tuple(s) for s in index["shapes"]])
        self.pixels = None

    def _read_index(self, index_path: str) -> Optional[Dict]:
        """A finished cache of these images (same key), else None."""
        try:
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f)
            size = os.path.getsize(self.path)
        except (OSError, ValueError):
            return None
        if (
            not isinstance(index, dict)
            or index.get("format") != FORMAT_VERSION
            or index.get("images") != len(self.dataset)
        ):
            return None
        shapes = np.asarray(index["shapes"], dtype=np.int64).reshape(-1, 2)
        if int((shapes[:, 0] * shapes[:, 1] * 3).sum()) != size:
            return None
        return index

    # ------------------------------------------------------------------- read
    def _flat(self) -> np.ndarray:
        if self.mode == "memory":
            return self.pixels.numpy()
        if self.pixels is None:
            self.pixels = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self.pixels

    def __len__(self) -> int:
        return len(self.dataset)

    def pixels_of(self, index: int) -> np.ndarray:
        """The stored HxWx3 uint8 pixels of ``index`` (a copy)."""
        index = int(index)
        if index in self.errors:
            raise image_error(*self.errors[index])
        height, width = self.shapes[index]
        start, stop = self.offsets[index], self.offsets[index + 1]
        return np.array(self._flat()[start:stop]).reshape(height, width, 3)

    def load_image(self, index: int) -> Image.Image:
        """The cached RGB image; the image's :class:`ImageLoadError` if it had one."""
        return Image.fromarray(self.pixels_of(index))

    def __getitem__(self, index: int):
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        where = f", path={self.path!r}" if self.path else ""
        return (
            f"DecodedImageCache({self.dataset!r}, short_side={self.short_side}, "
            f"mode={self.mode!r}{where})"
        )
