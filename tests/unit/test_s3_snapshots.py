"""Snapshots in an S3-compatible store (moto's server: a real S3 API over HTTP)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.index import INDEX_FILE
from shared.s3_snapshots import S3SnapshotStore
from shared.snapshots import MANIFEST, snapshot_name
from tests.support.s3 import S3Server
from tests.support.snapshots import index_of


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def store(s3, tmp_path) -> S3SnapshotStore:
    bucket = s3.bucket(f"b-{uuid.uuid4().hex[:12]}")
    return S3SnapshotStore(f"s3://{bucket}/index", tmp_path / "writer", 2, client=s3.client())


def reader(store: S3SnapshotStore, s3: S3Server, cache: Path) -> S3SnapshotStore:
    """Another host's view of the same bucket, with its own empty directory."""
    return S3SnapshotStore(store.url, cache, store.keep, client=s3.client())


def keys_of(store: S3SnapshotStore) -> list[str]:
    listing = store.s3.list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_a_published_snapshot_loads_on_another_host(store, s3, tmp_path):
    snapshot = store.publish(index_of(3), "30-0", {"metadata": {"p1": {"a": "b"}}})
    assert keys_of(store) == [
        f"index/{snapshot.name}/{INDEX_FILE}",
        f"index/{snapshot.name}/{MANIFEST}",
    ]
    other = reader(store, s3, tmp_path / "replica")
    loaded = other.load_newest()
    assert loaded.index is not None and sorted(loaded.index.ids()) == ["p0", "p1", "p2"]
    assert loaded.index.extra == {"metadata": {"p1": {"a": "b"}}}
    assert (tmp_path / "replica" / snapshot.name / INDEX_FILE).is_file()


def test_an_upload_without_its_manifest_is_not_a_snapshot(store, s3, tmp_path):
    store.publish(index_of(1), "10-0", {})
    half = snapshot_name("20-0")  # the index file arrived, the manifest never did
    store.s3.put_object(Bucket=store.bucket, Key=f"index/{half}/{INDEX_FILE}", Body=b"x" * 100)
    assert [snap.position for snap in store.snapshots()] == ["10-0"]
    loaded = reader(store, s3, tmp_path / "replica").load_newest()
    assert loaded.index is not None and len(loaded.index) == 1 and loaded.refused == []


@pytest.mark.parametrize("damage", ["flipped byte", "cut short", "missing"])
def test_a_damaged_newest_snapshot_is_refused_and_the_previous_one_used(
    store, s3, tmp_path, damage
):
    store.publish(index_of(1), "10-0", {})
    newest = store.publish(index_of(2), "20-0", {})
    key = f"index/{newest.name}/{INDEX_FILE}"
    data = store.s3.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    if damage == "missing":
        store.s3.delete_object(Bucket=store.bucket, Key=key)
    else:
        broken = (
            data[: len(data) // 2] if damage == "cut short" else bytes([data[0] ^ 1]) + data[1:]
        )
        store.s3.put_object(Bucket=store.bucket, Key=key, Body=broken)
    loaded = reader(store, s3, tmp_path / "replica").load_newest()
    assert loaded.index is not None and len(loaded.index) == 1
    assert len(loaded.refused) == 1 and loaded.refused[0].startswith(f"snapshot {newest.name}")


def test_prune_keeps_two_and_removes_abandoned_uploads(store):
    names = [store.publish(index_of(n), f"{n}0-0", {}).name for n in (1, 2, 3)]
    abandoned = snapshot_name("5-0")
    store.s3.put_object(Bucket=store.bucket, Key=f"index/{abandoned}/{INDEX_FILE}", Body=b"x")
    assert sorted(store.prune()) == sorted([names[0], abandoned])
    assert [snap.name for snap in store.snapshots()] == names[:0:-1]
    assert store.kept_from() == "20-0"
    assert store.prune(still_allowed=lambda: False) == []


def test_a_host_keeps_only_the_copy_it_loaded(store, s3, tmp_path):
    other = reader(store, s3, tmp_path / "replica")
    first = store.publish(index_of(1), "10-0", {})
    other.load_newest()
    second = store.publish(index_of(2), "20-0", {})
    other.load_newest()
    assert sorted(p.name for p in (tmp_path / "replica").iterdir()) == [second.name]
    assert first.name != second.name


def test_a_url_that_is_not_s3_is_refused(tmp_path):
    with pytest.raises(Exception, match="not an S3 URL: 's3:///x'"):
        S3SnapshotStore("s3:///x", tmp_path, client=object())


def test_the_writer_creates_a_missing_bucket(s3, tmp_path):
    url = f"s3://new-{uuid.uuid4().hex[:12]}/snaps"
    store = S3SnapshotStore(url, tmp_path, client=s3.client())
    assert store.snapshots() == []  # a bucket not there yet holds no snapshot
    assert store.load_newest().index is None
    store.publish(index_of(1), "10-0", {})
    assert [snap.position for snap in store.snapshots()] == ["10-0"]
