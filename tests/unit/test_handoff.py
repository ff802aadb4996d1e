"""Snapshots handed over in memory, kept durably every so often (shared/handoff.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.errors import SnapshotError
from shared.handoff import HandoffStore
from shared.index import INDEX_FILE
from shared.settings import Settings
from shared.snapshots import MANIFEST, SnapshotStore, open_store
from tests.support.damage import HOW, damage
from tests.support.snapshots import index_of

EVERY = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path, clock) -> HandoffStore:
    memory = SnapshotStore(tmp_path / "shm")
    return HandoffStore(memory, SnapshotStore(tmp_path / "disk"), EVERY, clock)


def publish(store: HandoffStore, count: int) -> str:
    """A snapshot of count items at position <count>0-0; its name."""
    return store.publish(index_of(count), f"{count}0-0", {"n": count}).name


def names(store: SnapshotStore) -> list[str]:
    return [snapshot.name for snapshot in store.snapshots()]


def test_every_snapshot_goes_to_memory_and_one_every_interval_to_the_durable_store(store, clock):
    first = publish(store, 1)  # a process's first: durable at once
    clock.now += EVERY / 2
    second = publish(store, 2)
    clock.now += EVERY / 2
    third = publish(store, 3)
    store.prune()  # as the writer does after each

    assert names(store.memory) == [third, second]  # the newest `keep`
    assert names(store.durable) == [third, first]
    assert names(store) == [third, second, first]


def test_the_journal_is_trimmed_only_behind_durable_snapshots(store, clock):
    publish(store, 1)
    for count in (2, 3, 4):
        clock.now += 1
        publish(store, count)

    assert store.memory.kept_from() == "30-0"
    assert store.kept_from() is None  # one durable snapshot: the journal is kept whole
    clock.now += EVERY
    publish(store, 5)
    assert store.kept_from() == "10-0"


def test_a_snapshot_that_adds_nothing_is_copied_at_once_so_the_journal_can_be_trimmed(store, clock):
    publish(store, 1)
    clock.now += 1
    publish(store, 2)  # in memory only
    clock.now += 1
    again = store.publish(index_of(2), "20-0", {}).name  # an idle writer's, to trim
    store.prune()

    assert names(store.durable)[0] == again
    assert store.kept_from() == "10-0"
    clock.now += 1
    store.publish(index_of(2), "20-0", {})
    assert store.kept_from() == "20-0"


def test_a_durable_copy_is_the_memory_snapshot_byte_for_byte(store):
    name = publish(store, 3)

    in_memory, on_disk = (s.root / name for s in (store.memory, store.durable))
    assert (on_disk / INDEX_FILE).read_bytes() == (in_memory / INDEX_FILE).read_bytes()
    assert json.loads((on_disk / MANIFEST).read_bytes()) == json.loads(
        (in_memory / MANIFEST).read_bytes()
    )
    assert not list(store.durable.root.glob("*.partial"))


def test_the_newer_snapshot_loads_whichever_store_holds_it(store, clock):
    publish(store, 1)
    clock.now += 1
    newest = publish(store, 2)  # in memory only

    loaded = store.load_newest()
    assert loaded.snapshot is not None and loaded.snapshot.name == newest
    assert loaded.snapshot.folder.parent == store.memory.root
    assert len(loaded.index) == 2


def test_after_the_memory_is_lost_the_durable_snapshot_loads(store, clock):
    durable = publish(store, 1)
    clock.now += 1
    publish(store, 2)
    shutil.rmtree(store.memory.root)  # a reboot

    loaded = store.load_newest()

    assert loaded.snapshot is not None and loaded.snapshot.name == durable
    assert len(loaded.index) == 1
    assert loaded.refused == []


@pytest.mark.parametrize("how", HOW)
def test_a_damaged_memory_snapshot_is_refused_for_the_durable_one(store, clock, how):
    durable = publish(store, 1)
    clock.now += 1
    newest = publish(store, 2)
    expected = damage(store.memory.root / newest / INDEX_FILE, how)

    loaded = store.load_newest()

    assert loaded.snapshot is not None and loaded.snapshot.name == durable
    # the memory store's own older copy of the durable snapshot is tried first
    assert loaded.snapshot.folder.parent == store.memory.root
    assert loaded.refused == [f"snapshot {newest} refused: {expected}"]


def test_a_durable_snapshot_newer_than_memory_s_loads_first(store, tmp_path):
    older = publish(store, 1)
    newer = SnapshotStore(store.durable.root).publish(index_of(3), "30-0", {}).name

    loaded = store.load_newest()

    assert loaded.snapshot is not None and loaded.snapshot.name == newer
    assert names(store) == [newer, older]


def test_removing_a_snapshot_removes_both_copies(store):
    name = publish(store, 1)

    store.delete(name)

    assert names(store) == []


def test_the_handoff_directory_wraps_the_snapshot_store(tmp_path):
    settings = Settings(
        data_dir=tmp_path, snapshot_handoff_dir=tmp_path / "shm", snapshot_durable_every=5
    )

    store = open_store(settings)

    assert isinstance(store, HandoffStore)
    assert (store.memory.root, store.durable.root) == (tmp_path / "shm", tmp_path / "index")
    assert store.every == 5
    assert not isinstance(open_store(Settings(data_dir=tmp_path)), HandoffStore)


def test_a_copy_that_differs_from_its_memory_snapshot_is_not_kept(store, clock, monkeypatch):
    durable = publish(store, 1)
    clock.now += 1
    name = publish(store, 2)  # in memory only
    real_copy = shutil.copyfile

    def torn_copy(source: Path, target: Path) -> Path:
        real_copy(source, target)
        with open(target, "r+b") as file:
            byte = file.read(101)[100]
            file.seek(100)
            file.write(bytes([byte ^ 0xFF]))
        return target

    monkeypatch.setattr(shutil, "copyfile", torn_copy)

    partial = store.durable.root / f"{name}.partial" / INDEX_FILE
    with pytest.raises(SnapshotError, match=f"snapshot index file {partial} changed while"):
        store.persist(store.memory.snapshots()[0])
    store.prune()  # as the writer does next: the partial copy goes
    assert names(store.durable) == [durable]
    assert names(store.memory) == [name, durable]


@pytest.mark.parametrize(
    ("handoff", "store"),
    [
        ("data/index", None),  # the default store, data_dir/index
        ("data/index/shm", None),  # inside it
        ("data", None),  # around it
        ("snaps", "snaps"),  # a store given by LOOKALIKE_SNAPSHOT_URL
        ("snaps", "file://{tmp}/snaps/index"),
    ],
)
def test_a_handoff_directory_that_overlaps_the_snapshot_store_is_refused(tmp_path, handoff, store):
    url = None if store is None else store.replace("{tmp}", str(tmp_path))
    if url is not None and "://" not in url:
        url = str(tmp_path / url)

    with pytest.raises(ValueError, match="must lie apart from the snapshot store's directory"):
        Settings(
            data_dir=tmp_path / "data", snapshot_url=url, snapshot_handoff_dir=tmp_path / handoff
        )


@pytest.mark.parametrize("store", [None, "s3://bucket/index", "elsewhere"])
def test_a_handoff_directory_apart_from_the_store_is_accepted(tmp_path, store):
    url = store if store is None or "://" in store else str(tmp_path / store)
    settings = Settings(
        data_dir=tmp_path / "data", snapshot_url=url, snapshot_handoff_dir=tmp_path / "shm"
    )
    assert settings.snapshot_handoff_dir == tmp_path / "shm"
