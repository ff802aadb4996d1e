"""The embed task: batches of queued images through one forward pass, then the journal."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import redis
from celery.signals import worker_init
from celery_batches import SimpleRequest

from shared import keys
from shared.errors import EXIT_CONFIG, LookalikeError, WeightsUnavailable
from shared.index import unusable_reason
from shared.keys import Generation
from shared.originals import OriginalStore, open_originals
from shared.queue import EMBED_TASK
from shared.records import Move, TaskRecord, TaskStore, connect, failure
from workers.app import celery_app, settings
from workers.batching import FillingBatches
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
    base=FillingBatches,
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
    """Embed the tasks batch_size at a time, pipelined: each chunk is claimed and decoded while
    the model computes the one before, and published while it computes the one after; all
    before the messages are acknowledged. Claims and ends go to Redis a chunk at a time."""
    embedder = get_embedder(settings)
    # One look at the generation's model per batch, not per item (a round trip each is time the
    # model waits), and only once a vector is to be journalled: bad images claim nothing.
    index_model = cache(lambda: claim_index_model(embedder.model_id))
    unique = list(dict.fromkeys(task_ids))  # a message delivered again may come in the same batch
    size = settings.batch_size
    id_chunks = [unique[start : start + size] for start in range(0, len(unique), size)]
    claimed: list[list[Job]] = []

    def images() -> Iterator[list[bytes]]:
        for ids in id_chunks:
            claimed.append(claim_all(ids))
            yield [job.image for job in claimed[-1]]

    outcomes = embedder.embed_pipelined(images())
    started, broken = time.perf_counter(), None
    for index, ids in enumerate(id_chunks):
        passes, busy = embedder.forward_passes, embedder.forward_seconds
        chunk_started = time.perf_counter()
        results: list[Embedded | Exception] | None = None
        if broken is None:
            try:
                results = next(outcomes)
            except TRANSIENT:
                raise
            except Exception as exc:  # the model failed (e.g. out of memory): fail, never hang
                log.exception("forward pass failed for %d tasks", len(ids))
                broken = exc  # the stream ended with it: the chunks after it fail the same way
        # After a failure the stream claims no more: claim what is left, to fail it.
        jobs = claimed[index] if index < len(claimed) else claim_all(ids)
        if results is None:
            assert broken is not None
            results = [broken] * len(jobs)
        if jobs:  # not a chunk of redeliveries of finished tasks
            record_batch_stats(
                embedder.forward_passes - passes, embedder.forward_seconds - busy, len(jobs),
                chunk_started,
            )  # fmt: skip
            finish_all(jobs, results, embedder, index_model)
    took = time.perf_counter() - started
    if took > settings.visibility_timeout / 2:
        log.warning(
            "a batch of %d took %.1fs, over half of LOOKALIKE_VISIBILITY_TIMEOUT (%ds): its "
            "messages may be delivered again; use a smaller LOOKALIKE_BATCH_SIZE or "
            "LOOKALIKE_PIPELINE_DEPTH",
            len(unique), took, settings.visibility_timeout,
        )  # fmt: skip


def finish_all(
    jobs: list[Job],
    results: list[Embedded | Exception],
    embedder: Embedder,
    index_model: Callable[[], str],
) -> None:
    """Publish a chunk's ends together; one item's bad luck never leaves the others running."""
    moves = []
    for job, result in zip(jobs, results, strict=True):
        try:
            moves.append(end_of(job, result, embedder, index_model))
        except TRANSIENT:
            raise
        except Exception as exc:
            log.exception("task %s failed", job.record.task_id)
            moves.append(publisher().failed(job.record, embed_failed(exc)))
    try:
        publisher().finish(moves)
    except TRANSIENT:
        raise
    except Exception:  # one move Redis refuses must not sink the others: one at a time
        log.exception("publishing %d tasks together failed; publishing them one by one", len(moves))
        for move in moves:
            try:
                publisher().finish([move])
            except TRANSIENT:
                raise
            except Exception as exc:
                log.exception("task %s failed", move.record.task_id)
                publisher().fail(move.record, embed_failed(exc))


def embed_failed(exc: Exception) -> dict[str, str]:
    return failure("embed_failed", f"could not embed: {exc}")


def end_of(
    job: Job, result: Embedded | Exception, embedder: Embedder, index_model: Callable[[], str]
) -> Move:
    """The task's final move for its result."""
    if isinstance(result, LookalikeError):
        return publisher().failed(job.record, failure(result.code, result.message))
    if isinstance(result, Exception):
        return publisher().failed(job.record, embed_failed(result))
    if job.record.kind == "search":
        # The query's vector and thumbnail are kept (the gallery shows it): the API decodes nothing.
        return publisher().searched(job.record, result.vector, embedder.model_id, result.thumbnail)
    return index_end(job, result, embedder, index_model)


