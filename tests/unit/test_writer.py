"""The index writer: its lock through snapshots, its niceness, its position after a restore."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from shared.catalog import Catalog
from shared.follower import read_after
from shared.journal import JournalEntry
from shared.keys import MAIN
from shared.model_id import EMBEDDING_DIM
from shared.queue import make_celery
from shared.settings import Settings
from shared.snapshots import open_store
from tests.support.procs import threads
from tests.support.replica import journal
from tests.support.stack import wait_until
from workers import writer as writer_module
from workers.restore import restore
from workers.writer import IndexWriter


def holding_the_gil(seconds: float) -> None:
    """Keep the GIL as hnswlib's save does: no other thread runs meanwhile."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(seconds + 5)
    try:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            pass
    finally:
        sys.setswitchinterval(interval)


class SlowSavingCatalog(Catalog):
    """A real catalog whose save first holds the GIL for save_seconds."""

    save_seconds = 0.0

    def begin_save(self, store: Any, fork: bool = True) -> Any:
        holding_the_gil(self.save_seconds)
        return super().begin_save(store, fork)


@pytest.fixture
def writer(request, redis_server, tmp_path, monkeypatch) -> Iterator[IndexWriter]:
    """A writer holding its lock (TTL 0.5 s); parametrize indirectly with False for one that
    saves snapshots in its own process."""
    monkeypatch.setattr(writer_module, "LOCK_TTL", 0.5)
    fork = getattr(request, "param", True)
    settings = Settings(data_dir=tmp_path, redis_url=redis_server.url, snapshot_fork=fork)
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    writer = IndexWriter(settings, client, make_celery(settings, redis_server.url))
    assert writer._acquire()
    writer.holding.set()
    renewer = threading.Thread(target=writer._keep_renewing, daemon=True)
    renewer.start()
    yield writer
    writer.stop_event.set()
    renewer.join()


def catalog_of(settings: Settings, count: int, save_seconds: float) -> SlowSavingCatalog:
    catalog = SlowSavingCatalog(settings)
    rng = np.random.default_rng(0)
    vectors = rng.random((count, EMBEDDING_DIM))
    catalog.apply(
        JournalEntry(f"{n + 1}-0", "upsert", f"p{n}", "m", vectors[n], {}, seq=n + 1)
        for n in range(count)
    )
    catalog.save_seconds = save_seconds
    return catalog


@pytest.mark.parametrize("writer", [False], indirect=True)
@pytest.mark.parametrize(("seconds_per_item", "kept"), [(1.0, True), (0.0, False)])
def test_a_save_that_blocks_renewals_past_the_lock_s_ttl_keeps_the_lock(
    writer, monkeypatch, seconds_per_item, kept
):
    # 3 items at 1 s each: held 3 s; at 0 s (no extension) the lock lapses, as it did before.
    monkeypatch.setattr(writer_module, "SAVE_SECONDS_PER_ITEM", seconds_per_item)
    catalog = catalog_of(writer.settings, 3, save_seconds=1.5)  # three TTLs without a renewal
    writer.snapshot(catalog)
    writer.wait_committed()
    assert writer.still_holding() is kept
    # A writer whose lock lapsed meanwhile does not publish what it began.
    assert [snapshot.position for snapshot in writer.store.snapshots()] == (["3-0"] if kept else [])


@pytest.mark.parametrize("writer", [False], indirect=True)
def test_renewals_go_back_to_the_short_ttl_after_a_save(writer, monkeypatch):
    monkeypatch.setattr(writer_module, "SAVE_SECONDS_PER_ITEM", 1.0)
    writer.snapshot(catalog_of(writer.settings, 3, save_seconds=0.0))
    writer.wait_committed()
    time.sleep(1.5)  # several renewals meanwhile (every 0.17 s)
    assert 0 < writer.client.pttl(writer.gen.writer_lock) <= 500


def test_a_forked_snapshot_never_lengthens_the_lock(writer, monkeypatch):
    # A standby takes over within the usual TTL whatever the catalog's size: the lock is
    # lengthened for a save's length only while the save runs in the writer's own process.
    monkeypatch.setattr(writer_module, "SAVE_SECONDS_PER_ITEM", 10.0)
    writer.snapshot(catalog_of(writer.settings, 3, save_seconds=0.0))
    assert 0 < writer.client.pttl(writer.gen.writer_lock) <= 500
    writer.wait_committed()
    assert [snapshot.position for snapshot in writer.store.snapshots()] == ["3-0"]


