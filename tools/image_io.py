"""Safe image loading: every image the tool reads goes through here.

Why a module of its own: inspection images come from cameras, shared drives and users' downloads, so
they are 16-bit, CMYK, palette-with-transparency, EXIF-rotated, truncated by a failed copy, or not
images at all. Each of those must either load to a predictable 8-bit image or fail with one line that
names the file and says what is wrong, never with a Pillow traceback deep inside a detector.

Decisions, and why:

- Pixel limit (`DEFAULT_MAX_PIXELS` = 1e8, i.e. 10000 x 10000): covers area-scan sensors up to 100 MP
  and most stitched line-scan frames, while bounding one decoded RGB image at 300 MB (1.2 GB as the
  float32 array detectors use). It is checked on the header size, before any pixel is decoded, and it
  never touches Pillow's global `Image.MAX_IMAGE_PIXELS`. Pillow's own guard still applies on top: it
  refuses images above 2 x `Image.MAX_IMAGE_PIXELS` (about 1.8e8) inside `Image.open`; an application
  that truly needs larger images raises that global itself, a process-wide decision this module won't
  make behind its back.
- 16-bit images (`I;16`, `I;16B`, ...) are divided by 257, a fixed full-range mapping: it is what
  viewers show, and it keeps a batch comparable (reference matching compares intensities between the
  good references and the test image; a per-image min-max stretch would shift them differently).
  The cost: 10/12-bit sensor data stored in 16-bit containers looks dark.
- `I` (32-bit integer) and `F` (float) have no defined full scale, so their actual range decides:
  `I` in [0, 255] is taken as 8-bit and in [0, 65535] as 16-bit (so a 16-bit PNG reads the same whether
  Pillow calls it `I` or `I;16`); `F` in [0, 1] is scaled by 255 and in [0, 255] kept; anything else is
  min-max stretched. Non-finite floats become the finite minimum.
- Transparency is composited onto mid-grey (128, 128, 128), not white: grey sits near the ImageNet mean,
  so the background adds the weakest features and no hard edge against either dark or bright parts.
  Masks are composited onto black instead (transparent = not a defect).
- EXIF orientation is applied (what a person sees is what gets inspected). An unreadable EXIF block is
  logged and ignored rather than failing an image whose pixels are fine.
- Multi-frame files (GIF, multi-page TIFF) yield their first frame.
- A 1x1 image is valid (the caller may upsample); only a zero-sized one is rejected.
- Pillow's `DecompressionBombWarning` (images between `Image.MAX_IMAGE_PIXELS`, about 89 MP, and
  twice that) is silenced while an image is opened: the limit that counts is this module's own, so
  the warning would only be noise next to it.
- Large images in bounded memory: a caller that needs at most `max_side` pixels on the longer side
  (a detector works at a few hundred) gets the image reduced to that side, aspect kept. A JPEG is
  decoded reduced (DCT scaling, Pillow's draft mode: 1/2, 1/4 or 1/8, never below `max_side`), so a
  100-megapixel JPEG never exists in memory at full size; other formats are decoded fully (bounded by
  the pixel limit) and reduced at once. Either way the last step is the same resize to the exact
  size, so a JPEG and a PNG of the same picture come out the same size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000
ALPHA_BACKGROUND: tuple[int, int, int] = (128, 128, 128)
MASK_BACKGROUND: tuple[int, int, int] = (0, 0, 0)
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm", ".pnm"}
)

_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees
_EXIF_ORIENTATION_TAG = 0x0112


class ImageLoadError(ValueError):
    """An image could not be read; `str()` is one line naming the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(os.fspath(path), reason)  # args kept simple so the error pickles
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return _one_line(f"cannot read image '{self.path}': {self.reason}")


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for a non-hidden regular file with an image extension (any case); contents not checked."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in `folder`, sorted by path; hidden files and (when recursive) hidden folders skipped."""
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(_one_line(f"image folder not found: '{root}'"))
    if not root.is_dir():
        raise NotADirectoryError(_one_line(f"not a folder: '{root}'"))
    candidates: Iterable[Path] = root.rglob("*") if recursive else root.iterdir()
    found = []
    for p in candidates:
        hidden_parent = any(part.startswith(".") for part in p.relative_to(root).parts[:-1])
        if not hidden_parent and is_image_file(p):
            found.append(p)
    return sorted(found)


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) as `load_image` would return it (EXIF rotation included), without decoding."""
    p = Path(path)
    with _open_checked(p, max_pixels=None) as im:
        w, h = im.size
        if _header_orientation(im) in _SWAPPING_ORIENTATIONS:
            w, h = h, w
    return w, h


def load_image(
    path: str | os.PathLike[str],
    mode: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    background: tuple[int, int, int] = ALPHA_BACKGROUND,
    max_side: int | None = None,
) -> Image.Image:
    """Load an image fully into memory as 8-bit `mode` ("RGB" or "L"); the file is closed on return.

    `max_pixels=None` disables this module's limit (Pillow's own guard still applies); the limit is on
    the file's pixel count, whatever `max_side` asks for. `max_side`: the most pixels the caller needs
    on the longer side; a larger image comes back reduced to exactly that side (see the module notes).
    Raises `ImageLoadError` for anything that is not a readable image within the limit.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    p = Path(path)
    with _open_checked(p, max_pixels) as im:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ImageLoadError(p, f"image has zero size: {w}x{h}")
        if max_pixels is not None and w * h > max_pixels:
            raise ImageLoadError(p, _too_large_reason(w * h, max_pixels, (w, h)))
        if max_side is not None and max(w, h) > max_side:
            # JPEG only (a no-op elsewhere): decode at the smallest DCT scale that still covers max_side
            im.draft(None, reduced_size((w, h), max_side))
        try:
            with _pillow_bomb_warning_silenced():
                im.load()  # decode everything now, so truncated data fails here and not in a detector
        except MemoryError:
            raise ImageLoadError(p, f"not enough memory to decode a {w}x{h} image") from None
        except Image.DecompressionBombError as e:  # e.g. a GIF frame larger than its header said
            raise ImageLoadError(p, _pillow_bomb_reason(e, max_pixels)) from None
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
            raise ImageLoadError(p, f"truncated or corrupt image data ({_first_line(e)})") from None
        oriented = _exif_transposed(im, p)
        try:
            out = _convert(oriented, mode, background)
        except ValueError as e:
            raise ImageLoadError(p, f"unsupported image mode {im.mode!r} ({_first_line(e)})") from None
        if max_side is not None:
            out = reduce_image(out, max_side)
        if out is im:  # never hand out the object whose file we are about to close
            out = im.copy()
    return out