def claim_all(task_ids: list[str]) -> list[Job]:
    """The jobs for the tasks, in a few round trips for them all; none for a task done already (a
    redelivery), unknown, or whose image is gone (that task fails)."""
    records: list[TaskRecord] = []
    for task_id, record in zip(task_ids, tasks().get_many(task_ids), strict=True):
        if record is None:
            log.warning("task %s has no record (expired?); skipped", task_id)
        elif not record.finished:
            records.append(record)
    upload_keys = [keys.upload(record.task_id) for record in records]
    uploads: list[Any] = redis_client().mget(upload_keys) if records else []
    jobs, problems = [], []
    for record, upload in zip(records, uploads, strict=True):
        problem, image = image_of(record, upload)
        if problem is None:
            jobs.append(Job(record, image))
        else:
            problems.append(publisher().failed(record, problem))
    if problems:
        publisher().finish(problems)
    started = publisher().start_all([job.record for job in jobs])
    return [job for job, ok in zip(jobs, started, strict=True) if ok]


def image_of(record: TaskRecord, upload: bytes | None) -> tuple[dict[str, str] | None, bytes]:
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
    if upload is None:
        message = "the uploaded image expired before a worker took it"
        return failure("upload_expired", message), b""
    return None, upload


def record_batch_stats(passes: int, model_seconds: float, images: int, started: float) -> None:
    pipe = redis_client().pipeline(transaction=False)
    pipe.hincrby(keys.STATS, "forward_passes", passes)
    pipe.hincrbyfloat(keys.STATS, "model_seconds", model_seconds)
    pipe.hincrby(keys.STATS, "images_embedded", images)
    pipe.hincrbyfloat(keys.STATS, "embed_seconds", time.perf_counter() - started)
    pipe.hincrby(keys.BATCH_SIZES, str(images), 1)
    pipe.execute()


def index_end(
    job: Job, result: Embedded, embedder: Embedder, index_model: Callable[[], str]
) -> Move:
    """Journal the vector and update the product, atomically, unless a later request won;
    index_model gives the generation's (claim_index_model, once per batch)."""
    record, vector = job.record, result.vector
    reason = unusable_reason(vector)
    if reason is not None:  # e.g. a blank image under max pooling: no direction to compare
        return publisher().failed(
            record, failure("invalid_vector", f"the image's embedding {reason}")
        )
    current = index_model()
    if current != embedder.model_id:
        message = (
            f"the index holds vectors of model {current}; this worker computes "
            f"{embedder.model_id}: vectors of different models are never mixed"
        )
        return publisher().failed(record, failure("model_mismatch", message))
    store = originals()
    if store is not None and "original" not in record.options:
        store.put(hashlib.sha256(job.image).hexdigest(), job.image)  # for a later reindex
    return publisher().journalled(record, vector, embedder.model_id, job.image, result.thumbnail)


def claim_index_model(model_id: str) -> str:
    """The generation's model id: the first worker to index anything into it sets it."""
    client = redis_client()
    client.set(GENERATION.index_model, model_id, nx=True)
    current = client.get(GENERATION.index_model)
    return current.decode() if current else model_id  # type: ignore[union-attr]
