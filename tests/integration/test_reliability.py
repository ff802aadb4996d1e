"""Batching, crashes and restarts, with real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import requests

from shared import keys
from shared.journal import position_key
from shared.queue import PRIORITY_STEPS, queue_name
from shared.snapshots import SnapshotStore
from tests.support.client import post_product, product_image, similar, wait_task
from tests.support.stack import Stack, wait_until


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory, weights_file) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stack"), weights_file, snapshot_interval=1)
    stack.start_redis()
    yield stack
    stack.stop_all()


@pytest.fixture
def stack(module_stack: Stack) -> Stack:
    """The module's stack with every process up again, whatever an earlier test stopped."""
    module_stack.ensure_up()
    return module_stack


@pytest.fixture
def api(stack: Stack) -> str:
    return stack.api_urls[-1]


def redis_of(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis.url)


def post_many(api: str, prefix: str, count: int) -> list[str]:
    task_ids = []
    for n in range(count):
        response = post_product(api, f"{prefix}{n}", product_image(100 + n), {"n": n})
        assert response.status_code == 202, response.text
        task_ids.append(response.json()["task_id"])
    return task_ids


def state(api: str, task_id: str) -> str:
    return requests.get(f"{api}/api/v1/tasks/{task_id}", timeout=10).json()["state"]


def batch_sizes(stack: Stack) -> dict[int, int]:
    return {int(k): int(v) for k, v in redis_of(stack).hgetall(keys.BATCH_SIZES).items()}


def test_a_backlog_is_embedded_in_full_batches(stack, api):
    """A worker fetches a backlog one message at a time, slower than one per batch_wait here
    (32 messages a delivery, 20 ms): a batch must wait while they keep coming, not go with
    those fetched when its timer first ticks."""
    stack.stop("embed")
    task_ids = post_many(api, "b", 64)  # no worker yet: 2 deliveries of 32 (batch 16, depth 2)
    assert {state(api, task_id) for task_id in task_ids} == {"queued"}
    before = batch_sizes(stack)
    stack.start_worker(batch_size=16, batch_wait=0.02)
    records = [wait_task(api, task_id, timeout=180) for task_id in task_ids]
    assert {record["state"] for record in records} == {"succeeded"}
    grown = {size: batch_sizes(stack)[size] - before.get(size, 0) for size in batch_sizes(stack)}
    assert {size: count for size, count in grown.items() if count} == {16: 4}
    stack.stop("embed")
    stack.start_worker()  # as the other tests expect it


def test_embed_worker_killed_mid_batch_loses_no_task(stack, api):
    stack.stop("embed")
    task_ids = post_many(api, "k", 16)
    stack.start_worker()
    wait_until(
        lambda: any(state(api, t) == "running" for t in task_ids), 60, "no task started",
        interval=0.01,
    )  # fmt: skip
    stack.kill("embed")  # SIGKILL, in the middle of the first batch
    unfinished = [t for t in task_ids if state(api, t) != "succeeded"]
    assert unfinished, "the worker finished everything before it was killed"
    stack.start_worker()
    records = [wait_task(api, task_id, timeout=120) for task_id in task_ids]
    assert {record["state"] for record in records} == {"succeeded"}
    products = [requests.get(f"{api}/api/v1/products/k{n}", timeout=10).json() for n in range(16)]
    assert all(product["indexed"] for product in products)


def test_a_redis_restart_loses_no_accepted_task(stack, api):
    stack.stop("embed")
    task_ids = post_many(api, "r", 4)
    stack.redis.stop()  # SHUTDOWN: the append-only file holds every acknowledged write
    stack.redis.start()
    stack.start_worker()
    records = [wait_task(api, task_id, timeout=120) for task_id in task_ids]
    assert {record["state"] for record in records} == {"succeeded"}
    wait_until(lambda: similar(api, "r3").status_code == 200, 10, "the replica did not resume")


def test_an_upload_gone_before_a_worker_took_it_fails_its_task(stack, api):
    stack.stop("embed")
    (task_id,) = post_many(api, "gone", 1)
    redis_of(stack).delete(keys.upload(task_id))  # what the upload TTL does when it runs out
    stack.start_worker()
    record = wait_task(api, task_id)
    assert record["state"] == "failed"
    assert record["error"] == {
        "code": "upload_expired",
        "message": "the uploaded image expired before a worker took it",
    }


