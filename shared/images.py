"""Image bytes to model input and thumbnail: the header checked first, the pixels decoded once, in
bounded memory (one full-size image at a time, plus strips)."""

from __future__ import annotations

import io
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from shared.errors import (
    ImageTooLarge,
    NotAnImage,
    TruncatedImage,
    UndecodableImage,
    UnsupportedImageFormat,
)

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})

# LOOKALIKE_DECODE: "exact" decodes every pixel, as keras.utils.load_img does; "reduced" lets
# libjpeg scale a JPEG down while decoding it (its DCT scaling: 1/2, 1/4 or 1/8, PIL's
# Image.draft) to the smallest scale that is still at least the model's input size on both
# sides, and then resizes the same way. Other formats decode exactly in either mode.
DECODE_MODES = ("exact", "reduced")
_REDUCIBLE_FORMATS = frozenset({"JPEG", "MPO"})

# The same filters, by the same names, as keras.utils.load_img(interpolation=...).
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# Modes whose samples exceed 8 bits: PIL's convert("RGB") clips them to 255 (white).
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Pixels converted at once: what a full-size temporary would cost, at most a few MB.
STRIP_PIXELS = 1 << 20
THUMBNAIL_QUALITY = 85  # JPEG quality of thumbnails
# A decode may take this many bytes per pixel of the pixel limit, at its peak. Most images take
# PIL's own 1 to 4 bytes a pixel (plus 1 for a 16/32-bit one's 8-bit copy); images whose decoder
# keeps full-size buffers of its own get a lower pixel limit, so that none takes more.
DECODE_BUDGET = 8
# libwebp's canvas and its copy plus the frame's bytes, besides PIL's image.
_WEBP_BUFFERS = 12
# libjpeg keeps every DCT coefficient (2 bytes) of a progressive JPEG until its last scan.
_COEFFICIENT_BYTES = 2
_SAMPLE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
# What PIL raises for data it cannot decode (its decoders differ); never MemoryError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

# Never decode a partial file as if it were whole; we refuse it instead.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own limit (a setting) replaces PIL's global one, checked from the header before decoding.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Decoded:
    """What one decode of an image gives: the model input and, when asked for, its thumbnail."""

    pixels: np.ndarray
    thumbnail: bytes | None


_decodes = 0
_decodes_lock = threading.Lock()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def decode_count() -> int:
    """How many images this process has decoded to pixels (each upload must cost one)."""
    return _decodes


