"""Index snapshots: published atomically, verified on load, the newest `keep` kept.

Each snapshot is a folder named by its journal position (so names sort in journal order) holding
the index file and `manifest.json` (sizes, SHA-256, journal position, model id). A snapshot exists
once its manifest does: the manifest is written last. Loading tries the newest first and falls
back to older ones when a snapshot is missing a file, cut short or corrupt; the writer keeps the
journal back to the oldest snapshot kept, so an older snapshot plus the journal is still the whole
index.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import SnapshotError
from shared.index import PendingSave, VectorIndex
from shared.journal import position_key
from shared.keys import MAIN, Generation
from shared.settings import Settings

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
PARTIAL = ".partial"


@dataclass(frozen=True)
class Snapshot:
    """A committed snapshot: its folder and the journal position it holds."""

    name: str
    folder: Path
    position: str


@dataclass
class PendingSnapshot:
    """A snapshot whose index file is being written: the store's commit() makes it one."""

    name: str
    folder: Path
    position: str
    save: PendingSave


@dataclass
class Loaded:
    """The newest snapshot that loaded, if any, and why newer ones were refused."""

    index: VectorIndex | None
    snapshot: Snapshot | None
    refused: list[str] = field(default_factory=list)


class SnapshotStore:
    """Snapshots in a local directory (one folder each); the newest `keep` are kept."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(keep, 1)

    def publish(self, index: VectorIndex, position: str, extra: dict[str, Any]) -> Snapshot:
        """Write a snapshot at position, here and now."""
        return self.commit(self.begin(index, position, extra, fork=False))

    def begin(
        self, index: VectorIndex, position: str, extra: dict[str, Any], fork: bool = True
    ) -> PendingSnapshot:
        """Start writing a snapshot at position into a partial folder (see begin_save)."""
        name = snapshot_name(position)
        folder = self._pending_folder(name)
        return PendingSnapshot(
            name, folder, position, index.begin_save(folder, position, extra, fork)
        )

    def begin_copy(self, source: Snapshot) -> PendingSnapshot:
        """Start a copy of another store's committed snapshot, under its name (commit() seals
        it, and refuses a copy whose SHA-256 is not the source's)."""
        manifest = json.loads((source.folder / MANIFEST).read_bytes())
        folder = self._pending_folder(source.name)
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / manifest["index_file"]
        shutil.copyfile(source.folder / manifest["index_file"], copy)
        expected = manifest.pop("index_sha256")
        del manifest["index_file"], manifest["index_bytes"]
        save = PendingSave(copy, manifest, expected_sha256=expected)
        return PendingSnapshot(source.name, folder, source.position, save)

    def _pending_folder(self, name: str) -> Path:
        """Where a snapshot's files are written before commit() publishes them."""
        return self.root / f"{name}{PARTIAL}"

    def commit(self, pending: PendingSnapshot) -> Snapshot:
        """Seal the index file, write the manifest, then rename the folder: now it exists."""
        manifest = pending.save.finish()
        _write_durably(pending.folder / MANIFEST, json.dumps(manifest).encode())
        final = self.root / pending.name
        os.replace(pending.folder, final)
        _fsync_directory(self.root)
        return Snapshot(pending.name, final, pending.position)

    def snapshots(self) -> list[Snapshot]:
        """Committed snapshots (a folder with a manifest), newest first."""
        if not self.root.is_dir():
            return []
        found = [
            Snapshot(folder.name, folder, position_of(folder.name))
            for folder in self.root.iterdir()
            if folder.is_dir() and not folder.name.endswith(PARTIAL)
            if (folder / MANIFEST).is_file() and is_snapshot_name(folder.name)
        ]
        return sorted(found, key=lambda snap: position_key(snap.position), reverse=True)

    def load_newest(
        self, model_id: str | None = None, ef_search: int = 64, short_reads: bool = False
    ) -> Loaded:
        """The newest snapshot that verifies and loads; the reasons newer ones were refused
        (short_reads: see VectorIndex.load)."""
        refused: list[str] = []
        for snapshot in self.snapshots():
            try:
                index = self._open(snapshot, model_id, ef_search, short_reads)
            except (OSError, ValueError, SnapshotError) as exc:
                reason = f"snapshot {snapshot.name} refused: {exc}"
                log.error("%s; trying an older one", reason)
                refused.append(reason)
                continue
            return Loaded(index, snapshot, refused)
        return Loaded(None, None, refused)

    def _open(
        self, snapshot: Snapshot, model_id: str | None, ef_search: int, short_reads: bool
    ) -> VectorIndex:
        manifest = json.loads((snapshot.folder / MANIFEST).read_bytes())
        return VectorIndex.load(snapshot.folder, manifest, model_id, ef_search, short_reads)

    def kept_from(self) -> str | None:
        """The journal position the journal must be kept back to (None: keep all of it).

        That of the oldest of the newest `keep` snapshots, once there are that many.
        """
        snapshots = self.snapshots()
        if len(snapshots) < self.keep:
            return None
        return snapshots[self.keep - 1].position

    def prune(self, still_allowed: Callable[[], bool] = lambda: True) -> list[str]:
        """Remove snapshots older than the newest `keep`, and partial folders; their names.

        still_allowed is asked just before removing anything: a writer that lost its lock
        must not delete what the writer holding it may rely on.
        """
        doomed = [snap.name for snap in self.snapshots()[self.keep :]]
        doomed += [folder.name for folder in self._partials()]
        if not doomed or not still_allowed():
            return []
        for name in doomed:
            self.delete(name)
        return doomed

    def delete(self, name: str) -> None:
        """Remove one snapshot (or partial folder)."""
        shutil.rmtree(self.root / name, ignore_errors=True)

    def _partials(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [folder for folder in self.root.glob(f"*{PARTIAL}") if folder.is_dir()]


def snapshot_name(position: str) -> str:
    """A folder name that sorts in journal order and is unique to this write."""
    millis, sequence = position_key(position)
    return f"{millis:016d}-{sequence:010d}-{uuid.uuid4().hex[:8]}"


def position_of(name: str) -> str:
    millis, sequence, _ = name.split("-")
    return f"{int(millis)}-{int(sequence)}"


def is_snapshot_name(name: str) -> bool:
    parts = name.split("-")
    return len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit()


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(settings: Settings, gen: Generation = MAIN) -> SnapshotStore:
    """The store LOOKALIKE_SNAPSHOT_URL names: a directory (default data_dir/index) or S3; a
    generation other than the first keeps its snapshots in a folder (a prefix) of its name.
    With LOOKALIKE_SNAPSHOT_HANDOFF_DIR, that store keeps one snapshot every
    LOOKALIKE_SNAPSHOT_DURABLE_EVERY seconds and the directory every one (shared/handoff.py)."""
    durable = _durable_store(settings, gen)
    if settings.snapshot_handoff_dir is None:
        return durable
    from shared.handoff import HandoffStore

    memory = settings.snapshot_handoff_dir / gen.name if gen.name else settings.snapshot_handoff_dir
    memory_store = SnapshotStore(memory, settings.snapshots_kept)
    return HandoffStore(memory_store, durable, settings.snapshot_durable_every)


def _durable_store(settings: Settings, gen: Generation) -> SnapshotStore:
    root = settings.local_snapshot_dir
    if root is None:  # an S3 bucket
        from shared.s3_snapshots import S3SnapshotStore

        url = str(settings.snapshot_url).rstrip("/") + (f"/{gen.name}" if gen.name else "")
        cache = settings.data_dir / "snapshot-cache" / gen.label
        return S3SnapshotStore(url, cache, settings.snapshots_kept)
    return SnapshotStore(root / gen.name if gen.name else root, settings.snapshots_kept)
