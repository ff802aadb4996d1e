"""A replica's layered index: the snapshot's graph plus later changes, in an exact tail and a
small graph."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pytest
import redis

from api.replica import JOURNAL_READ, QUERIED, WAIT_BACKLOG, Replica, next_load_at
from shared import index as index_module
from shared import keys
from shared.catalog import Catalog
from shared.errors import DimensionMismatch, InvalidVector
from shared.follower import catch_up, catch_up_unbroken, read_after, trim_before
from shared.index import INDEX_FILE, Projection, VectorIndex
from shared.journal import START, JournalEntry, delete_entry
from shared.layered import (
    OVERLAY_EF_CONSTRUCTION,
    TAIL_CHUNK,
    UPSERT_CHUNK,
    LayeredIndex,
)
from shared.model_id import EMBEDDING_DIM
from shared.settings import Settings
from shared.snapshots import SnapshotStore
from tests.support.replica import MODEL, clustered, journal, on_a_first_snapshot, requests_coming
from tests.support.stack import wait_until

DIM = 64
# Where later changes go: all into the exact tail, all into the small graph, or split (the
# tail's room runs out part-way).
PARTS = {"exact tail": 1024, "small graph": 0, "split": 25}
IN_GRAPH = Settings(replica_exact_items=0)


def vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return clustered(n, seed, dim)


@pytest.fixture
def base() -> VectorIndex:
    index = VectorIndex(DIM, MODEL, capacity=256)
    index.upsert([f"b{n}" for n in range(200)], vectors(200))
    return index


@pytest.mark.parametrize(("exact", "part"), [(1024, "tail"), (0, "overlay")])
def test_changes_go_to_the_tail_or_small_graph_and_hide_the_snapshot_copies(base, exact, part):
    layered = LayeredIndex(Settings(replica_exact_items=exact), base, DIM, MODEL)
    assert layered.overlay.ef_construction == OVERLAY_EF_CONSTRUCTION
    moved = vectors(1, seed=5)
    layered.upsert(["b3", "new"], np.concatenate([moved, moved]))
    assert len(layered) == 201 and "b3" not in base and "b3" in layered
    assert sorted(getattr(layered, part).ids()) == ["b3", "new"]
    hits = layered.query(moved[0], 2)
    assert {hit[0] for hit in hits} == {"b3", "new"}  # the new copy, not the snapshot's
    assert layered.delete(["b3", "b4"]) == 2 and "b3" not in layered and len(layered) == 199


def test_the_tail_takes_new_items_until_full_then_the_small_graph_does(base):
    layered = LayeredIndex(Settings(replica_exact_items=3), base, DIM, MODEL)
    layered.upsert(["n0", "n1"], vectors(2, seed=1))
    layered.upsert(["n1", "n2", "n3", "n4"], vectors(4, seed=2))  # n1: an update, no room taken
    assert sorted(layered.tail.ids()) == ["n0", "n1", "n2"] and layered.tail.room == 0
    assert sorted(layered.overlay.ids()) == ["n3", "n4"]
    layered.upsert(["n0"], vectors(1, seed=3))  # a full tail still updates what it holds
    assert "n0" in layered.tail and "n0" not in layered.overlay
    assert layered.delete(["n1"]) == 1 and layered.tail.room == 1
    layered.upsert(["n3"], vectors(1, seed=4))  # from the small graph into the room made
    assert "n3" in layered.tail and "n3" not in layered.overlay and len(layered) == 204


@pytest.mark.parametrize("exact", PARTS.values(), ids=PARTS.keys())
def test_an_unusable_vector_refuses_the_whole_change(base, exact):
    layered = LayeredIndex(Settings(replica_exact_items=exact), base, DIM, MODEL)
    bad = vectors(30, seed=1)
    bad[29] = 0.0
    ids = [f"b{n}" for n in range(30)]
    with pytest.raises(InvalidVector, match=r"^vector for id 'b29' is all zeros: cosine"):
        layered.upsert(ids, bad)
    assert len(layered) == 200 and layered.since_base == 0 and all(i in base for i in ids)


class CountingThreads:
    """An hnswlib index that records the threads each add_items asks for."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.asked: list[int] = []

    def add_items(self, *args: Any, num_threads: int, **kwargs: Any) -> Any:
        self.asked.append(num_threads)
        return self.index.add_items(*args, num_threads=num_threads, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)


