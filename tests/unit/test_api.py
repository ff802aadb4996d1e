"""The API's views through Flask's test client, against a real redis-server (no workers)."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.serving import make_server

from api.errors import INDEX_LOADING, REDIS_DOWN, REDIS_FULL
from cli.main import main
from shared import keys
from tests.support.images import encode, pattern
from tests.support.journal import journal
from tests.support.stack import wait_until

JPEG = encode(pattern(64, 48, seed=1), "JPEG")
FILTER_HINT = "filters are filter.<field>=<value>"


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


def product_reads(redis_server) -> int:
    """HGETALLs Redis has answered: each read of a product's record is one."""
    stats = redis.Redis.from_url(redis_server.url).info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


@pytest.mark.parametrize(
    ("product_id", "status", "message", "reads"),
    [
        ("0", 200, None, 0),
        ("shirt-3", 409, "product shirt-3 is not indexed yet", 1),
        ("nobody", 404, "unknown product nobody", 1),
    ],
)
def test_similar_asks_redis_only_of_a_product_the_replica_does_not_hold(
    app, client, redis_server, product_id, status, message, reads
):
    journal(app, 3)
    post(client, product_id="shirt-3")
    before = product_reads(redis_server)
    for etag in (None, "*"):  # a search, and a revalidation
        headers = {"If-None-Match": etag} if etag else {}
        response = client.get(f"/api/v1/products/{product_id}/similar?k=2", headers=headers)
        assert response.status_code == (304 if etag and status == 200 else status)
        if message:
            assert error_of(response)["message"] == message
    assert product_reads(redis_server) - before == 2 * reads


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
    assert "lookalike_replica_items_since_snapshot 0.0" in text
    assert "lookalike_replica_waiting_for_snapshot 0.0" in text
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


def upload_form() -> dict[str, object]:
    return {"product_id": "up-1", "k": "3", "image": (io.BytesIO(JPEG), "x.jpg")}


# (method, url, status with Redis stopped); "0" is in the replica, "posted" only in Redis.
REDIS_DOWN_ROWS = [
    ("GET", "/api/v1/products", 503),
    ("POST", "/api/v1/products", 503),
    ("GET", "/api/v1/products/0", 503),
    ("DELETE", "/api/v1/products/0", 503),
    ("GET", "/api/v1/products/0/image", 503),
    ("GET", "/api/v1/products/0/similar", 200),
    ("GET", "/api/v1/products/posted/similar", 503),
    ("POST", "/api/v1/search", 503),
    ("GET", "/api/v1/tasks/abc", 503),
    ("GET", "/api/v1/index", 503),
    ("GET", "/metrics", 503),
    ("GET", "/readyz", 503),
    ("GET", "/healthz", 200),
    ("GET", "/api/v1/openapi.json", 200),
    ("GET", "/", 200),  # the grid is the replica's
    ("GET", "/?product_id=0", 200),
    ("GET", "/?product_id=posted", 503),
    ("GET", "/random", 503),
    ("POST", "/", 503),
]


@contextmanager
def redis_stopped(server) -> Iterator[None]:
    """The test's redis-server stopped for the block, started again (empty) after it."""
    server.stop()
    try:
        yield
    finally:
        server.start()


