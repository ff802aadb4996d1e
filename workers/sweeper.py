"""Tasks whose message was lost, sent again.

kombu's Redis transport takes a message off the queue (BRPOP) before it records it as delivered
and unacknowledged: a worker killed in between loses it, and its task would stay `queued` for
ever although the client was told it was accepted. The index writer (one process, by its lock)
looks now and then for unfinished tasks older than a redelivery takes whose message is in no
queue and held by no worker, and sends them again; a task ends once however often it is delivered.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Celery

from shared import keys
from shared.keys import MAIN, Generation
from shared.queue import (
    BULK_PRIORITY,
    PRIORITY_STEPS,
    SEARCH_PRIORITY,
    UNACKED,
    queue_name,
    send_embed,
)
from shared.records import TaskStore
from shared.settings import Settings

log = logging.getLogger("lookalike.writer")
# Past this many waiting messages the queues are not read through: lost ones wait until it drains.
MAX_SCANNED = 5000
BATCH = 500


class Sweeper:
    """Sends lost tasks again; `due` says when to look (every half visibility timeout)."""

    def __init__(
        self, settings: Settings, client: redis.Redis, celery: Celery, gen: Generation = MAIN
    ) -> None:
        self.settings = settings
        self.gen = gen  # its writer sweeps the tasks of its generation
        self.client = client
        self.celery = celery
        self.tasks = TaskStore(client, settings.task_ttl, settings.search_ttl)
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.settings.visibility_timeout / 2

    def sweep(self, now: float | None = None) -> list[str]:
        """Send again the lost tasks among those queued too long; their ids."""
        self.last = time.monotonic()
        now = time.time() if now is None else now
        # A live worker's redelivery comes back after the visibility timeout plus a sweep.
        stale = now - 1.5 * self.settings.visibility_timeout - 10
        raw: Any = self.client.zrangebyscore(keys.INFLIGHT, "-inf", stale, start=0, num=BATCH)
        candidates = [item.decode() for item in raw]
        if not candidates:
            return []
        held = self._held()
        if held is None:
            return []
        return [task_id for task_id in candidates if self._resend(task_id, held, now)]

    def _held(self) -> bytes | None:
        """Every waiting or delivered message, as one blob to look task ids up in (None: too
        many waiting to read them all now)."""
        names = [queue_name(step, self.gen.queue) for step in PRIORITY_STEPS]
        if sum(int(self.client.llen(name)) for name in names) > MAX_SCANNED:
            return None
        parts: list[Any] = [self.client.lrange(name, 0, -1) for name in names]
        messages = [item for part in parts for item in part]
        messages += list(self.client.hvals(UNACKED))
        return b"\n".join(messages)

    def _resend(self, task_id: str, held: bytes, now: float) -> bool:
        record = self.tasks.get(task_id)
        if record is None or record.finished:
            self.client.zrem(keys.INFLIGHT, task_id)
            return False
        if record.options.get("generation", "") != self.gen.name:
            return False  # another generation's writer sweeps it
        if task_id.encode() in held:
            return False  # waiting in a queue, or held by a worker (kombu redelivers it)
        priority = SEARCH_PRIORITY if record.kind == "search" else BULK_PRIORITY
        send_embed(self.celery, task_id, priority, self.gen.queue)
        self.client.zadd(keys.INFLIGHT, {task_id: now})
        log.warning("task %s was queued %.0fs ago and its message is gone: sent again",
                    task_id, now - record.created_at)  # fmt: skip
        return True
