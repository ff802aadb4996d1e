"""Peak memory of uploads: small files near the pixel limit must cost a bounded amount.

The bounds, for one image at the default LOOKALIKE_MAX_IMAGE_PIXELS (max_pixels):

- the embed worker's decode (model input and thumbnail from one decode), growth of peak RSS:
  DECODE_BUDGET (8 bytes) x max_pixels + 32 MiB (strips, the thumbnail, the allocator). A worker
  decodes LOOKALIKE_DECODE_THREADS images at once, so it may hold that many times this.
- an API process handling the upload: max_pixels / 4 bytes, a quarter of one 8-bit plane of the
  image: it reads the header only and never holds decoded pixels.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from shared.images import DECODE_BUDGET, check_header, decode_cost
from shared.settings import Settings
from tests.support.stack import ROOT, Stack

MAX_PIXELS = Settings().max_image_pixels
MIB = 1 << 20
DECODE_BOUND = DECODE_BUDGET * MAX_PIXELS + 32 * MIB
API_BOUND = MAX_PIXELS // 4


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def allowed(cost: float) -> int:
    """The pixel limit of images whose decoding takes this many bytes a pixel."""
    return MAX_PIXELS if cost <= DECODE_BUDGET else int(MAX_PIXELS * DECODE_BUDGET / cost)


def fitting(width: int, cost: float) -> tuple[int, int]:
    """The largest image of this width that the limit lets in."""
    return width, allowed(cost) // width


def gray16_png() -> bytes:
    width, height = fitting(8000, 3)
    ramp = (np.arange(width, dtype=np.uint32) % 4096 * 16).astype(np.uint16)
    return encoded(Image.fromarray(np.broadcast_to(ramp, (height, width)).copy()), "PNG")


def rgba_pixels(width: int, height: int) -> Image.Image:
    pixels = np.zeros((height, width, 4), np.uint8)
    pixels[..., 0] = np.arange(width) % 256
    pixels[..., 3] = 200
    return Image.fromarray(pixels)


def rgba_png() -> bytes:
    return encoded(rgba_pixels(*fitting(8000, 4)), "PNG")


def wide_jpeg() -> bytes:
    return encoded(Image.new("RGB", fitting(40000, 4), (200, 30, 40)), "JPEG", quality=50)


def progressive_cmyk_jpeg() -> bytes:
    image = Image.new("CMYK", fitting(40000, 12), (20, 200, 30, 40))
    return encoded(image, "JPEG", quality=50, progressive=True)


def animated_gif() -> bytes:
    frames = [Image.new("P", fitting(8000, 1), colour) for colour in (1, 2)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])


def rgb_tiff() -> bytes:
    image = rgba_pixels(*fitting(8000, 4)).convert("RGB")
    return encoded(image, "TIFF", compression="tiff_deflate")


def float_tiff() -> bytes:
    width, height = fitting(8000, 5)
    values = np.zeros((height, width), np.float32)
    values[:, ::7] = 0.5
    return encoded(Image.fromarray(values), "TIFF", compression="tiff_deflate")


def webp() -> bytes:
    return encoded(rgba_pixels(*fitting(5000, 16)), "WEBP", lossless=True, quality=0, method=0)


def rle8_bmp() -> bytes:
    """An 8-bit BMP compressed with RLE (PIL writes none): runs of 255 pixels, row by row."""
    width, height = fitting(8000, 1)
    runs = b"\xff\x07" * (width // 255) + bytes((width % 255, 9))
    pixels = (runs + b"\x00\x00") * height + b"\x00\x01"
    palette = b"".join(bytes((n, 255 - n, n // 2, 0)) for n in range(256))
    offset = 14 + 40 + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 0, 0, 256, 0)
    return header + info + palette + pixels


NEAR_LIMIT: dict[str, Callable[[], bytes]] = {
    "16-bit grey PNG": gray16_png,
    "RGBA PNG": rgba_png,
    "huge-dimension JPEG": wide_jpeg,
    "progressive CMYK JPEG": progressive_cmyk_jpeg,
    "animated GIF": animated_gif,
    "RGB TIFF": rgb_tiff,
    "32-bit float TIFF": float_tiff,
    "lossless WebP": webp,
    "RLE BMP": rle8_bmp,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Each kind written once, checked to be within the limit of its kind."""
    folder = tmp_path_factory.mktemp("near-limit")
    paths = {}
    for name, make in NEAR_LIMIT.items():
        data = make()
        check_header(data, MAX_PIXELS)  # admitted: within the limit of its kind
        paths[name] = folder / name.replace(" ", "_")
        paths[name].write_bytes(data)
    return paths


