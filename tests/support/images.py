"""Small real images in every format and mode the decoder must accept."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def pattern(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour pattern plus noise: realistic enough for a CNN, distinct per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, size=3)
    freq = rng.uniform(0.01, 0.08, size=3)
    channels = [127 + 120 * np.sin(freq[c] * (xx + yy * (c + 1)) + phase[c]) for c in range(3)]
    rgb = np.stack(channels, axis=-1) + rng.normal(0, 8, size=(height, width, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def animated_gif(width: int, height: int) -> bytes:
    frames = [pattern(width, height, seed).convert("P") for seed in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def varied_images() -> dict[str, bytes]:
    """Name -> encoded bytes, covering formats, modes and sizes (small, odd, large, square)."""
    base = pattern(300, 400, seed=7)
    rgba = base.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    return {
        "rgb.jpg": encode(base, "JPEG", quality=90),
        "small.jpg": encode(pattern(60, 80, seed=3), "JPEG"),
        "large.jpg": encode(pattern(1800, 2400, seed=4), "JPEG", quality=85),
        "square224.png": encode(pattern(224, 224, seed=5), "PNG"),
        "gray.png": encode(base.convert("L"), "PNG"),
        "gray_alpha.png": encode(rgba.convert("LA"), "PNG"),
        "palette.png": encode(base.convert("P"), "PNG"),
        "rgba.png": encode(rgba, "PNG"),
        "cmyk.jpg": encode(base.convert("CMYK"), "JPEG"),
        "bilevel.png": encode(base.convert("1"), "PNG"),
        "image.webp": encode(base, "WEBP", quality=90),
        "animated.gif": animated_gif(200, 150),
        "image.bmp": encode(base, "BMP"),
        "image.tiff": encode(base, "TIFF"),
    }


def make_jpegs(count: int, width: int, height: int) -> list[bytes]:
    """Distinct photo-like JPEGs (smooth colour fields plus noise) of the given size."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    blobs = []
    for _ in range(count):
        freq, phase = rng.uniform(0.005, 0.05, 3), rng.uniform(0, 6.3, 3)
        rgb = np.stack([127 + 120 * np.sin(freq[c] * (xx + c * yy) + phase[c]) for c in range(3)])
        pixels = np.clip(rgb.transpose(1, 2, 0) + rng.normal(0, 6, (height, width, 3)), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return blobs