def test_writer_snapshots_and_trims_the_journal_back_to_the_oldest_kept(stack, api):
    store = SnapshotStore(stack.root / "data" / "index", keep=2)
    client = redis_of(stack)
    for round_ in range(3):  # three rounds a snapshot apart: at least two snapshots kept
        task_ids = post_many(api, f"s{round_}-", 2)
        assert {wait_task(api, task_id)["state"] for task_id in task_ids} == {"succeeded"}
        last = client.xrevrange(keys.JOURNAL, count=1)[0][0].decode()
        wait_until(
            lambda last=last: store.snapshots()
            and position_key(store.snapshots()[0].position) >= position_key(last),
            10, "no snapshot covers the round",
        )  # fmt: skip

    def trimmed_to_the_oldest_kept() -> bool:
        snapshots = store.snapshots()
        oldest = client.xrange(keys.JOURNAL, count=1)
        return len(snapshots) == 2 and oldest[0][0].decode() == snapshots[1].position

    wait_until(trimmed_to_the_oldest_kept, 10, "not two snapshots, or journal not trimmed to them")
    loaded = store.load_newest()
    assert loaded.index is not None
    assert {f"s{r}-{n}" for r in range(3) for n in range(2)} <= set(loaded.index.ids())


def test_a_second_writer_waits_while_the_first_holds_the_lock(stack):
    stack.start_writer("writer2")
    wait_until(lambda: "waiting for the writer lock" in stack.log("writer2"), 30, "no wait")
    owner = redis_of(stack).get(keys.WRITER_LOCK)
    assert owner and f"writer lock acquired ({owner.decode()})" in stack.log("writer")
    assert "writer lock acquired" not in stack.log("writer2")
    stack.stop("writer2")


def test_restart_of_the_stack_returns_the_same_neighbours(stack, api):
    task_ids = post_many(api, "n", 8)
    assert {wait_task(api, task_id)["state"] for task_id in task_ids} == {"succeeded"}
    wait_until(lambda: similar(api, "n7").status_code == 200, 5, "n7 not queryable")
    before = {pid: similar(api, pid, k=5).json()["results"] for pid in ("n0", "n5", "n7")}
    stack.stop_all()
    stack.start_redis()
    stack.start_worker()
    stack.start_writer()
    url = stack.start_api()
    stack.wait_ready(url)
    after = {pid: similar(url, pid, k=5).json()["results"] for pid in before}
    for pid, hits in before.items():
        assert [h["product_id"] for h in after[pid]] == [h["product_id"] for h in hits]
        # Before the restart new items score from the replica's exact tail, after it from the
        # snapshot's graph: the two sum differently, within SCORE_TIE and the 6 decimals shown.
        assert [h["score"] for h in after[pid]] == pytest.approx(
            [h["score"] for h in hits], abs=2e-6
        )


def test_an_idle_writer_trims_the_journal_to_one_entry(stack, api):
    task_ids = post_many(api, "idle", 3)
    assert {wait_task(api, task_id)["state"] for task_id in task_ids} == {"succeeded"}
    client = redis_of(stack)
    store = SnapshotStore(stack.root / "data" / "index", keep=2)

    def trimmed_to_the_head() -> bool:
        snapshots = store.snapshots()
        head = client.xrevrange(keys.JOURNAL, count=1)[0][0].decode()
        return client.xlen(keys.JOURNAL) == 1 and [s.position for s in snapshots] == [head] * 2

    wait_until(trimmed_to_the_head, 15, "the journal was not trimmed to its head when idle")
    lag = requests.get(f"{api}/readyz", timeout=10).json()["lag"]
    assert lag["writer"] == {"seconds": 0.0, "entries": 0}
    assert lag["replica"] == {"seconds": 0.0, "entries": 0}


def test_a_task_whose_message_was_lost_is_sent_again_and_succeeds(stack, api):
    stack.stop("embed")
    (task_id,) = post_many(api, "lost", 1)
    client = stack.redis.control_client()
    for step in PRIORITY_STEPS:  # the message gone, as when a worker dies right after BRPOP
        client.delete(queue_name(step))
    stack.start_worker()
    record = wait_task(api, task_id, timeout=90)
    assert record["state"] == "succeeded"
    assert "its message is gone: sent again" in stack.log("writer")
