"""The bad-input zoo for tools.image_io: every case is built in tmp_path, none needs real data."""

from __future__ import annotations

import logging
import os
import pickle
import struct
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.image_io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageLoadError,
    ImageSetError,
    image_to_array,
    is_image_file,
    list_images,
    load_image,
    load_image_set,
    load_mask,
    read_image_size,
    reduce_image,
)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _fake_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG header claiming width x height, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )
    path.write_bytes(data)
    return path


def _noise_jpeg(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)
    return path


def _gradient16(width: int = 64, height: int = 4) -> np.ndarray:
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (height, 1))


# ---------------------------------------------------------------------------------------------------
# errors: one line, naming the file


def _zero_byte(tmp: Path) -> Path:
    p = tmp / "empty.png"
    p.write_bytes(b"")
    return p


def _truncated_jpeg(tmp: Path) -> Path:
    p = _noise_jpeg(tmp / "cut.jpg")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _text_as_png(tmp: Path) -> Path:
    p = tmp / "notes.png"
    p.write_text("this is not an image\nsecond line\n")
    return p


def _missing(tmp: Path) -> Path:
    return tmp / "nope.png"


def _directory(tmp: Path) -> Path:
    p = tmp / "folder.png"
    p.mkdir()
    return p


def _bomb(tmp: Path) -> Path:
    return _fake_png(tmp / "bomb.png", 50000, 50000)


def _newline_name(tmp: Path) -> Path:
    p = tmp / "two\nlines.png"
    p.write_text("junk")
    return p


ERROR_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero-byte": (_zero_byte, "empty file (0 bytes)"),
    "truncated-jpeg": (_truncated_jpeg, "truncated or corrupt image data"),
    "text-named-png": (_text_as_png, "not an image (unrecognized format)"),
    "missing": (_missing, "file not found"),
    "directory": (_directory, "is a directory"),
    "huge-header": (_bomb, "decompression-bomb"),
    "newline-in-name": (_newline_name, "not an image"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_input_fails_with_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    build, reason = ERROR_CASES[case]
    path = build(tmp_path)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith("cannot read image '")
    assert reason in message and reason in info.value.reason
    assert info.value.path == path
    assert path.name.replace("\n", " ") in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("case", ["zero-byte", "text-named-png", "missing", "directory", "huge-header"])
def test_read_image_size_reports_the_same_errors(tmp_path: Path, case: str) -> None:
    build, reason = ERROR_CASES[case]
    with pytest.raises(ImageLoadError) as info:
        read_image_size(build(tmp_path))
    assert reason in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_file_says_permission_denied(tmp_path: Path) -> None:
    p = tmp_path / "locked.png"
    Image.new("L", (4, 4)).save(p)
    p.chmod(0)
    try:
        with pytest.raises(ImageLoadError, match="permission denied"):
            load_image(p)
    finally:
        p.chmod(0o644)


def test_permission_error_from_open_is_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "locked.png"
    Image.new("L", (4, 4)).save(p)

    def refuse(*args: object, **kwargs: object) -> Image.Image:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageLoadError, match="permission denied"):
        load_image(p)


def test_huge_header_fails_fast_without_decoding(tmp_path: Path) -> None:
    path = _bomb(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ImageLoadError, match=r"image too large: 2\.5e9 pixels exceeds the limit of 1\.0e8"):
        load_image(path)
    assert time.perf_counter() - start < 5.0  # decoding 2.5e9 pixels would take far longer, or OOM


def test_own_pixel_limit_is_checked_on_the_header_before_decoding(tmp_path: Path) -> None:
    # Below Pillow's own limit; the IDAT is far too short, so decoding would raise "truncated" instead.
    path = _fake_png(tmp_path / "big.png", 9000, 9000)
    with pytest.raises(ImageLoadError) as info:
        load_image(path, max_pixels=1_000_000)
    assert "image too large: 9000x9000 = 8.1e7 pixels exceeds the limit of 1.0e6" in str(info.value)
    assert "--max-megapixels, now 1," in str(info.value) and "max_pixels=" in str(info.value)
    assert read_image_size(path) == (9000, 9000)  # header only, no limit, no decode


