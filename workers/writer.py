"""The single index writer: applies the journal to the HNSW index and writes snapshots.

Run one or more with `python -m workers.writer`; a Redis lock lets exactly one write.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from types import FrameType

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from shared import keys
from shared.catalog import Catalog
from shared.follower import read_after
from shared.records import connect
from shared.settings import Settings, get_settings

log = logging.getLogger("lookalike.writer")
LOCK_TTL = 15.0


class IndexWriter:
    """Follows the journal into a Catalog; snapshots every N entries or T seconds."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.client = client
        self.directory = settings.data_dir / "index"
        self.token = uuid.uuid4().hex
        # Token-checked: only the holder can extend or release it.
        self.lock = Lock(client, keys.WRITER_LOCK, timeout=LOCK_TTL, thread_local=False)
        self.stop_event = threading.Event()

    def run(self) -> None:
        log.info("waiting for the writer lock (%s)", self.token)
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
        if self.client.get(keys.WRITER_LOCK) == self.token.encode():
            self.lock.local.token = self.token.encode()
            return self._renew()
        return False

    def _renew(self) -> bool:
        """Reset the lock's TTL if we still hold it (another writer may have taken it over)."""
        try:
            return self.lock.reacquire()
        except LockError:
            return False

    def _write_while_locked(self) -> None:
        catalog = Catalog.load(self.settings, self.directory)
        log.info("index loaded: %d items at journal position %s", len(catalog), catalog.position)
        unsaved, last_save = 0, time.monotonic()
        while not self.stop_event.is_set():
            if not self._renew():
                log.warning("writer lock lost; another writer took over")
                return
            entries = read_after(self.client, catalog.position, block_ms=500)
            unsaved += catalog.apply(entries)
            if entries:
                self.client.set(keys.WRITER_POSITION, catalog.position)
            due = time.monotonic() - last_save >= self.settings.snapshot_interval
            if unsaved >= self.settings.snapshot_every or (unsaved and due):
                self.snapshot(catalog)
                unsaved, last_save = 0, time.monotonic()
        if unsaved:
            self.snapshot(catalog)
        with contextlib.suppress(LockError):
            self.lock.release()

    def snapshot(self, catalog: Catalog) -> None:
        """Save, then trim the journal up to what the snapshot holds (never beyond)."""
        started = time.perf_counter()
        catalog.save(self.directory)
        self.client.xtrim(keys.JOURNAL, minid=catalog.position, approximate=False)
        log.info(
            "snapshot: %d items at %s in %.2fs",
            len(catalog), catalog.position, time.perf_counter() - started,
        )  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    if settings.redis_url is None:
        raise SystemExit("LOOKALIKE_REDIS_URL is not set: the writer needs the stack's Redis")
    writer = IndexWriter(settings, connect(settings.redis_url))

    def stop(signum: int, frame: FrameType | None) -> None:
        writer.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    writer.run()
    log.info("writer stopped")


if __name__ == "__main__":
    main()