def test_the_files_are_small_and_at_the_limit_of_their_kind(files):
    for name, path in files.items():
        image = Image.open(path)
        assert path.stat().st_size < 2 * MIB, name
        assert image.width * image.height > 0.99 * allowed(decode_cost(image)), name


def status(pid: int, field: str) -> int:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def peak_growth(pid: int, action: Callable[[], object]) -> int:
    """How far the process's peak RSS rose above its RSS while action ran."""
    before = status(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    action()
    return status(pid, "VmHWM") - before


def small_like(data: bytes) -> bytes:
    """A 64x48 image of the same format and mode: it loads the decoder before we measure."""
    image = Image.open(io.BytesIO(data))
    options = {"progressive": True} if image.info.get("progressive") else {}
    return encoded(Image.new(image.mode, (64, 48)), image.format or "PNG", **options)


def measure_decode(path: str, interpolation: str) -> None:
    """In a fresh process: the worker's decode of one file, printed as peak RSS growth."""
    import os

    from shared.images import Decoded, ImageDecoder

    settings = Settings()
    decoder = ImageDecoder(
        settings.image_size, interpolation, MAX_PIXELS, 1, settings.thumbnail_size
    )

    def decode(data: bytes) -> None:
        result = decoder.decode_with_thumbnails([data])[0]
        assert isinstance(result, Decoded), result

    data = Path(path).read_bytes()
    decode(small_like(data))
    print(peak_growth(os.getpid(), lambda: decode(data)))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("name", list(NEAR_LIMIT))
def test_the_worker_decodes_within_its_budget(files, name, interpolation):
    code = "import sys; from tests.integration.test_memory import measure_decode; "
    code += "measure_decode(*sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", code, str(files[name]), interpolation],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.split()[-1])
    print(f"{name}, {interpolation}: {growth / MIB:.0f} MiB")
    assert growth <= DECODE_BOUND, f"{growth / MIB:.0f} MiB > {DECODE_BOUND / MIB:.0f} MiB"


@pytest.fixture(scope="module")
def api(tmp_path_factory, weights_file) -> Iterator[tuple[str, int]]:
    """A real API process (gunicorn) on a real Redis: its URL and its worker's pid."""
    stack = Stack(tmp_path_factory.mktemp("stack"), weights_file)
    stack.start_redis()
    url = stack.start_api()
    (worker,) = psutil.Process(stack.processes["api"].pid).children()
    yield url, worker.pid
    stack.stop_all()


def post(url: str, name: str, data: bytes) -> None:
    files = {"image": (name, data, "application/octet-stream")}
    response = requests.post(
        f"{url}/api/v1/products", data={"product_id": "p"}, files=files, timeout=60
    )
    assert response.status_code == 202, response.text


def test_the_api_takes_uploads_without_decoding_them(api, files):
    url, pid = api
    for name, path in files.items():
        data = path.read_bytes()
        post(url, "warm", small_like(data))
        growth = peak_growth(pid, partial(post, url, name, data))
        print(f"{name}: {growth / MIB:.1f} MiB")
        assert growth <= API_BOUND, f"{name}: {growth / MIB:.1f} MiB > {API_BOUND / MIB:.1f} MiB"
