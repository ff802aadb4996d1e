"""The API's views through Flask's test client, against a real redis-server (no workers)."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from flask.testing import FlaskClient
from PIL import Image

from tests.support.images import encode, pattern
from tests.support.journal import journal

JPEG = encode(pattern(64, 48, seed=1), "JPEG")


def post(client: FlaskClient, image: bytes | None = JPEG, **form: str):
    data: dict[str, object] = dict(form)
    if image is not None:
        data["image"] = (io.BytesIO(image), "x.jpg")
    return client.post("/api/v1/products", data=data, content_type="multipart/form-data")


def error_of(response) -> dict[str, str]:
    return response.get_json()["error"]


def test_post_product_is_accepted_and_queued(client):
    response = post(client, product_id="shirt-1", metadata='{"gender": "Men"}')
    assert response.status_code == 202
    body = response.get_json()
    assert body["product_id"] == "shirt-1"
    assert response.headers["Location"] == body["status_url"] == f"/api/v1/tasks/{body['task_id']}"
    task = client.get(body["status_url"]).get_json()
    assert (task["state"], task["kind"], task["product_id"]) == ("queued", "index", "shirt-1")
    product = client.get("/api/v1/products/shirt-1").get_json()
    assert product["indexed"] is False
    assert product["metadata"] == {"gender": "Men"}


def test_similar_of_a_product_not_yet_indexed_is_409(client):
    post(client, product_id="shirt-2")
    response = client.get("/api/v1/products/shirt-2/similar")
    assert response.status_code == 409
    assert error_of(response) == {
        "code": "not_indexed",
        "message": "product shirt-2 is not indexed yet",
    }


@pytest.mark.parametrize(
    ("form", "image", "status", "code", "message"),
    [
        ({"product_id": "-bad"}, JPEG, 400, "bad_request",
         "invalid product_id: use 1-128 characters of A-Z a-z 0-9 . _ : -, "
         "starting with a letter or digit"),
        ({"product_id": "x" * 129}, JPEG, 400, "bad_request", None),
        ({}, JPEG, 400, "bad_request", "missing field product_id"),
        ({"product_id": "a"}, None, 400, "bad_request", "missing file field image"),
        ({"product_id": "a", "metadata": "{nope"}, JPEG, 400, "bad_request",
         "metadata is not valid JSON: Expecting property name enclosed in double quotes: "
         "line 1 column 2 (char 1)"),
        ({"product_id": "a", "metadata": '"text"'}, JPEG, 400, "bad_request",
         "metadata must be a JSON object"),
        ({"product_id": "a"}, b"GIF89a-broken", 400, "not_an_image", None),
        ({"product_id": "a"}, b"plain text", 400, "not_an_image",
         "not an image: the data is in no format we can read"),
        ({"product_id": "a"}, JPEG[: len(JPEG) // 2], 400, "truncated_image", None),
        ({"product_id": "a"}, encode(pattern(16, 16), "ICO"), 415, "unsupported_image_format",
         None),
        ({"product_id": "a"}, encode(pattern(20, 20), "PNG")[:20], 400, "truncated_image",
         "truncated image: Truncated File Read"),
        ({"product_id": "a"}, b"\xff" * 60_000, 413, "image_too_large",
         "image file is larger than 50000 bytes"),
    ],
)  # fmt: skip
def test_bad_posts_are_4xx_json_and_change_nothing(client, app, form, image, status, code, message):
    response = post(client, image=image, **form)
    assert response.status_code == status, response.get_json()
    if code is not None:
        assert error_of(response)["code"] == code
    if message is not None:
        assert error_of(response)["message"] == message
    assert app.extensions["lookalike"].products.count() == 0


def test_image_with_too_many_pixels_is_413(client):
    big = encode(Image.new("RGB", (1200, 1000), "navy"), "PNG")
    response = post(client, image=big, product_id="big")
    assert response.status_code == 413
    assert error_of(response) == {
        "code": "image_too_large",
        "message": "image too large: 1200x1000 is 1200000 pixels, the limit is 1000000",
    }


def test_metadata_over_the_size_limit_is_400(client):
    response = post(client, product_id="a", metadata=json.dumps({"x": "y" * 20000}))
    assert response.status_code == 400
    assert error_of(response)["message"] == "metadata is larger than 16384 bytes"


def test_unknown_product_task_and_route_are_404_json(client):
    assert error_of(client.get("/api/v1/products/none")) == {
        "code": "not_found",
        "message": "unknown product none",
    }
    assert client.delete("/api/v1/products/none").status_code == 404
    assert client.get("/api/v1/products/none/image").status_code == 404
    assert client.get("/api/v1/tasks/abc").status_code == 404
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def search(client: FlaskClient, k: str):
    data = {"image": (io.BytesIO(JPEG), "q.jpg"), "k": k}
    return client.post("/api/v1/search", data=data, content_type="multipart/form-data")


def test_search_without_workers_answers_202_with_a_task(client):
    response = search(client, "3")
    assert response.status_code == 202
    task = client.get(response.get_json()["status_url"]).get_json()
    assert (task["kind"], task["state"]) == ("search", "queued")


def test_search_k_out_of_range_is_400(client):
    response = search(client, "101")
    assert response.status_code == 400
    assert error_of(response)["message"] == "k must be an integer from 1 to 100, got 101"


def test_readyz_without_embed_workers_is_503(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["embed_workers"] == "no embed worker answered"
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_metrics_count_requests_tasks_and_queue_depth(client):
    post(client, product_id="m1")
    post(client, product_id="m2")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'lookalike_tasks_total{state="queued"} 2.0' in text
    assert "lookalike_queue_depth 2.0" in text
    assert "lookalike_index_items 0.0" in text
    posts = 'lookalike_http_requests_total{endpoint="/api/v1/products",method="POST",status="202"}'
    assert f"{posts} 2.0" in text


def test_products_are_listed_page_by_page(client):
    for n in range(7):
        post(client, product_id=f"l{n}")
    seen, cursor = [], 0
    while True:
        page = client.get(f"/api/v1/products?limit=3&cursor={cursor}").get_json()
        assert page["total"] == 7
        seen += [product["product_id"] for product in page["products"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == [f"l{n}" for n in range(7)]


def test_bad_listing_limit_is_400(client):
    response = client.get("/api/v1/products?limit=0")
    assert response.status_code == 400
    assert error_of(response)["message"] == "limit must be an integer from 1 to 5000, got '0'"


def test_api_key_is_required_for_changes_when_set(launch):
    with launch(api_key="s3cret") as app:
        client = app.test_client()
        response = post(client, product_id="locked")
        assert response.status_code == 401
        assert error_of(response) == {
            "code": "unauthorized",
            "message": "missing or wrong API key: send it in the X-API-Key header",
        }
        assert client.get("/api/v1/products/locked").status_code == 404
        data = {"product_id": "locked", "image": (io.BytesIO(JPEG), "x.jpg")}
        accepted = client.post("/api/v1/products", data=data, headers={"X-API-Key": "s3cret"})
        assert accepted.status_code == 202


def test_the_api_never_imports_tensorflow_or_worker_code():
    import subprocess
    import sys

    code = (
        "import sys, api.app, api.services, api.views, api.gallery, api.health\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'workers')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_metrics_report_journal_and_lags(app, client):
    journal(app, 3)
    time.sleep(0.3)
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "lookalike_journal_entries") == 3
    assert metric(text, "lookalike_replica_lag_seconds") == 0.0  # caught up
    assert metric(text, "lookalike_writer_lag_seconds") >= 0.3  # no writer has applied any
