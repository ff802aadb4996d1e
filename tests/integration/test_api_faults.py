"""The API under faults, through real gunicorn: searches that wait, a full queue, Redis away.

No embed worker runs, so every search waits for a vector that never comes and every upload stays
in the queue: what the API does then is what these tests check.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from api.errors import REDIS_DOWN
from shared.queue import PRIORITY_STEPS, queue_name
from tests.support.client import post_product, product_image
from tests.support.stack import Stack

SEARCH_WAIT = 6
WAITING = 4  # LOOKALIKE_MAX_WAITING_SEARCHES
SEARCHES = 12  # more than gunicorn's 8 threads
MAX_QUEUED = 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("faults")
    settings = {
        "search_wait": SEARCH_WAIT, "max_waiting_searches": WAITING, "max_queued": MAX_QUEUED
    }  # fmt: skip
    # The API never loads the model: no weights file is needed.
    stack = Stack(root, root / "no-weights.h5", **settings)
    stack.start_redis()
    url = stack.start_api()
    assert post_product(url, "seed", product_image(1)).status_code == 202
    yield stack
    stack.stop_all()


@pytest.fixture
def api(stack: Stack) -> str:
    if not stack.redis.running:
        stack.start_redis()
    return stack.api_urls[-1]


def timed(method: str, url: str, **kwargs: Any) -> tuple[requests.Response, float]:
    """The response and the monotonic time it arrived."""
    response = requests.request(method, url, timeout=60, **kwargs)
    return response, time.monotonic()


def search(api: str) -> tuple[requests.Response, float]:
    files = {"image": ("q.jpg", product_image(1), "image/jpeg")}
    return timed("POST", f"{api}/api/v1/search", files=files, data={"k": "3"})


def test_waiting_searches_leave_threads_for_health_checks_and_reads(api):
    assert post_product(api, "faults-1", product_image(2)).status_code == 202
    started = time.monotonic()
    with ThreadPoolExecutor(SEARCHES) as pool:
        searches = [pool.submit(search, api) for _ in range(SEARCHES)]
        time.sleep(1.0)  # all sent; WAITING of them now hold a thread each
        health, health_at = timed("GET", f"{api}/healthz")
        product, product_at = timed("GET", f"{api}/api/v1/products/faults-1")
        answers = [future.result() for future in searches]
    assert health.status_code == 200 and product.status_code == 200
    assert {response.status_code for response, _ in answers} == {202}
    waited = sorted(at - started for _, at in answers)
    assert all(seconds < SEARCH_WAIT / 2 for seconds in waited[: SEARCHES - WAITING]), waited
    assert all(seconds >= SEARCH_WAIT for seconds in waited[SEARCHES - WAITING :]), waited
    first_waiting_answer = started + waited[SEARCHES - WAITING]
    assert max(health_at, product_at) < first_waiting_answer


@pytest.fixture
def queue(stack: Stack) -> Iterator[list[str]]:
    """The embed queue's lists, emptied after the test: the other tests need room in it."""
    names = [queue_name(step) for step in PRIORITY_STEPS]
    yield names
    redis.Redis.from_url(stack.redis.url).delete(*names)


def test_uploads_past_max_queued_are_503_and_reads_go_on(stack, api, queue):
    client = redis.Redis.from_url(stack.redis.url)
    room = MAX_QUEUED - sum(int(client.llen(name)) for name in queue)
    assert room > 0
    for n in range(room):
        assert post_product(api, f"full-{n}", product_image(n)).status_code == 202
    refused = post_product(api, "full-last", product_image(0))
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert refused.json()["error"] == {
        "code": "overloaded",
        "message": f"the embed queue holds {MAX_QUEUED} tasks, at its limit of {MAX_QUEUED} "
        "(LOOKALIKE_MAX_QUEUED); try again later",
    }
    assert requests.get(f"{api}/api/v1/products/full-last", timeout=10).status_code == 404
    assert requests.get(f"{api}/api/v1/products/full-0", timeout=10).status_code == 200


def test_with_redis_stopped_gunicorn_answers_503_then_recovers(stack, api):
    stack.redis.stop()
    try:
        response = requests.get(f"{api}/api/v1/products/seed", timeout=30)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert response.json() == {"error": {"code": "redis_unavailable", "message": REDIS_DOWN}}
        assert requests.get(f"{api}/healthz", timeout=10).status_code == 200
    finally:
        stack.redis.start()
    record = requests.get(f"{api}/api/v1/products/seed", timeout=30)
    assert record.status_code == 200  # the append-only file kept it
