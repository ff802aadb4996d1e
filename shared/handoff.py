"""Snapshots handed to the API processes of the writer's host through memory, kept durably less
often (LOOKALIKE_SNAPSHOT_HANDOFF_DIR).

During a bulk import the writer snapshots often, so that API processes load the graph it built
instead of building their own, and each snapshot is the whole index: some 3.5 GiB written for a
50k import. On a host whose disk its API processes share, those writes (the disk's interrupts,
the filesystem's journal) lengthened their requests whatever the writer's priority: /similar
p99 during a 50k import 12.7-14.7 ms with the snapshots on the disk, 10.5-11.8 with them in memory
(bench/follow.py, docs/benchmarks.md). So every snapshot goes to a directory on a memory
filesystem, where the host's API processes load it, and only every `every` seconds is one also
copied to the durable store. The journal is trimmed only behind durable snapshots: after a
restart that lost the memory (a reboot) the durable snapshot and the journal hold everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shared.index import VectorIndex
from shared.journal import position_key
from shared.snapshots import Loaded, PendingSnapshot, Snapshot, SnapshotStore


class HandoffStore(SnapshotStore):
    """`memory` for every snapshot, `durable` for one every `every` seconds; loads the newer."""

    def __init__(
        self,
        memory: SnapshotStore,
        durable: SnapshotStore,
        every: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(memory.root, memory.keep)
        self.memory, self.durable, self.every, self.clock = memory, durable, every, clock
        self.persisted_at: float | None = None  # when this process last copied one to durable

    def begin(
        self, index: VectorIndex, position: str, extra: dict[str, Any], fork: bool = True
    ) -> PendingSnapshot:
        return self.memory.begin(index, position, extra, fork)

    def commit(self, pending: PendingSnapshot) -> Snapshot:
        """Commit to memory; copy to the durable store too when one is due there, or when it
        adds nothing to the newest in memory (an idle writer snapshots again only so that the
        journal can be trimmed, which only durable snapshots allow)."""
        newest = self.memory.snapshots()[:1]
        snapshot = self.memory.commit(pending)
        again = bool(newest) and newest[0].position == snapshot.position
        if again or self.persisted_at is None or self.clock() - self.persisted_at >= self.every:
            self.persist(snapshot)
        return snapshot

    def persist(self, snapshot: Snapshot) -> Snapshot:
        """Copy a committed memory snapshot to the durable store (checked again as it is)."""
        durable = self.durable.commit(self.durable.begin_copy(snapshot))
        self.persisted_at = self.clock()
        return durable

    def snapshots(self) -> list[Snapshot]:
        """Both stores' snapshots, newest first (a snapshot in both: its memory copy)."""
        found = {snap.name: snap for snap in self.durable.snapshots()}
        found.update((snap.name, snap) for snap in self.memory.snapshots())
        return sorted(found.values(), key=lambda s: position_key(s.position), reverse=True)

    def load_newest(
        self, model_id: str | None = None, ef_search: int = 64, short_reads: bool = False
    ) -> Loaded:
        """The newest snapshot of either store that loads: the store whose newest is newer is
        tried first; the reasons the other's and newer ones were refused are kept."""
        stores = [self.memory, self.durable]
        if _newest_key(self.durable) > _newest_key(self.memory):
            stores.reverse()
        refused: list[str] = []
        for store in stores:
            loaded = store.load_newest(model_id, ef_search, short_reads)
            refused += loaded.refused
            if loaded.index is not None:
                return Loaded(loaded.index, loaded.snapshot, refused)
        return Loaded(None, None, refused)

    def kept_from(self) -> str | None:
        """The durable store's: the journal must hold what no durable snapshot does."""
        return self.durable.kept_from()

    def prune(self, still_allowed: Callable[[], bool] = lambda: True) -> list[str]:
        return self.memory.prune(still_allowed) + self.durable.prune(still_allowed)

    def delete(self, name: str) -> None:
        self.memory.delete(name)
        self.durable.delete(name)


def _newest_key(store: SnapshotStore) -> tuple[int, int]:
    newest = store.snapshots()[:1]
    return position_key(newest[0].position) if newest else (-1, -1)
