"""How a task ends, however many deliveries of it run: against a real redis-server, no worker."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from shared import keys
from shared.keys import MAIN
from shared.records import WATCH_TRIES, ProductStore, TaskRecord, TaskState, TaskStore, failure
from workers.publish import Publisher

MODEL = "resnet50-test"
VECTOR = np.linspace(0.1, 1.0, 2048, dtype=np.float32)


@pytest.fixture
def client(redis_server) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    return client


@pytest.fixture
def tasks(client) -> TaskStore:
    return TaskStore(client, ttl=600)


@pytest.fixture
def publisher(client, tasks) -> Publisher:
    return Publisher(client, tasks, search_ttl=60)


def posted(client, tasks, product_id: str = "p1", kind: str = "index") -> TaskRecord:
    """A task as the API stages it: record, upload and (for an index task) the product."""
    record = TaskRecord(task_id=f"t-{product_id}-{kind}", kind=kind, product_id=product_id)  # type: ignore[arg-type]
    pipe = client.pipeline()
    tasks.save(record, pipe)
    pipe.set(keys.upload(record.task_id), b"image bytes")
    if kind == "index":
        ProductStore.stage(pipe, product_id, {MAIN: record.task_id}, {"n": 1})
    pipe.execute()
    return record


def delivery(tasks, record: TaskRecord) -> TaskRecord:
    """The record as one delivery of the task reads it."""
    copy = tasks.get(record.task_id)
    assert copy is not None
    return copy


def end(publisher, record: TaskRecord, how: str) -> bool:
    if how == "indexed":
        return publisher.indexed(record, VECTOR, MODEL, b"image bytes", b"thumb")
    if how == "search":
        return publisher.search_done(record, VECTOR, MODEL)
    if how == "failed":
        return publisher.fail(record, failure("upload_expired", "gone"))
    return publisher.start(record)


@pytest.mark.parametrize("kind", ["index", "search"])
@pytest.mark.parametrize("late", ["indexed", "search", "failed", "running"])
def test_a_second_delivery_never_changes_a_finished_task(client, tasks, publisher, kind, late):
    record = posted(client, tasks, kind=kind)
    first, second = delivery(tasks, record), delivery(tasks, record)
    assert publisher.start(first) and publisher.start(second)  # both took it: a redelivery
    assert end(publisher, first, "indexed" if kind == "index" else "search")
    journal = client.xlen(keys.JOURNAL)
    assert not end(publisher, second, late)
    stored = tasks.get(record.task_id)
    assert stored is not None and stored.state == TaskState.SUCCEEDED and stored.error is None
    assert client.xlen(keys.JOURNAL) == journal  # no second vector in the journal


def test_a_failed_task_stays_failed_when_a_late_delivery_succeeds(client, tasks, publisher):
    record = posted(client, tasks)
    first, second = delivery(tasks, record), delivery(tasks, record)
    publisher.fail(first, failure("invalid_vector", "no direction"))
    assert not publisher.indexed(second, VECTOR, MODEL, b"image bytes", b"thumb")
    assert tasks.get(record.task_id).state == TaskState.FAILED  # type: ignore[union-attr]
    assert client.xlen(keys.JOURNAL) == 0


def test_a_later_post_of_the_product_supersedes_an_earlier_task(client, tasks, publisher):
    earlier = posted(client, tasks)
    later = TaskRecord(task_id="t-later", kind="index", product_id="p1")
    pipe = client.pipeline()
    ProductStore.stage(pipe, "p1", {MAIN: later.task_id}, {"n": 2})
    pipe.execute()
    assert not publisher.indexed(earlier, VECTOR, MODEL, b"image bytes", b"thumb")
    stored = tasks.get(earlier.task_id)
    assert stored is not None and stored.state == TaskState.FAILED
    assert stored.error == failure(
        "superseded", "product p1 was changed or deleted by a later request"
    )
    assert client.xlen(keys.JOURNAL) == 0 and not client.exists(keys.upload(earlier.task_id))


def test_indexing_records_the_product_as_indexed_and_no_longer_lost(client, tasks, publisher):
    record = posted(client, tasks)
    client.sadd(keys.LOST, "p1")
    assert publisher.indexed(delivery(tasks, record), VECTOR, MODEL, b"image bytes", b"thumb")
    assert client.sismember(keys.INDEXED, "p1") and not client.sismember(keys.LOST, "p1")
    product = ProductStore(client).get("p1")
    assert product is not None and product["indexed"] and product["pending_task"] is None
    assert not client.exists(keys.upload(record.task_id))


def commands(client) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in client.info("commandstats").items()}


def test_a_batch_of_ends_is_one_transaction_whatever_its_size(client, tasks, publisher):
    records = [delivery(tasks, posted(client, tasks, f"p{n}")) for n in range(20)]
    assert all(publisher.start_all(records))
    before = commands(client)
    moves = [publisher.journalled(record, VECTOR, MODEL, b"image", b"thumb") for record in records]
    assert publisher.finish(moves) == [True] * 20
    after = commands(client)
    assert after["cmdstat_exec"] - before.get("cmdstat_exec", 0) == 1
    assert after["cmdstat_watch"] - before.get("cmdstat_watch", 0) == 1
    assert client.xlen(keys.JOURNAL) == 20
    assert {tasks.get(r.task_id).state for r in records} == {TaskState.SUCCEEDED}  # type: ignore[union-attr]


def test_each_end_in_a_mixed_batch_is_decided_on_its_own(client, tasks, publisher):
    fine, finished, superseded, searched = (
        delivery(tasks, posted(client, tasks, name, kind))
        for name, kind in [("fine", "index"), ("done", "index"), ("old", "index"), ("q", "search")]
    )
    assert publisher.fail(delivery(tasks, finished), failure("invalid_vector", "no direction"))
    pipe = client.pipeline()
    ProductStore.stage(pipe, "old", {MAIN: "t-newer"}, {"n": 2})
    pipe.execute()
    moves = [
        publisher.journalled(fine, VECTOR, MODEL, b"image", b"thumb"),
        publisher.journalled(finished, VECTOR, MODEL, b"image", b"thumb"),
        publisher.journalled(superseded, VECTOR, MODEL, b"image", b"thumb"),
        publisher.searched(searched, VECTOR, MODEL),
        publisher.journalled(fine, VECTOR, MODEL, b"image", b"thumb"),  # the same task again
    ]
    assert publisher.finish(moves) == [True, False, False, True, False]
    states = {r.task_id: tasks.get(r.task_id) for r in (fine, finished, superseded, searched)}
    assert states[fine.task_id].state == TaskState.SUCCEEDED  # type: ignore[union-attr]
    assert states[finished.task_id].error == failure("invalid_vector", "no direction")  # type: ignore[union-attr]
    assert states[superseded.task_id].error == failure(  # type: ignore[union-attr]
        "superseded", "product old was changed or deleted by a later request"
    )
    assert states[searched.task_id].state == TaskState.SUCCEEDED  # type: ignore[union-attr]
    assert client.xlen(keys.JOURNAL) == 1  # fine's vector, once
    assert not any(client.exists(keys.upload(r.task_id)) for r in (fine, finished, superseded))


def test_a_task_finished_during_a_batch_s_reads_is_not_written_over(
    client, tasks, publisher, monkeypatch
):
    records = [delivery(tasks, posted(client, tasks, f"p{n}")) for n in range(3)]
    read_for = TaskStore._read_for
    raced = []

    def read_then_race(self, moves, task_keys):
        values = read_for(self, moves, task_keys)
        if not raced:  # another delivery finishes p1 between our WATCH and our EXEC
            raced.append(None)
            raced[0] = publisher.fail(delivery(tasks, records[1]), failure("x", "first"))
        return values

    monkeypatch.setattr(TaskStore, "_read_for", read_then_race)
    moves = [publisher.journalled(r, VECTOR, MODEL, b"image", b"thumb") for r in records]
    assert publisher.finish(moves) == [True, False, True]
    assert raced == [True]
    assert tasks.get(records[1].task_id).error == failure("x", "first")  # type: ignore[union-attr]
    assert client.xlen(keys.JOURNAL) == 2


@pytest.mark.parametrize("races", [1, 2, 3, 7, 12])
def test_a_batch_raced_again_and_again_is_split_until_only_the_raced_move_retries(
    client, tasks, publisher, monkeypatch, races
):
    # Another client keeps touching p5's record between our WATCH and our EXEC, `races` times.
    records = [delivery(tasks, posted(client, tasks, f"p{n}")) for n in range(8)]
    raced_key = keys.task(records[5].task_id)
    read_for = TaskStore._read_for
    sizes: list[int] = []

    def read_then_race(self, moves, task_keys):
        values = read_for(self, moves, task_keys)
        sizes.append(len(moves))
        if raced_key in task_keys and sizes.count(-1) < races:
            sizes.append(-1)
            client.expire(raced_key, 600)  # a write: the watched key changed
        return values

    monkeypatch.setattr(TaskStore, "_read_for", read_then_race)
    moves = [publisher.journalled(r, VECTOR, MODEL, b"image", b"thumb") for r in records]
    moves.append(publisher.journalled(records[5], VECTOR, MODEL, b"image", b"thumb"))  # again
    assert publisher.finish(moves) == [True] * 8 + [False]
    assert client.xlen(keys.JOURNAL) == 8
    assert {tasks.get(r.task_id).state for r in records} == {TaskState.SUCCEEDED}  # type: ignore[union-attr]
    tries = [size for size in sizes if size > 0]
    assert tries.count(9) == min(races + 1, WATCH_TRIES)  # the whole batch: at most 3 tries
    if races >= WATCH_TRIES:  # then halves and smaller
        assert max(tries[WATCH_TRIES:]) <= 5
    assert (1 in tries) is (races >= 3 * WATCH_TRIES)  # split three times: single moves