def reduced_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(w, h) scaled so the longer side is `max_side` (aspect kept, each side >= 1); unchanged when the
    image is no larger."""
    w, h = size
    longest = max(w, h)
    if longest <= max_side:
        return w, h
    s = max_side / longest
    return max(1, round(w * s)), max(1, round(h * s))


def reduce_image(image: Image.Image, max_side: int) -> Image.Image:
    """`image` reduced to `max_side` on the longer side (Lanczos after a fast integer pre-reduction);
    the image itself when it is no larger. The one resize every reduced image goes through."""
    size = reduced_size(image.size, max_side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def load_image_set(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    what: str = "image",
    warn: Callable[[str], None] = print,
    *,
    limit: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    progress: Callable[[Path], None] | None = None,
) -> list[Image.Image]:
    """Images (RGB) from a folder (recursive), one file, or a list of files, e.g. good references.

    An unreadable file is skipped with a one-line warning, so one bad file does not block the run;
    `progress` is called with each path before it is read. Raises `ImageSetError` when the folder or
    file does not exist or no readable image is left.
    """
    if isinstance(source, str | os.PathLike):
        root = Path(source)
        if not root.exists():
            raise ImageSetError(_one_line(f"{what}s folder '{root}' does not exist"))
        paths = list_images(root, recursive=True) if root.is_dir() else [root]
    else:
        paths = [Path(p) for p in source]
    images = []
    for p in paths[:limit] if limit else paths:
        if progress is not None:
            progress(p)
        try:
            images.append(load_image(p, max_pixels=max_pixels, max_side=max_side))
        except ImageLoadError as err:
            warn(f"{what} skipped: {err}")
    if not images:
        shown = source if isinstance(source, str | os.PathLike) else ", ".join(str(p) for p in paths[:3])
        raise ImageSetError(_one_line(f"no readable {what} images in '{shown}'"))
    return images


class ImageSetError(ValueError):
    """A set of images (e.g. the references) cannot be used at all; `str()` is one line."""


def load_mask(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean defect mask (True = defect, grey value > 127), resized with NEAREST to `size` = (w, h).

    Colour masks count a pixel as defect when any channel is > 127 (a red-on-black annotation works);
    transparent pixels count as background.
    """
    p = Path(path)
    img = load_image(p, mode="RGB", background=MASK_BACKGROUND)
    if size is not None and tuple(size) != img.size:
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise ValueError(f"mask size must be positive (w, h), got {size!r}")
        img = img.resize((w, h), Image.Resampling.NEAREST)
    values = np.asarray(img).max(axis=2)
    mask = values > 127
    peak = int(values.max())
    if not mask.any() and peak > 0:
        logger.warning(
            "mask '%s' has values up to %d but none above 127, so it reads as empty "
            "(0/1 label masks must be saved as 0/255)",
            p,
            peak,
        )
    return mask


