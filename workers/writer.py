"""The single index writer: applies the journal to the HNSW index and writes snapshots.

Run one or more with `python -m workers.writer`; a Redis lock lets exactly one write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType

import redis
from celery import Celery
from redis.exceptions import LockError
from redis.lock import Lock

from shared.catalog import Catalog
from shared.follower import read_after, trim_before
from shared.keys import Generation
from shared.queue import make_celery
from shared.records import connect
from shared.settings import Settings, get_settings
from shared.snapshots import PendingSnapshot, open_store
from workers.policy import SnapshotPolicy
from workers.restore import restore
from workers.sweeper import Sweeper

log = logging.getLogger("lookalike.writer")
LOCK_TTL = 15.0
# hnswlib writes a snapshot holding the GIL, so while the writer saves in its own process
# (LOOKALIKE_SNAPSHOT_FORK=false) the renewal thread cannot run: the lock is extended first, past
# what the save can take (18 s for 580k items here, 3e-5 s an item). A forked save needs no more
# than the usual TTL: the writer's threads run on while the child writes.
SAVE_SECONDS_PER_ITEM = 1e-4
JOURNAL_READ = 1000  # entries a read; a shorter read means the writer has caught up
# On a host it shares with API processes (`lookalike up`), their queries and following come before
# the writer's graph building. Linux weighs niceness only among the processes of one session
# (autogroup), hence cli/supervisor.py.
WRITER_NICENESS = 5


class IndexWriter:
    """Follows the journal into a Catalog; snapshots every N entries or T seconds."""

    def __init__(self, settings: Settings, client: redis.Redis, celery: Celery) -> None:
        self.settings = settings
        self.client = client
        self.gen = Generation.named(settings.generation)
        self.store = open_store(settings, self.gen)
        self.token = uuid.uuid4().hex
        # Token-checked: only the holder can extend or release it.
        self.lock = Lock(client, self.gen.writer_lock, timeout=LOCK_TTL, thread_local=False)
        self.sweeper = Sweeper(settings, client, celery, self.gen)
        self.holding = threading.Event()  # set while the lock is ours, renewed in the background
        self.stop_event = threading.Event()
        self.last_snapshot_seconds = 0.0
        self.hold_seconds = LOCK_TTL  # the TTL each renewal sets (longer while saving)
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        self._commit: Future[tuple[float, bool]] | None = None  # the snapshot being committed

    def run(self) -> None:
        log.info("waiting for the writer lock of generation %s (%s)", self.gen.label, self.token)
        while not self.stop_event.is_set():
            try:
                if self._acquire():
                    log.info("writer lock acquired (%s)", self.token)
                    self._write_while_locked()
                else:
                    self.stop_event.wait(LOCK_TTL / 3)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("Redis unavailable (%s); retrying in 1s", exc)
                self.stop_event.wait(1.0)

    def _acquire(self) -> bool:
        """Take the lock, or find it still ours (after a Redis restart, say)."""
        if self.lock.acquire(blocking=False, token=self.token):
            return True
        if self.client.get(self.gen.writer_lock) == self.token.encode():
            self.lock.local.token = self.token.encode()
            return self._renew()
        return False

    def _renew(self) -> bool:
        """Reset the lock's TTL if we still hold it (another writer may have taken it over)."""
        try:
            return bool(self.lock.extend(self.hold_seconds, replace_ttl=True))
        except LockError:
            return False
        except redis.RedisError as exc:  # unknown: say no, the next renewal may say yes
            log.warning("could not renew the writer lock: %s", exc)
            return False

    def _keep_renewing(self) -> None:
        """Renew the lock every third of its TTL, also during a long load or snapshot."""
        while self.holding.is_set() and not self.stop_event.wait(LOCK_TTL / 3):
            if not self._renew() and not self._renew():
                log.warning("writer lock lost; another writer may take over")
                self.holding.clear()

    def _hold_through_save(self, items: int) -> bool:
        """Extend the lock past what saving this many items can take (renewals meanwhile keep
        that TTL); False if it is not ours."""
        self.hold_seconds = max(
            LOCK_TTL, 3 * self.last_snapshot_seconds, items * SAVE_SECONDS_PER_ITEM
        )
        return self._renew()

    def still_holding(self) -> bool:
        """Checked in Redis right before anything that changes shared state."""
        return self.holding.is_set() and self.lock.owned()

    def _write_while_locked(self) -> None:
        self.holding.set()
        renewer = threading.Thread(target=self._keep_renewing, name="lock-renewal", daemon=True)
        renewer.start()
        try:
            self._yielding(lambda: self._follow(self._restore()))
        finally:
            self.holding.clear()
            renewer.join()
            with contextlib.suppress(LockError, redis.RedisError):
                self.lock.release()

    def _restore(self) -> Catalog:
        return restore(self.settings, self.client, self.store, self.gen)

    def _yielding(self, work: Callable[[], None]) -> None:
        """Run work in a thread of its own at settings.writer_priority: the threads and forked
        savers it starts inherit it, the lock's renewal (this thread's) does not."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="apply") as applier:
            applier.submit(self._at_writer_priority, work).result()

    def _at_writer_priority(self, work: Callable[[], None]) -> None:
        if self.settings.writer_priority == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        work()

    def _follow(self, catalog: Catalog) -> None:
        policy = SnapshotPolicy(self.settings, trim_pending=self.client.xlen(self.gen.journal) > 1)
        unsaved = 0
        # Where a restore left it, at once: the last report may be an earlier holder's, and no
        # entry may come to be applied (a snapshot that holds the whole journal).
        self._report(catalog)
        try:
            while not self.stop_event.is_set() and self.holding.is_set():
                entries = read_after(
                    self.client, catalog.position, count=JOURNAL_READ, block_ms=500, gen=self.gen
                )
                unsaved += catalog.apply(entries)
                if entries:
                    self._report(catalog)
                if self.sweeper.due():
                    self.sweeper.sweep()
                if self._commit is not None and self._commit.done():
                    policy.done(*self.wait_committed())
                caught_up = len(entries) < JOURNAL_READ
                ready = self._commit is None and catalog.index is not None
                if ready and policy.due(
                    unsaved,
                    len(catalog),
                    caught_up=caught_up,
                    waited_for=caught_up and self._waited_for(),
                ):
                    self.snapshot(catalog)
                    unsaved = 0
            if unsaved and self.holding.is_set():
                self.wait_committed()
                self.snapshot(catalog)
        finally:
            self.wait_committed()

    def _waited_for(self) -> bool:
        """Whether an API replica waits for the next snapshot (api/replica.py); asked only once
        the writer has caught up, the one time it matters."""
        return bool(self.client.exists(self.gen.replicas_waiting))

    def _report(self, catalog: Catalog) -> None:
        """Where the writer is, for /metrics and /readyz (its lag behind the journal's head)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.gen.writer_position, catalog.position)
        if catalog.seq is not None:
            pipe.set(self.gen.writer_seq, catalog.seq)
        pipe.execute()

    def snapshot(self, catalog: Catalog) -> None:
        """Start a snapshot of the catalog as it is now, committed in the background
        (wait_committed() waits for it): applying the journal goes on meanwhile."""
        started = time.perf_counter()
        try:
            fork = self.settings.snapshot_fork
            if not self.still_holding() or not (fork or self._hold_through_save(len(catalog))):
                log.warning("not the writer any more: no snapshot")
                return
            pending = catalog.begin_save(self.store, fork=fork)
        finally:
            self.hold_seconds = LOCK_TTL  # also when the extension failed
        if pending is not None:
            self._commit = self._committer.submit(
                self._commit_and_trim, pending, len(catalog), started
            )

    def wait_committed(self) -> tuple[float, bool]:
        """Wait for the snapshot being committed, if any: its seconds, and whether the journal
        still holds entries the newest snapshot covers. Raises what the commit raised."""
        commit, self._commit = self._commit, None
        return (0.0, False) if commit is None else commit.result()

    def _commit_and_trim(
        self, pending: PendingSnapshot, items: int, started: float
    ) -> tuple[float, bool]:
        """Commit, prune to the newest kept, trim the journal back to the oldest kept."""
        if not self.still_holding():
            log.warning("not the writer any more: snapshot %s not committed", pending.name)
            pending.save.wait()  # the partial folder is pruned by whoever holds the lock
            return time.perf_counter() - started, False
        self.store.commit(pending)
        seconds = self.last_snapshot_seconds = time.perf_counter() - started
        pruned = self.store.prune(still_allowed=self.still_holding)
        kept_from = self.store.kept_from()
        trimmed = 0
        if kept_from is not None and self.still_holding():
            trimmed = trim_before(self.client, kept_from, self.gen)
        log.info(
            "snapshot %s: %d items in %.2fs; pruned %d; journal trimmed by %d to %s",
            pending.name, items, time.perf_counter() - started,
            len(pruned), trimmed, kept_from or "its start",
        )  # fmt: skip
        return seconds, kept_from != pending.position


def main() -> None:
    # First, so that every thread made later (hnswlib's, the committer's) inherits it.
    with contextlib.suppress(OSError):
        os.nice(WRITER_NICENESS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    if settings.redis_url is None:
        raise SystemExit("LOOKALIKE_REDIS_URL is not set: the writer needs the stack's Redis")
    celery = make_celery(settings, settings.redis_url)
    writer = IndexWriter(settings, connect(settings.redis_url), celery)

    def stop(signum: int, frame: FrameType | None) -> None:
        writer.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    writer.run()
    log.info("writer stopped")


if __name__ == "__main__":
    main()