def test_the_redis_table_has_every_route(app):
    adapter = app.url_map.bind("localhost")
    tabled = {adapter.match(url.split("?")[0], method)[0] for method, url, _ in REDIS_DOWN_ROWS}
    routes = {rule.endpoint for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert tabled == routes


@pytest.mark.parametrize(("method", "url", "status"), REDIS_DOWN_ROWS, ids=str)
def test_with_redis_stopped_a_route_answers_503_or_from_the_replica(
    app, client, redis_server, method, url, status
):
    journal(app, 3)
    post(client, product_id="posted")
    data = upload_form() if method == "POST" else None
    with redis_stopped(redis_server):
        response = client.open(url, method=method, data=data)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    if status != 503:
        return
    assert response.headers["Retry-After"] == "5"
    if url == "/readyz":  # its body is the readiness report, which names the failing check
        assert response.get_json()["checks"]["redis"].startswith("unreachable: ")
    elif response.is_json:
        assert error_of(response) == {"code": "redis_unavailable", "message": REDIS_DOWN}
    else:
        assert f'role="alert">{REDIS_DOWN}' in response.get_data(as_text=True)


def test_similar_without_redis_answers_from_the_replica_with_its_metadata(
    app, client, redis_server
):
    journal(app, 3)
    with redis_stopped(redis_server):
        body = client.get("/api/v1/products/0/similar?k=2&filter.baseColour=Blue").get_json()
        page = client.get("/?product_id=0&k=5").get_data(as_text=True)
    assert body["results"] == [
        {"product_id": "1", "score": body["results"][0]["score"],
         "metadata": {"productDisplayName": "Item 1", "baseColour": "Blue"}},
    ]  # fmt: skip
    assert "<title>lookalike · Item 0</title>" in page
    assert set(re.findall(r'class="card" href="/\?product_id=(\w+)', page)) == {"1", "2"}


def test_the_api_recovers_when_redis_is_back(app, client, redis_server):
    with redis_stopped(redis_server):
        assert post(client, product_id="r1").status_code == 503
    response = post(client, product_id="r1")
    assert response.status_code == 202, response.get_json()
    assert client.get("/api/v1/products/r1").get_json()["indexed"] is False


@pytest.fixture
def loading_app(app) -> Flask:
    """An app as a process whose replica has not loaded yet: not following, `loaded` unset."""
    replica = app.extensions["lookalike"].replica
    replica.stop()
    replica.loaded.clear()
    return app


def test_similar_and_search_while_the_index_loads_are_503(loading_app, redis_server):
    client = loading_app.test_client()
    post(client, product_id="p1")
    gallery_search = {"k": "5", "image": (io.BytesIO(JPEG), "q.jpg")}
    responses = [
        client.get("/api/v1/products/p1/similar"),
        client.get("/api/v1/products/unknown/similar"),
        search(client, "3"),
        client.get("/?product_id=p1"),
        client.get("/"),
        client.post("/", data=gallery_search),
    ]
    for response in responses:
        assert response.status_code == 503, response.get_data(as_text=True)[:300]
        assert response.headers["Retry-After"] == "5"
    for response in responses[:3]:
        assert error_of(response) == {"code": "index_loading", "message": INDEX_LOADING}
    for response in responses[3:]:
        assert f'role="alert">{INDEX_LOADING}' in response.get_data(as_text=True)
    stored = redis.Redis.from_url(redis_server.url)
    assert [key.decode() for key in stored.scan_iter(keys.PREFIX + "task:*")] == [
        keys.task(post_task_of(loading_app, "p1"))
    ]  # no search task was staged
    loading_app.extensions["lookalike"].replica.loaded.set()  # as the load ends
    assert client.get("/api/v1/products/p1/similar").status_code == 409


def post_task_of(app: Flask, product_id: str) -> str:
    record = app.extensions["lookalike"].products.get(product_id)
    return str(record["pending_task"])


OVERLOADED_QUEUE = (
    "the embed queue holds 3 tasks, at its limit of 3 (LOOKALIKE_MAX_QUEUED); try again later"
)


def test_uploads_get_503_while_the_queue_is_full_and_nothing_is_stored(launch):
    with launch(max_queued=3) as app:
        client = app.test_client()
        assert [post(client, product_id=f"q{n}").status_code for n in range(3)] == [202] * 3
        too_large = app.config["MAX_CONTENT_LENGTH"] + 1  # a read body would be a 413
        responses = [
            post(client, product_id="q3"),
            search(client, "3"),
            client.post("/api/v1/products", data=b"x" * too_large, content_type="text/plain"),
        ]
        for response in responses:
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "5"
            assert error_of(response) == {"code": "overloaded", "message": OVERLOADED_QUEUE}
        services = app.extensions["lookalike"]
        assert (services.products.count(), services.queue_depth()) == (3, 3)
        assert client.get("/api/v1/products/q0").status_code == 200  # reads go on


@contextmanager
def maxmemory(server, value: int) -> Iterator[None]:
    admin = redis.Redis.from_url(server.url)
    admin.config_set("maxmemory", value)
    try:
        yield
    finally:
        admin.config_set("maxmemory", 0)


def test_uploads_get_503_when_redis_memory_is_past_the_fraction(launch, redis_server):
    with launch(max_redis_memory_fraction=0.5) as app:
        client = app.test_client()
        used = int(redis.Redis.from_url(redis_server.url).info("memory")["used_memory"])
        limit = used * 3 // 2  # writes still fit: only our own limit refuses them
        with maxmemory(redis_server, limit):
            responses = [post(client, product_id="m1"), search(client, "3")]
        pattern = (
            rf"Redis uses \d+ of its {limit} bytes of memory, more than 0.5 of it "
            r"\(LOOKALIKE_MAX_REDIS_MEMORY_FRACTION\); try again later"
        )
        for response in responses:
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "5"
            assert error_of(response)["code"] == "overloaded"
            assert re.fullmatch(pattern, error_of(response)["message"]), error_of(response)
        assert app.extensions["lookalike"].products.count() == 0


def test_metrics_report_redis_memory(client, redis_server):
    with maxmemory(redis_server, 100 * 2**20):
        text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "lookalike_redis_maxmemory_bytes") == 100 * 2**20
    assert metric(text, "lookalike_redis_used_memory_bytes") > 0


