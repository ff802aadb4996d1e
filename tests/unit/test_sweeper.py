"""Lost task messages sent again: against a real redis-server, with the API staging the tasks."""

from __future__ import annotations

import io
import time

import redis

from shared import keys
from shared.queue import PRIORITY_STEPS, UNACKED, queue_name
from tests.support.images import encode, pattern
from workers.sweeper import Sweeper

JPEG = encode(pattern(64, 48, seed=1), "JPEG")
LATER = 10_000.0  # seconds: every task is stale by then


def post(client, product_id: str) -> str:
    data = {"product_id": product_id, "image": (io.BytesIO(JPEG), "x.jpg")}
    return client.post("/api/v1/products", data=data).get_json()["task_id"]


def queued_messages(db: redis.Redis) -> list[bytes]:
    return [m for step in PRIORITY_STEPS for m in db.lrange(queue_name(step), 0, -1)]


def sweeper_of(app) -> tuple[Sweeper, redis.Redis]:
    services = app.extensions["lookalike"]
    return Sweeper(services.settings, services.redis, services.celery), services.redis


def test_fresh_tasks_and_tasks_still_queued_are_left_alone(app, client):
    sweeper, db = sweeper_of(app)
    task = post(client, "p1")
    assert sweeper.sweep() == []  # not stale yet
    assert sweeper.sweep(now=time.time() + LATER) == []  # stale, but its message waits
    assert len(queued_messages(db)) == 1 and db.zscore(keys.INFLIGHT, task) is not None


def test_a_task_whose_message_is_gone_is_sent_again_once(app, client):
    sweeper, db = sweeper_of(app)
    lost, kept = post(client, "p1"), post(client, "p2")
    (message,) = [m for m in queued_messages(db) if lost.encode() in m]
    for step in PRIORITY_STEPS:
        db.lrem(queue_name(step), 0, message)  # what a worker killed after BRPOP leaves
    assert sweeper.sweep(now=time.time() + LATER) == [lost]
    assert sum(lost.encode() in m for m in queued_messages(db)) == 1
    assert sum(kept.encode() in m for m in queued_messages(db)) == 1
    assert sweeper.sweep(now=time.time() + 1) == []  # sent again just now: not stale


def test_a_message_a_worker_holds_unacknowledged_is_not_sent_again(app, client):
    sweeper, db = sweeper_of(app)
    task = post(client, "p1")
    (message,) = queued_messages(db)
    for step in PRIORITY_STEPS:
        db.delete(queue_name(step))
    db.hset(UNACKED, "delivery-tag-1", message)  # delivered to a worker, not acknowledged
    assert sweeper.sweep(now=time.time() + LATER) == []
    assert queued_messages(db) == [] and db.zscore(keys.INFLIGHT, task) is not None


def test_finished_tasks_leave_the_in_flight_set(app, client):
    sweeper, db = sweeper_of(app)
    task = post(client, "p1")
    services = app.extensions["lookalike"]
    record = services.tasks.get(task)
    services.tasks.advance(record, "failed", error={"code": "x", "message": "y"})
    assert db.zscore(keys.INFLIGHT, task) is None
    db.zadd(keys.INFLIGHT, {"forgotten": 1.0})  # a record that expired meanwhile
    assert sweeper.sweep(now=time.time() + LATER) == []
    assert db.zcard(keys.INFLIGHT) == 0
