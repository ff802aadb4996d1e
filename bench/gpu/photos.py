"""Photo-like product pictures at any size, made on the spot (no files to carry).

Each is a demo catalog item (cli/demo_catalog.py: a drawn T-shirt, dress, shoe, bag or watch in
one of 12 colours and 4 patterns, on a light background with a soft shadow), enlarged to the
asked size (bicubic) with sensor-like grain (Gaussian, sigma 3 levels, per pixel and channel),
saved as a baseline 4:2:0 JPEG, quality 90, as catalog originals usually are. Needs only numpy,
Pillow and cli/demo_catalog.py (itself numpy and Pillow), so bench/gpu can run it anywhere.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cli.demo_catalog import write_demo_catalog

GRAIN_SIGMA = 3.0
QUALITY = 90


def product_drawings(count: int, seed: int = 0) -> list[Image.Image]:
    """count distinct demo catalog pictures (240x320), deterministic given seed."""
    with tempfile.TemporaryDirectory() as folder:
        # About 1% of demo rows have no image: ask for a few more than needed.
        write_demo_catalog(Path(folder), count + count // 50 + 2, seed=seed)
        files = sorted((Path(folder) / "images").glob("*.jpg"), key=lambda p: int(p.stem))
        drawings = []
        for path in files[:count]:
            with Image.open(path) as image:
                drawings.append(image.convert("RGB"))
    return drawings


def enlarge(
    drawing: Image.Image, width: int, height: int, seed: int, sigma: float = GRAIN_SIGMA
) -> Image.Image:
    """The drawing at width x height, with per-pixel grain as a camera sensor gives it."""
    big = drawing.resize((width, height), Image.Resampling.BICUBIC)
    if sigma == 0:
        return big
    grain = np.random.default_rng(seed).normal(0, sigma, (height, width, 3))
    pixels = np.asarray(big, np.float32) + grain.astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def jpeg(image: Image.Image, quality: int = QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def photo_jpegs(
    count: int, width: int, height: int, seed: int = 0, sigma: float = GRAIN_SIGMA
) -> list[bytes]:
    """count photo-like JPEGs of width x height (see the module's docstring)."""
    return [
        jpeg(enlarge(drawing, width, height, seed * 1000 + i, sigma))
        for i, drawing in enumerate(product_drawings(count, seed))
    ]
