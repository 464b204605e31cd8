"""Decoding to 8-bit RGB: bit depths, float data, pixel limit, unreadable files.

References are computed here with numpy from the values written, never by Pillow.
"""

import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from pml_soproxy.datasets import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ClassSubset,
    ImageFolder,
    ImageLoadError,
    image_to_rgb,
    load_rgb,
    set_max_image_pixels,
)
from pml_soproxy.datasets.base import check_max_pixels

from .trees import write_image

FIX = "raise the limit with the config key max_image_pixels (flag --max-image-pixels)"


def png_bytes(width, height, bit_depth, color_type, rows=None, data=None) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB): ``rows`` are the
    big-endian sample bytes of each row; ``data`` the compressed IDAT instead."""

    def chunk(kind, body):
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if data is None:
        data = zlib.compress(b"".join(b"\x00" + r for r in rows))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )


def ramp16(h=16, w=256):
    """0..65535 in h*w steps: every 8-bit level, and low bytes that differ from
    high bytes (a plain ``i * 257`` ramp would hide byte-order mistakes)."""
    return np.round(np.linspace(0, 65535, h * w)).astype(np.uint16).reshape(h, w)


def reference8(values, full_scale):
    return np.floor(values.astype(np.float64) * 255.0 / full_scale + 0.5)


def assert_close(rgb, expected, levels=1):
    arr = np.asarray(rgb)
    assert rgb.mode == "RGB" and arr.shape[:2] == expected.shape
    for c in range(3):
        diff = np.abs(arr[..., c].astype(np.int64) - expected.astype(np.int64))
        assert diff.max() <= levels, diff.max()


def saturated(rgb) -> float:
    return float((np.asarray(rgb)[..., 0] == 255).mean())


# ---------------------------------------------------------------- bit depths


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_grey_ramp(tmp_path, ext):
    values = ramp16()
    path = tmp_path / "c" / f"ramp{ext}"
    path.parent.mkdir()
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I;16B", "I;16L", "I")
        assert raw.convert("RGB").getextrema()[0] == (0, 255)
        assert saturated(raw.convert("RGB")) > 0.9  # what the naive path did
    image, label = ImageFolder(tmp_path, "all")[0]
    assert_close(image, reference8(values, 65535))
    assert saturated(image) < 0.01


def assert_scaled(path, mode, values, full_scale):
    """``path`` opens in ``mode`` and loads as ``values`` scaled to 8 bits."""
    with Image.open(path) as raw:
        assert raw.mode == mode
    image = load_rgb(str(path))
    assert_close(image, reference8(values, full_scale))
    assert saturated(image) < 0.01


def test_16bit_pgm_opens_as_mode_I(tmp_path):
    """Pillow opens 16-bit PGMs (and 16-bit PNGs in older versions) as mode "I"."""
    values = ramp16(4, 512)
    path = tmp_path / "ramp.pgm"
    path.write_bytes(b"P5\n512 4\n65535\n" + values.astype(">u2").tobytes())
    assert_scaled(path, "I", values, 65535)


def test_pgm_with_12bit_maxval(tmp_path):
    values = np.arange(4096, dtype=np.uint16).reshape(16, 256)
    path = tmp_path / "ramp12.pgm"
    path.write_bytes(b"P5\n256 16\n4095\n" + values.astype(">u2").tobytes())
    assert_close(load_rgb(str(path)), reference8(values, 4095))


def test_mode_I_without_file_uses_value_range():
    values = ramp16().astype(np.int32)
    assert_close(image_to_rgb(Image.fromarray(values)), reference8(values, 65535))
    signed = np.linspace(-5000, 100000, 256 * 4).astype(np.int32).reshape(4, 256)
    expected = reference8(signed - signed.min(), signed.max() - signed.min())
    assert_close(image_to_rgb(Image.fromarray(signed)), expected)


def test_float_tiff_in_unit_range(tmp_path):
    values = np.linspace(0.0, 1.0, 16 * 256, dtype=np.float32).reshape(16, 256)
    path = tmp_path / "unit.tif"
    Image.fromarray(values).save(path)
    assert_scaled(path, "F", values, 1.0)


def test_float_tiff_outside_unit_range_is_min_max_scaled(tmp_path):
    values = np.linspace(-3.0, 7.0, 16 * 256, dtype=np.float32).reshape(16, 256)
    path = tmp_path / "wide.tif"
    Image.fromarray(values).save(path)
    assert_close(load_rgb(str(path)), reference8(values + 3.0, 10.0))


def test_float_non_finite_and_constant():
    values = np.array([[np.nan, -np.inf, 0.0, 2.0, np.inf]], dtype=np.float32)
    out = np.asarray(image_to_rgb(Image.fromarray(values)))[0, :, 0]
    assert out.tolist() == [0, 0, 0, 255, 255]
    constant = np.full((2, 3), 42.0, dtype=np.float32)
    assert np.asarray(image_to_rgb(Image.fromarray(constant))).max() == 0


@pytest.mark.parametrize("color_type, channels", [(2, 3), (6, 4), (4, 2)])
def test_16bit_colour_png_decoded_by_pillow(tmp_path, color_type, channels):
    """Pillow >= 10 already reduces 16-bit RGB / RGBA / grey+alpha PNGs to 8 bits
    (high byte), within one level of round(v * 255 / 65535)."""
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, size=(8, 64, channels)).astype(np.uint16)
    values[0, :, 0] = ramp16(1, 64)[0]
    rows = [row.astype(">u2").tobytes() for row in values]
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(64, 8, 16, color_type, rows))
    image = load_rgb(str(path))
    arr = np.asarray(image).astype(np.int64)
    colour = values[..., :3] if channels >= 3 else values[..., :1].repeat(3, -1)
    expected = reference8(colour, 65535)
    assert image.mode == "RGB" and np.abs(arr - expected).max() <= 1


def test_low_bit_and_palette_modes(tmp_path):
    one = Image.new("1", (4, 2), 0)
    one.putpixel((1, 0), 1)
    one.save(tmp_path / "one.png")
    first_row = np.asarray(load_rgb(str(tmp_path / "one.png")))[0, :, 0]
    assert first_row.tolist() == [0, 255, 0, 0]
    Image.new("LA", (3, 2), (100, 7)).save(tmp_path / "la.png")
    assert load_rgb(str(tmp_path / "la.png")).getpixel((0, 0)) == (100, 100, 100)
    pal = Image.new("P", (3, 2), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=1)
    with Image.open(tmp_path / "p.png") as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    assert load_rgb(str(tmp_path / "p.png")).getpixel((0, 0)) == (10, 20, 30)
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    assert load_rgb(str(tmp_path / "cmyk.tif")).getpixel((0, 0)) == (255, 0, 0)
    pa = Image.new("PA", (3, 2), (1, 9))
    pa.putpalette([0] * 3 + [40, 50, 60] + [0] * 762)
    assert image_to_rgb(pa).getpixel((0, 0)) == (40, 50, 60)


# -------------------------------------------------------------- pixel limit


def header_only_png(path, width, height):
    """Claims ``width`` x ``height`` 1-bit pixels, holds almost no data: cheap to
    create and refused from the header, before any decoding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(width, height, 1, 0, data=zlib.compress(b"\x00")))
    return path


