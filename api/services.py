"""What the API does, behind its views: accept uploads, answer from the replica, delete."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import redis
from celery import Celery
from flask import current_app
from werkzeug.datastructures import ETags

from api.errors import INDEX_LOADING, IndexLoading, NotFound, NotIndexed, Overloaded, Unavailable
from api.replica import Replica
from shared import keys
from shared.catalog import Catalog
from shared.errors import LookalikeError, ModelMismatch
from shared.follower import lag_seconds, read_after, trimmed_past
from shared.journal import START, delete_entry
from shared.journal import append as journal_append
from shared.keys import MAIN, Generation
from shared.model_id import RANDOM_MODEL_NOTICE, is_random_model
from shared.queue import (
    BULK_PRIORITY,
    PRIORITY_STEPS,
    SEARCH_PRIORITY,
    make_celery,
    queue_name,
    send_embed,
)
from shared.records import ProductStore, TaskRecord, TaskState, TaskStore, connect, failure
from shared.settings import Settings

POLL_SECONDS = 0.05
MEMORY_EVERY = 1.0  # seconds between two reads of Redis' INFO memory
# Part of every /similar ETag: bump it when that answer's body changes, so old tags never match.
SIMILAR_ETAG_FORMAT = "similar/1"
NEAR_DUPLICATES_MAX = 50  # near duplicates an index task's result lists, at most
NEAR_DUPLICATES_WINDOW = 16  # journal entries past the replica's position it looks through


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
        self.tasks = TaskStore(self.redis, settings.task_ttl, settings.search_ttl)
        self.celery: Celery = make_celery(settings, settings.redis_url)
        self.replica = Replica(settings, self.redis).start()
        # Searches waiting for their vector hold a gunicorn thread each: only this many may.
        self.waiting_searches = threading.BoundedSemaphore(settings.max_waiting_searches)
        self._memory_lock = threading.Lock()
        self._memory: tuple[float, int, int] | None = None

    @property
    def products(self) -> ProductStore:
        """Product records as the generation this process serves sees them."""
        return ProductStore(self.redis, self.replica.gen)

    def generations(self) -> list[Generation]:
        """Every generation of the index: the one serving first; new posts reach them all."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.SERVING)
        pipe.smembers(keys.GENERATIONS)
        serving_raw, names = pipe.execute()
        serving = Generation(serving_raw.decode()) if serving_raw else MAIN
        others = sorted({raw.decode() for raw in names} - {serving.name})
        return [serving, *map(Generation, others)]

    def accept_product(self, product_id: str, image: bytes, metadata: dict[str, Any]) -> str:
        """Store the upload and its task records (one per generation), then queue them;
        returns the serving generation's task, the one clients follow."""
        records = {
            gen: TaskRecord(
                task_id=uuid.uuid4().hex,
                kind="index",
                product_id=product_id,
                options={"metadata": metadata, "generation": gen.name},
            )
            for gen in self.generations()
        }
        pipe = self.redis.pipeline()
        for record in records.values():
            self._stage_upload(pipe, record, image)
        ProductStore.stage(pipe, product_id, {g: r.task_id for g, r in records.items()}, metadata)
        pipe.execute()
        for gen, record in records.items():
            self._enqueue(record, BULK_PRIORITY, gen)
        return next(iter(records.values())).task_id

    def _stage_upload(self, pipe: Any, record: TaskRecord, image: bytes) -> None:
        """The image (with its TTL) and the queued task record, on the transaction pipe."""
        ttl = self.settings.upload_ttl
        if record.kind == "search":  # nothing of a search outlives its vector
            ttl = min(ttl, self.settings.search_ttl)
        pipe.set(keys.upload(record.task_id), image, ex=ttl)
        self.tasks.save(record, pipe)

    def _enqueue(self, record: TaskRecord, priority: int, gen: Generation) -> None:
        try:
            send_embed(self.celery, record.task_id, priority, gen.queue)
        except Exception as exc:
            error = failure("enqueue_failed", str(exc))
            self.tasks.update(record, TaskState.FAILED, error=error)
            raise Unavailable(f"could not queue the task: {exc}") from exc

    def check_capacity(self) -> None:
        """An Overloaded error when the embed queue or Redis' memory is at its limit."""
        limit = self.settings.max_queued
        depth = self.queue_depth()
        if depth >= limit:
            raise Overloaded(
                f"the embed queue holds {depth} tasks, at its limit of {limit} "
                "(LOOKALIKE_MAX_QUEUED); try again later"
            )
        used, maxmemory = self.redis_memory()
        fraction = self.settings.max_redis_memory_fraction
        if maxmemory and used > fraction * maxmemory:
            raise Overloaded(
                f"Redis uses {used} of its {maxmemory} bytes of memory, more than {fraction:g} "
                "of it (LOOKALIKE_MAX_REDIS_MEMORY_FRACTION); try again later"
            )

    def queue_depth(self) -> int:
        """Messages waiting in the embed queue, over all its priority lists."""
        pipe = self.redis.pipeline(transaction=False)
        for step in PRIORITY_STEPS:
            pipe.llen(queue_name(step, self.replica.gen.queue))
        return sum(int(length) for length in pipe.execute())

    def redis_memory(self) -> tuple[int, int]:
        """Redis' used_memory and maxmemory (0: no limit), read at most once a second."""
        with self._memory_lock:
            now = time.monotonic()
            if self._memory is None or now - self._memory[0] >= MEMORY_EVERY:
                info: dict[str, Any] = self.redis.info("memory")
                self._memory = (now, int(info["used_memory"]), int(info.get("maxmemory", 0)))
            return self._memory[1], self._memory[2]

    def require_index(self) -> None:
        """An IndexLoading error until the replica has loaded: an empty answer would be wrong."""
        if not self.replica.loaded.is_set():
            raise IndexLoading(INDEX_LOADING)

    def product(self, product_id: str) -> dict[str, Any]:
        record = self.products.get(product_id)
        if record is None:
            raise NotFound(f"unknown product {product_id}")
        return record

    def known_product(self, product_id: str) -> dict[str, Any]:
        """The product's record; with Redis away, what the replica holds of it, if anything."""
        try:
            return self.product(product_id)
        except redis.RedisError:
            catalog = self.replica.catalog
            if product_id not in catalog:
                raise
            return held(catalog, product_id)

    def similar(
        self, product_id: str, k: int, filters: dict[str, str]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The product (id, metadata) and its neighbours, both from the replica, as of one
        journal position (the ETag's). Redis is asked only about a product the replica does not
        hold (unknown: 404; not indexed yet: 409): during a bulk import it is busy with the
        journal: /similar's p99 during a 50k import was 9.7 ms without a round trip to it and
        12.0-13.4 with one (idle 4.8-5.6; pinned, bench/follow.py)."""
        self.require_index()
        catalog = self.replica.catalog
        try:
            results = catalog.similar(product_id, k, filters)
        except KeyError:
            self.known_product(product_id)
            raise NotIndexed(f"product {product_id} is not indexed yet") from None
        return held(catalog, product_id), results

    def similar_etag(
        self, product_id: str, k: int, filters: Mapping[str, str], if_none_match: ETags
    ) -> tuple[str, bool]:
        """The ETag (opaque part) of /similar's answer now, and whether if_none_match holds it
        (weak comparison, or `*`): then the answer is a 304, without a search.

        The tag digests the replica's index state, its generation, journal position and model
        id, with the request normalised (k, filters sorted): every journal entry applied, every
        reload and every switch of generation changes it, and replicas at one position agree.
        Read before the search, so no answer is older than its tag. A 304 only where a 200
        would be: the errors are those of `similar` (index loading, unknown, not indexed).
        """
        self.require_index()
        gen, catalog = self.replica.gen, self.replica.catalog
        request = [product_id, k, sorted(filters.items())]
        index = [gen.name, catalog.position, catalog.model_id]
        state = [SIMILAR_ETAG_FORMAT, index, request]
        tag = hashlib.blake2b(json.dumps(state).encode(), digest_size=16).hexdigest()
        if not if_none_match.contains_weak(tag):
            return tag, False
        if product_id not in catalog:  # only `*` can get here: no 200 of this state has a tag
            self.known_product(product_id)
            raise NotIndexed(f"product {product_id} is not indexed yet")
        return tag, True

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
                    gens = self.generations()
                    for gen in gens:
                        journal_append(self.redis, pipe, delete_entry(product_id), gen)
                    ProductStore.remove(pipe, product_id, gens)
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
        self.require_index()
        gen = self.replica.gen
        options = {"k": k, "filters": filters, "generation": gen.name}
        record = TaskRecord(task_id=uuid.uuid4().hex, kind="search", options=options)
        pipe = self.redis.pipeline()
        self._stage_upload(pipe, record, image)
        pipe.execute()
        self._enqueue(record, SEARCH_PRIORITY, gen)
        return record

    def wait_for(self, task_id: str, seconds: float) -> TaskRecord:
        """The task record once finished, or as it is when the wait is over."""
        deadline = time.monotonic() + seconds
        while True:
            record = self.task(task_id)
            if record.finished or time.monotonic() >= deadline:
                return record
            time.sleep(POLL_SECONDS)

    def wait_for_search(self, record: TaskRecord) -> TaskRecord:
        """The search's record once finished, or at once when too many searches wait already."""
        if not self.waiting_searches.acquire(blocking=False):
            return record
        try:
            with self.replica.traffic.aside():  # the replica's following need not wait for it
                return self.wait_for(record.task_id, self.settings.search_wait)
        finally:
            self.waiting_searches.release()

    def task(self, task_id: str) -> TaskRecord:
        record = self.tasks.get(task_id)
        if record is None:
            raise NotFound(f"unknown task {task_id}")
        return record

    def search_results(self, record: TaskRecord) -> list[dict[str, Any]]:
        """Neighbours of a finished search task's vector, from this process's replica."""
        self.require_index()
        raw = self.redis.get(keys.query_vector(record.task_id))
        if raw is None:
            raise NotFound(f"the vector of search task {record.task_id} has expired")
        catalog = self.replica.catalog
        model = (record.result or {}).get("model_id")
        previous = self.replica.previous
        if model != catalog.model_id and previous is not None and model == previous.model_id:
            catalog = previous  # embedded before this replica moved to another generation
        if catalog.model_id is not None and model != catalog.model_id:
            raise ModelMismatch(
                f"the search image was embedded with model {model}, "
                f"the index holds {catalog.model_id}"
            )
        vector = np.frombuffer(raw, dtype="<f4")  # type: ignore[arg-type]
        return catalog.search(vector, record.options["k"], record.options.get("filters", {}))

    def public_task(self, record: TaskRecord) -> dict[str, Any]:
        """The task record as clients see it; a finished search carries its results, a
        succeeded index task the products its image nearly duplicates (once this replica holds
        its vector: omitted until then)."""
        view = record.public()
        if record.kind == "search" and record.state == TaskState.SUCCEEDED:
            try:
                view["result"] = {**view.get("result", {}), "results": self.search_results(record)}
            except LookalikeError as exc:
                view["result"] = {"error": {"code": exc.code, "message": exc.message}}
        elif record.kind == "index" and record.state == TaskState.SUCCEEDED:
            duplicates = self._near_duplicates(record)
            if duplicates is not None:
                view["result"] = {**view.get("result", {}), "near_duplicates": duplicates}
        return view

    def _near_duplicates(self, record: TaskRecord) -> list[dict[str, Any]] | None:
        """Other products at or above the near-duplicate threshold to a succeeded index task's
        vector, best first (at most NEAR_DUPLICATES_MAX), from this process's replica. None
        while the replica may lack that vector: the journal after its position still changes
        the product (or holds NEAR_DUPLICATES_WINDOW entries or more, or was trimmed past it),
        or the product has since another image, or the task is of another generation."""
        product_id, gen, catalog = str(record.product_id), self.replica.gen, self.replica.catalog
        if record.options.get("generation", "") != gen.name or self.replica.gen != gen:
            return None
        position = catalog.position
        try:
            later = read_after(self.redis, position, NEAR_DUPLICATES_WINDOW, None, gen)
            if (
                len(later) >= NEAR_DUPLICATES_WINDOW
                or any(entry.product_id == product_id for entry in later)
                or trimmed_past(self.redis, position, gen)
            ):
                return None
            product = self.products.get(product_id)
        except redis.RedisError:
            return None
        if product is None or product["image_sha256"] != (record.result or {}).get("image_sha256"):
            return None
        try:
            hits = catalog.similar(product_id, NEAR_DUPLICATES_MAX, {})
        except KeyError:  # deleted since
            return None
        threshold = self.settings.near_duplicate_threshold
        return [  # a cosine is at most 1: float error in the index's distances is cut off
            {"product_id": hit["product_id"], "score": min(hit["score"], 1.0)}
            for hit in hits
            if hit["score"] >= threshold
        ]

    def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            checks["redis"] = bool(self.redis.ping())
        except redis.RedisError as exc:
            checks["redis"] = f"unreachable: {exc}"
        checks["replica"] = self.replica.loaded.is_set() or "not loaded yet"
        checks["embed_workers"] = self._embed_workers() or "no embed worker answered"
        if checks["redis"] is True:
            checks["index"] = self._index_whole()
        return checks

    def _index_whole(self) -> bool | str:
        """No vectors lost, and the replica holds as many items as Redis says are indexed."""
        lost, reason = self.products.lost()
        if lost:
            return (
                f"{lost} products lost their vectors ({reason}); re-import them: "
                "`lookalike import` re-embeds every product not indexed"
            )
        counts = self.index_counts()
        if counts["indexed"] is not None and counts["items"] != counts["indexed"]:
            return (
                f"the index holds {counts['items']} items but Redis says "
                f"{counts['indexed']} products are indexed"
            )
        return True

    def lags(self) -> dict[str, dict[str, float | int | None]]:
        """How far the writer and this replica are behind the journal's head: the age of the
        oldest entry each has not applied, and how many entries (None: not numbered yet)."""
        gen = self.replica.gen
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(gen.writer_position)
        pipe.get(gen.writer_seq)
        pipe.get(gen.journal_seq)
        writer, writer_seq, head = pipe.execute()
        catalog = self.replica.catalog
        behind = [
            ("writer", writer.decode() if writer else START, _int(writer_seq) if writer else 0),
            ("replica", catalog.position, catalog.seq),
        ]
        head_seq = _int(head) or 0
        return {
            name: {
                "seconds": round(lag_seconds(self.redis, position, gen), 3),
                "entries": None if seq is None else max(head_seq - seq, 0),
            }
            for name, position, seq in behind
        }

    def index_counts(self) -> dict[str, int | None]:
        """The replica's items and Redis' indexed products; `indexed` None unless the replica
        is exactly at the journal's head (then the two must be equal)."""
        gen, catalog = self.replica.gen, self.replica.catalog
        position, items = catalog.position, len(catalog)
        with self.redis.pipeline() as pipe:  # one transaction: head and count agree
            pipe.xrevrange(gen.journal, count=1)
            pipe.scard(gen.indexed)
            head, indexed = pipe.execute()
        at_head = (head[0][0].decode() if head else START) == position
        steady = at_head and catalog.position == position and self.replica.loaded.is_set()
        return {"items": items, "indexed": int(indexed) if steady else None}

    def index_status(self) -> dict[str, Any]:
        """The generation this process serves, and every generation of the index."""
        self.require_index()
        catalog, gen = self.replica.catalog, self.replica.gen
        previous = self.redis.get(keys.PREVIOUS)
        pipe = self.redis.pipeline(transaction=False)
        gens = self.generations()
        for other in gens:
            pipe.get(other.index_model)
            pipe.scard(other.indexed)
        replies = pipe.execute()
        listing = [
            {
                "generation": other.name,
                "label": other.label,
                "role": "serving" if n == 0 else "previous" if previous == other.name.encode()
                else "building",
                "model_id": model.decode() if model else None,
                "indexed": int(indexed),
            }
            for n, (other, model, indexed) in enumerate(
                zip(gens, replies[::2], replies[1::2], strict=True)
            )
        ]  # fmt: skip
        return {
            "generation": gen.name,
            "label": gen.label,
            "model_id": catalog.model_id,
            "items": len(catalog),
            "journal_position": catalog.position,
            "lag": self.lags(),
            "generations": listing,
        }

    def index_model(self) -> dict[str, str | None]:
        """The index's model id and, for the demo's random weights, a notice that says so."""
        try:
            raw = self.redis.get(self.replica.gen.index_model)
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


def _int(raw: bytes | None) -> int | None:
    return None if raw is None else int(raw)


def held(catalog: Catalog, product_id: str) -> dict[str, Any]:
    """What a replica's catalog holds of a product (its id and metadata)."""
    return {"product_id": product_id, "metadata": catalog.metadata.get(product_id, {})}
