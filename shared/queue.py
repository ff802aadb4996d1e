"""The Celery configuration both sides share, and sending tasks by name (no worker imports)."""

from __future__ import annotations

from celery import Celery

from shared.keys import EMBED_QUEUE
from shared.settings import Settings

EMBED_TASK = "lookalike.embed"
# Redis transport priorities: 0 is served first. Searches jump ahead of bulk indexing.
SEARCH_PRIORITY = 0
BULK_PRIORITY = 6
PRIORITY_STEPS = [0, 3, 6, 9]
# kombu's Redis transport keeps one list per priority step: "embed", "embed\x06\x163", ...
PRIORITY_SEPARATOR = "\x06\x16"
UNACKED = "unacked"  # kombu's hash of delivered, unacknowledged messages (by delivery tag)


def make_celery(settings: Settings, redis_url: str) -> Celery:
    """A Celery app with our reliability settings: late acks, redelivery, bounded prefetch."""
    # No result backend: our own task records (shared.records) carry states and results.
    app = Celery("lookalike", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_time_limit=settings.task_time_limit,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # A dead worker's messages come back about visibility_timeout after it took them:
            # look for them every sixth of it (kombu's default is every 100 s), and let the
            # sweep's mutex expire soon if a worker dies holding it (default 300 s).
            "unacked_restore_interval": max(1, settings.visibility_timeout // 6),
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 30,
            "priority_steps": PRIORITY_STEPS,
            "queue_order_strategy": "priority",
        },
        task_default_queue=EMBED_QUEUE,
    )
    return app


def send_embed(app: Celery, task_id: str, priority: int, queue: str = EMBED_QUEUE) -> None:
    """Queue the embedding of the upload saved under task_id (on a generation's queue)."""
    app.send_task(EMBED_TASK, args=[task_id], task_id=task_id, queue=queue, priority=priority)


def queue_name(step: int, queue: str = EMBED_QUEUE) -> str:
    """The Redis list kombu keeps a queue's messages of one priority step in."""
    return queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}"