def test_following_inserts_with_one_thread_and_the_writer_with_all(base):
    layered = LayeredIndex(IN_GRAPH, base, DIM, MODEL)
    layered.overlay._index = overlay = CountingThreads(layered.overlay._index)  # type: ignore[assignment]
    base._index = writer = CountingThreads(base._index)  # type: ignore[assignment]
    layered.upsert([f"n{n}" for n in range(40)], vectors(40, seed=3))
    base.upsert(["w1", "w2"], vectors(2, seed=4))
    assert overlay.asked == [1] * -(-40 // UPSERT_CHUNK)  # one thread, a call each hold
    assert writer.asked == [-1]
    assert len(layered) == 242


@pytest.mark.parametrize(("exact", "chunks"), [(0, -(-300 // UPSERT_CHUNK)), (1024, 3), (100, 201)])
def test_changes_pause_before_each_chunk_outside_the_lock(base, exact, chunks):
    assert TAIL_CHUNK == 128  # (1024, 3): 300 ids in three chunks; (100, 201): 1 + 200
    answered: list[bool] = []
    layered = LayeredIndex(Settings(replica_exact_items=exact), base, DIM, MODEL)

    def pause() -> None:  # a query from another thread runs meanwhile: the lock is free
        query = threading.Thread(target=layered.query, args=(vectors(1)[0], 3))
        query.start()
        query.join(5)
        answered.append(not query.is_alive())

    layered.pause = pause
    layered.upsert([f"n{n}" for n in range(300)], vectors(300, seed=3))
    assert answered == [True] * chunks
    assert len(layered) == 500


@pytest.mark.parametrize("exact", PARTS.values(), ids=PARTS.keys())
def test_answers_equal_a_single_graph_of_the_same_vectors(base, exact):
    layered = LayeredIndex(Settings(replica_exact_items=exact), base, DIM, MODEL)
    single = VectorIndex(DIM, MODEL, capacity=512)
    single.upsert([f"b{n}" for n in range(200)], vectors(200))
    extra = vectors(60, seed=1)
    ids = [f"n{n}" for n in range(60)]
    layered.upsert(ids, extra)
    single.upsert(ids, extra)
    queries = vectors(30, seed=2)
    found = [layered.query(q, 10) for q in queries]
    wanted = [single.query(q, 10) for q in queries]
    recall = np.mean(
        [
            len({h[0] for h in f} & {h[0] for h in w}) / 10
            for f, w in zip(found, wanted, strict=True)
        ]
    )
    assert recall >= 0.98
    allow = {f"n{n}" for n in range(0, 60, 2)} | {"b1", "b2"}
    hits = layered.query(queries[0], 5, allow=allow)
    assert hits and {hit[0] for hit in hits} <= allow
    assert layered.query_like("n3", 5, exclude={"n3"})[0][0] != "n3"


@pytest.mark.parametrize("exact", [*PARTS.values(), 1, 2], ids=[*PARTS.keys(), "1", "2"])
def test_equal_scores_make_the_k_by_id_whichever_part_holds_them(base, exact):
    same = np.repeat(vectors(1, seed=7), 6, axis=0)
    whole = VectorIndex(DIM, MODEL, capacity=256)
    whole.upsert([f"b{n}" for n in range(200)], vectors(200))
    whole.upsert(["d5", "d0", "d4", "d1", "d2", "d3"], same)
    base.upsert(["d5", "d0", "d4"], same[:3])
    layered = LayeredIndex(Settings(replica_exact_items=exact), base, DIM, MODEL)
    layered.upsert(["d1", "d2", "d3"], same[3:])
    rebased = LayeredIndex(Settings(), whole, DIM, MODEL)  # the same items, all in the snapshot
    for index in (layered, rebased):
        assert [hit[0] for hit in index.query(same[0], 4)] == ["d0", "d1", "d2", "d3"]
        assert [hit[0] for hit in index.query_like("d2", 3, exclude={"d2"})] == ["d0", "d1", "d3"]


def entry(position: str, product_id: str, vector: np.ndarray) -> JournalEntry:
    return JournalEntry(position, "upsert", product_id, MODEL, vector, {"p": product_id})


def test_a_replica_catalog_matches_the_writers_and_is_never_saved(tmp_path):
    settings = Settings(data_dir=tmp_path)
    data = vectors(40, dim=EMBEDDING_DIM)
    entries = [entry(f"{n + 1}-0", f"p{n}", data[n]) for n in range(40)]
    writer, replica = Catalog(settings), Catalog(settings, layered=True)
    for catalog in (writer, replica):
        catalog.apply(entries[:30])
        catalog.apply([*entries[30:], JournalEntry("99-0", "delete", "p0")])
    assert len(writer) == len(replica) == 39
    wanted, found = writer.similar("p5", 5, {}), replica.similar("p5", 5, {})
    # The same products in the same order; scores within a tie (the tail sums as numpy does)
    # and the 6 decimals shown.
    assert [(h["product_id"], h["metadata"]) for h in found] == [
        (h["product_id"], h["metadata"]) for h in wanted
    ]
    assert all(abs(f["score"] - w["score"]) <= 2e-6 for f, w in zip(found, wanted, strict=True))
    assert replica.overlay_items == 39 and writer.overlay_items == 0
    with pytest.raises(AssertionError):
        replica.save(SnapshotStore(tmp_path / "index"))


@pytest.fixture
def client(redis_server) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    return client


def test_a_replica_moves_onto_a_newer_snapshot_instead_of_growing_its_small_graph(
    client, redis_server, tmp_path, monkeypatch
):
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    settings = Settings(data_dir=tmp_path, redis_url=redis_server.url)
    replica = Replica(settings, client).start()
    try:
        journal(client, 0, 50)
        wait_until(lambda: len(replica.catalog) == 50, 10, "replica did not follow")
        assert replica.catalog.overlay_items == 50 and replica.catalog.base_position is None
        writer = Catalog(settings)  # the writer's side: its graph, then a snapshot
        writer.apply(read_after(client, START, block_ms=None))
        writer.save(SnapshotStore(tmp_path / "index"))
        journal(client, 50, 5)
        client.xadd(keys.JOURNAL, delete_entry("p1"))

        def rebased() -> bool:
            catalog = replica.catalog
            return catalog.base_position == writer.position and catalog.overlay_items == 5

        wait_until(rebased, 10, "the replica did not move onto the snapshot")
        assert len(replica.catalog) == 54 and "p1" not in replica.catalog
        # The catalog it serves waits for lulls in the queries as it follows.
        served = replica.catalog.index
        assert isinstance(served, LayeredIndex) and served.pause == replica.traffic.lull
    finally:
        replica.stop()


def test_a_replica_loads_in_short_reads_unless_its_own_requests_wait(
    client, redis_server, tmp_path, monkeypatch
):
    """A load no request of the process waits on (the first, an idle replica's): short reads,
    which stall no other process on the CPU; one while requests come: hnswlib's loader."""
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    loads: list[str] = []
    for name, how in (("_open_short", "short reads"), ("_open_whole", "hnswlib")):
        real = getattr(index_module, name)
        monkeypatch.setattr(index_module, name, recording(real, how, loads))
    settings = Settings(data_dir=tmp_path, redis_url=redis_server.url)
    store, writer = SnapshotStore(tmp_path / "index"), Catalog(settings)

    def snapshot_of(count: int) -> str:
        """count more items journalled, then a snapshot of all; its position."""
        journal(client, len(writer), count)
        writer.apply(read_after(client, writer.position or START, block_ms=None))
        saved = writer.save(store)
        assert saved is not None
        return saved.position

    snapshot_of(50)
    replica = Replica(settings, client).start()
    try:
        wait_until(replica.loaded.is_set, 10, "no first load")
        with requests_coming(replica):
            position = snapshot_of(10)
            wait_until(lambda: replica.catalog.base_position == position, 10, "no rebase")
        time.sleep(QUERIED)
        position = snapshot_of(10)
        wait_until(lambda: replica.catalog.base_position == position, 10, "no idle rebase")
    finally:
        replica.stop()
    assert loads == ["short reads", "hnswlib", "short reads"]
    assert len(replica.catalog) == 70


def recording(function: Any, name: str, calls: list[str]) -> Any:
    """function, appending name to calls at each call."""

    def recorded(*args: Any) -> Any:
        calls.append(name)
        return function(*args)

    return recorded


@pytest.mark.parametrize(
    ("seconds", "share", "gap"),
    [(0.5, 0.02, 24.5), (0.5, 1.0, 0.0), (18.0, 0.02, 882.0), (0.01, 0.5, 0.01)],
)
def test_a_load_paced_by_its_share_leaves_the_rest_of_the_time_to_the_queries(seconds, share, gap):
    waits = next_load_at(seconds, share) - time.monotonic()
    assert waits == pytest.approx(gap, abs=0.01)
    assert seconds / (seconds + max(waits, 0.0)) == pytest.approx(share, rel=0.02)


@pytest.mark.parametrize("share", [1.0, 1e-6])
def test_a_queried_replica_loads_the_writer_s_next_snapshot_only_once_its_pace_allows(
    client, redis_server, tmp_path, monkeypatch, share
):
    """Each load stalls every request of the process (hnswlib holds the GIL): while requests
    come, the next load waits for its pace (at a share of 1, none); without them, it comes."""
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    monkeypatch.setattr("api.replica.QUERIED", 0.3)
    settings = Settings(data_dir=tmp_path, redis_url=redis_server.url, replica_load_share=share)
    with (
        on_a_first_snapshot(client, settings) as (replica, writer, store),
        requests_coming(replica) as requests_stop,
    ):
        journal(client, 50, 10)
        writer.apply(read_after(client, writer.position, block_ms=None))
        second = writer.save(store)
        assert second is not None
        time.sleep(2.0)  # many looks for a newer snapshot (REBASE is 0)
        loaded = replica.catalog.base_position == second.position
        assert loaded is (share == 1.0) and len(replica.catalog) == 60
        requests_stop.set()
        wait_until(lambda: replica.catalog.base_position == second.position, 10, "no load")


def test_a_queried_replica_whose_next_load_is_far_off_follows_a_burst_itself(
    client, redis_server, tmp_path, monkeypatch
):
    """Waiting for a snapshot it may not load would leave it behind the journal (and its trim):
    past its exact tail, the burst goes into its small graph."""
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    monkeypatch.setattr("api.replica.QUERIED", 0.3)
    settings = Settings(
        data_dir=tmp_path, redis_url=redis_server.url, replica_load_share=1e-6,
        replica_exact_items=10,
    )  # fmt: skip
    with (
        on_a_first_snapshot(client, settings) as (replica, _, _),
        requests_coming(replica),
    ):
        journal(client, 50, 100)  # a burst: 90 beyond the tail's room
        wait_until(lambda: len(replica.catalog) == 150, 10, "the replica waited")
        assert small_graph(replica) == 90 and not replica.waiting


@pytest.fixture
def collector_off() -> Iterator[None]:
    """Python's cyclic collector off: what is freed is freed by reference counting alone."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def test_a_loaded_catalog_is_left_out_of_full_collections_and_the_one_it_replaces_is_freed(
    client, redis_server, tmp_path, monkeypatch, collector_off
):
    """A full collection walks every object it tracks holding the GIL: a replica freezes what
    it loads, which is safe only because a replaced catalog needs no collection to be freed."""
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    settings = Settings(data_dir=tmp_path, redis_url=redis_server.url)
    with on_a_first_snapshot(client, settings) as (replica, writer, store):
        replaced = weakref.ref(replica.catalog)  # loaded, so frozen too
        journal(client, 50, 10)
        writer.apply(read_after(client, writer.position, block_ms=None))
        second = writer.save(store)
        assert second is not None
        wait_until(lambda: replica.catalog.base_position == second.position, 10, "no rebase")
        served = replica.catalog
        assert not any(tracked is served for tracked in gc.get_objects())
        wait_until(lambda: replaced() is None, 5, "the replaced catalog was not freed")


@pytest.fixture
def tail_of_ten(client, redis_server, tmp_path, monkeypatch, request) -> Iterator[Replica]:
    """A replica with room for 10 exact items, holding 5 (in its tail), looking for snapshots
    and checking its wait often; it waits for a snapshot request.param seconds (default 30)."""
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    monkeypatch.setattr("api.replica.WAIT_POLL", 0.05)
    settings = Settings(
        data_dir=tmp_path,
        redis_url=redis_server.url,
        replica_exact_items=10,
        replica_snapshot_wait=getattr(request, "param", 30.0),
    )
    replica = Replica(settings, client).start()
    journal(client, 0, 5)
    wait_until(lambda: len(replica.catalog) == 5, 10, "replica did not follow")
    yield replica
    replica.stop()


def small_graph(replica: Replica) -> int:
    index = replica.catalog.index
    assert isinstance(index, LayeredIndex)
    return len(index.overlay)


def test_a_full_exact_tail_waits_for_the_writers_snapshot_during_a_bulk_import(
    tail_of_ten, client, tmp_path
):
    replica = tail_of_ten
    journal(client, 5, 100)  # a burst: 95 entries beyond the tail's room
    wait_until(lambda: replica.waiting, 10, "the replica did not wait")
    assert len(replica.catalog) == 10 and small_graph(replica) == 0
    writer = Catalog(replica.settings)
    writer.apply(read_after(client, START, block_ms=None))
    snapshot = writer.save(SnapshotStore(tmp_path / "index"))
    assert snapshot is not None
    wait_until(lambda: len(replica.catalog) == 105, 10, "the replica did not move on")
    assert replica.catalog.base_position == snapshot.position and not replica.waiting
    assert small_graph(replica) == 0  # it built no graph: the writer's holds all
    journal(client, 105, 1)  # and goes on following into its (new, empty) tail
    wait_until(lambda: len(replica.catalog) == 106, 10, "the replica stopped following")


def test_a_waiting_replica_tells_the_writer_and_loads_any_snapshot_ahead_of_it(
    client, redis_server, tmp_path, monkeypatch
):
    """A snapshot that moves less than a tenth of the catalog is not worth a load, except to a
    replica that waits for one: it is its only way on without building a graph."""
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    monkeypatch.setattr("api.replica.WAIT_POLL", 0.05)
    settings = Settings(data_dir=tmp_path, redis_url=redis_server.url, replica_exact_items=10)
    store, writer = SnapshotStore(tmp_path / "index"), Catalog(settings)
    journal(client, 0, 300)
    writer.apply(read_after(client, START, block_ms=None))
    assert writer.save(store) is not None
    replica = Replica(settings, client).start()
    try:
        wait_until(replica.loaded.is_set, 10, "replica did not load")
        journal(client, 300, 100)
        wait_until(lambda: replica.waiting, 10, "the replica did not wait")
        assert len(replica.catalog) == 310
        wait_until(lambda: client.exists(keys.MAIN.replicas_waiting), 5, "writer not told")
        writer.apply(read_after(client, writer.position, count=15, block_ms=None))
        ahead = writer.save(store)  # 5 beyond the replica: 15 of 310 moved, under a tenth
        assert ahead is not None
        wait_until(lambda: replica.catalog.base_position == ahead.position, 10, "no rebase")
        assert len(replica.catalog) >= 315
    finally:
        replica.stop()


@pytest.mark.parametrize("tail_of_ten", [0.3], indirect=True)
def test_a_full_exact_tail_waits_no_longer_than_its_setting_then_builds_a_small_graph(
    tail_of_ten, client
):
    replica = tail_of_ten
    assert replica.settings.replica_snapshot_wait == 0.3
    journal(client, 5, 100)  # no snapshot ever comes
    wait_until(lambda: len(replica.catalog) == 105, 10, "the replica waited on")
    assert small_graph(replica) == 95 and replica.catalog.overlay_items == 105
    assert not replica.waiting


def test_a_trickle_past_a_full_exact_tail_goes_into_the_small_graph_at_once(tail_of_ten, client):
    replica = tail_of_ten
    journal(client, 5, 5)
    wait_until(lambda: len(replica.catalog) == 10, 10, "the replica did not follow")
    for n in range(10, 13):  # a new item still reaches the replica within a second
        journal(client, n, 1)
        wait_until(lambda n=n: len(replica.catalog) == n + 1, 1.0, "the item waited")
    assert small_graph(replica) == 3 and not replica.waiting


@pytest.mark.parametrize("read", [1, 4, 64, 1000])
def test_a_burst_past_the_exact_tail_waits_however_few_entries_a_read_takes(
    tail_of_ten, client, monkeypatch, read
):
    """A read may end before the tail's room does, or just past it: the burst beyond is counted
    in the journal, not in the read."""
    monkeypatch.setattr("api.replica.JOURNAL_READ", read)
    replica = tail_of_ten
    journal(client, 5, 100)
    wait_until(lambda: replica.waiting, 10, "the replica did not wait")
    assert len(replica.catalog) == 10 and small_graph(replica) == 0


@pytest.mark.parametrize("read", [1, 4, 1000])
def test_a_trickle_past_the_exact_tail_goes_into_the_small_graph_whatever_a_read_takes(
    tail_of_ten, client, monkeypatch, read
):
    monkeypatch.setattr("api.replica.JOURNAL_READ", read)
    replica = tail_of_ten
    journal(client, 5, 5 + WAIT_BACKLOG - 1)  # the tail's room, then one short of a burst
    wait_until(lambda: len(replica.catalog) == 10 + WAIT_BACKLOG - 1, 10, "the items waited")
    assert small_graph(replica) == WAIT_BACKLOG - 1 and not replica.waiting


class RecordingRedis(redis.Redis):
    """A real client that also records how many entries each XREAD asks for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_counts: list[int | None] = []

    def xread(self, streams: Any, count: Any = None, block: Any = None, **more: Any) -> Any:
        self.read_counts.append(count)
        return super().xread(streams, count=count, block=block, **more)


def test_a_replica_reads_the_journal_a_few_entries_at_a_time_wherever_it_reads(
    client, redis_server, tmp_path, monkeypatch
):
    """Following, and catching a rebase's snapshot up: a read's reply is parsed holding the GIL,
    and every query of the process waits for it."""
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    recording = RecordingRedis.from_url(redis_server.url)
    settings = quick_settings(tmp_path).model_copy(
        update={"redis_url": redis_server.url, "replica_exact_items": 4096}
    )
    replica = Replica(settings, recording).start()
    try:
        journal(client, 0, 1600)
        writer = Catalog(settings)
        catch_up(client, writer)
        wait_until(lambda: len(replica.catalog) == 1600, 10, "the replica did not follow")
        journal(client, 1600, 400)
        wait_until(lambda: len(replica.catalog) == 2000, 10, "the replica did not follow")
        follow_reads = len(recording.read_counts)
        snapshot = writer.save(SnapshotStore(tmp_path / "index"))  # 400 behind what it serves
        assert snapshot is not None
        wait_until(lambda: replica.catalog.base_position == snapshot.position, 10, "no rebase")
        assert len(replica.catalog) == 2000 and replica.catalog.overlay_items == 400
        caught_up = len(recording.read_counts) - follow_reads
        assert caught_up >= 400 // JOURNAL_READ  # the catch-up read by read, too
        assert max(count or 0 for count in recording.read_counts) == JOURNAL_READ
        assert None not in recording.read_counts
    finally:
        replica.stop()


@pytest.mark.parametrize("share", [0.25, 1.0])
def test_a_replica_follows_at_the_share_of_a_core_its_settings_give(
    redis_server, client, tmp_path, share
):
    settings = Settings(data_dir=tmp_path, redis_url=redis_server.url, follow_share=share)
    replica = Replica(settings, client)  # not started
    assert replica.traffic.share == share
    assert replica.catalog.pause == replica.traffic.lull
    # A catalog caught up before it is served (a rebase, a switch) waits for no lull, but keeps
    # to the share too: it takes the queries' core all the same.
    fresh, _ = replica._restore(replica.store, serving=False)
    assert fresh.pause == replica.traffic.pace


def test_a_catalog_s_pause_reaches_its_layered_index_whenever_it_is_made():
    def lull() -> None:
        pass

    catalog = Catalog(Settings(), layered=True, pause=lull)
    vector = vectors(1, dim=EMBEDDING_DIM)[0]
    catalog.apply([JournalEntry("1-0", "upsert", "p1", MODEL, vector, {})])
    assert isinstance(catalog.index, LayeredIndex) and catalog.index.pause is lull
    catalog.pause = None  # a rebase's catalog catching up: no query reads it yet
    assert catalog.index.pause is None


@pytest.fixture
def looked(monkeypatch) -> list[str]:
    """The snapshot positions a replica weighs a rebase onto, as it looks (every loop)."""
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    positions: list[str] = []
    seq_at = Replica._seq_at
    monkeypatch.setattr(
        Replica, "_seq_at", lambda self, at: positions.append(at) or seq_at(self, at)
    )
    return positions


def writer_side(redis_server, tmp_path) -> tuple[Settings, SnapshotStore, Catalog]:
    """Settings for both sides, and the writer's store and catalog."""
    settings = Settings(data_dir=tmp_path, redis_url=redis_server.url)
    return settings, SnapshotStore(tmp_path / "index"), Catalog(settings)


def test_a_replica_waits_for_a_snapshot_that_holds_most_of_its_small_graph(
    client, redis_server, tmp_path, looked
):
    """A bulk import: the writer's snapshots lag the replica; a rebase onto one would insert
    the lag again (and stall queries while it loads), so the small graph grows meanwhile."""
    settings, store, writer = writer_side(redis_server, tmp_path)
    replica = Replica(settings, client).start()
    try:
        journal(client, 0, 20)
        writer.apply(read_after(client, START, block_ms=None))
        journal(client, 20, 20)
        wait_until(lambda: len(replica.catalog) == 40, 10, "replica did not follow")
        lagging = writer.save(store)  # 20 of the replica's 40: half of its small graph missing
        assert lagging is not None
        wait_until(lambda: lagging.position in looked, 10, "the replica did not look")
        journal(client, 40, 1)
        wait_until(lambda: len(replica.catalog) == 41, 10, "replica stopped following")
        assert replica.catalog.base_position is None and replica.catalog.overlay_items == 41
        writer.apply(read_after(client, writer.position, block_ms=None))
        caught_up = writer.save(store)  # all of it
        assert caught_up is not None
        wait_until(lambda: replica.catalog.base_position == caught_up.position, 10, "no rebase")
        assert len(replica.catalog) == 41 and replica.catalog.overlay_items == 0
    finally:
        replica.stop()


def test_a_replica_loads_a_snapshot_only_when_it_moves_a_tenth_of_the_catalog(
    client, redis_server, tmp_path, looked
):
    """A load stalls the process's queries (hnswlib holds the GIL): a trickle of new items does
    not make every newer snapshot worth one."""
    settings, store, writer = writer_side(redis_server, tmp_path)
    journal(client, 0, 100)
    writer.apply(read_after(client, START, block_ms=None))
    first = writer.save(store)
    assert first is not None
    replica = Replica(settings, client).start()
    try:
        wait_until(replica.loaded.is_set, 10, "replica did not load")
        # (items after the new ones, whether the snapshot holding them moves a tenth)
        for items, rebased in [(105, False), (109, False), (112, True)]:
            journal(client, len(replica.catalog), items - len(replica.catalog))
            wait_until(lambda n=items: len(replica.catalog) == n, 10, "replica did not follow")
            writer.apply(read_after(client, writer.position, block_ms=None))
            newer = writer.save(store)
            assert newer is not None
            wait_until(lambda at=newer.position: at in looked, 10, "the replica did not look")
            base = newer.position if rebased else first.position
            wait_until(lambda b=base: replica.catalog.base_position == b, 10, "wrong base")
            assert len(replica.catalog) == items
    finally:
        replica.stop()


@pytest.mark.parametrize(("served", "snapshot"), [(10, 100), (60, 50), (60, 60)])
def test_a_rebase_serves_what_was_served_at_once_and_follows_on_from_there(
    client, redis_server, tmp_path, served, snapshot
):
    """A replica slower than the writer (a host busy with the writer's graph building) gains
    the snapshot's items at once; one ahead of the snapshot catches the fresh catalog up to what
    it serves, not to the journal's head, before serving it."""
    settings, store, writer = writer_side(redis_server, tmp_path)
    journal(client, 0, 110)
    replica = Replica(settings, client)  # not started: driven step by step here
    replica.catalog.apply(read_after(client, START, count=served, block_ms=None))
    writer.apply(read_after(client, START, count=snapshot, block_ms=None))
    assert writer.save(store) is not None
    replica._rebase_checked = 0.0
    replica._maybe_rebase()
    at = max(served, snapshot)
    assert replica.catalog.position == nth_position(client, at - 1) and len(replica.catalog) == at
    assert replica.catalog.base_position == nth_position(client, snapshot - 1)
    assert replica.catalog.pause == replica.traffic.lull


def test_an_update_the_small_graph_refuses_keeps_the_snapshot_copy(base):
    layered = LayeredIndex(Settings(), base, DIM, MODEL)
    with pytest.raises(DimensionMismatch):
        layered.upsert(["b3"], vectors(1, dim=DIM + 1))
    assert "b3" in base and "b3" in layered and len(layered) == 200


def test_a_snapshot_the_reduced_memory_mode_projected_is_not_layered(base):
    projected = VectorIndex(DIM, MODEL, projection=Projection.fit(vectors(100, seed=3), 8))
    projected.upsert([f"b{n}" for n in range(200)], vectors(200))
    catalog = Catalog(Settings(index_dims=0), projected, layered=True)
    assert not catalog.layered and catalog.index is projected
    assert len(catalog.similar("b5", 5, {})) == 5
    with pytest.raises(ValueError):
        LayeredIndex(Settings(), projected, DIM, MODEL)


def test_a_replica_stays_on_its_snapshot_when_the_newer_one_does_not_load(
    client, redis_server, tmp_path, monkeypatch
):
    monkeypatch.setattr("api.replica.REBASE", 0.0)
    settings, store, writer = writer_side(redis_server, tmp_path)
    journal(client, 0, 20)
    writer.apply(read_after(client, START, block_ms=None))
    first = writer.save(store)
    assert first is not None
    replica = Replica(settings, client).start()
    try:
        journal(client, 20, 5)
        wait_until(lambda: len(replica.catalog) == 25, 10, "replica did not follow")
        catalog = replica.catalog
        assert catalog.base_position == first.position and catalog.overlay_items == 5
        writer.apply(read_after(client, writer.position, block_ms=None))
        second = writer.save(store)
        assert second is not None
        (second.folder / INDEX_FILE).write_bytes(b"not an index")  # newest: refused on load
        journal(client, 25, 1)
        wait_until(lambda: replica._rebase_tried == second.name, 10, "no rebase was tried")
        wait_until(lambda: len(replica.catalog) == 26, 10, "replica stopped following")
        assert replica.catalog is catalog and catalog.base_position == first.position
        assert catalog.overlay_items == 6
    finally:
        replica.stop()


def nth_position(client: redis.Redis, n: int) -> str:
    """The journal position of its entry n (from 0)."""
    entries: Any = client.xrange(keys.JOURNAL, count=n + 1)
    return str(entries[n][0].decode())


class TrimmingCatalog(Catalog):
    """A real catalog whose first apply is followed by a trim of the journal (the writer's)."""

    def __init__(self, settings: Settings, client: redis.Redis, keep_from: int) -> None:
        super().__init__(settings)
        self.client, self.keep_from, self.trimmed = client, keep_from, False

    def apply(self, entries: Iterable[JournalEntry]) -> int:
        applied = super().apply(entries)
        if not self.trimmed:
            self.trimmed = True
            trim_before(self.client, nth_position(self.client, self.keep_from))
        return applied


def quick_settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, hnsw_m=4, hnsw_ef_construction=8)


def test_catch_up_unbroken_applies_the_whole_journal_read_by_read(client, tmp_path):
    journal(client, 0, 2500)  # three reads of 1000
    catalog = Catalog(quick_settings(tmp_path))
    assert catch_up_unbroken(client, catalog)
    assert len(catalog) == 2500


@pytest.mark.parametrize("until", [0, 999, 1000, 1500, 2499])
def test_catch_up_unbroken_until_a_position_stops_exactly_there(client, tmp_path, until):
    journal(client, 0, 2500)
    catalog = Catalog(quick_settings(tmp_path))
    assert catch_up_unbroken(client, catalog, until=nth_position(client, until))
    assert catalog.position == nth_position(client, until) and len(catalog) == until + 1


@pytest.mark.parametrize(
    ("keep_from", "unbroken", "served"),
    [
        (500, True, 2500),  # trimmed before what the catalog had read: nothing is missing
        (1000, True, 2500),  # trimmed up to the next entry it reads: still nothing missing
        (1800, False, 1000),  # entries 1000-1799 gone before it read them: a gap
    ],
)
def test_catch_up_unbroken_fails_only_when_a_trim_left_a_gap(
    client, tmp_path, keep_from, unbroken, served
):
    journal(client, 0, 2500)
    catalog = TrimmingCatalog(quick_settings(tmp_path), client, keep_from)
    assert catch_up_unbroken(client, catalog) is unbroken
    assert len(catalog) == served


def test_catch_up_unbroken_fails_at_once_on_a_journal_trimmed_past_it(client, tmp_path):
    journal(client, 0, 50)
    trim_before(client, nth_position(client, 20))
    catalog = Catalog(quick_settings(tmp_path))
    assert not catch_up_unbroken(client, catalog)
    assert len(catalog) == 0


def test_the_following_thread_keeps_its_process_s_priority(client, redis_server, tmp_path):
    # Niced, it was preempted while holding the GIL and the queries waited for it (api/replica.py).
    process = os.getpriority(os.PRIO_PROCESS, 0)
    replica = Replica(Settings(data_dir=tmp_path, redis_url=redis_server.url), client).start()
    try:
        wait_until(replica.loaded.is_set, 10, "the replica did not load")
        thread = replica._thread.native_id
        assert thread is not None
        assert os.getpriority(os.PRIO_PROCESS, thread) == process
    finally:
        replica.stop()
