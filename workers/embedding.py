"""The embed task: batches of queued images through one forward pass, then the journal."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import redis
from celery.signals import worker_init
from celery_batches import Batches, SimpleRequest

from shared import keys
from shared.errors import EXIT_CONFIG, LookalikeError, WeightsUnavailable
from shared.index import unusable_reason
from shared.keys import Generation
from shared.originals import OriginalStore, open_originals
from shared.queue import EMBED_TASK
from shared.records import TaskRecord, TaskStore, connect, failure
from workers.app import celery_app, settings
from workers.embedder import Embedded, Embedder, get_embedder
from workers.publish import Publisher

log = logging.getLogger(__name__)
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


@dataclass
class Job:
    record: TaskRecord
    image: bytes


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    assert settings.redis_url is not None
    return connect(settings.redis_url)


@lru_cache(maxsize=1)
def tasks() -> TaskStore:
    return TaskStore(redis_client(), settings.task_ttl, settings.search_ttl)


GENERATION = Generation.named(settings.generation)


@lru_cache(maxsize=1)
def publisher() -> Publisher:
    return Publisher(redis_client(), tasks(), settings.search_ttl, GENERATION)


@lru_cache(maxsize=1)
def originals() -> OriginalStore | None:
    return open_originals(settings)


@worker_init.connect
def load_model(**_: Any) -> None:
    """Build the model before consuming, so a worker that answers pings can embed at once.

    A worker without its model must not run: it would take tasks it cannot do. Celery logs and
    ignores exceptions raised here, so it says why in one line and exits.
    """
    try:
        get_embedder(settings)
    except WeightsUnavailable as exc:
        log.critical("the embed worker cannot start: %s", exc.message)
        logging.shutdown()
        os._exit(EXIT_CONFIG)


@celery_app.task(
    base=Batches,
    name=EMBED_TASK,
    flush_every=settings.batch_size * settings.pipeline_depth,
    flush_interval=settings.batch_wait,
    acks_late=True,
)
def embed(requests: list[SimpleRequest]) -> None:
    """Embed a batch; Redis outages are retried with backoff before the batch is acknowledged."""
    task_ids = [request.args[0] for request in requests]
    delay = 0.5
    deadline = time.monotonic() + settings.task_time_limit
    while True:
        try:
            process_batch(task_ids)
            return
        except TRANSIENT as exc:
            # Returning would acknowledge the messages; while Redis is away we keep them.
            if time.monotonic() + delay > deadline:
                raise
            log.warning("Redis unavailable (%s); retrying the batch in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def process_batch(task_ids: list[str]) -> None:
    """Claim the tasks, then embed them pipeline_depth forward batches at a time: each batch is
    published while the model computes the next; all before the messages are acknowledged."""
    jobs = [job for job in map(claim, task_ids) if job is not None]
    if not jobs:
        return
    embedder = get_embedder(settings)
    # One look at the generation's model per batch, not per item (a round trip each is time the
    # model waits), and only once a vector is to be journalled: bad images claim nothing.
    index_model = cache(lambda: claim_index_model(embedder.model_id))
    size = settings.batch_size
    chunks = [jobs[start : start + size] for start in range(0, len(jobs), size)]
    outcomes = embedder.embed_pipelined([job.image for job in chunk] for chunk in chunks)
    started, broken = time.perf_counter(), None
    for chunk in chunks:
        passes, chunk_started = embedder.forward_passes, time.perf_counter()
        try:
            results = [broken] * len(chunk) if broken else next(outcomes)
        except Exception as exc:  # the model itself failed (e.g. out of memory): fail, never hang
            log.exception("forward pass failed for %d tasks", len(chunk))
            broken = exc  # the stream ended with it: the chunks after it fail the same way
            results = [exc] * len(chunk)
        record_batch_stats(embedder.forward_passes - passes, len(chunk), chunk_started)
        for job, result in zip(chunk, results, strict=True):
            try:
                finish(job, result, embedder, index_model)
            except TRANSIENT:
                raise
            except Exception as exc:  # one item's bad luck must not leave the others "running"
                log.exception("task %s failed", job.record.task_id)
                finish_failed(job.record, failure("embed_failed", f"could not embed: {exc}"))
    took = time.perf_counter() - started
    if took > settings.visibility_timeout / 2:
        log.warning(
            "a batch of %d took %.1fs, over half of LOOKALIKE_VISIBILITY_TIMEOUT (%ds): its "
            "messages may be delivered again; use a smaller LOOKALIKE_BATCH_SIZE or "
            "LOOKALIKE_PIPELINE_DEPTH",
            len(jobs), took, settings.visibility_timeout,
        )  # fmt: skip


def finish(
    job: Job, result: Embedded | Exception, embedder: Embedder, index_model: Callable[[], str]
) -> None:
    if isinstance(result, LookalikeError):
        finish_failed(job.record, failure(result.code, result.message))
    elif isinstance(result, Exception):
        finish_failed(job.record, failure("embed_failed", f"could not embed: {result}"))
    elif job.record.kind == "search":
        finish_search(job.record, result, embedder)
    else:
        finish_index(job, result, embedder, index_model)


def claim(task_id: str) -> Job | None:
    """The job for a task, or None when it is done already (a redelivery) or unknown."""
    record = tasks().get(task_id)
    if record is None:
        log.warning("task %s has no record (expired?); skipped", task_id)
        return None
    if record.finished:
        return None
    problem, image = image_of(record)
    if problem is not None:
        publisher().fail(record, problem)
        return None
    if not publisher().start(record):
        return None  # another delivery of this task finished it meanwhile
    return Job(record, image)


def image_of(record: TaskRecord) -> tuple[dict[str, str] | None, bytes]:
    """The task's image: its upload, or, re-embedding for a new generation, the original."""
    generation = record.options.get("generation", "")
    if generation != GENERATION.name:
        message = (
            f"a task of generation {Generation(generation).label} reached a worker of "
            f"generation {GENERATION.label}"
        )
        return failure("wrong_generation", message), b""
    digest = record.options.get("original")
    if digest is not None:
        store = originals()
        data = store.get(digest) if store is not None else None
        if data is None:
            where = store.where if store is not None else "nowhere (LOOKALIKE_KEEP_ORIGINALS=false)"
            return failure("original_missing", f"no original image {digest} in {where}"), b""
        return None, data
    upload = redis_client().get(keys.upload(record.task_id))
    if upload is None:
        message = "the uploaded image expired before a worker took it"
        return failure("upload_expired", message), b""
    return None, upload  # type: ignore[return-value]


