"""How an embed task ends: the vector journalled with the product, a search's vector stored, or a
failure; each written once, whatever the number of deliveries of the task (at-least-once)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import redis

from shared import keys
from shared.journal import append, upsert_entry
from shared.keys import MAIN, Generation
from shared.records import ProductStore, TaskRecord, TaskState, TaskStore, failure


class Publisher:
    """The ends of tasks, against one Redis, into one generation of the index."""

    def __init__(
        self, client: redis.Redis, tasks: TaskStore, search_ttl: int, gen: Generation = MAIN
    ) -> None:
        self.client = client
        self.tasks = tasks
        self.search_ttl = search_ttl
        self.gen = gen

    def start(self, record: TaskRecord) -> bool:
        """Mark the task running, unless another delivery finished it already."""
        return self.tasks.advance(record, TaskState.RUNNING)

    def fail(self, record: TaskRecord, error: dict[str, str]) -> bool:
        upload = keys.upload(record.task_id)
        return self.tasks.advance(
            record, TaskState.FAILED, error=error, writes=lambda pipe: pipe.delete(upload)
        )

    def search_done(
        self, record: TaskRecord, vector: np.ndarray, model_id: str, thumbnail: bytes | None = None
    ) -> bool:
        """Keep the query vector and thumbnail (for search_ttl): any API process answers."""
        data = np.ascontiguousarray(vector, dtype="<f4").tobytes()

        def writes(pipe: Any) -> None:
            pipe.set(keys.query_vector(record.task_id), data, ex=self.search_ttl)
            if thumbnail is not None:
                pipe.set(keys.query_thumbnail(record.task_id), thumbnail, ex=self.search_ttl)
            pipe.delete(keys.upload(record.task_id))

        result = {"model_id": model_id, "dim": int(vector.shape[0])}
        return self.tasks.advance(record, TaskState.SUCCEEDED, result=result, writes=writes)

    def indexed(
        self, record: TaskRecord, vector: np.ndarray, model_id: str, image: bytes, thumbnail: bytes
    ) -> bool:
        """Journal the vector and update the product in one transaction, unless a later post
        or delete of the product won (then the task fails as superseded)."""
        product_id = record.product_id
        assert product_id is not None
        metadata = record.options.get("metadata", {})
        digest = hashlib.sha256(image).hexdigest()

        def still_pending(pipe: Any) -> dict[str, str] | None:
            if ProductStore.watch_pending(pipe, product_id, self.gen) == record.task_id:
                return None
            return failure(
                "superseded", f"product {product_id} was changed or deleted by a later request"
            )

        def writes(pipe: Any) -> None:
            append(
                self.client, pipe, upsert_entry(product_id, vector, model_id, metadata), self.gen
            )
            ProductStore.mark_indexed(pipe, product_id, metadata, digest, self.gen)
            pipe.set(keys.thumbnail(product_id), thumbnail)
            pipe.delete(keys.upload(record.task_id))

        result = {"product_id": product_id, "model_id": model_id, "image_sha256": digest}
        done = self.tasks.advance(
            record, TaskState.SUCCEEDED, result=result, writes=writes, check=still_pending
        )
        if not done:
            self.client.delete(keys.upload(record.task_id))
        return done