def assert_too_large(err, path, pixels, limit, dataset="ImageFolder"):
    message = str(err)
    assert "\n" not in message and message.startswith(f"{dataset}: ")
    assert str(path) in message and err.path == str(path)
    assert f"{pixels:,} pixels" in message and f"limit of {limit:,} pixels" in message
    assert message.endswith(FIX)


def test_default_limit_is_pillows_default():
    assert DEFAULT_MAX_IMAGE_PIXELS == 89_478_485 == 1024 * 1024 * 1024 // 4 // 3
    assert ImageFolder.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS


@pytest.mark.parametrize("size", [(100_000, 100_000), (10_000, 10_000)])
def test_oversized_header_refused_with_named_file(tmp_path, size):
    """Over 2x Pillow's limit Pillow itself raises DecompressionBombError, between
    1x and 2x it only warns; both become our one-line error."""
    path = header_only_png(tmp_path / "c" / "huge.png", *size)
    ds = ImageFolder(tmp_path, "all")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError) as info:
            ds[0]
    assert_too_large(info.value, path, size[0] * size[1], DEFAULT_MAX_IMAGE_PIXELS)


def test_genuine_bomb_refused(tmp_path):
    """A valid 200-megapixel 1-bit PNG (> 2x the default limit), a few KB on disk."""
    width, height = 20_000, 10_000
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + width // 8)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(width, height, 1, 0, data=data))
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageLoadError) as info:
        load_rgb(str(path), "Bombs")
    assert_too_large(info.value, path, 200_000_000, DEFAULT_MAX_IMAGE_PIXELS, "Bombs")