def test_searches_beyond_the_waiting_limit_answer_202_at_once(launch):
    with launch(max_waiting_searches=1, search_wait=3) as app:
        services = app.extensions["lookalike"]
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            waiting = pool.submit(search, app.test_client(), "3")
            wait_until(lambda: services.queue_depth() == 1, 5, "the first search was not queued")
            time.sleep(0.2)  # from queued to waiting is a few lines
            surplus = search(app.test_client(), "3")
            answered = time.monotonic() - started
            assert surplus.status_code == 202
            assert answered < 1.5
            assert waiting.result().status_code == 202
            assert time.monotonic() - started >= 3


def test_no_waiting_searches_means_every_search_is_202_at_once(launch):
    with launch(max_waiting_searches=0, search_wait=30) as app:
        started = time.monotonic()
        assert search(app.test_client(), "3").status_code == 202
        assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("_=1234", f"unknown query parameter '_'; {FILTER_HINT}"),
        ("gender=Men", f"unknown query parameter 'gender'; {FILTER_HINT}"),
        ("k=2&filter=Men", f"unknown query parameter 'filter'; {FILTER_HINT}"),
        ("filter.=Men", f"unknown query parameter 'filter.'; {FILTER_HINT}"),
        ("Filter.gender=Men", f"unknown query parameter 'Filter.gender'; {FILTER_HINT}"),
        ("K=2", f"unknown query parameter 'K'; {FILTER_HINT}"),
    ],
)
def test_similar_unknown_query_parameter_is_400(app, client, query, message):
    journal(app, 3)
    post(client, product_id="0")
    response = client.get(f"/api/v1/products/0/similar?{query}")
    assert response.status_code == 400
    assert error_of(response) == {"code": "bad_request", "message": message}


def test_similar_filters_are_named_filter_dot_field(app, client):
    journal(app, 9)
    post(client, product_id="0")
    body = client.get("/api/v1/products/0/similar?k=10&filter.baseColour=Blue").get_json()
    assert body["filters"] == {"baseColour": "Blue"}
    assert sorted(hit["product_id"] for hit in body["results"]) == ["1", "4", "7"]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"_": "1"}, f"unknown form field '_'; {FILTER_HINT}"),
        ({"gender": "Men"}, f"unknown form field 'gender'; {FILTER_HINT}"),
        ({"api_key": "x"}, f"unknown form field 'api_key'; {FILTER_HINT}"),
        ({"filter.": "x"}, f"unknown form field 'filter.'; {FILTER_HINT}"),
    ],
)
def test_search_unknown_form_field_is_400_and_stores_nothing(app, client, form, message):
    data = {"image": (io.BytesIO(JPEG), "q.jpg"), **form}
    response = client.post("/api/v1/search", data=data)
    assert response.status_code == 400
    assert error_of(response) == {"code": "bad_request", "message": message}
    assert app.extensions["lookalike"].queue_depth() == 0


@pytest.mark.parametrize("name", ["\r", "\n", "\r\n"])
def test_search_form_field_without_a_readable_name_is_400(app, client, name):
    boundary = "lookalike-test"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + JPEG
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"x\r\n--{boundary}--\r\n"
        ).encode()
    )
    response = client.post(
        "/api/v1/search", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert response.status_code == 400
    assert error_of(response) == {
        "code": "bad_request",
        "message": f"a form field without a readable name; {FILTER_HINT}",
    }
    assert app.extensions["lookalike"].queue_depth() == 0


def test_search_filters_are_named_filter_dot_field(app, client):
    data = {"image": (io.BytesIO(JPEG), "q.jpg"), "filter.gender": "Men", "filter.a.b": "c"}
    task_id = client.post("/api/v1/search", data=data).get_json()["task_id"]
    record = app.extensions["lookalike"].task(task_id)
    assert record.options["filters"] == {"gender": "Men", "a.b": "c"}


DEEP = 5000  # past Python's recursion limit, under the metadata byte limit


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ('{"a": NaN}', "metadata must not contain NaN or Infinity"),
        ('{"a": Infinity}', "metadata must not contain NaN or Infinity"),
        ('{"a": -Infinity}', "metadata must not contain NaN or Infinity"),
        ('{"a": [1, {"b": NaN}]}', "metadata must not contain NaN or Infinity"),
        ('{"a": 1e400}', "metadata must not contain NaN or Infinity"),
        ('{"a": -1e400}', "metadata must not contain NaN or Infinity"),
        ('{"a": ' + "[" * 20 + "]" * 20 + "}",
         "metadata must not be nested more than 20 levels deep"),
        ('{"a": ' + '{"b": ' * 20 + "1" + "}" * 20 + "}",
         "metadata must not be nested more than 20 levels deep"),
        ('{"a": ' + "[" * DEEP + "]" * DEEP + "}",
         "metadata must not be nested more than 20 levels deep"),
        ("[" * DEEP + "]" * DEEP, "metadata must not be nested more than 20 levels deep"),
        ('{"a": ' + "9" * 5000 + "}",
         "metadata must not contain integers of more than 4300 digits"),
    ],
    ids=lambda value: value[:40],
)  # fmt: skip
def test_bad_metadata_is_400_and_stores_nothing(app, client, metadata, message):
    response = post(client, product_id="meta", metadata=metadata)
    assert response.status_code == 400
    assert error_of(response) == {"code": "bad_request", "message": message}
    assert app.extensions["lookalike"].products.count() == 0