def test_max_pixels_is_per_call_and_leaves_pillow_globals_alone(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageLoadError, match="10,000 pixels exceeds the limit of 5,000"):
        load_image(path, max_pixels=5_000)
    assert load_image(path, max_pixels=None).size == (100, 100)
    assert load_image(path, max_pixels=10_000).size == (100, 100)
    assert before == Image.MAX_IMAGE_PIXELS  # untouched
    assert DEFAULT_MAX_PIXELS >= 10_000 * 10_000


def test_error_pickles_and_keeps_its_fields(tmp_path: Path) -> None:
    err = ImageLoadError(tmp_path / "x.png", "file not found")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == f"cannot read image '{tmp_path / 'x.png'}': file not found"
    assert again.path == err.path and again.reason == err.reason


def test_unknown_mode_argument_is_a_programming_error(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (2, 2)).save(path)
    with pytest.raises(ValueError, match="mode must be"):
        load_image(path, mode="RGBA")


# ---------------------------------------------------------------------------------------------------
# modes that must load


def test_16bit_png_becomes_rgb_uint8_and_keeps_its_gradient(tmp_path: Path) -> None:
    path = tmp_path / "depth16.png"
    Image.fromarray(_gradient16()).save(path)
    assert Image.open(path).mode.startswith("I;16")  # the case under test really is 16-bit

    img = load_image(path)
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.dtype == np.uint8 and arr.shape == (4, 64, 3)
    row = arr[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 50
    assert np.array_equal(arr[..., 0], arr[..., 2])
    assert abs(int(row[32]) - 132) <= 2  # full-range mapping: 32/63 of 65535 -> about 132


def test_big_endian_16bit_tiff_reads_like_little_endian(tmp_path: Path) -> None:
    grad = _gradient16()
    little, big = tmp_path / "le.tif", tmp_path / "be.tif"
    Image.fromarray(grad).save(little)
    Image.frombytes("I;16B", (grad.shape[1], grad.shape[0]), grad.astype(">u2").tobytes()).save(big)
    assert Image.open(big).mode == "I;16B"
    assert np.array_equal(np.asarray(load_image(big)), np.asarray(load_image(little)))


def test_mode_I_reads_like_the_16bit_file_it_came_from(tmp_path: Path) -> None:
    # Pillow >= 10 opens 16-bit PNGs as I;16 and cannot write mode I as PNG; older Pillows opened the
    # same file as mode I. Both must give the same picture.
    path = tmp_path / "depth16.png"
    Image.fromarray(_gradient16()).save(path)
    as_i = Image.open(path).convert("I")
    assert as_i.mode == "I"
    assert np.array_equal(
        np.asarray(image_to_array(as_i)), np.asarray(load_image(path), dtype=np.float32) / 255
    )


def test_mode_I_tiff_outside_16bit_range_is_min_max_scaled(tmp_path: Path) -> None:
    path = tmp_path / "int32.tif"
    values = np.array([[-1000, 0, 100_000, 300_000]], dtype=np.int32)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    row = np.asarray(load_image(path, mode="L"))[0]
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row.astype(int)) > 0)


def test_float_tiff_is_scaled_by_its_range(tmp_path: Path) -> None:
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.array([[-2.0, 2.0, 6.0, np.nan]], dtype=np.float32)).save(wide)
    assert Image.open(wide).mode == "F"
    assert np.asarray(load_image(wide, mode="L"))[0].tolist() == [0, 128, 255, 0]  # NaN -> the minimum

    unit = tmp_path / "unit.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(unit)
    assert np.asarray(load_image(unit, mode="L"))[0].tolist() == [0, 128, 255]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    img = Image.new("CMYK", (16, 8), (0, 0, 0, 0))  # no ink = white
    img.paste((255, 0, 0, 0), (8, 0, 16, 8))  # full cyan on the right
    img.save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    arr = np.asarray(load_image(path)).astype(int)
    assert arr.shape == (8, 16, 3)
    assert np.all(arr[4, 2] > 240)
    assert arr[4, 12, 0] < 20 and arr[4, 12, 1] > 230 and arr[4, 12, 2] > 230


def test_cielab_tiff_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "lab.tif"
    Image.new("LAB", (2, 1), (136, 208, 195)).save(path)  # a saturated red in CIELab
    assert Image.open(path).mode == "LAB"
    r, g, b = load_image(path).getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60


