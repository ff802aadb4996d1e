"""Losing the index, and not losing it: damaged snapshots, a writer that loses its lock."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import redis
import requests

from shared import keys
from shared.index import INDEX_FILE
from shared.snapshots import SnapshotStore
from tests.support.client import post_product, product_image, similar, wait_task
from tests.support.damage import damage
from tests.support.stack import Stack, wait_until


@pytest.fixture
def stack(tmp_path, weights_file) -> Iterator[Stack]:
    """A stack of its own per test: these tests break its data on purpose."""
    stack = Stack(tmp_path, weights_file, snapshot_interval=0.5, snapshots_kept=2)
    stack.start_redis()
    stack.ensure_up()
    stack.wait_ready(stack.api_urls[-1])
    yield stack
    stack.stop_all()


def post_rounds(stack: Stack, rounds: int, per_round: int = 3) -> list[str]:
    """Items posted in rounds, each round in a snapshot of its own; their ids."""
    api, store = stack.api_urls[-1], SnapshotStore(stack.root / "data" / "index")
    ids = []
    for round_ in range(rounds):
        for n in range(per_round):
            product_id = f"r{round_}-{n}"
            response = post_product(api, product_id, product_image(10 * round_ + n), {"r": round_})
            assert wait_task(api, response.json()["task_id"])["state"] == "succeeded"
            ids.append(product_id)
        count = len(ids)
        wait_until(lambda count=count: newest_count(store) == count, 15, "no snapshot")
    return ids


def newest_count(store: SnapshotStore) -> int:
    loaded = store.load_newest()
    return 0 if loaded.index is None else len(loaded.index)


def restart_writer_and_api(stack: Stack, between=lambda: None) -> str:
    stack.stop("api")
    stack.stop("writer")
    between()
    return stack.ensure_up()


def readyz(api: str) -> requests.Response:
    return requests.get(f"{api}/readyz", timeout=10)


def test_a_damaged_newest_snapshot_is_rebuilt_from_the_previous_one_and_the_journal(stack):
    ids = post_rounds(stack, 3)
    store = SnapshotStore(stack.root / "data" / "index")
    damaged: list[str] = []

    def damage_the_newest() -> None:  # once the writer is stopped: it may publish until then
        newest = store.snapshots()[0]
        damage(newest.folder / INDEX_FILE, "flipped byte")
        damaged.append(newest.name)

    api = restart_writer_and_api(stack, damage_the_newest)
    wait_until(lambda: readyz(api).status_code == 200, 60, "not ready after the damage")
    assert all(similar(api, product_id).status_code == 200 for product_id in ids)
    assert readyz(api).json()["checks"]["index"] is True
    assert f"snapshot {damaged[0]} refused" in stack.log("writer")


def test_vectors_no_snapshot_can_give_back_are_marked_lost_until_reimported(stack):
    ids = post_rounds(stack, 3)
    store = SnapshotStore(stack.root / "data" / "index")

    def damage_every_snapshot() -> None:
        for snapshot in store.snapshots():
            damage(snapshot.folder / INDEX_FILE, "truncated")

    api = restart_writer_and_api(stack, damage_every_snapshot)
    wait_until(lambda: "products lost their vectors" in readyz(api).text, 60, "no loss reported")
    response = readyz(api)
    assert response.status_code == 503
    client = redis.Redis.from_url(stack.redis.url)
    lost = sorted(member.decode() for member in client.smembers(keys.LOST))
    assert lost and set(lost) < set(ids)  # the journal still had the newest entries
    for product_id in lost:
        product = requests.get(f"{api}/api/v1/products/{product_id}", timeout=10).json()
        assert product["indexed"] is False  # so a re-import embeds it again
    assert f"{len(lost)} products lost their vectors" in response.json()["checks"]["index"]
    for product_id in lost:  # the re-import
        n = ids.index(product_id)
        response = post_product(api, product_id, product_image(10 * (n // 3) + n % 3), {})
        assert wait_task(api, response.json()["task_id"])["state"] == "succeeded"
    wait_until(lambda: readyz(api).status_code == 200, 30, "not ready after the re-import")
    assert all(similar(api, product_id).status_code == 200 for product_id in ids)


def test_a_paused_writer_that_lost_its_lock_writes_nothing_when_it_wakes(stack):
    api = stack.api_urls[-1]
    post_rounds(stack, 1)
    stack.start_writer("writer2")
    first = stack.processes["writer"]
    os.killpg(first.pid, signal.SIGSTOP)  # a long GC pause, a frozen VM: the lock expires
    try:
        wait_until(lambda: "writer lock acquired" in stack.log("writer2"), 40, "no takeover")
        snapshots_before = stack.log("writer").count("snapshot ")
        response = post_product(api, "after", product_image(99), {})
        assert wait_task(api, response.json()["task_id"])["state"] == "succeeded"
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    wait_until(lambda: "writer lock lost" in stack.log("writer"), 30, "first writer did not notice")
    store = SnapshotStore(stack.root / "data" / "index")
    wait_until(lambda: "after" in (store.load_newest().index or []), 15, "writer2 no snapshot")
    assert stack.log("writer").count("snapshot ") == snapshots_before
    assert similar(api, "after").status_code == 200
