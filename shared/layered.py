"""An API replica's index: the writer's graph from a snapshot, plus what the journal changed
since, held exactly or in a small graph.

Every vector the journal brings goes first into an exact tail (shared.tail: a copy, no graph
work), up to LOOKALIKE_REPLICA_EXACT_ITEMS of them. Past that it is inserted into a small graph
built with a fraction of the writer's effort (M=8, ef_construction=40 instead of the settings'
16 and 200); api/replica.py first waits a while for the writer's next snapshot instead, during
a bulk import. The snapshot's copy of a changed or deleted product is marked deleted. Queries
ask all three and merge. When the writer publishes a newer snapshot the replica loads it and
starts afresh (api/replica.py), so a replica never repeats the writer's graph building at full
cost, and while the writer's snapshots keep up, not at all.

A change touches several parts (an update moves a product from the snapshot's graph to the
tail), so changes hold this index's lock exclusively and queries hold it shared: a query sees a
product in exactly one part, never in two and never in none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.index import SCORE_TIE, Hits, VectorIndex
from shared.rwlock import RWLock
from shared.settings import Settings
from shared.tail import ExactTail

OVERLAY_M = 8
OVERLAY_EF_CONSTRUCTION = 40
# Following uses one core at most, whatever the host has: the others stay free for queries
# (and, on a host shared with the writer, for its graph building).
OVERLAY_INSERT_THREADS = 1
UPSERT_CHUNK = 1  # ids per write-lock hold: a query waits for at most one insert
TAIL_CHUNK = 128  # ids per write-lock hold into the exact tail (a copy each, about 2 us)
TIES_MAX = 1024  # items beyond the k-th that score the same as it, looked at to order them


class LayeredIndex:
    """The subset of VectorIndex a Catalog uses, over a read-mostly base and a small overlay.

    The base must be full-dimensional (no projection): the overlay holds vectors as given.
    """

    projection = None  # the reduced-memory mode (a projection) builds the replica's graph itself

    def __init__(
        self,
        settings: Settings,
        base: VectorIndex | None,
        dim: int,
        model_id: str,
        pause: Callable[[], object] | None = None,
    ):
        if base is not None and base.projection is not None:
            raise ValueError("a projected index is not layered: its replica builds it whole")
        self.base = base
        self.overlay = VectorIndex(
            dim, model_id, m=OVERLAY_M, ef_construction=OVERLAY_EF_CONSTRUCTION,
            ef_search=settings.hnsw_ef_search, insert_threads=OVERLAY_INSERT_THREADS,
        )  # fmt: skip
        self.tail = ExactTail(dim, settings.replica_exact_items)
        self.model_id = model_id
        self.journal_position = None if base is None else base.journal_position
        self.extra: dict[str, Any] = {} if base is None else base.extra
        self.pause = pause  # called before each chunk of changes, outside the lock
        self._lock = RWLock()

    @property
    def base_position(self) -> str | None:
        """The journal position of the snapshot under the overlay."""
        return None if self.base is None else self.base.journal_position

    @property
    def since_base(self) -> int:
        """Items the journal brought since the snapshot: in the tail or the small graph."""
        return len(self.tail) + len(self.overlay)

    def __len__(self) -> int:
        with self._lock.read():
            return self.since_base + (0 if self.base is None else len(self.base))

    def __contains__(self, id_: object) -> bool:
        with self._lock.read():
            return (
                id_ in self.tail
                or id_ in self.overlay
                or (self.base is not None and id_ in self.base)
            )

    def ids(self) -> list[str]:
        with self._lock.read():
            base = [] if self.base is None else self.base.ids()
            return [*base, *self.overlay.ids(), *self.tail.ids()]

    def upsert(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """Into the exact tail while it has room, else into the small graph; the other parts'
        copies of these ids stop being found. Refused whole when a vector is unusable."""
        ids, vectors = list(ids), self.tail.check(ids, vectors)
        room, to_tail = self.tail.room, set()
        for id_ in dict.fromkeys(ids):
            if id_ in self.tail or room > 0:
                room -= id_ not in self.tail
                to_tail.add(id_)
        into_tail = [row for row, id_ in enumerate(ids) if id_ in to_tail]
        into_graph = [row for row, id_ in enumerate(ids) if id_ not in to_tail]
        # In chunks, so that queries wait for one chunk, never a whole journal read.
        for start in range(0, len(into_tail), TAIL_CHUNK):
            self._move(self.tail, ids, vectors, into_tail[start : start + TAIL_CHUNK])
        for start in range(0, len(into_graph), UPSERT_CHUNK):
            self._move(self.overlay, ids, vectors, into_graph[start : start + UPSERT_CHUNK])

    def _move(
        self, into: ExactTail | VectorIndex, ids: list[str], vectors: np.ndarray, rows: list[int]
    ) -> None:
        """ids[rows] into `into`, out of every other part."""
        chunk = [ids[row] for row in rows]
        if self.pause is not None:
            self.pause()
        with self._lock.write():
            # Where they go first: when it refuses the vectors, the others keep their copies.
            into.upsert(chunk, vectors[rows])
            for part in (self.tail, self.overlay, self.base):
                if part is not None and part is not into:
                    part.delete([id_ for id_ in chunk if id_ in part])

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        with self._lock.write():
            removed = self.tail.delete(ids) + self.overlay.delete(ids)
            return removed + (0 if self.base is None else self.base.delete(ids))

    def get_vector(self, id_: str) -> np.ndarray:
        with self._lock.read():
            return self._vector(id_)

    def _vector(self, id_: str) -> np.ndarray:
        if id_ in self.tail:
            return self.tail.get_vector(id_)
        if id_ in self.overlay or self.base is None:
            return self.overlay.get_vector(id_)
        return self.base.get_vector(id_)

    def query(
        self,
        vector: npt.ArrayLike,
        k: int,
        exclude: Iterable[str] = (),
        allow: set[str] | None = None,
    ) -> Hits:
        """The k best of the parts' k best (equal scores by id)."""
        with self._lock.read():
            return self._query(vector, k, set(exclude), allow)

    def query_like(
        self, id_: str, k: int, exclude: Iterable[str] = (), allow: set[str] | None = None
    ) -> Hits:
        with self._lock.read():
            return self._query(self._vector(id_), k, set(exclude), allow)

    def _query(
        self, vector: npt.ArrayLike, k: int, exclude: set[str], allow: set[str] | None
    ) -> Hits:
        hits: Hits = []
        if len(self.tail):
            hits += self.tail.query(vector, k, exclude, allow, ties_max=TIES_MAX)
        for graph in (self.overlay, self.base):
            if graph is not None and len(graph):
                hits += _with_ties(graph, vector, k, exclude, allow)
        # Equal scores (the same image posted twice) are ordered by id, so that which of them
        # make the k does not depend on the graph each lives in, i.e. on when the replica last
        # loaded a snapshot: before and after a rebase or a restart the answer is the same.
        # (An equal vector in the tail scores a few 1e-8 from a graph's: ties are within
        # SCORE_TIE.)
        hits.sort(key=lambda hit: (-hit[1], hit[0]))
        return _ties_by_id(hits)[:k]


def _ties_by_id(hits: Hits) -> Hits:
    """hits (best first) with each run of scores within SCORE_TIE of the run's first ordered by
    id: the tail and the graphs score an equal vector a few 1e-8 apart."""
    ordered: Hits = []
    start = 0
    while start < len(hits):
        end = start + 1
        while end < len(hits) and hits[start][1] - hits[end][1] <= SCORE_TIE:
            end += 1
        ordered += sorted(hits[start:end], key=lambda hit: hit[0])
        start = end
    return ordered


def _with_ties(
    graph: VectorIndex,
    vector: npt.ArrayLike,
    k: int,
    exclude: set[str],
    allow: set[str] | None,
) -> Hits:
    """graph's k best, and those beyond that score the same as the k-th (up to TIES_MAX);
    one more is asked for to see whether the one after the k-th ties with it."""
    want = k + 1
    while True:
        hits = graph.query(vector, want, exclude=exclude, allow=allow)
        if len(hits) < want or hits[-1][1] < hits[k - 1][1] - SCORE_TIE or want >= k + TIES_MAX:
            return hits
        want = min(2 * want, k + TIES_MAX)