def image_to_array(img: Image.Image) -> np.ndarray:
    """float32 HxWx3 array in [0, 1]; any mode is converted as `load_image` would."""
    rgb = img if img.mode == "RGB" else _convert(img, "RGB", ALPHA_BACKGROUND)
    return np.asarray(rgb, dtype=np.float32) / np.float32(255.0)


def unit_pixels(arr: np.ndarray, dtype: type[np.floating] = np.float64, inf: float | None = None) -> np.ndarray:
    """Pixel values of an array image as `dtype` floats on the 0..1 scale (not clipped): uint8 / 255,
    uint16 / 65535, bool as 0 and 1, other numbers as 0..1, or as 0..255 when their maximum is above 1.
    NaN counts as 0; +-inf as `inf` when given, else as the largest finite value of its sign. The overlay
    and the region measurement take arrays from callers, not only from `load_image`, and read them alike."""
    if arr.dtype == np.uint8:
        return arr.astype(dtype) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(dtype) / 65535.0
    out = arr.astype(dtype)
    out = np.nan_to_num(out, nan=0.0) if inf is None else np.nan_to_num(out, nan=0.0, posinf=inf, neginf=inf)
    return out / 255.0 if out.size and out.max() > 1.0 else out


# ----------------------------------------------------------------------------------------------------
# internals


