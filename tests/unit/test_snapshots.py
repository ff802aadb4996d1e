"""The snapshot store: atomic publishing, newest-valid-first loading, retention, trimming point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.errors import SnapshotError
from shared.index import INDEX_FILE
from shared.snapshots import MANIFEST, PARTIAL, SnapshotStore, position_of, snapshot_name
from tests.support.damage import HOW, damage
from tests.support.snapshots import DIM, MODEL, index_of


def publish_three(store: SnapshotStore) -> list[str]:
    """Snapshots of 1, 2 and 3 items at positions 10-0, 20-0, 30-0; their names, oldest first."""
    return [store.publish(index_of(n), f"{n}0-0", {"n": n}).name for n in (1, 2, 3)]


def test_names_sort_in_journal_order_and_give_back_the_position():
    positions = ["9-0", "10-0", "10-2", "10-10", "1700000000000-0"]
    names = [snapshot_name(position) for position in positions]
    assert sorted(names) == names
    assert [position_of(name) for name in names] == positions
    assert snapshot_name("5-0") != snapshot_name("5-0")  # two writers never share a folder


def test_newest_snapshot_loads_with_its_position_and_extra(tmp_path: Path):
    store = SnapshotStore(tmp_path, keep=3)
    publish_three(store)
    loaded = store.load_newest(model_id=MODEL)
    assert loaded.index is not None and loaded.snapshot is not None
    assert (len(loaded.index), loaded.snapshot.position, loaded.index.extra) == (
        3,
        "30-0",
        {"n": 3},
    )
    assert loaded.refused == []


@pytest.mark.parametrize("how", HOW)
def test_a_damaged_newest_snapshot_is_refused_and_the_previous_one_loads(tmp_path: Path, how):
    store = SnapshotStore(tmp_path, keep=3)
    names = publish_three(store)
    message = damage(tmp_path / names[-1] / INDEX_FILE, how)
    loaded = store.load_newest()
    assert loaded.snapshot is not None and loaded.snapshot.name == names[1]
    assert loaded.index is not None and len(loaded.index) == 2
    assert loaded.refused == [f"snapshot {names[-1]} refused: {message}"]


@pytest.mark.parametrize("content", [b"", b'{"format": 1, "mod', b"[]", b'{"format": 1}'])
def test_a_broken_manifest_is_refused_and_the_previous_one_loads(tmp_path: Path, content):
    store = SnapshotStore(tmp_path, keep=3)
    names = publish_three(store)
    (tmp_path / names[-1] / MANIFEST).write_bytes(content)
    loaded = store.load_newest()
    assert loaded.snapshot is not None and loaded.snapshot.name == names[1]
    assert len(loaded.refused) == 1 and loaded.refused[0].startswith(f"snapshot {names[-1]}")


def test_when_every_snapshot_is_damaged_nothing_loads_and_each_says_why(tmp_path: Path):
    store = SnapshotStore(tmp_path, keep=3)
    for name in publish_three(store):
        damage(tmp_path / name / INDEX_FILE, "flipped byte")
    loaded = store.load_newest()
    assert (loaded.index, loaded.snapshot, len(loaded.refused)) == (None, None, 3)


def test_no_snapshot_yet_is_an_empty_start(tmp_path: Path):
    loaded = SnapshotStore(tmp_path / "none").load_newest()
    assert (loaded.index, loaded.snapshot, loaded.refused) == (None, None, [])


def test_a_folder_without_manifest_or_left_partial_is_not_a_snapshot(tmp_path: Path):
    store = SnapshotStore(tmp_path, keep=3)
    (name,) = [store.publish(index_of(1), "10-0", {}).name]
    interrupted = tmp_path / f"{snapshot_name('20-0')}{PARTIAL}"
    index_of(2).save(interrupted)  # the files, never the manifest: a crash mid-publish
    (tmp_path / snapshot_name("30-0")).mkdir()  # a folder whose manifest never came
    assert [snap.name for snap in store.snapshots()] == [name]


def test_prune_keeps_the_newest_and_the_journal_is_kept_back_to_the_oldest_kept(tmp_path: Path):
    store = SnapshotStore(tmp_path, keep=2)
    store.publish(index_of(1), "10-0", {})
    assert store.kept_from() is None  # fewer than `keep`: keep the whole journal
    names = publish_three(store)[1:]
    (tmp_path / f"{snapshot_name('1-0')}{PARTIAL}").mkdir()
    removed = store.prune()
    assert len(removed) == 3  # two old snapshots and a partial folder
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names)
    assert store.kept_from() == "20-0"


def test_prune_removes_nothing_when_no_longer_allowed(tmp_path: Path):
    store = SnapshotStore(tmp_path, keep=2)
    publish_three(store)
    assert store.prune(still_allowed=lambda: False) == []
    assert len(store.snapshots()) == 3


def test_manifest_records_sizes_digest_position_and_model(tmp_path: Path):
    snapshot = SnapshotStore(tmp_path).publish(index_of(2), "20-0", {})
    manifest = json.loads((snapshot.folder / MANIFEST).read_text())
    assert manifest["journal_position"] == "20-0"
    assert manifest["model_id"] == MODEL
    assert manifest["index_bytes"] == (snapshot.folder / INDEX_FILE).stat().st_size
    assert len(manifest["index_sha256"]) == 64


CHANGES = {
    "new items": lambda index: index.upsert(["x1", "x2"], np.ones((2, DIM))),
    "a vector replaced": lambda index: index.upsert(["p0"], np.full((1, DIM), 7.0)),
    "items deleted": lambda index: index.delete(["p1", "p2"]),
    "many new items (a resize)": lambda index: index.upsert(
        [f"y{n}" for n in range(200)], np.abs(np.random.default_rng(5).normal(size=(200, DIM)))
    ),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=list(CHANGES))
def test_a_snapshot_begun_holds_the_index_as_it_was_whatever_changes_follow(tmp_path, change):
    index = index_of(5)
    before = {id_: index.get_vector(id_) for id_ in index.ids()}
    store = SnapshotStore(tmp_path)
    pending = store.begin(index, "10-0", {})
    change(index)  # while the forked copy writes the file
    snapshot = store.commit(pending)
    loaded = store.load_newest(MODEL).index
    assert loaded is not None and snapshot.position == "10-0"
    assert sorted(loaded.ids()) == sorted(before)
    for id_, vector in before.items():
        np.testing.assert_allclose(loaded.get_vector(id_), vector, rtol=1e-6)
    after = {id_: index.get_vector(id_).tolist() for id_ in index.ids()}
    assert after != {id_: vector.tolist() for id_, vector in before.items()}  # it did change


class FailingSave:
    """An hnswlib index whose save_index fails (in the forked copy that calls it)."""

    def __init__(self, index: Any) -> None:
        self.index = index

    def save_index(self, path: str) -> None:
        raise OSError(28, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)


def test_a_snapshot_whose_file_cannot_be_written_is_never_committed(tmp_path):
    store = SnapshotStore(tmp_path)
    store.publish(index_of(2), "10-0", {})
    broken = index_of(3)
    broken._index = FailingSave(broken._index)  # type: ignore[assignment]
    failing = store.begin(broken, "20-0", {})
    assert failing.save.child is not None  # written by a forked copy of this process
    with pytest.raises(SnapshotError, match=r"writing snapshot index file .* failed \(1\)"):
        store.commit(failing)
    assert [snap.position for snap in store.snapshots()] == ["10-0"]
