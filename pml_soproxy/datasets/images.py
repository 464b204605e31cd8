"""Decoding one image file into an 8-bit RGB PIL image: bit depths, float data,
palettes, the pixel limit, and one-line errors that name the file."""

from __future__ import annotations

import os
import re
import threading
import warnings
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageLoadError(OSError):
    """An image file cannot be read, decoded or is over the pixel limit.

    The message is one line: ``"<dataset>: ... <path> ..."``. Raised by
    :func:`load_rgb`, which also sets ``path`` (the file) and ``reason`` (the
    message without dataset and path); both are ``None`` when built elsewhere.
    """

    path: Optional[str] = None
    reason: Optional[str] = None


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
