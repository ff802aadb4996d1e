"""Task and product records in Redis: their schema, states and every read and write of them."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared import keys
from shared.keys import MAIN, Generation

TaskKind = Literal["index", "search", "delete"]


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


FINISHED = frozenset({TaskState.SUCCEEDED, TaskState.FAILED})
# Tries of a batch of moves whose watched keys change meanwhile before it is split in halves (a
# single move retries until it is made or refused: some other client's change went through).
WATCH_TRIES = 3


def connect(url: str) -> redis.Redis:
    """A client with timeouts (a dead Redis is an error, not a hang) and brief retries."""
    return redis.Redis.from_url(
        url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@dataclass
class TaskRecord:
    task_id: str
    kind: TaskKind
    state: TaskState = TaskState.QUEUED
    product_id: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> TaskRecord:
        fields = json.loads(raw)
        fields["state"] = TaskState(fields["state"])
        return cls(**fields)

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

    def __init__(self, client: redis.Redis, ttl: int, search_ttl: int | None = None) -> None:
        self.client = client
        self.ttl = ttl
        self.search_ttl = search_ttl or ttl  # a search's record lives as long as its vector

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self.client.get(keys.task(task_id))
        return None if raw is None else TaskRecord.from_json(raw)

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """Records in one round trip; None where there is none."""
        raws = self.client.mget([keys.task(task_id) for task_id in task_ids]) if task_ids else []
        return [None if raw is None else TaskRecord.from_json(raw) for raw in raws]

    def save(self, record: TaskRecord, pipe: Any = None) -> None:
        record.updated_at = time.time()
        target = pipe if pipe is not None else self.client
        ttl = self.search_ttl if record.kind == "search" else self.ttl
        target.set(keys.task(record.task_id), record.to_json(), ex=ttl)
        target.hincrby(keys.STATS, f"tasks_{record.state}", 1)
        if record.state == TaskState.QUEUED:  # a message is on its way: watched until it ends
            target.zadd(keys.INFLIGHT, {record.task_id: record.updated_at})
        elif record.finished:
            target.zrem(keys.INFLIGHT, record.task_id)

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

    def advance(
        self,
        record: TaskRecord,
        state: TaskState,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
        writes: Callable[[Any], None] | None = None,
    ) -> bool:
        """Move one task (see advance_many)."""
        return self.advance_many([Move(record, state, result, error, writes)])[0]

    def advance_many(self, moves: Sequence[Move]) -> list[bool]:
        """Make the moves with their writes, in one transaction, except for a task another
        delivery has finished meanwhile (nothing written) or whose guard refuses (it fails).

        True where the move was made. A task moved twice in one call moves once: the first.
        A batch's moves cost a few round trips (WATCH, the reads, MULTI/EXEC) however many there
        are, not a few each. A batch whose watched keys changed WATCH_TRIES times running is
        split in halves, so that contention on one task redoes ever fewer moves' reads."""
        return self._advance(list(moves), set())

    def _advance(self, moves: list[Move], seen: set[str]) -> list[bool]:
        """advance_many for moves after the tasks in seen (which it adds those it decides to)."""
        if not moves:
            return []
        task_keys = [keys.task(move.record.task_id) for move in moves]
        guard_keys = {move.guard.key for move in moves if move.guard is not None}
        tries = range(WATCH_TRIES) if len(moves) > 1 else itertools.count()
        with self.client.pipeline() as pipe:
            for _ in tries:
                try:
                    pipe.watch(*task_keys, *guard_keys)
                    stored, held = self._read_for(moves, task_keys)
                    pipe.multi()
                    decided = set(seen)
                    outcomes = [
                        self._queue(pipe, move, now, guarded, decided)
                        for move, now, guarded in zip(moves, stored, held, strict=True)
                    ]
                    pipe.execute()
                    seen |= decided
                    return outcomes
                except redis.WatchError:
                    continue
        half = len(moves) // 2
        return self._advance(moves[:half], seen) + self._advance(moves[half:], seen)

    def _read_for(self, moves: Sequence[Move], task_keys: list[str]) -> tuple[list[Any], list[Any]]:
        """The tasks' stored records and their guards' fields, in one round trip. Read on
        another connection than the watching one, still consistent: the transaction fails if
        a watched key changed after the WATCH."""
        reads = self.client.pipeline(transaction=False)
        for key in task_keys:
            reads.get(key)
        for move in moves:
            if move.guard is not None:
                reads.hget(move.guard.key, move.guard.field)
        values = iter(reads.execute())
        stored = [next(values) for _ in task_keys]
        held = [next(values) if move.guard is not None else None for move in moves]
        return stored, held

    def _queue(self, pipe: Any, move: Move, stored: Any, held: Any, seen: set[str]) -> bool:
        """Queue one move's writes on the transaction; whether it is made."""
        record = move.record
        if record.task_id in seen or (stored is not None and TaskRecord.from_json(stored).finished):
            return False
        seen.add(record.task_id)
        guard = move.guard
        if guard is not None and (held.decode() if held else None) != guard.expected:
            self.update(record, TaskState.FAILED, error=guard.refusal, pipe=pipe)
            return False
        if move.writes is not None:
            move.writes(pipe)
        self.update(record, move.state, result=move.result, error=move.error, pipe=pipe)
        return True


@dataclass
class Guard:
    """A move's condition: field `field` of hash `key` holds `expected`; if not, the task
    fails with `refusal` instead."""

    key: str
    field: str
    expected: str
    refusal: dict[str, str]