def record_batch_stats(passes: int, images: int, started: float) -> None:
    pipe = redis_client().pipeline(transaction=False)
    pipe.hincrby(keys.STATS, "forward_passes", passes)
    pipe.hincrby(keys.STATS, "images_embedded", images)
    pipe.hincrbyfloat(keys.STATS, "embed_seconds", time.perf_counter() - started)
    pipe.hincrby(keys.BATCH_SIZES, str(images), 1)
    pipe.execute()


def finish_failed(record: TaskRecord, error: dict[str, str]) -> None:
    publisher().fail(record, error)


def finish_search(record: TaskRecord, result: Embedded, embedder: Embedder) -> None:
    """Keep the query's vector and thumbnail (the gallery shows it): the API decodes nothing."""
    publisher().search_done(record, result.vector, embedder.model_id, result.thumbnail)


def finish_index(
    job: Job, result: Embedded, embedder: Embedder, index_model: Callable[[], str]
) -> None:
    """Journal the vector and update the product, atomically, unless a later request won;
    index_model gives the generation's (claim_index_model, once per batch)."""
    record, vector = job.record, result.vector
    reason = unusable_reason(vector)
    if reason is not None:  # e.g. a blank image under max pooling: no direction to compare
        finish_failed(record, failure("invalid_vector", f"the image's embedding {reason}"))
        return
    current = index_model()
    if current != embedder.model_id:
        message = (
            f"the index holds vectors of model {current}; this worker computes "
            f"{embedder.model_id}: vectors of different models are never mixed"
        )
        finish_failed(record, failure("model_mismatch", message))
        return
    store = originals()
    if store is not None and "original" not in record.options:
        store.put(hashlib.sha256(job.image).hexdigest(), job.image)  # for a later reindex
    publisher().indexed(record, vector, embedder.model_id, job.image, result.thumbnail)


def claim_index_model(model_id: str) -> str:
    """The generation's model id: the first worker to index anything into it sets it."""
    client = redis_client()
    client.set(GENERATION.index_model, model_id, nx=True)
    current = client.get(GENERATION.index_model)
    return current.decode() if current else model_id  # type: ignore[union-attr]
