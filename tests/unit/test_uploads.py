"""Uploads are checked from the header alone: the API never decodes pixels (the worker does)."""

from __future__ import annotations

import base64
import io
import re
import struct
import threading
import zlib

import numpy as np
import pytest
import redis
from flask import Flask
from PIL import Image

from shared import keys
from shared.images import decode_count
from shared.records import TaskStore
from tests.support.images import animated_gif, encode, pattern
from tests.support.journal import journal
from tests.support.stack import wait_until
from workers.publish import Publisher

# The unit tests' app takes at most 50000 bytes and 1000000 pixels (tests/unit/conftest.py).
BASE = pattern(64, 48, seed=1)
JPEG = encode(BASE, "JPEG")
PNG = encode(BASE, "PNG")
LARGE = encode(pattern(600, 400, seed=2), "JPEG", quality=60)
WRONG = "not an image: the data is in no format we can read"


def with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with the size its SOF0 header declares changed: the pixel data stays small."""
    start = jpeg.index(b"\xff\xc0") + 5  # marker, length, precision
    return jpeg[:start] + struct.pack(">HH", height, width) + jpeg[start + 4 :]


def png_with_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR chunk declaring another size (checksum made good)."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def post(client, image: bytes, product_id: str = "a"):
    data = {"product_id": product_id, "image": (io.BytesIO(image), "upload")}
    return client.post("/api/v1/products", data=data)


ACCEPTED = {
    "JPEG": JPEG,
    "PNG": PNG,
    "WEBP": encode(BASE, "WEBP"),
    "GIF": animated_gif(64, 48),
    "BMP": encode(BASE, "BMP"),
    "TIFF": encode(BASE, "TIFF"),
    "MPO": encode(BASE, "MPO", save_all=True, append_images=[pattern(64, 48, seed=3)]),
    "16-bit PNG": encode(Image.new("I;16", (64, 48), 4000), "PNG"),
    "float TIFF": encode(Image.new("F", (64, 48), 0.5), "TIFF"),
    "progressive JPEG": encode(BASE, "JPEG", progressive=True),
    "JPEG with broken data": LARGE[: len(LARGE) // 2],  # the header is sound: the worker decides
    "JPEG with huge pixel data": with_size(JPEG, 1000, 1000),  # 1000000 pixels: at the limit
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_every_supported_image_is_accepted_without_decoding(client, app, name):
    decodes = decode_count()
    response = post(client, ACCEPTED[name])
    assert response.status_code == 202, response.get_json()
    stored = redis.Redis.from_url(app.extensions["lookalike"].settings.redis_url)
    assert stored.get(keys.upload(response.get_json()["task_id"])) == ACCEPTED[name]
    assert decode_count() == decodes


REFUSED = [
    ("empty", b"", 400, "not_an_image", "empty file: expected an image"),
    ("text", b"name,price\nshirt,10\n", 400, "not_an_image", WRONG),
    ("JPEG header cut", JPEG[:30], 400, "truncated_image", "truncated image: Truncated File Read"),
    ("PNG header cut", PNG[:20], 400, "truncated_image", "truncated image: Truncated File Read"),
    ("BMP header cut", ACCEPTED["BMP"][:20], 400, "truncated_image",
     "truncated image: Truncated File Read"),
    ("GIF header cut", ACCEPTED["GIF"][:100], 400, "not_an_image", WRONG),
    ("TIFF header cut", ACCEPTED["TIFF"][:100], 400, "not_an_image", WRONG),
    ("WEBP cut", ACCEPTED["WEBP"][:100], 400, "not_an_image",
     "not an image: could not create decoder object"),
    ("ICO", encode(pattern(32, 32), "ICO"), 415, "unsupported_image_format",
     "unsupported image format ICO: use one of BMP, GIF, JPEG, PNG, TIFF, WEBP"),
    ("huge JPEG", with_size(JPEG, 65000, 65000), 413, "image_too_large",
     "image too large: 65000x65000 is 4225000000 pixels, the limit is 1000000"),
    ("huge PNG", png_with_size(PNG, 100_000, 20), 413, "image_too_large",
     "image too large: 100000x20 is 2000000 pixels, the limit is 1000000"),
    ("one pixel too many", with_size(JPEG, 1000, 1001), 413, "image_too_large",
     "image too large: 1000x1001 is 1001000 pixels, the limit is 1000000"),
    ("WEBP over its own limit", encode(Image.new("RGB", (800, 700)), "WEBP"), 413,
     "image_too_large", "image too large: 800x700 is 560000 pixels, the limit is 500000 "
     "for a WEBP image whose decoding takes 16 bytes a pixel"),
    ("over the bytes limit", b"\xff" * 50_001, 413, "image_too_large",
     "image file is larger than 50000 bytes"),
    ("image over the bytes limit", JPEG + bytes(50_001 - len(JPEG)), 413, "image_too_large",
     "image file is larger than 50000 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("image", "status", "code", "message"),
    [row[1:] for row in REFUSED],
    ids=[row[0] for row in REFUSED],
)
def test_what_the_header_shows_wrong_is_refused_and_changes_nothing(
    client, app, image, status, code, message
):
    decodes = decode_count()
    response = post(client, image)
    assert response.status_code == status
    assert response.get_json() == {"error": {"code": code, "message": message}}
    assert app.extensions["lookalike"].products.count() == 0
    assert app.extensions["lookalike"].queue_depth() == 0
    assert decode_count() == decodes


@pytest.mark.parametrize("path", ["/api/v1/search", "/"])
def test_searches_are_checked_the_same_way_without_decoding(client, path):
    decodes = decode_count()
    data = {"k": "3", "image": (io.BytesIO(with_size(JPEG, 65000, 65000)), "q.jpg")}
    refused = client.post(path, data=data)
    assert refused.status_code == 413
    assert "image too large: 65000x65000 is 4225000000 pixels" in refused.get_data(as_text=True)
    accepted = client.post(path, data={"k": "3", "image": (io.BytesIO(LARGE), "q.jpg")})
    assert accepted.status_code == 202  # no worker here: still embedding
    assert decode_count() == decodes


def finish_search_as_the_worker_does(app: Flask, thumbnail: bytes) -> threading.Thread:
    """Wait for the queued search task and publish its vector and thumbnail, as a worker."""
    settings = app.extensions["lookalike"].settings
    client = redis.Redis.from_url(settings.redis_url)
    tasks = TaskStore(client, settings.task_ttl, settings.search_ttl)
    publisher = Publisher(client, tasks, settings.search_ttl)

    def finish() -> None:
        upload = wait_until(lambda: next(client.scan_iter(keys.upload("*")), None), 10, "no upload")
        record = tasks.get(upload.decode().removeprefix(keys.upload("")))
        assert record is not None and publisher.start(record)
        vector = np.abs(np.random.default_rng(1).normal(size=2048)).astype(np.float32)
        publisher.search_done(record, vector, "resnet50-test", thumbnail)

    worker = threading.Thread(target=finish)
    worker.start()
    return worker


def test_the_gallery_shows_the_thumbnail_the_worker_kept_for_the_search(launch):
    with launch(search_wait=10) as app:
        journal(app, 6)
        thumbnail = encode(pattern(40, 30, seed=8), "JPEG")
        worker = finish_search_as_the_worker_does(app, thumbnail)
        data = {"k": "3", "image": (io.BytesIO(LARGE), "query.jpg")}
        decodes = decode_count()
        page = app.test_client().post("/", data=data).get_data(as_text=True)
        worker.join(10)
        assert decode_count() == decodes
        shown = re.search(r'<img src="data:image/jpeg;base64,([^"]+)" alt="query image">', page)
        assert shown, page[:500]
        assert base64.b64decode(shown.group(1)) == thumbnail
        client = redis.Redis.from_url(app.extensions["lookalike"].settings.redis_url)
        (key,) = client.keys(keys.query_thumbnail("*"))
        assert 3590 <= client.ttl(key) <= 3600  # as long as the search's vector: search_ttl