@dataclass
class Move:
    """One task's move to `state`, with the writes that go with it (TaskStore.advance_many)."""

    record: TaskRecord
    state: TaskState
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    writes: Callable[[Any], None] | None = None
    guard: Guard | None = None


def failure(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


class ProductStore:
    """Product records (a hash each): metadata, the image's digest, and per generation of the
    index whether it holds the product's vector (a set) and which task changes it next.

    The one owner of the record's fields: the API stages a product, a worker marks it indexed.
    `get` and `page` show the record as generation `gen` (the one serving) sees it.
    """

    def __init__(self, client: redis.Redis, gen: Generation = MAIN) -> None:
        self.client = client
        self.gen = gen

    def get(self, product_id: str) -> dict[str, Any] | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.product(product_id))
        pipe.sismember(self.gen.indexed, product_id)
        pipe.get(self.gen.index_model)
        raw, indexed, model = pipe.execute()
        return self._record(product_id, raw, indexed, model) if raw else None

    def _record(self, product_id: str, raw: Any, indexed: Any, model: Any) -> dict[str, Any]:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return {
            "product_id": product_id,
            "metadata": json.loads(fields.get("metadata", "{}")),
            "indexed": bool(indexed),
            "image_sha256": fields.get("image_sha256") or None,
            "model_id": model.decode() if indexed and model else None,
            "pending_task": fields.get(self.gen.pending_field) or None,
            "updated_at": float(fields.get("updated_at", "0")),
        }

    @staticmethod
    def stage(
        pipe: Any, product_id: str, tasks: dict[Generation, str], metadata: dict[str, Any]
    ) -> None:
        """Make each generation's task the product's next change there."""
        key = keys.product(product_id)
        pipe.hsetnx(key, "metadata", _json(metadata))
        pipe.hsetnx(key, "updated_at", str(time.time()))
        pipe.hset(key, mapping={gen.pending_field: task_id for gen, task_id in tasks.items()})
        pipe.sadd(keys.PRODUCTS, product_id)

    @staticmethod
    def pending_guard(product_id: str, task_id: str, gen: Generation = MAIN) -> Guard:
        """A move's guard: the product's next change in gen is still this task's."""
        message = f"product {product_id} was changed or deleted by a later request"
        return Guard(
            keys.product(product_id), gen.pending_field, task_id, failure("superseded", message)
        )

    @staticmethod
    def mark_indexed(
        pipe: Any, product_id: str, metadata: dict[str, Any], digest: str, gen: Generation = MAIN
    ) -> None:
        fields = {
            "metadata": _json(metadata),
            "image_sha256": digest,
            gen.pending_field: "",
            "updated_at": str(time.time()),
        }
        pipe.hset(keys.product(product_id), mapping=fields)
        pipe.sadd(gen.indexed, product_id)
        pipe.srem(gen.lost, product_id)

    @staticmethod
    def remove(pipe: Any, product_id: str, gens: Iterable[Generation] = (MAIN,)) -> None:
        pipe.delete(keys.product(product_id), keys.thumbnail(product_id))
        pipe.srem(keys.PRODUCTS, product_id)
        for gen in gens:
            pipe.srem(gen.indexed, product_id)
            pipe.srem(gen.lost, product_id)

    @staticmethod
    def mark_lost(
        pipe: Any, product_ids: Iterable[str], reason: str, gen: Generation = MAIN
    ) -> None:
        """These products' vectors are gone: not indexed any more, so a re-import embeds them."""
        for product_id in product_ids:
            pipe.srem(gen.indexed, product_id)
            pipe.sadd(gen.lost, product_id)
        pipe.set(gen.damage, _json({"reason": reason, "at": time.time()}))

    def indexed_ids(self) -> set[str]:
        """Products Redis says have a vector in this generation."""
        return {raw.decode() for raw in self.client.smembers(self.gen.indexed)}  # type: ignore[union-attr]

    def backfill_indexed(self) -> None:
        """Build the set of indexed products from the records, for data older than the set."""
        if self.gen != MAIN or self.client.exists(keys.INDEXED):
            return
        for product_id in self.client.sscan_iter(keys.PRODUCTS, count=1000):
            if self.client.hget(keys.product(product_id.decode()), "indexed") == b"1":
                self.client.sadd(keys.INDEXED, product_id)

    def lost(self) -> tuple[int, str | None]:
        """How many products lost their vectors and are not re-indexed yet, and why."""
        count = int(self.client.scard(self.gen.lost))
        raw = self.client.get(self.gen.damage) if count else None
        return count, json.loads(raw)["reason"] if raw else None

    def page(self, cursor: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to about limit products from a SSCAN cursor, and the next cursor (0: done)."""
        reply: Any = self.client.sscan(keys.PRODUCTS, cursor, count=limit)
        next_cursor, raw_ids = reply
        ids = sorted(raw.decode() for raw in raw_ids)
        pipe = self.client.pipeline(transaction=False)
        for product_id in ids:
            pipe.hgetall(keys.product(product_id))
            pipe.sismember(self.gen.indexed, product_id)
        pipe.get(self.gen.index_model)
        *replies, model = pipe.execute()
        records = [
            self._record(product_id, raw, indexed, model)
            for product_id, raw, indexed in zip(ids, replies[::2], replies[1::2], strict=True)
            if raw
        ]
        return records, int(next_cursor)

    def count(self) -> int:
        return int(self.client.scard(keys.PRODUCTS))

    def random_id(self) -> str | None:
        raw = self.client.srandmember(keys.PRODUCTS)
        return None if raw is None else raw.decode()  # type: ignore[union-attr]


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
