"""Task and product records in Redis: what the API answers and the workers update."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis

from shared import keys

TaskState = Literal["queued", "running", "succeeded", "failed"]
TaskKind = Literal["index", "search", "delete"]
TASK_STATES: tuple[TaskState, ...] = ("queued", "running", "succeeded", "failed")


def connect(url: str) -> redis.Redis:
    """A client with timeouts, so a dead Redis is an error rather than a hang."""
    return redis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )


@dataclass
class TaskRecord:
    task_id: str
    kind: TaskKind
    state: TaskState = "queued"
    product_id: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> TaskRecord:
        return cls(**json.loads(raw))

    def public(self) -> dict[str, Any]:
        """What clients see: no internal options."""
        view = asdict(self)
        view.pop("options")
        if view["error"] is None:
            view.pop("error")
        if view["result"] is None:
            view.pop("result")
        return view


class TaskStore:
    """Our own task records (not Celery's PENDING-for-anything); they expire after task_ttl."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self.client.get(keys.task(task_id))
        return None if raw is None else TaskRecord.from_json(raw)

    def save(self, record: TaskRecord, pipe: Any = None) -> None:
        record.updated_at = time.time()
        target = pipe if pipe is not None else self.client
        target.set(keys.task(record.task_id), record.to_json(), ex=self.ttl)
        target.hincrby(keys.STATS, f"tasks_{record.state}", 1)

    def update(
        self,
        record: TaskRecord,
        state: TaskState,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
        pipe: Any = None,
    ) -> None:
        """Move a record the caller holds to a new state (no re-read from Redis)."""
        record.state, record.result, record.error = state, result, error
        self.save(record, pipe)


def failure(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


class ProductStore:
    """Product records: metadata, whether indexed, the task that will next change them."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def get(self, product_id: str) -> dict[str, Any] | None:
        raw = self.client.hgetall(keys.product(product_id))
        return self._record(product_id, raw) if raw else None

    @staticmethod
    def _record(product_id: str, raw: Any) -> dict[str, Any]:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return {
            "product_id": product_id,
            "metadata": json.loads(fields.get("metadata", "{}")),
            "indexed": fields.get("indexed") == "1",
            "image_sha256": fields.get("image_sha256") or None,
            "model_id": fields.get("model_id") or None,
            "pending_task": fields.get("pending_task") or None,
            "updated_at": float(fields.get("updated_at", "0")),
        }

    def page(self, cursor: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to about limit products from a SSCAN cursor, and the next cursor (0: done)."""
        reply: Any = self.client.sscan(keys.PRODUCTS, cursor, count=limit)
        next_cursor, raw_ids = reply
        ids = sorted(raw.decode() for raw in raw_ids)
        pipe = self.client.pipeline(transaction=False)
        for product_id in ids:
            pipe.hgetall(keys.product(product_id))
        records = [
            self._record(product_id, raw)
            for product_id, raw in zip(ids, pipe.execute(), strict=True)
            if raw
        ]
        return records, int(next_cursor)

    def count(self) -> int:
        return int(self.client.scard(keys.PRODUCTS))

    def random_id(self) -> str | None:
        raw = self.client.srandmember(keys.PRODUCTS)
        return None if raw is None else raw.decode()  # type: ignore[union-attr]
