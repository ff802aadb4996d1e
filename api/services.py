"""What the API does, behind its views: accept uploads, answer from the replica, delete."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import redis
from celery import Celery
from flask import current_app

from api.errors import NotFound, NotIndexed, Unavailable
from api.replica import Replica
from shared import keys
from shared.errors import LookalikeError, ModelMismatch
from shared.journal import delete_entry
from shared.model_id import RANDOM_MODEL_NOTICE, is_random_model
from shared.queue import BULK_PRIORITY, SEARCH_PRIORITY, make_celery, send_embed
from shared.records import ProductStore, TaskRecord, TaskState, TaskStore, connect, failure
from shared.settings import Settings

POLL_SECONDS = 0.05


def current_services() -> Services:
    """The services of the app handling the current request."""
    services: Services = current_app.extensions["lookalike"]
    return services


class Services:
    """One per API process: Redis, the Celery client, the index replica."""

    def __init__(self, settings: Settings) -> None:
        if settings.redis_url is None:
            raise Unavailable("LOOKALIKE_REDIS_URL is not set: the API needs the stack's Redis")
        self.settings = settings
        self.redis = connect(settings.redis_url)
        self.tasks = TaskStore(self.redis, settings.task_ttl)
        self.products = ProductStore(self.redis)
        self.celery: Celery = make_celery(settings, settings.redis_url)
        self.replica = Replica(settings, self.redis).start()

    def accept_product(self, product_id: str, image: bytes, metadata: dict[str, Any]) -> str:
        """Store the upload and its task record, then queue it; returns the task id."""
        record = TaskRecord(
            task_id=uuid.uuid4().hex,
            kind="index",
            product_id=product_id,
            options={"metadata": metadata},
        )
        pipe = self._stage_upload(record, image)
        self.products.stage(pipe, product_id, record.task_id, metadata)
        pipe.execute()
        self._enqueue(record, BULK_PRIORITY)
        return record.task_id

    def _stage_upload(self, record: TaskRecord, image: bytes) -> Any:
        """A transaction holding the image (with its TTL) and the queued task record."""
        pipe = self.redis.pipeline()
        pipe.set(keys.upload(record.task_id), image, ex=self.settings.upload_ttl)
        self.tasks.save(record, pipe)
        return pipe

    def _enqueue(self, record: TaskRecord, priority: int) -> None:
        try:
            send_embed(self.celery, record.task_id, priority)
        except Exception as exc:
            self.tasks.update(record, TaskState.FAILED, error=failure("enqueue_failed", str(exc)))
            raise Unavailable(f"could not queue the task: {exc}") from exc

    def product(self, product_id: str) -> dict[str, Any]:
        record = self.products.get(product_id)
        if record is None:
            raise NotFound(f"unknown product {product_id}")
        return record

    def similar(self, product_id: str, k: int, filters: dict[str, str]) -> list[dict[str, Any]]:
        self.product(product_id)
        try:
            return self.replica.catalog.similar(product_id, k, filters)
        except KeyError:
            raise NotIndexed(f"product {product_id} is not indexed yet") from None

    def delete_product(self, product_id: str) -> None:
        """Journal the delete and drop the records, atomically; later tasks see it is gone."""
        product_key = keys.product(product_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(product_key)
                    if not pipe.exists(product_key):
                        raise NotFound(f"unknown product {product_id}")
                    pipe.multi()
                    pipe.xadd(keys.JOURNAL, delete_entry(product_id))
                    self.products.remove(pipe, product_id)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def thumbnail(self, product_id: str) -> bytes:
        data = self.redis.get(keys.thumbnail(product_id))
        if data is None:
            self.product(product_id)
            raise NotFound(f"product {product_id} has no image yet")
        return data  # type: ignore[return-value]

    def start_search(self, image: bytes, k: int, filters: dict[str, str]) -> TaskRecord:
        record = TaskRecord(
            task_id=uuid.uuid4().hex, kind="search", options={"k": k, "filters": filters}
        )
        self._stage_upload(record, image).execute()
        self._enqueue(record, SEARCH_PRIORITY)
        return record

    def wait_for(self, task_id: str, seconds: float) -> TaskRecord:
        """The task record once finished, or as it is when the wait is over."""
        deadline = time.monotonic() + seconds
        while True:
            record = self.task(task_id)
            if record.finished or time.monotonic() >= deadline:
                return record
            time.sleep(POLL_SECONDS)

    def task(self, task_id: str) -> TaskRecord:
        record = self.tasks.get(task_id)
        if record is None:
            raise NotFound(f"unknown task {task_id}")
        return record

    def search_results(self, record: TaskRecord) -> list[dict[str, Any]]:
        """Neighbours of a finished search task's vector, from this process's replica."""
        raw = self.redis.get(keys.query_vector(record.task_id))
        if raw is None:
            raise NotFound(f"the vector of search task {record.task_id} has expired")
        catalog = self.replica.catalog
        model = (record.result or {}).get("model_id")
        if catalog.model_id is not None and model != catalog.model_id:
            raise ModelMismatch(
                f"the search image was embedded with model {model}, "
                f"the index holds {catalog.model_id}"
            )
        vector = np.frombuffer(raw, dtype="<f4")  # type: ignore[arg-type]
        return catalog.search(vector, record.options["k"], record.options.get("filters", {}))

    def public_task(self, record: TaskRecord) -> dict[str, Any]:
        """The task record as clients see it; a finished search carries its results."""
        view = record.public()
        if record.kind == "search" and record.state == TaskState.SUCCEEDED:
            try:
                view["result"] = {**view.get("result", {}), "results": self.search_results(record)}
            except LookalikeError as exc:
                view["result"] = {"error": {"code": exc.code, "message": exc.message}}
        return view

    def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            checks["redis"] = bool(self.redis.ping())
        except redis.RedisError as exc:
            checks["redis"] = f"unreachable: {exc}"
        checks["replica"] = self.replica.loaded.is_set() or "not loaded yet"
        checks["embed_workers"] = self._embed_workers() or "no embed worker answered"
        return checks

    def index_model(self) -> dict[str, str | None]:
        """The index's model id and, for the demo's random weights, a notice that says so."""
        try:
            raw = self.redis.get(keys.INDEX_MODEL)
        except redis.RedisError:
            raw = None
        model = raw.decode() if isinstance(raw, bytes) else self.replica.catalog.model_id
        return {
            "model_id": model,
            "notice": RANDOM_MODEL_NOTICE if is_random_model(model) else None,
        }

    def _embed_workers(self) -> int:
        try:
            replies = self.celery.control.ping(timeout=1.0) or []
        except Exception:
            return 0
        return sum(1 for reply in replies for name in reply if name.startswith("embed@"))