def _open_checked(p: Path, max_pixels: int | None) -> Image.Image:
    """`Image.open` (header only) with every failure turned into an ImageLoadError."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageLoadError(p, "file not found") from None
    except PermissionError:
        raise ImageLoadError(p, "permission denied") from None
    except OSError as e:
        raise ImageLoadError(p, e.strerror or _first_line(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(p, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(p, "not a regular file")
    if st.st_size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)")
    try:
        with _pillow_bomb_warning_silenced():
            return Image.open(p)
    except FileNotFoundError:  # removed between stat and open
        raise ImageLoadError(p, "file not found") from None
    except PermissionError:
        raise ImageLoadError(p, "permission denied") from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(p, _pillow_bomb_reason(e, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageLoadError(p, "not an image (unrecognized format)") from None
    except Exception as e:  # a recognized format with a broken header
        raise ImageLoadError(p, f"corrupt image header ({_first_line(e)})") from None


@contextlib.contextmanager
def _pillow_bomb_warning_silenced() -> Iterator[None]:
    """Pillow warns above `Image.MAX_IMAGE_PIXELS`; our own limit decides, so the warning is noise.
    (`catch_warnings` swaps the process's filter list: a thread racing it can at worst keep or lose this
    one "ignore" filter, never an error.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _convert(im: Image.Image, mode: str, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> 8-bit `mode`, compositing transparency onto `background`."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _high_depth_to_l(im)
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode == "LAB":  # CIELab TIFFs; Pillow's convert() has no LAB -> RGB path
        im = _lab_to_rgb(im)
    if _has_transparency(im):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        im = Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert(mode)


def _lab_to_rgb(im: Image.Image) -> Image.Image:
    try:
        from PIL import ImageCms
    except ImportError as e:  # Pillow built without littlecms
        raise ValueError("LAB images need Pillow's ImageCms (littlecms)") from e
    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.applyTransform(im, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))


def _has_transparency(im: Image.Image) -> bool:
    """Alpha band, or a "transparency" entry (P, L, RGB); Pillow < 10.1 lacks `has_transparency_data`."""
    if hasattr(im, "has_transparency_data"):
        return bool(im.has_transparency_data)
    return im.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in im.info


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float image -> 8-bit L by the rules in the module docstring."""
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
        finite = np.isfinite(arr)
        if not finite.all():
            arr = np.where(finite, arr, arr[finite].min() if finite.any() else 0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = arr
        else:
            scaled = _min_max(arr, lo, hi)
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        scaled = arr.astype(np.float64) / 257.0
    else:
        arr = arr.astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0 and hi <= 255:
            scaled = arr
        elif lo >= 0 and hi <= 65535:
            scaled = arr / 257.0
        else:
            scaled = _min_max(arr, lo, hi)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _min_max(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) * (255.0 / (hi - lo))


def _exif_transposed(im: Image.Image, p: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)  # a new image, transposed or a plain copy
    except Exception as e:  # a broken EXIF block should not cost us readable pixels
        logger.warning("ignoring unreadable EXIF orientation of '%s': %s", p, _first_line(e))
        return im.copy()


def _header_orientation(im: Image.Image) -> int:
    """EXIF orientation read from the header only (PNG keeps EXIF after the pixels -> assume 1)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # PngImageFile.getexif would decode the whole image to look for it
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:
        return 1


def _too_large_reason(pixels: int, limit: int, size: tuple[int, int] | None = None) -> str:
    dims = f"{size[0]}x{size[1]} = " if size else ""
    return (
        f"image too large: {dims}{_count(pixels)} pixels exceeds the limit of {_count(limit)} "
        f"(decompression-bomb guard; raise it with --max-megapixels, now {_megapixels(limit)}, "
        "or max_pixels=... in Python)"
    )


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:g}"


def _pillow_bomb_reason(err: Exception, max_pixels: int | None) -> str:
    """Pillow refused the image in `Image.open`; say whose limit it was and how to lift it."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    if not found:
        return f"image too large ({_first_line(err)})"
    pixels = int(found.group(1))
    if max_pixels is not None and pixels > max_pixels:
        return _too_large_reason(pixels, max_pixels).replace(
            "max_pixels=... in Python)", "max_pixels=... and PIL.Image.MAX_IMAGE_PIXELS in Python)"
        )
    pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (
        f"image too large: {_count(pixels)} pixels exceeds Pillow's decompression-bomb limit of "
        f"{_count(pil_limit)} (PIL.Image.MAX_IMAGE_PIXELS, a process-wide setting)"
    )


def _count(n: int) -> str:
    """1600000000 -> '1.6e9'; small counts stay exact."""
    if n < 1_000_000:
        return f"{n:,}"
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _one_line(text: str) -> str:
    return re.sub(r"[\r\n]+", " ", text)
