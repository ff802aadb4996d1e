"""An API process's replica of the index: newest snapshot, then the journal, followed live."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from typing import Any

import redis

from api.handover import Handover
from api.traffic import Traffic
from shared import keys
from shared.catalog import Catalog
from shared.follower import catch_up, catch_up_unbroken, read_after, trimmed_past
from shared.journal import START, JournalEntry, parse_entry, position_key
from shared.keys import MAIN, Generation
from shared.settings import Settings
from shared.snapshots import Loaded, Snapshot, SnapshotStore, open_store

log = logging.getLogger(__name__)
REBASE = 5.0  # seconds between two looks for a newer snapshot while the small graph grows
# A rebase re-inserts what the snapshot lacks into a new small graph: only onto a snapshot that
# lacks at most this share of the small graph (during a bulk import the writer's snapshots lag
# the replica, and each rebase onto one re-inserted the lag and stalled queries while loading).
REBASE_MAX_MISSING = 0.25
# hnswlib loads a snapshot holding the GIL (0.12 s of a 0.24 s load of 20k items here, 0.38 s at
# 60k: bench/graph_cost.py; a million items load in 18 s), so every query of the process waits
# for a rebase's load: only when it moves at least this share of the catalog into the writer's
# graph. Loads then cost queries a bounded share of time however slowly items come (at a
# trickle, every newer snapshot would otherwise be loaded).
REBASE_MIN_SHARE = 0.1
# And while requests come (one began within this many seconds), loads can be paced: after a load
# of L seconds the next waits L * (1 / settings.replica_load_share - 1), so that loads take at most
# that share of the time. Each load stalls every request for its GIL-held part; a client sending
# at a steady rate saw a /similar p99 of 168-217 ms during a 50k import with a load at every
# writer snapshot (11-12, 0.4-0.5 s each), 4.4-4.6 ms idle. Paced at 0.02: 73 ms on a CPU of its
# own, but 263 ms against 164 beside the writer (it fell behind the trim and reloaded): off by
# default (bench/follow.py --rate).
QUERIED = 1.0
# The following thread keeps its process's niceness: niced, it was often preempted (by the writer,
# on a shared host) while holding the GIL, and this process's queries waited for it to be run
# again (unpinned, /similar p99 during an import 35.8 ms nicer by 10, 23.0 ms not; maxima 532 vs
# 102 ms). The queries come first by waiting for lulls instead (FOLLOW_WAIT).
# The following thread's Python (parsing the journal, bookkeeping) holds the GIL between inserts,
# and a request thread waiting for it got it only after Python's switch interval (5 ms), several
# times a request: while a replica follows, a waiting thread asks it back after this long.
FOLLOW_SWITCH_INTERVAL = 0.0005
# A replica whose exact tail is full waits for the writer's next snapshot (at most
# settings.replica_snapshot_wait) instead of inserting what follows into a graph of its own, when
# at least this many journal entries wait beyond the tail: a bulk import, which the writer
# snapshots often (every snapshot_fraction of the index). Fewer (a trickle) go into the small
# graph at once, so that a new item still reaches the replica within a second.
WAIT_BACKLOG = 64
WAIT_POLL = 1.0  # seconds between two looks for that snapshot while waiting
WAITING_TTL = 5  # seconds the writer hears of a waiting replica after its last look
# Journal entries a read takes: the reply is parsed holding the GIL (shared.follower.READ_COUNT),
# and this process's queries wait for it: about 1 ms for 128 entries of 2048-d, 9-15 for 512 or
# 1,000 (bench/journal_read.py).
JOURNAL_READ = 128
# A handover asked for (api/handover.py) that has not happened after this many seconds: the
# replica loads the snapshot itself meanwhile (the new worker, once up, still takes over).
HANDOVER_RETRY = 30.0
# The longest a chunk of changes waits for no request to be in flight: under a steady stream
# of queries following still goes on (a chunk at least this often), a new item later.
FOLLOW_WAIT = 0.01


class Replica:
    """Keeps `catalog` current in a background thread; `catalog` is swapped on reloads.

    It serves the generation Redis names (keys.SERVING); when `lookalike promote` names another,
    it loads that one beside the one it serves and then swaps them, so a request sees one or the
    other, never a mix. The one it served stays as `previous` for searches embedded with its model.
    """

    def __init__(
        self, settings: Settings, client: redis.Redis, traffic: Traffic | None = None
    ) -> None:
        self.settings = settings
        self.client = client
        # Following waits for a lull in this process's requests before each chunk of changes
        # (at most FOLLOW_WAIT): a query then rarely waits for the index's lock. While requests
        # come it also takes at most settings.follow_share of a core: a query then rarely waits
        # for the core it shares with the following.
        self.traffic = traffic or Traffic(FOLLOW_WAIT, settings.follow_share)
        self.gen = MAIN
        self.store = open_store(settings)
        self.catalog = Catalog(settings, layered=True, pause=self.traffic.lull)
        self.previous: Catalog | None = None
        self._rebase_checked = time.monotonic()
        self._rebase_tried: str | None = None  # the newest snapshot a rebase last looked at
        self._next_load = 0.0  # time.monotonic() before which a queried replica loads nothing
        # The catalog whose exact tail filled during a bulk import, and since when (_fitting).
        self._full: tuple[Catalog, float] | None = None
        self.loaded = threading.Event()
        # Loaded and caught up with the journal (or waiting for the writer's snapshot): a worker
        # that takes over from another (api/handover.py) waits for this.
        self.settled = threading.Event()
        # Set by gunicorn's hook: while queried, a newer snapshot is loaded by a new worker.
        self.handover: Handover | None = None
        self._handover_asked = -HANDOVER_RETRY  # time.monotonic()
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica", daemon=True)

    def start(self) -> Replica:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        sys.setswitchinterval(FOLLOW_SWITCH_INTERVAL)
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # keep following: a Redis restart must not kill the replica
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("replica paused: %s; retrying in 1s", self.last_error)
                self._stop.wait(1.0)

    def _follow(self) -> None:
        if not self.loaded.is_set():
            self._reload()
        while not self._stop.is_set():
            serving = self.serving()
            if serving != self.gen:
                self._switch(serving)
            catalog = self.catalog
            if self._full is not None and self._full[0] is not catalog:
                self._full = None  # moved on: and the old catalog's memory is freed
            if self.waiting:
                self.settled.set()
                # Tells the writer, which then snapshots as soon as the burst is over.
                self.client.set(self.gen.replicas_waiting, 1, ex=WAITING_TTL)
                self._stop.wait(WAIT_POLL)
                self._maybe_rebase(every=WAIT_POLL)
                continue
            before = catalog.position
            entries = read_after(self.client, before, JOURNAL_READ, 500, self.gen)
            if trimmed_past(self.client, before, self.gen) and self._reload_helps(before):
                continue  # what we missed was in a newer snapshot, now loaded
            catalog.apply(self._fitting(catalog, entries))
            if len(entries) < JOURNAL_READ:
                self.settled.set()  # read up to the journal's head
            self.last_error = None
            self._maybe_rebase()

    @property
    def waiting(self) -> bool:
        """Whether following waits for the writer's next snapshot (see _fitting); not once
        requests come and its next load must wait for its pace."""
        full = self._full
        return (
            full is not None
            and full[0] is self.catalog
            and time.monotonic() - full[1] < self.settings.replica_snapshot_wait
            and not self._load_paced()
        )

    def _fitting(self, catalog: Catalog, entries: list[JournalEntry]) -> list[JournalEntry]:
        """entries, or during a bulk import (WAIT_BACKLOG) only those whose items fit the exact
        tail: the rest waits for the writer's next snapshot, read again once it is loaded or
        the wait is over (then into the small graph)."""
        room = catalog.exact_room
        if room is None or (self._full is not None and self._full[0] is catalog):
            return entries  # not layered yet, or waited out already
        if self._load_paced():
            return entries  # no load for a while: waiting would leave it behind the journal
        fit, upserts = len(entries), 0
        for at, entry in enumerate(entries):
            upserts += entry.op != "delete"  # an update of an item in the tail too: a bound
            if upserts > room:
                fit = at
                break
        beyond = len(entries) - fit
        if 0 < beyond < WAIT_BACKLOG:  # a read is short (JOURNAL_READ): the journal may hold more
            beyond += self._unread(entries[-1])
        if beyond < WAIT_BACKLOG:
            return entries
        self._full = (catalog, time.monotonic())
        log.info("replica: exact tail full at %s; waiting for the writer's snapshot", catalog.seq)
        return entries[:fit]

    def _load_paced(self) -> bool:
        """Whether a load must wait for its pace (settings.replica_load_share) now."""
        return time.monotonic() < self._next_load and self.traffic.queried_within(QUERIED)

    def _unread(self, last: JournalEntry) -> int:
        """How many journal entries follow last (0 when the journal is not numbered)."""
        head = self.client.get(self.gen.journal_seq)
        return 0 if head is None or last.seq is None else max(0, int(head) - last.seq)

    def _maybe_rebase(self, every: float | None = None) -> None:
        """Load the writer's newer snapshot, if there is one, in place of what the replica
        added since its own (it never rebuilds what the writer built); looked for at most every
        `every` seconds (REBASE)."""
        every = REBASE if every is None else every
        if self.catalog.overlay_items == 0 or time.monotonic() - self._rebase_checked < every:
            return
        if self._load_paced():
            return
        self._rebase_checked = time.monotonic()
        snapshots = self.store.snapshots()
        base = self.catalog.base_position or START
        if not snapshots or position_key(snapshots[0].position) <= position_key(base):
            return
        if snapshots[0].name == self._rebase_tried or not self._worth_loading(snapshots[0]):
            return
        if self._handed_over(snapshots[0]):
            return
        self._rebase_tried = snapshots[0].name
        started = time.perf_counter()
        fresh, _ = self._restore(self.store, serving=False)
        self._next_load = next_load_at(
            time.perf_counter() - started, self.settings.replica_load_share
        )
        loaded_at = fresh.position
        # The newest snapshot may not load (load_newest then falls back to an older one): move
        # only forward, and only onto a snapshot the journal still follows on from, or entries
        # trimmed since it would be missing.
        if position_key(loaded_at) <= position_key(base):
            return
        # Behind what is served: caught up to it first, or items served would vanish (checked
        # read by read, so that entries trimmed after this replica read them are no loss); then
        # followed on from there like one ahead of it (a replica slower than the writer).
        served = self.catalog.position
        if not catch_up_unbroken(self.client, fresh, self.gen, served, JOURNAL_READ):
            log.info("replica: snapshot %s is behind the journal's trim", snapshots[0].name)
            return
        fresh.pause = self.traffic.lull
        self.catalog = fresh
        log.info(
            "replica moved onto snapshot %s: %d items, %d since it, in %.2fs",
            snapshots[0].name, len(fresh), fresh.overlay_items, time.perf_counter() - started,
        )  # fmt: skip

    def _handed_over(self, snapshot: Snapshot) -> bool:
        """Whether a new worker loads snapshot instead (asked now, or lately and not yet up):
        only while requests come, which a load here would stall."""
        if self.handover is None or not self.traffic.queried_within(QUERIED):
            return False
        if time.monotonic() - self._handover_asked < HANDOVER_RETRY:
            return True  # on its way; or just took over (its note gone) and this one stops
        if self.handover.requested():
            return False  # asked long ago and still not up: load here meanwhile
        try:
            self.handover.request()
        except OSError as exc:  # no note, or no master to signal: load here from now on
            log.warning("replica: cannot hand over (%s); loading snapshots in place", exc)
            self.handover = None
            return False
        self._handover_asked = time.monotonic()
        log.info("replica: handing over to a new worker for snapshot %s", snapshot.name)
        return True

    def _worth_loading(self, snapshot: Snapshot) -> bool:
        """Whether a rebase onto snapshot is worth a load: it lacks at most REBASE_MAX_MISSING
        of the small graph, and it moves at least REBASE_MIN_SHARE of the catalog into the
        writer's graph (what the small graph holds of it, and what the replica lacks); while
        the replica waits for a snapshot (_fitting), any that is ahead of it."""
        at, served = self._seq_at(snapshot.position), self.catalog.seq
        if at is None or served is None:
            return True  # entries without sequence numbers: nothing to weigh
        overlay = self.catalog.overlay_items
        missing, ahead = max(0, served - at), max(0, at - served)
        if self.waiting:
            return ahead > 0  # the only way on without building a graph
        if missing > REBASE_MAX_MISSING * overlay:
            log.debug("replica: snapshot %s lacks %d of its entries", snapshot.name, missing)
            return False  # the writer is still behind: the small graph grows meanwhile
        return overlay - missing + ahead >= REBASE_MIN_SHARE * len(self.catalog)

    def _seq_at(self, position: str) -> int | None:
        """The sequence number of the journal's entry at position (None if unknown)."""
        after: Any = self.client.xrange(self.gen.journal, min=f"({position}", count=1)
        if after:
            seq = parse_entry(*after[0]).seq
            return None if seq is None else seq - 1
        last: Any = self.client.xrevrange(self.gen.journal, count=1)  # position is the head
        return parse_entry(*last[0]).seq if last else None

    def _restore(self, store: SnapshotStore, serving: bool = True) -> tuple[Catalog, Loaded]:
        """A catalog served at once waits for lulls in the queries as it follows; one that
        catches up first does not (no query waits for its lock), but both keep to the share of
        a core that following may take while requests come. A load that no request of this
        process waits on (a handover's new worker's, an idle replica's) is read in short reads,
        which stall no other process on its CPU (shared/hnsw_file.py); one beside this
        process's requests with hnswlib's loader: with short reads, /similar p99 during a 50k
        import loading in place was 485 and 620 ms against 120 (pinned, bench/follow.py; in
        isolation both loaders hold the GIL for at most 148-161 ms at 40k items,
        bench/load_stall.py, so why is not known)."""
        pause = self.traffic.lull if serving else self.traffic.pace
        quiet = not self.traffic.queried_within(QUERIED)
        restored = Catalog.restore(
            self.settings, store, layered=True, pause=pause, short_reads=quiet
        )
        # A loaded catalog is long-lived, and each full collection of Python's cyclic collector
        # walked its objects holding the GIL: every query of the process waited (15-71 ms a
        # collection at 50k items, 11 during a bulk import). Frozen, the collector skips what is
        # alive now; a catalog holds no reference cycles, so the one a load replaces is still
        # freed by reference counting (tested).
        gc.freeze()
        return restored

    def serving(self) -> Generation:
        """The generation Redis says API replicas serve."""
        raw = self.client.get(keys.SERVING)
        return Generation(raw.decode()) if isinstance(raw, bytes) else MAIN

    def _switch(self, gen: Generation) -> None:
        """Load gen whole (snapshot, then the journal to its head), then serve it."""
        started = time.perf_counter()
        store = open_store(self.settings, gen)
        fresh, _ = self._restore(store, serving=False)
        catch_up(self.client, fresh, gen, JOURNAL_READ)
        fresh.pause = self.traffic.lull
        self.previous, self.store, self.gen, self.catalog = self.catalog, store, gen, fresh
        log.info(
            "replica now serves generation %s: %d items at %s, loaded in %.2fs",
            gen.label, len(fresh), fresh.position, time.perf_counter() - started,
        )  # fmt: skip

    def _reload_helps(self, before: str) -> bool:
        fresh, _ = self._restore(self.store)
        if position_key(fresh.position) > position_key(before):
            self.catalog = fresh
            log.info("replica reloaded %d items at %s", len(fresh), fresh.position)
            return True
        log.error(
            "the journal was trimmed past %s but %s has no newer snapshot: this replica "
            "needs the writer's data directory (LOOKALIKE_DATA_DIR)", before, self.store.root,
        )  # fmt: skip
        return False

    def _reload(self) -> None:
        started = time.perf_counter()
        self.gen = self.serving()
        self.store = open_store(self.settings, self.gen)
        self.catalog, _ = self._restore(self.store)
        self.loaded.set()
        log.info(
            "replica loaded %d items at %s in %.2fs",
            len(self.catalog), self.catalog.position, time.perf_counter() - started,
        )  # fmt: skip


def next_load_at(seconds: float, share: float) -> float:
    """When (time.monotonic()) a queried replica may load again after a load of `seconds`, so
    that loads take at most `share` of the time."""
    return time.monotonic() + seconds * (1 / share - 1)
