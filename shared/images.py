"""Image bytes to model input: decode, validate, convert to RGB, resize like keras load_img."""

from __future__ import annotations

import io
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from shared.errors import ImageTooLarge, NotAnImage, TruncatedImage, UnsupportedImageFormat

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})

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

# Never decode a partial file as if it were whole; we refuse it instead.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own limit (a setting) replaces PIL's global one, checked from the header before decoding.
Image.MAX_IMAGE_PIXELS = None


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode bytes into a loaded PIL image (first frame), refusing bad or oversized input."""
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
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image too large: {width}x{height} is {width * height} pixels, "
            f"the limit is {max_pixels}"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        if "truncated" in str(exc) or "broken data stream" in str(exc):
            raise TruncatedImage(f"truncated image: {exc}") from None
        raise NotAnImage(f"corrupt {image.format} image: {exc}") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB, as load_img does, except that >8-bit samples are scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES:
        return _wide_to_rgb(image)
    return image.convert("RGB")


def _wide_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    else:
        top = 65535.0 if values.max(initial=0.0) > 255 else 255.0
    gray = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def resize(image: Image.Image, size: int, interpolation: str = "nearest") -> Image.Image:
    """Resize to size x size ignoring aspect ratio, exactly as load_img(target_size=...) does."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), INTERPOLATIONS[interpolation])


def decode_to_array(
    data: bytes, size: int = 224, interpolation: str = "nearest", max_pixels: int = 40_000_000
) -> np.ndarray:
    """Image bytes to a (size, size, 3) uint8 RGB array, ready for the model."""
    image = resize(to_rgb(open_image(data, max_pixels)), size, interpolation)
    return np.asarray(image, dtype=np.uint8)


class ImageDecoder:
    """Decodes many images at once on a thread pool (PIL releases the GIL while decoding)."""

    def __init__(self, size: int, interpolation: str, max_pixels: int, threads: int = 2) -> None:
        self.size = size
        self.interpolation = interpolation
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    def decode(self, data: bytes) -> np.ndarray:
        return decode_to_array(data, self.size, self.interpolation, self.max_pixels)

    def decode_many(self, blobs: Iterable[bytes]) -> list[np.ndarray | Exception]:
        """Decode each blob; a bad one yields its exception in place, never failing the rest."""
        return [future.result() for future in self.submit(blobs)]

    def submit(self, blobs: Iterable[bytes]) -> list[Future[np.ndarray | Exception]]:
        """Start decoding in the background; each future holds an array or the exception."""
        return [self._pool.submit(self._decode_or_error, data) for data in blobs]

    def _decode_or_error(self, data: bytes) -> np.ndarray | Exception:
        try:
            return self.decode(data)
        except Exception as exc:  # returned per item so one bad image never fails a batch
            return exc


def make_thumbnail(data: bytes, max_side: int, max_pixels: int) -> bytes:
    """A small JPEG of the image, aspect ratio kept, for galleries and result pages."""
    image = open_image(data, max_pixels)
    image = ImageOps.exif_transpose(to_rgb(image))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85, optimize=True)
    return buffer.getvalue()