def test_limit_per_call_and_per_dataset(tmp_path):
    path = write_image(tmp_path / "c" / "x.png", size=(6, 5))
    assert load_rgb(str(path), max_pixels=30).size == (6, 5)
    with pytest.raises(ImageLoadError) as info:
        load_rgb(str(path), "Tiny", max_pixels=29)
    assert_too_large(info.value, path, 30, 29, "Tiny")
    assert "6x5 = 30 pixels" in str(info.value)

    ds = ImageFolder(tmp_path, "all")
    ds.max_image_pixels = 10
    again = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker gets
    with pytest.raises(ImageLoadError, match="limit of 10 pixels"):
        again[0]
    subset = set_max_image_pixels(ClassSubset(again, [0], transform=lambda x: x), None)
    assert again.max_image_pixels is None and subset[0][0].size == (6, 5)
    assert ImageFolder.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS


def test_limit_ignores_pillows_global(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    big = write_image(tmp_path / "big.png", size=(20, 20))  # > 2x global: error
    mid = write_image(tmp_path / "mid.png", size=(10, 10))  # 1x..2x: warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_rgb(str(big)).size == (20, 20)
        assert load_rgb(str(mid), max_pixels=None).size == (10, 10)
    assert Image.MAX_IMAGE_PIXELS == 50
    with pytest.raises(ImageLoadError, match="limit of 399 pixels"):
        load_rgb(str(big), max_pixels=399)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageLoadError, match="limit of 99 pixels"):
        load_rgb(str(mid), max_pixels=99)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_limit_validation(bad):
    with pytest.raises(ValueError, match="max_image_pixels"):
        check_max_pixels(bad)


# ------------------------------------------------------------ broken files


def truncated_jpeg(path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BROKEN = {
    "truncated.jpg": (truncated_jpeg, "truncated"),
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "text.jpg": (
        lambda p: p.write_text("hello\nworld\n"),
        "not a recognised image format (file starts with b'hello\\nworld\\n')",
    ),
    "garbage.png": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), ""),
    "gone.jpg": (lambda p: p.unlink(), "No such file or directory"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_file_gives_one_line_error(tmp_path, monkeypatch, name):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    path = write_image(tmp_path / "c" / name, size=(8, 8))
    ds = ImageFolder(tmp_path, "all")  # lists the file while it still exists
    make, reason = BROKEN[name]
    make(path)
    with pytest.raises(ImageLoadError) as info:
        ds[0]
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"ImageFolder: cannot read image {path}: ")
    assert info.value.path == str(path) and reason in info.value.reason
    assert message.endswith(info.value.reason)


def test_path_with_line_break_stays_on_one_line(tmp_path):
    path = tmp_path / "a\nb.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError) as info:
        load_rgb(str(path))
    assert "\n" not in str(info.value) and repr(str(path)) in str(info.value)