def check_header(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily and check what the header says (format, size); no pixel is decoded."""
    if not data:
        raise NotAnImage("empty file: expected an image")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImage("not an image: the data is in no format we can read") from None
    except (OSError, SyntaxError, ValueError) as exc:  # the header itself is cut short or bad
        if "truncated" in str(exc).lower():
            raise TruncatedImage(f"truncated image: {exc}") from None
        raise NotAnImage(f"not an image: {exc}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise UnsupportedImageFormat(
            f"unsupported image format {image.format}: use one of "
            + ", ".join(sorted(SUPPORTED_FORMATS - {"MPO"}))
        )
    width, height = image.size
    cost = decode_cost(image)
    limit = max_pixels if cost <= DECODE_BUDGET else int(max_pixels * DECODE_BUDGET / cost)
    if width * height > limit:
        scope = "" if limit == max_pixels else (
            f" for a {image.format} image whose decoding takes {cost:g} bytes a pixel"
        )  # fmt: skip
        raise ImageTooLarge(
            f"image too large: {width}x{height} is {width * height} pixels, "
            f"the limit is {limit}{scope}"
        )
    return image


def decode_cost(image: Image.Image) -> float:
    """Bytes per pixel that decoding this (opened, not loaded) image takes at its peak."""
    cost = _SAMPLE_BYTES.get(image.mode, 4) + (1 if image.mode in _WIDE_MODES else 0)
    if image.format == "WEBP":
        return cost + _WEBP_BUFFERS
    layers = getattr(image, "layer", [])  # JPEG and MPO: (id, h, v, table) per component
    if image.info.get("progressive") and layers:
        full = max(h for _, h, _, _ in layers) * max(v for _, _, v, _ in layers)
        cost += _COEFFICIENT_BYTES * sum(h * v for _, h, v, _ in layers) / full
    return cost


def open_image(
    data: bytes,
    max_pixels: int,
    reduce_to: int | None = None,
    thumbnail_side: int | None = None,
) -> Image.Image:
    """Decode bytes into a loaded PIL image (first frame), refusing bad or oversized input.
    With reduce_to (the "reduced" mode), a JPEG is scaled down while it is decoded, to no less
    than reduce_to on both sides (see reduced_size); other formats are decoded whole."""
    global _decodes
    image = check_header(data, max_pixels)  # limits apply to the full size, in either mode
    if reduce_to is not None and image.format in _REDUCIBLE_FORMATS:
        image.draft(None, reduced_size(*image.size, reduce_to, thumbnail_side))
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise UndecodableImage(f"cannot decode the {image.format} image: {exc}") from None
    with _decodes_lock:
        _decodes += 1
    return image


def reduced_size(
    width: int, height: int, size: int, thumbnail_side: int | None = None
) -> tuple[int, int]:
    """The size to ask Image.draft for in "reduced" mode: it picks the largest scale (1, 1/2,
    1/4, 1/8) whose result is at least this on both sides, so the model's size x size input,
    and, when a thumbnail is made from the same decode, its longest side too (so the thumbnail
    keeps its size; a 3:4 photo needs no more than the model does)."""
    if not thumbnail_side or thumbnail_side <= size:
        return (size, size)
    return (thumbnail_side, size) if width >= height else (size, thumbnail_side)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB, as load_img does, except that >8-bit samples are scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES:
        image = to_8bit(image)
    return image.convert("RGB")


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit grey image as 8-bit L, scaled to its range, strip by strip."""
    top = _top(image)
    gray = np.empty((image.height, image.width), np.uint8)
    for y, strip in _strips(image):
        gray[y : y + len(strip)] = _scaled(strip, top)
    return Image.fromarray(gray)


def _strips(image: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """The image's rows, a few MB at a time, as arrays: never a full-size temporary."""
    rows = max(1, STRIP_PIXELS // max(1, image.width))
    for y in range(0, image.height, rows):
        yield y, np.asarray(image.crop((0, y, image.width, min(image.height, y + rows))))


def _top(image: Image.Image) -> float:
    """The value that maps to 255: 1.0 (floats in 0..1), 255 (8-bit range) or 65535."""
    if image.mode == "F":
        peak = max((np.nanmax(s, initial=0.0) for _, s in _strips(image)), default=0.0)
        return 1.0 if peak <= 1.0 else 255.0
    peak = max((int(s.max(initial=0)) for _, s in _strips(image)), default=0)
    return 65535.0 if peak > 255 else 255.0


def _scaled(strip: np.ndarray, top: float) -> np.ndarray:
    """round(clip(v * 255 / top, 0, 255)) as uint8, in integers or float32 (never float64)."""
    if strip.dtype.kind == "f":
        values = np.multiply(strip, np.float32(255.0 / top), dtype=np.float32)
        np.nan_to_num(values, copy=False)
        # float32 rounding may land a product on a half (never across one): those few are
        # computed exactly, so that rounding them goes the same way as before.
        halves = np.flatnonzero(values - np.floor(values) == 0.5)
        exact = np.round(strip.flat[halves].astype(np.float64) * (255.0 / top))
        np.clip(values, 0, 255, out=values)
        np.rint(values, out=values)
        values.flat[halves] = np.clip(exact, 0, 255)
        return values.astype(np.uint8)
    if top == 255.0:
        return np.clip(strip, 0, 255).astype(np.uint8)
    # v / 257 is never halfway between integers, so (v + 128) // 257 is exactly its rounding.
    values = np.clip(strip, 0, 65535).astype(np.uint32)
    values += 128
    values //= 257
    return values.astype(np.uint8)


def resize(image: Image.Image, size: int, interpolation: str = "nearest") -> Image.Image:
    """Resize to size x size ignoring aspect ratio, exactly as load_img(target_size=...) does."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), INTERPOLATIONS[interpolation])


def model_input(image: Image.Image, size: int = 224, interpolation: str = "nearest") -> np.ndarray:
    """(size, size, 3) uint8 RGB, byte for byte what load_img's convert-then-resize gives."""
    if interpolation == "nearest" or image.mode in ("RGB", "L"):
        # Both orders give the same bytes: a pixel-wise conversion commutes with picking pixels,
        # and L's one band resamples as each of RGB's three. This one skips a full-size copy.
        return np.asarray(to_rgb(resize(image, size, interpolation)), dtype=np.uint8)
    return np.asarray(resize(to_rgb(image), size, interpolation), dtype=np.uint8)


def thumbnail(image: Image.Image, max_side: int, orientation: int | None = None) -> bytes:
    """A small JPEG of a decoded image (aspect kept, EXIF orientation applied), as
    Image.thumbnail(reducing_gap=1.0) makes it: box-reduced by the whole factor, then Lanczos."""
    if image.mode in _WIDE_MODES:
        image = to_8bit(image)  # one scale for the whole image, not one per tile
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # PIL's default gap (2.0) leaves Lanczos a 3x step on a 600x800 photo; reducing by the whole
    # factor first leaves it a near 1:1 one, 4x cheaper for the whole thumbnail, for a picture
    # that is only shown.
    reduced = _box_reduced_rgb(image, max(1, width // size[0]), max(1, height // size[1]))
    small = reduced.resize(size, Image.Resampling.LANCZOS) if reduced.size != size else reduced
    if orientation in _ORIENTATIONS:
        small = small.transpose(_ORIENTATIONS[orientation])
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buffer.getvalue()


def _box_reduced_rgb(image: Image.Image, fx: int, fy: int) -> Image.Image:
    """The RGB image box-reduced by (fx, fy); other modes converted tile by tile, never whole."""
    if image.mode == "RGB":
        return image if fx == fy == 1 else image.reduce((fx, fy))
    width, height = image.size
    reduced = Image.new("RGB", (-(-width // fx), -(-height // fy)))
    across = min(-(-width // fx), max(1, STRIP_PIXELS // (fx * fy)))  # blocks in a tile's row
    tile = (across * fx, max(1, STRIP_PIXELS // (across * fx * fy)) * fy)
    for y in range(0, height, tile[1]):
        for x in range(0, width, tile[0]):
            part = image.crop((x, y, min(width, x + tile[0]), min(height, y + tile[1])))
            reduced.paste(to_rgb(part).reduce((fx, fy)), (x // fx, y // fy))
    return reduced


def decode(
    data: bytes,
    size: int = 224,
    interpolation: str = "nearest",
    max_pixels: int = 40_000_000,
    thumbnail_side: int | None = None,
    mode: str = "exact",
) -> Decoded:
    """Decode once; the model input and the thumbnail (when asked for) both come from it.
    mode is one of DECODE_MODES."""
    image = open_image(data, max_pixels, _reduction(mode, size), thumbnail_side)
    orientation = exif_orientation(image) if thumbnail_side else None
    if image.mode in _WIDE_MODES:
        image = to_8bit(image)  # the wide original is dropped here: one full-size image left
    elif interpolation != "nearest" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # a filter needs it whole: the original is dropped here
    pixels = model_input(image, size, interpolation)
    small = thumbnail(image, thumbnail_side, orientation) if thumbnail_side else None
    return Decoded(pixels, small)


def _reduction(mode: str, size: int) -> int | None:
    """The size a decode may reduce a JPEG to in this mode (None: decode it whole)."""
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {mode!r}: use one of {', '.join(DECODE_MODES)}")
    return size if mode == "reduced" else None


def exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag of an opened image (None when absent or unreadable)."""
    try:
        value: Any = image.getexif().get(_EXIF_ORIENTATION)
    except _DECODE_ERRORS:  # a broken EXIF block costs the picture its rotation, nothing more
        return None
    return value if isinstance(value, int) else None


def decode_to_array(
    data: bytes,
    size: int = 224,
    interpolation: str = "nearest",
    max_pixels: int = 40_000_000,
    mode: str = "exact",
) -> np.ndarray:
    """Image bytes to a (size, size, 3) uint8 RGB array, ready for the model."""
    return decode(data, size, interpolation, max_pixels, mode=mode).pixels


class ImageDecoder:
    """Decodes many images at once on a thread pool (PIL releases the GIL while decoding)."""

    def __init__(
        self,
        size: int,
        interpolation: str,
        max_pixels: int,
        threads: int = 2,
        thumbnail_side: int | None = None,
        mode: str = "exact",
    ) -> None:
        _reduction(mode, size)  # an unknown mode is refused here, not on each image
        self.size = size
        self.interpolation = interpolation
        self.max_pixels = max_pixels
        self.thumbnail_side = thumbnail_side
        self.mode = mode
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    def decode(self, data: bytes) -> np.ndarray:
        return decode_to_array(data, self.size, self.interpolation, self.max_pixels, self.mode)

    def decode_many(self, blobs: Iterable[bytes]) -> list[np.ndarray | Exception]:
        """Decode each blob; a bad one yields its exception in place, never failing the rest."""
        return [future.result() for future in self.submit(blobs)]

    def submit(self, blobs: Iterable[bytes]) -> list[Future[np.ndarray | Exception]]:
        """Start decoding in the background; each future holds an array or the exception."""
        return [self._pool.submit(_or_error, self.decode, data) for data in blobs]

    def decode_with_thumbnails(self, blobs: Iterable[bytes]) -> list[Decoded | Exception]:
        """decode_many, each image's thumbnail made from its one decode."""
        futures = [self._pool.submit(_or_error, self._decode_both, data) for data in blobs]
        return [future.result() for future in futures]

    def _decode_both(self, data: bytes) -> Decoded:
        args = (self.size, self.interpolation, self.max_pixels, self.thumbnail_side, self.mode)
        return decode(data, *args)


def _or_error(function: Any, data: bytes) -> Any:
    try:
        return function(data)
    except Exception as exc:  # returned per item so one bad image never fails a batch
        return exc
