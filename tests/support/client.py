"""A small HTTP client for the tests: post products, poll tasks."""

from __future__ import annotations

import json
import time
from typing import Any

import requests

from tests.support.images import encode, pattern


def product_image(seed: int) -> bytes:
    return encode(pattern(240, 320, seed=seed), "JPEG", quality=90)


def post_product(
    url: str, product_id: str, image: bytes, metadata: dict[str, Any] | None = None
) -> requests.Response:
    data = {"product_id": product_id}
    if metadata is not None:
        data["metadata"] = json.dumps(metadata)
    files = {"image": (f"{product_id}.jpg", image, "image/jpeg")}
    return requests.post(f"{url}/api/v1/products", data=data, files=files, timeout=30)


def wait_task(url: str, task_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = requests.get(f"{url}/api/v1/tasks/{task_id}", timeout=10).json()
        if record["state"] in ("succeeded", "failed"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish in {timeout}s: {record}")


def similar(url: str, product_id: str, **params: Any) -> requests.Response:
    return requests.get(f"{url}/api/v1/products/{product_id}/similar", params=params, timeout=30)