def test_a_restored_writer_says_where_it_is_before_any_new_entry(writer):
    writer.snapshot(catalog_of(writer.settings, 3, save_seconds=0.0))
    writer.wait_committed()
    writer.client.mset({writer.gen.writer_position: "1-0", writer.gen.writer_seq: 1})  # stale
    restored, _ = Catalog.restore(writer.settings, writer.store)
    follower = threading.Thread(target=writer._follow, args=(restored,), daemon=True)
    follower.start()
    try:
        wait_until(lambda: writer.client.get(writer.gen.writer_seq) == b"3", 10, "no report")
        assert writer.client.get(writer.gen.writer_position) == b"3-0"
    finally:
        writer.stop_event.set()
        follower.join(10)


@contextlib.contextmanager
def writer_process(redis_server, data_dir: Path, **settings: str) -> Iterator[WriterProcess]:
    """`python -m workers.writer` against redis_server, with LOOKALIKE_<NAME> settings."""
    env = {
        **os.environ,
        "LOOKALIKE_REDIS_URL": redis_server.url,
        "LOOKALIKE_DATA_DIR": str(data_dir),
        **{f"LOOKALIKE_{name.upper()}": value for name, value in settings.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.writer"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)  # no such line: EOF, not a hung test
    watchdog.start()
    try:
        yield WriterProcess(process)
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(10)


class WriterProcess:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.pid = process.pid

    def wait_for_line(self, text: str) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if text in line:
                return
        pytest.fail(f"the writer exited or never logged {text!r}")


def test_the_writer_process_runs_nicer_than_its_parent(redis_server, tmp_path):
    with writer_process(redis_server, tmp_path) as writer:
        writer.wait_for_line("waiting for the writer lock")  # logged after the nice() call
        own = os.getpriority(os.PRIO_PROCESS, 0)
        expected = min(19, own + writer_module.WRITER_NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, writer.pid) == expected


@pytest.mark.parametrize("priority", ["nice", "idle"])
def test_the_writer_builds_at_its_priority_and_renews_its_lock_at_the_normal_policy(
    redis_server, tmp_path, priority
):
    redis.Redis.from_url(redis_server.url).flushall()
    with writer_process(redis_server, tmp_path, writer_priority=priority) as writer:
        writer.wait_for_line("writer lock acquired")
        client = redis.Redis.from_url(redis_server.url)
        wait_until(lambda: client.exists(MAIN.writer_position), 30, "the writer never reported")
        policies = {thread: os.sched_getscheduler(thread) for thread in threads(writer.pid)}
        idle = {thread for thread, policy in policies.items() if policy == os.SCHED_IDLE}
        # The main thread waits for the applier and its renewal thread runs beside it; what
        # else runs idle is the applier and what it started.
        assert policies[writer.pid] == os.SCHED_OTHER
        assert len(policies) - len(idle) >= 2
        assert bool(idle) == (priority == "idle")


def test_a_writer_that_lost_its_memory_snapshots_restores_all_from_disk_and_journal(
    redis_server, tmp_path
):
    """With a hand-off directory the journal is trimmed only behind durable snapshots, so a
    reboot that empties the memory filesystem loses nothing."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    settings = Settings(
        data_dir=tmp_path / "data", redis_url=redis_server.url,
        snapshot_handoff_dir=tmp_path / "shm", snapshot_durable_every=60,
    )  # fmt: skip
    writer = IndexWriter(settings, client, make_celery(settings, redis_server.url))
    assert writer._acquire()
    writer.holding.set()
    clock = [0.0]
    writer.store.clock = lambda: clock[0]  # type: ignore[attr-defined]
    catalog = restore(settings, client, writer.store)
    # durable, durable, then in memory only
    for first, now in ((0, 0.0), (30, 60.0), (60, 61.0), (90, 62.0)):
        clock[0] = now
        journal(client, first, 30)
        catalog.apply(read_after(client, catalog.position, block_ms=None))
        writer.snapshot(catalog)
        writer.wait_committed()
    assert len(writer.store.durable.snapshots()) == 2  # type: ignore[attr-defined]

    shutil.rmtree(tmp_path / "shm")
    restored = restore(settings, client, open_store(settings))

    assert len(restored) == 120
    assert client.scard(MAIN.lost) == 0
