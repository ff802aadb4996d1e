"""End to end over real HTTP: post, poll, similar, search, upsert, delete, replicas, crashes."""

from __future__ import annotations

import io
import time

import pytest
import redis
import requests
from PIL import Image

from shared import keys
from tests.support.client import post_product, product_image, similar, wait_task
from tests.support.images import encode, pattern
from tests.support.stack import Stack, wait_until

CATEGORIES = ["Shirts", "Shoes", "Watches"]


@pytest.fixture(scope="module")
def api(stack: Stack) -> str:
    return stack.api_urls[0]


@pytest.fixture(scope="module")
def catalog(stack: Stack, api: str) -> dict[str, dict]:
    """24 products, posted over HTTP and polled to succeeded."""
    posted = {}
    for n in range(24):
        metadata = {"articleType": CATEGORIES[n % 3], "gender": "Women" if n < 12 else "Men"}
        response = post_product(api, f"p{n}", product_image(n), metadata)
        assert response.status_code == 202, response.text
        body = response.json()
        assert response.headers["Location"] == body["status_url"]
        posted[f"p{n}"] = body
    for product_id, body in posted.items():
        record = wait_task(api, body["task_id"])
        assert record["state"] == "succeeded", record
        assert record["result"]["product_id"] == product_id
    return posted


def test_posted_products_are_indexed_with_their_metadata(api, catalog):
    product = requests.get(f"{api}/api/v1/products/p4", timeout=10).json()
    assert product["indexed"] is True
    assert product["metadata"] == {"articleType": "Shoes", "gender": "Women"}
    assert product["model_id"].startswith("resnet50-max-w")


def test_similar_is_sorted_excludes_itself_and_honours_k(api, catalog):
    wait_until(lambda: similar(api, "p0").status_code == 200, 5, "p0 not queryable")
    body = similar(api, "p0", k=7).json()
    scores = [hit["score"] for hit in body["results"]]
    assert len(scores) == 7
    assert scores == sorted(scores, reverse=True)
    assert "p0" not in [hit["product_id"] for hit in body["results"]]
    assert body["results"][0]["metadata"]


def test_similar_filters_on_metadata(api, catalog):
    filters = {"filter.articleType": "Watches", "filter.gender": "Men"}
    body = similar(api, "p0", k=20, **filters).json()
    hits = body["results"]
    assert hits and all(hit["metadata"]["articleType"] == "Watches" for hit in hits)
    assert all(hit["metadata"]["gender"] == "Men" for hit in hits)
    assert len(hits) == 4  # p14, p17, p20, p23


def test_similar_k_out_of_range_is_400(api, catalog):
    response = similar(api, "p0", k=0)
    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": "bad_request", "message": "k must be an integer from 1 to 100, got 0"}
    }


def test_similar_unknown_product_is_404(api, catalog):
    response = similar(api, "nope")
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "not_found", "message": "unknown product nope"}


def test_unknown_task_is_404(api):
    response = requests.get(f"{api}/api/v1/tasks/0123", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "unknown task 0123"


def test_thumbnail_is_served(api, catalog):
    response = requests.get(f"{api}/api/v1/products/p3/image", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(response.content)).size) <= 256


def test_near_duplicate_is_found_top1_by_search(api, catalog):
    original = pattern(240, 320, seed=9)
    altered = encode(original.resize((216, 288), Image.Resampling.BILINEAR), "JPEG", quality=70)
    files = {"image": ("query.jpg", altered, "image/jpeg")}
    response = requests.post(f"{api}/api/v1/search", files=files, data={"k": 3}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["product_id"] == "p9"


def test_search_whose_image_the_worker_refuses_is_422(stack, api, catalog):
    stack.stop("embed")
    stack.start_worker(max_image_pixels=1000)  # stricter than the API: it refuses at embed time
    try:
        files = {"image": ("query.jpg", product_image(3), "image/jpeg")}
        response = requests.post(f"{api}/api/v1/search", files=files, timeout=60)
    finally:
        stack.stop("embed")
        stack.start_worker()
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == {
        "code": "image_too_large",
        "message": "image too large: 240x320 is 76800 pixels, the limit is 1000",
    }
    assert requests.get(f"{api}/api/v1/tasks/{body['task_id']}", timeout=10).json()["state"] == (
        "failed"
    )


@pytest.mark.parametrize(
    ("data", "files", "status", "error"),
    [
        ({}, {"image": ("a.jpg", b"x", "image/jpeg")}, 400, "missing field product_id"),
        ({"product_id": "a b"}, {"image": ("a.jpg", b"x", "image/jpeg")}, 400, None),
        ({"product_id": "ok"}, {}, 400, "missing file field image"),
        ({"product_id": "ok", "metadata": "{bad"}, None, 400, None),
        ({"product_id": "ok", "metadata": "[1]"}, None, 400, "metadata must be a JSON object"),
        ({"product_id": "ok"}, {"image": ("a.jpg", b"text", "image/jpeg")}, 400,
         "not an image: the data is in no format we can read"),
    ],
)  # fmt: skip
def test_bad_posts_are_4xx_and_change_nothing(api, stack, data, files, status, error):
    if files is None:
        files = {"image": ("a.jpg", product_image(1), "image/jpeg")}
    client = redis.Redis.from_url(stack.redis.url)
    before = client.scard(keys.PRODUCTS), client.xlen(keys.JOURNAL)
    response = requests.post(f"{api}/api/v1/products", data=data, files=files, timeout=10)
    assert response.status_code == status
    if error is not None:
        assert response.json()["error"]["message"] == error
    assert (client.scard(keys.PRODUCTS), client.xlen(keys.JOURNAL)) == before


def test_upsert_with_a_new_image_changes_neighbours(api, catalog):
    response = post_product(api, "p1", product_image(20), {"articleType": "Shirts"})
    assert wait_task(api, response.json()["task_id"])["state"] == "succeeded"

    def p1_is_twin_of_p20():
        top = similar(api, "p20", k=1).json()["results"][0]
        return top["product_id"] == "p1" and top["score"] > 0.9999

    wait_until(p1_is_twin_of_p20, 2, "p20's top neighbour is not the re-posted p1")


def test_delete_removes_it_from_results(api, catalog):
    response = requests.delete(f"{api}/api/v1/products/p2", timeout=10)
    assert response.status_code == 204

    def gone():
        return all(hit["product_id"] != "p2" for hit in similar(api, "p5", k=30).json()["results"])

    wait_until(gone, 2, "p2 still in results")
    assert requests.get(f"{api}/api/v1/products/p2", timeout=10).status_code == 404
    assert requests.delete(f"{api}/api/v1/products/p2", timeout=10).status_code == 404


def test_item_posted_to_one_api_is_found_through_another_within_2s(stack, api, catalog):
    other = stack.start_api("api2")
    wait_until(lambda: similar(other, "p0").status_code == 200, 30, "api2 has no replica")
    response = post_product(api, "fresh", product_image(5), {"articleType": "Shoes"})
    assert wait_task(api, response.json()["task_id"])["state"] == "succeeded"
    succeeded = time.monotonic()

    def other_sees_it():
        return similar(other, "fresh", k=1).status_code == 200

    wait_until(other_sees_it, 2, "api2 did not see the new item within 2s", interval=0.02)
    assert time.monotonic() - succeeded <= 2.0
    assert similar(other, "fresh", k=1).json()["results"][0]["product_id"] == "p5"
    stack.stop("api2")