@pytest.mark.parametrize(
    "metadata",
    [
        '{"a": ' + "[" * 19 + "]" * 19 + "}",
        '{"a": 1e308, "b": -0.0, "c": "NaN"}',
        '{"a": ' + "9" * 4300 + "}",
    ],
    ids=["19 deep", "finite floats", "4300 digits"],
)
def test_metadata_inside_the_limits_is_accepted(client, metadata):
    response = post(client, product_id="meta", metadata=metadata)
    assert response.status_code == 202, response.get_json()
    assert client.get("/api/v1/products/meta").get_json()["metadata"] == json.loads(metadata)


def test_nothing_of_a_search_outlives_the_search_ttl(launch, redis_server):
    with launch(search_ttl=120) as app:
        client = app.test_client()
        task_id = search(client, "3").get_json()["task_id"]
        product_task = post(client, product_id="p").get_json()["task_id"]
    stored = redis.Redis.from_url(redis_server.url)
    assert 0 < stored.ttl(keys.task(task_id)) <= 120
    assert 0 < stored.ttl(keys.upload(task_id)) <= 120
    assert stored.ttl(keys.upload(product_task)) > 120  # products keep LOOKALIKE_UPLOAD_TTL


def test_cli_similar_sends_its_filters_as_filter_dot_key(app, client, capsys):
    journal(app, 9)
    post(client, product_id="0")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        argv = ["similar", "0", "-k", "10", "--filter", "baseColour=Blue", "--api-url", url]
        assert main(argv) == 0
    finally:
        server.shutdown()
    rows = capsys.readouterr().out.splitlines()[1:]
    assert sorted(row.split()[0] for row in rows) == ["1", "4", "7"]


def test_a_write_redis_refuses_for_memory_is_503_overloaded(app, client, redis_server):
    journal(app, 1)
    post(client, product_id="p1")
    with maxmemory(redis_server, 1):  # past it: Redis refuses writes such as XADD
        response = client.delete("/api/v1/products/p1")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert error_of(response) == {"code": "overloaded", "message": REDIS_FULL}
    assert client.get("/api/v1/products/p1").status_code == 200


def test_similar_revalidates_from_the_replica_while_redis_is_away(app, client, redis_server):
    journal(app, 3)
    post(client, product_id="0")
    first = client.get("/api/v1/products/0/similar?k=2")
    etag = first.headers["ETag"]
    with redis_stopped(redis_server):
        again = client.get("/api/v1/products/0/similar?k=2", headers={"If-None-Match": etag})
        changed = client.get("/api/v1/products/0/similar?k=1", headers={"If-None-Match": etag})
    assert (again.status_code, again.data, again.headers["ETag"]) == (304, b"", etag)
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def test_a_304_is_counted_in_the_request_metrics(app, client):
    journal(app, 3)
    post(client, product_id="0")
    url = "/api/v1/products/0/similar"
    etag = client.get(url).headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    text = client.get("/metrics").get_data(as_text=True)
    labels = 'endpoint="/api/v1/products/<product_id>/similar",method="GET",status="304"'
    assert f"lookalike_http_requests_total{{{labels}}} 1.0" in text


def test_monitoring_polls_do_not_count_as_queries_for_following(app, client):
    traffic = app.extensions["lookalike"].replica.traffic
    for path in ("/metrics", "/healthz", "/readyz"):
        client.get(path)
    assert not traffic.queried_within(60)
    assert client.get("/api/v1/index").status_code == 200
    assert traffic.queried_within(60)
