"""The catalog (index + metadata), the journal and a replica following it, on a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from api.replica import Replica
from cli.redis_server import RedisServer
from shared import keys
from shared.catalog import Catalog
from shared.follower import read_after, trim_before, trimmed_past
from shared.journal import START, JournalEntry, delete_entry, parse_entry, upsert_entry
from shared.settings import Settings
from shared.snapshots import SnapshotStore

MODEL = "resnet50-test"
DIM = 2048


def vector(seed: int) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).normal(size=DIM)).astype(np.float32)


def upsert(position: str, product_id: str, seed: int, **metadata: str) -> JournalEntry:
    return JournalEntry(position, "upsert", product_id, MODEL, vector(seed), metadata)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def catalog(settings) -> Catalog:
    catalog = Catalog(settings)
    catalog.apply(
        [
            upsert("1-0", "a", 1, gender="Men", articleType="Shirts"),
            upsert("2-0", "b", 2, gender="Women", articleType="Shirts"),
            upsert("3-0", "c", 3, gender="Women", articleType="Heels"),
            upsert("4-0", "d", 4, gender="Women", articleType="Shirts"),
        ]
    )
    return catalog


def test_similar_excludes_the_product_and_carries_metadata(catalog):
    hits = catalog.similar("a", 10, {})
    assert sorted(hit["product_id"] for hit in hits) == ["b", "c", "d"]
    assert {hit["product_id"]: hit["metadata"]["gender"] for hit in hits}["c"] == "Women"


def test_filters_are_exact_matches_on_every_field(catalog):
    hits = catalog.similar("a", 10, {"gender": "Women", "articleType": "Shirts"})
    assert sorted(hit["product_id"] for hit in hits) == ["b", "d"]
    assert catalog.similar("a", 10, {"gender": "Kids"}) == []
    assert catalog.field_values("articleType") == ["Heels", "Shirts"]


def test_similar_of_an_unindexed_product_is_a_key_error(catalog):
    with pytest.raises(KeyError):
        catalog.similar("zz", 5, {})


def test_delete_then_upsert_in_one_batch_keeps_the_last(catalog):
    catalog.apply(
        [
            JournalEntry("5-0", "delete", "b"),
            upsert("6-0", "c", 9, gender="Men", articleType="Watches"),
            JournalEntry("7-0", "delete", "c"),
            upsert("8-0", "c", 10, gender="Men", articleType="Watches"),
        ]
    )
    assert "b" not in catalog and catalog.matching({"gender": "Women"}) == {"d"}
    assert catalog.metadata["c"] == {"gender": "Men", "articleType": "Watches"}
    assert np.allclose(catalog.index.get_vector("c"), vector(10) / np.linalg.norm(vector(10)))
    assert catalog.position == "8-0"


def test_entries_of_another_model_or_without_direction_are_skipped(catalog):
    applied = catalog.apply(
        [
            JournalEntry("9-0", "upsert", "x", "other-model", vector(5), {}),
            JournalEntry("10-0", "upsert", "y", MODEL, np.zeros(DIM, np.float32), {}),
        ]
    )
    assert applied == 0
    assert "x" not in catalog and "y" not in catalog
    assert catalog.position == "10-0"


def test_snapshot_keeps_vectors_metadata_and_position(catalog, settings, tmp_path):
    catalog.save(SnapshotStore(tmp_path / "index"))
    loaded, _ = Catalog.restore(settings, SnapshotStore(tmp_path / "index"))
    assert loaded.position == "4-0"
    assert loaded.metadata == catalog.metadata
    assert loaded.similar("a", 3, {"gender": "Women"}) == catalog.similar(
        "a", 3, {"gender": "Women"}
    )


def test_no_snapshot_is_an_empty_catalog_at_the_start(settings, tmp_path):
    empty, _ = Catalog.restore(settings, SnapshotStore(tmp_path / "nothing"))
    assert len(empty) == 0 and empty.position == START and empty.search(vector(1), 5, {}) == []


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server


@pytest.fixture
def client(redis_server) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    return client


def test_journal_entries_round_trip_through_a_stream(client):
    client.xadd(keys.JOURNAL, upsert_entry("p1", vector(1), MODEL, {"name": "Blue, Shirt"}))
    client.xadd(keys.JOURNAL, delete_entry("p1"))
    first, second = read_after(client, START, block_ms=None)
    assert (first.op, first.product_id, first.model_id) == ("upsert", "p1", MODEL)
    assert np.array_equal(first.vector, vector(1))
    assert first.metadata == {"name": "Blue, Shirt"}
    assert (second.op, second.product_id) == ("delete", "p1")
    raw = client.xrange(keys.JOURNAL)[1]
    assert parse_entry(*raw).position == second.position


def test_trimmed_past_tells_when_entries_after_a_position_are_gone(client):
    ids = [client.xadd(keys.JOURNAL, delete_entry(f"p{n}")).decode() for n in range(5)]
    assert not trimmed_past(client, START)
    assert trim_before(client, ids[3]) == 3
    assert [entry.position for entry in read_after(client, START, block_ms=None)] == ids[3:]
    assert trimmed_past(client, START) and trimmed_past(client, ids[0])
    assert trimmed_past(client, ids[1])  # ids[2] is gone
    assert not trimmed_past(client, ids[2]) and not trimmed_past(client, ids[4])
    assert trim_before(client, ids[3]) == 0  # nothing older left


def test_replica_loads_the_snapshot_then_follows_the_journal(client, redis_server, tmp_path):
    settings = Settings(data_dir=tmp_path, redis_url=redis_server.url)
    writer_side = Catalog(settings)
    for n in range(3):
        client.xadd(keys.JOURNAL, upsert_entry(f"s{n}", vector(n), MODEL, {"n": str(n)}))
    writer_side.apply(read_after(client, START, block_ms=None))
    writer_side.save(SnapshotStore(tmp_path / "index"))
    trim_before(client, writer_side.position)
    replica = Replica(settings, client).start()
    try:
        client.xadd(keys.JOURNAL, upsert_entry("late", vector(7), MODEL, {"n": "7"}))
        deadline = time.monotonic() + 5
        while len(replica.catalog) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(replica.catalog.index.ids()) == ["late", "s0", "s1", "s2"]
        assert replica.catalog.metadata["s1"] == {"n": "1"}
    finally:
        replica.stop()


def test_a_lagging_replica_reloads_the_snapshot_when_the_journal_was_trimmed(
    client, redis_server, tmp_path
):
    settings = Settings(data_dir=tmp_path, redis_url=redis_server.url)
    client.xadd(keys.JOURNAL, upsert_entry("old", vector(1), MODEL, {}))
    stale = Catalog(settings)
    stale.apply(read_after(client, START, block_ms=None))
    writer_side = Catalog(settings)
    for n in range(3):
        client.xadd(keys.JOURNAL, upsert_entry(f"new{n}", vector(10 + n), MODEL, {}))
    writer_side.apply(read_after(client, START, block_ms=None))
    writer_side.save(SnapshotStore(tmp_path / "index"))
    trim_before(client, writer_side.position)
    replica = Replica(settings, client)
    replica.catalog = stale  # as if it had stopped following before new0 and new1 were trimmed
    replica.loaded.set()
    replica.start()
    try:
        deadline = time.monotonic() + 5
        while len(replica.catalog) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(replica.catalog.index.ids()) == ["new0", "new1", "new2", "old"]
    finally:
        replica.stop()


def test_browse_pages_through_ids_in_natural_order_with_filters(settings):
    catalog = Catalog(settings)
    ids = ["10", "9", "b", "100", "a", "2"]
    catalog.apply(
        [upsert(f"{n + 1}-0", pid, n, kind="odd" if n % 2 else "even") for n, pid in enumerate(ids)]
    )
    first, total = catalog.browse({}, 0, 4)
    assert total == 6
    assert [item["product_id"] for item in first] == ["2", "9", "10", "100"]
    rest, _ = catalog.browse({}, 4, 4)
    assert [item["product_id"] for item in rest] == ["a", "b"]
    odd, odd_total = catalog.browse({"kind": "odd"}, 0, 10)
    assert odd_total == 3
    assert [item["product_id"] for item in odd] == ["2", "9", "100"]
    assert {item["metadata"]["kind"] for item in odd} == {"odd"}
    assert catalog.browse({"kind": "none"}, 0, 10) == ([], 0)
    assert catalog.browse({}, 100, 10) == ([], 6)