def test_rgba_png_is_composited_on_mid_grey(tmp_path: Path) -> None:
    path = tmp_path / "cutout.png"
    img = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    img.putpixel((3, 0), (255, 0, 0, 0))
    img.putpixel((2, 0), (0, 0, 255, 0))
    img.save(path)
    arr = np.asarray(load_image(path))
    assert arr[0, 0].tolist() == [255, 0, 0]
    assert arr[0, 3].tolist() == [128, 128, 128] == arr[0, 2].tolist()  # hidden colour does not leak
    assert load_image(path, background=(255, 255, 255)).getpixel((3, 0)) == (255, 255, 255)
    assert load_image(path, mode="L").getpixel((3, 0)) == 128


def test_la_png_is_composited_and_promoted(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    img = Image.new("LA", (2, 1), (10, 255))
    img.putpixel((1, 0), (250, 0))
    img.save(path)
    assert np.asarray(load_image(path))[0].tolist() == [[10, 10, 10], [128, 128, 128]]


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.paste(1, (0, 0, 2, 4))
    img.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    arr = np.asarray(load_image(path))
    assert arr[0, 0].tolist() == [255, 0, 0]
    assert arr[0, 3].tolist() == [128, 128, 128]


def test_one_by_one_image_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.new("L", (1, 1), 200).save(path)
    img = load_image(path)
    assert img.size == (1, 1) and img.getpixel((0, 0)) == (200, 200, 200)
    assert read_image_size(path) == (1, 1)
    assert image_to_array(img).shape == (1, 1, 3)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    img.save(path, exif=exif, quality=95)

    loaded = load_image(path)
    assert loaded.size == (20, 40)
    assert read_image_size(path) == (20, 40)
    top, bottom = np.asarray(loaded)[5, 10].astype(int), np.asarray(loaded)[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_grayscale_jpeg_promoted_or_kept(tmp_path: Path) -> None:
    path = tmp_path / "grey.JPG"
    Image.new("L", (6, 3), 77).save(path, format="JPEG", quality=100)
    assert load_image(path).mode == "RGB"
    gray = load_image(path, mode="L")
    assert gray.mode == "L" and abs(gray.getpixel((0, 0)) - 77) <= 1


def test_result_is_in_memory_and_file_is_released(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (3, 3), (1, 2, 3)).save(path)
    img = load_image(path)
    path.unlink()
    assert img.getpixel((2, 2)) == (1, 2, 3)


def test_image_to_array_is_float_rgb_in_unit_range() -> None:
    img = Image.new("L", (5, 2), 255)
    img.putpixel((0, 0), 0)
    arr = image_to_array(img)
    assert arr.dtype == np.float32 and arr.shape == (2, 5, 3)
    assert arr.min() == 0.0 and arr.max() == 1.0


# ---------------------------------------------------------------------------------------------------
# masks


def test_mask_threshold_is_strictly_above_127(tmp_path: Path) -> None:
    path = tmp_path / "m_mask.png"
    values = np.full((4, 6), 127, dtype=np.uint8)
    values[1:3, 2:5] = 128
    Image.fromarray(values).save(path)
    mask = load_mask(path)
    assert mask.dtype == bool and mask.shape == (4, 6)
    assert mask.sum() == 6 and mask[1:3, 2:5].all()


def test_mask_resize_uses_nearest(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    values = np.zeros((2, 2), dtype=np.uint8)
    values[0, 0] = 255
    Image.fromarray(values).save(path)
    mask = load_mask(path, size=(8, 6))
    assert mask.shape == (6, 8)
    assert mask[:3, :4].all() and mask.sum() == 12


def test_colour_and_transparent_masks(tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    img = Image.new("RGB", (3, 1))
    img.putpixel((1, 0), (255, 0, 0))
    img.save(red)
    assert load_mask(red).tolist() == [[False, True, False]]

    clear = tmp_path / "clear.png"
    img = Image.new("RGBA", (2, 1), (255, 255, 255, 0))
    img.putpixel((0, 0), (255, 255, 255, 255))
    img.save(clear)
    assert load_mask(clear).tolist() == [[True, False]]


def test_label_mask_with_ones_warns_that_it_reads_empty(tmp_path: Path, caplog) -> None:
    path = tmp_path / "label.png"
    values = np.zeros((3, 3), dtype=np.uint8)
    values[1, 1] = 1
    Image.fromarray(values).save(path)
    with caplog.at_level(logging.WARNING, logger="tools.image_io"):
        assert not load_mask(path).any()
    assert "none above 127" in caplog.text


def test_mask_errors_are_image_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_mask(tmp_path / "missing_mask.png")


# ---------------------------------------------------------------------------------------------------
# listing


def test_list_images_sorted_case_insensitive_skipping_hidden(tmp_path: Path) -> None:
    for name in [
        "b.jpg",
        "a.PNG",
        "c.JpEg",
        "d.tiff",
        ".hidden.png",
        "notes.txt",
        "sub/e.bmp",
        ".cache/f.png",
    ]:
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg", "c.JpEg", "d.tiff"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "a.PNG",
        "b.jpg",
        "c.JpEg",
        "d.tiff",
        "sub/e.bmp",
    ]
    assert is_image_file(tmp_path / "a.PNG") and not is_image_file(tmp_path / "dir.png")
    assert not is_image_file(tmp_path / ".hidden.png") and not is_image_file(tmp_path / "notes.txt")
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


def test_list_images_on_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------- large images


def _gradient(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour image (JPEG-friendly, so reduced decoding and resizing agree closely)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    r = 128 + 100 * np.sin(x / 97 + rng.random())
    g = 128 + 100 * np.cos(y / 71)
    b = 128 + 60 * np.sin((x + y) / 150)
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8))


def test_pillow_bomb_warning_is_not_shown_below_our_limit(tmp_path: Path) -> None:
    # 9500 x 9500 = 90.25 MP: above Pillow's warning level (89.5 MP), below LookTwice's limit (100 MP)
    path = _fake_png(tmp_path / "big.png", 9500, 9500)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image_size(path) == (9500, 9500)
        with pytest.raises(ImageLoadError, match="truncated"):  # the fake IDAT is short: header only
            load_image(path)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_max_side_reduces_to_the_exact_size(tmp_path: Path, fmt: str) -> None:
    full = _gradient(1800, 900)
    path = tmp_path / f"wide.{fmt.lower()}"
    full.save(path, format=fmt, quality=95)
    reduced = load_image(path, max_side=400)
    assert reduced.size == (400, 200) and reduced.mode == "RGB"
    expected = reduce_image(load_image(path), 400)
    diff = np.abs(np.asarray(reduced, np.float32) - np.asarray(expected, np.float32))
    # PNG: the same resize of the same pixels; JPEG: DCT-scaled decoding first, close on smooth content
    assert diff.max() == 0 if fmt == "PNG" else diff.mean() < 2.0
    assert load_image(path, max_side=1800).size == (1800, 900)  # no larger than asked: untouched


def test_max_side_keeps_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 1600 x 800, shown 800 x 1600
    _gradient(1600, 800).save(path, exif=exif, quality=95)
    assert load_image(path, max_side=400).size == (200, 400)
    assert read_image_size(path) == (800, 1600)


def test_max_side_does_not_lift_the_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    _gradient(300, 200).save(path)
    with pytest.raises(ImageLoadError, match="exceeds the limit of 50,000"):
        load_image(path, max_pixels=50_000, max_side=100)
    with pytest.raises(ValueError, match="max_side"):
        load_image(path, max_side=0)


def test_load_image_set_skips_bad_files_and_applies_limits(tmp_path: Path) -> None:
    folder = tmp_path / "refs"
    (folder / "sub").mkdir(parents=True)
    _gradient(600, 300).save(folder / "a.jpg")
    _gradient(300, 600).save(folder / "sub" / "b.png")
    _zero_byte(folder)
    notes: list[str] = []
    seen: list[Path] = []
    images = load_image_set(folder, "reference", notes.append, max_side=200, progress=seen.append)
    assert [im.size for im in images] == [(200, 100), (100, 200)]
    assert len(seen) == 3 and len(notes) == 1 and notes[0].startswith("reference skipped: ")
    assert len(load_image_set([folder / "a.jpg"], warn=notes.append)) == 1
    with pytest.raises(ImageSetError, match="references folder '.*nope' does not exist"):
        load_image_set(tmp_path / "nope", "reference")
    with pytest.raises(ImageSetError, match="no readable reference images"):
        load_image_set(folder, "reference", notes.append, max_pixels=10)
