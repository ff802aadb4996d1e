"""How an embed task ends: the vector journalled with the product, a search's vector stored, or a
failure; each written once, whatever the number of deliveries of the task (at-least-once).

Each end is a Move; a batch's moves go to Redis together (TaskStore.advance_many)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis

from shared import keys
from shared.journal import append, upsert_entry
from shared.keys import MAIN, Generation
from shared.records import Move, ProductStore, TaskRecord, TaskState, TaskStore


class Publisher:
    """The ends of tasks, against one Redis, into one generation of the index."""

    def __init__(
        self, client: redis.Redis, tasks: TaskStore, search_ttl: int, gen: Generation = MAIN
    ) -> None:
        self.client = client
        self.tasks = tasks
        self.search_ttl = search_ttl
        self.gen = gen

    def start_all(self, records: Sequence[TaskRecord]) -> list[bool]:
        """Mark the tasks running, except those another delivery finished already."""
        return self.tasks.advance_many([Move(record, TaskState.RUNNING) for record in records])

    def start(self, record: TaskRecord) -> bool:
        return self.start_all([record])[0]

    def finish(self, moves: Sequence[Move]) -> list[bool]:
        """Make the tasks' final moves; where one is not made (another delivery finished the
        task, or a later request superseded it) its upload goes too: nothing will read it."""
        done = self.tasks.advance_many(moves)
        leftovers = [
            keys.upload(move.record.task_id) for move, ok in zip(moves, done, strict=True) if not ok
        ]
        if leftovers:
            self.client.delete(*leftovers)
        return done

    def failed(self, record: TaskRecord, error: dict[str, str]) -> Move:
        upload = keys.upload(record.task_id)
        return Move(record, TaskState.FAILED, error=error, writes=lambda pipe: pipe.delete(upload))

    def fail(self, record: TaskRecord, error: dict[str, str]) -> bool:
        return self.finish([self.failed(record, error)])[0]

    def searched(
        self, record: TaskRecord, vector: np.ndarray, model_id: str, thumbnail: bytes | None = None
    ) -> Move:
        """Keep the query vector and thumbnail (for search_ttl): any API process answers."""
        data = np.ascontiguousarray(vector, dtype="<f4").tobytes()

        def writes(pipe: Any) -> None:
            pipe.set(keys.query_vector(record.task_id), data, ex=self.search_ttl)
            if thumbnail is not None:
                pipe.set(keys.query_thumbnail(record.task_id), thumbnail, ex=self.search_ttl)
            pipe.delete(keys.upload(record.task_id))

        result = {"model_id": model_id, "dim": int(vector.shape[0])}
        return Move(record, TaskState.SUCCEEDED, result=result, writes=writes)

    def search_done(
        self, record: TaskRecord, vector: np.ndarray, model_id: str, thumbnail: bytes | None = None
    ) -> bool:
        return self.finish([self.searched(record, vector, model_id, thumbnail)])[0]

    def journalled(
        self, record: TaskRecord, vector: np.ndarray, model_id: str, image: bytes, thumbnail: bytes
    ) -> Move:
        """Journal the vector and update the product in one transaction, unless a later post
        or delete of the product won (then the task fails as superseded)."""
        product_id = record.product_id
        assert product_id is not None
        metadata = record.options.get("metadata", {})
        digest = hashlib.sha256(image).hexdigest()

        def writes(pipe: Any) -> None:
            append(
                self.client, pipe, upsert_entry(product_id, vector, model_id, metadata), self.gen
            )
            ProductStore.mark_indexed(pipe, product_id, metadata, digest, self.gen)
            pipe.set(keys.thumbnail(product_id), thumbnail)
            pipe.delete(keys.upload(record.task_id))

        result = {"product_id": product_id, "model_id": model_id, "image_sha256": digest}
        guard = ProductStore.pending_guard(product_id, record.task_id, self.gen)
        return Move(record, TaskState.SUCCEEDED, result=result, writes=writes, guard=guard)

    def indexed(
        self, record: TaskRecord, vector: np.ndarray, model_id: str, image: bytes, thumbnail: bytes
    ) -> bool:
        return self.finish([self.journalled(record, vector, model_id, image, thumbnail)])[0]
