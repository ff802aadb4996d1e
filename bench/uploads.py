"""Upload cost: server time of `POST /api/v1/products` with header-only validation (now) against
the full decode the API did before (the baseline, kept below), in the same run.

The app runs in this process (Flask's test client) against a real redis-server (appendonly
everysec, as `lookalike up` runs it), with no embed worker. Server time is the WSGI app's own time
per request: multipart parsing, validation, the Redis transaction and the Celery send. Distinct
600x800 JPEGs; the two validations alternate round by round on the same app, so both see the
same machine; Redis is emptied between rounds. The table gives p50 and p90 over all timed posts,
and the validation call alone.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import redis
from PIL import Image, UnidentifiedImageError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api import validation
from api.app import create_app
from cli.redis_server import RedisServer
from shared.errors import ImageTooLarge, NotAnImage, TruncatedImage, UnsupportedImageFormat
from shared.images import SUPPORTED_FORMATS
from shared.settings import Settings
from tests.support.images import make_jpegs

WARMUP = 50
Validate = Callable[[Any, Settings], bytes]


# --- The baseline: the API's image validation before this change, verbatim (full decode). ---
def legacy_open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode bytes into a loaded PIL image (first frame), refusing bad or oversized input."""
    if not data:
        raise NotAnImage("empty file: expected an image")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImage("not an image: the data is in no format we can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if "truncated" in str(exc).lower():
            raise TruncatedImage(f"truncated image: {exc}") from None
        raise NotAnImage(f"not an image: {exc}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise UnsupportedImageFormat(f"unsupported image format {image.format}")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image too large: {width}x{height} is {width * height} pixels")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        if "truncated" in str(exc) or "broken data stream" in str(exc):
            raise TruncatedImage(f"truncated image: {exc}") from None
        raise NotAnImage(f"corrupt {image.format} image: {exc}") from None
    return image


def legacy_image_validation(upload: Any, settings: Settings) -> bytes:
    """api.validation.image before this change: every upload decoded in full."""
    data: bytes = upload.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise ImageTooLarge(f"image file is larger than {settings.max_image_bytes} bytes")
    legacy_open_image(data, settings.max_image_pixels)
    return data


# --- End of the baseline. ---

VARIANTS: dict[str, Validate] = {
    "old: full decode (baseline)": legacy_image_validation,
    "new: header only": validation.image,
}


class Timed:
    """WSGI middleware that records each request's server time."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seconds: list[float] = []

    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        started = time.perf_counter()
        try:
            return self.app(environ, start_response)
        finally:
            self.seconds.append(time.perf_counter() - started)


def one_round(app: Any, timed: Timed, validate: Validate, blobs: list[bytes]) -> list[float]:
    """Post every blob with this validation in place; the server time of each."""
    validation.image = validate  # type: ignore[assignment]  # the views call it by module
    client = app.test_client()
    timed.seconds.clear()
    for n, blob in enumerate(blobs):
        data = {"product_id": f"p{n}", "image": (io.BytesIO(blob), f"{n}.jpg")}
        response = client.post("/api/v1/products", data=data)
        assert response.status_code == 202, response.get_data(as_text=True)
    return list(timed.seconds)


def validation_alone(validate: Validate, settings: Settings, blobs: list[bytes]) -> list[float]:
    """The validation call alone, on the same uploads."""
    from werkzeug.datastructures import FileStorage

    times = []
    for blob in blobs:
        upload = FileStorage(io.BytesIO(blob), "x.jpg")
        started = time.perf_counter()
        validate(upload, settings)
        times.append(time.perf_counter() - started)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=200, help="timed posts per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each validation")
    args = parser.parse_args()
    blobs = make_jpegs(args.uploads, 600, 800)
    original = validation.image
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        settings = Settings(redis_url=server.url, data_dir=Path(tmp) / "data")
        app = create_app(settings)
        timed = Timed(app.wsgi_app)
        app.wsgi_app = timed  # type: ignore[method-assign]
        client = redis.Redis.from_url(server.url)
        results: dict[str, list[float]] = {name: [] for name in VARIANTS}
        alone: dict[str, list[float]] = {name: [] for name in VARIANTS}
        try:
            for validate in VARIANTS.values():
                one_round(app, timed, validate, blobs[:WARMUP])
            for round_ in range(args.rounds):
                for name, validate in VARIANTS.items():
                    client.flushall()
                    seconds = one_round(app, timed, validate, blobs)
                    results[name] += seconds
                    alone[name] += validation_alone(validate, settings, blobs)
                    p50 = statistics.median(seconds) * 1000
                    print(f"round {round_ + 1} {name:<28} p50 {p50:6.2f} ms", file=sys.stderr)
        finally:
            validation.image = original
            app.extensions["lookalike"].replica.stop()
    print_table(results, alone, args, statistics.median(map(len, blobs)))


def print_table(
    results: dict[str, list[float]],
    alone: dict[str, list[float]],
    args: argparse.Namespace,
    size: float,
) -> None:
    posts = len(next(iter(results.values())))
    print(
        f"POST /api/v1/products, 600x800 JPEG (median {size / 1024:.0f} KB), server time over "
        f"{posts} posts each ({args.rounds} rounds of {args.uploads}), Flask test client, "
        "real redis-server"
    )
    print(f"{'validation':<30}{'p50 ms':>9}{'p90 ms':>9}{'validation p50 ms':>19}")
    for name in results:
        print(
            f"{name:<30}{percentile(results[name], 50):>9.2f}{percentile(results[name], 90):>9.2f}"
            f"{percentile(alone[name], 50):>19.3f}"
        )
    old, new = (results[name] for name in VARIANTS)
    print(
        f"old / new: p50 {percentile(old, 50) / percentile(new, 50):.2f}x, "
        f"p90 {percentile(old, 90) / percentile(new, 90):.2f}x"
    )


if __name__ == "__main__":
    main()
