"""An API replica's index: the writer's graph from a snapshot, plus a small graph of what the
journal changed since.

Every vector the journal brings is inserted into the small graph only, built with a fraction of
the writer's effort (M=8, ef_construction=40 instead of the settings' 16 and 200), and the
snapshot's copy of a changed or deleted product is marked deleted. Queries ask both graphs and
merge. When the writer publishes a newer snapshot the replica loads it and starts a new small
graph (api/replica.py), so the small graph stays a fraction of the catalog and a replica never
repeats the writer's graph building at full cost.

A change touches both graphs (an update moves a product from the snapshot's graph to the small
one), so changes hold this index's lock exclusively and queries hold it shared: a query sees a
product in exactly one of the two graphs, never in both and never in neither.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.index import Hits, VectorIndex
from shared.rwlock import RWLock
from shared.settings import Settings

OVERLAY_M = 8
OVERLAY_EF_CONSTRUCTION = 40
# Following uses one core at most, whatever the host has: the others stay free for queries
# (and, on a host shared with the writer, for its graph building).
OVERLAY_INSERT_THREADS = 1
UPSERT_CHUNK = 1  # ids per write-lock hold: a query waits for at most one insert
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
        self.model_id = model_id
        self.journal_position = None if base is None else base.journal_position
        self.extra: dict[str, Any] = {} if base is None else base.extra
        self.pause = pause  # called before each chunk of changes, outside the lock
        self._lock = RWLock()

    @property
    def base_position(self) -> str | None:
        """The journal position of the snapshot under the overlay."""
        return None if self.base is None else self.base.journal_position

    def __len__(self) -> int:
        with self._lock.read():
            return len(self.overlay) + (0 if self.base is None else len(self.base))

    def __contains__(self, id_: object) -> bool:
        with self._lock.read():
            return id_ in self.overlay or (self.base is not None and id_ in self.base)

    def ids(self) -> list[str]:
        with self._lock.read():
            return [*([] if self.base is None else self.base.ids()), *self.overlay.ids()]

    def upsert(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """Into the overlay; the base's copies of these ids stop being found."""
        ids, vectors = list(ids), np.asarray(vectors)
        # In chunks, so that queries wait for one chunk's inserts, never a whole journal read.
        for start in range(0, len(ids), UPSERT_CHUNK):
            chunk = ids[start : start + UPSERT_CHUNK]
            if self.pause is not None:
                self.pause()
            with self._lock.write():
                # The overlay first: when it refuses the vectors, the base keeps its copies.
                self.overlay.upsert(chunk, vectors[start : start + UPSERT_CHUNK])
                if self.base is not None:
                    self.base.delete([id_ for id_ in chunk if id_ in self.base])

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        with self._lock.write():
            removed = self.overlay.delete(ids)
            return removed + (0 if self.base is None else self.base.delete(ids))

    def get_vector(self, id_: str) -> np.ndarray:
        with self._lock.read():
            return self._vector(id_)

    def _vector(self, id_: str) -> np.ndarray:
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
        """The k best of both graphs' k best (equal scores by id)."""
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
        for graph in (self.overlay, self.base):
            if graph is not None and len(graph):
                hits += _with_ties(graph, vector, k, exclude, allow)
        # Equal scores (the same image posted twice) are ordered by id, so that which of them
        # make the k does not depend on the graph each lives in, i.e. on when the replica last
        # loaded a snapshot: before and after a rebase or a restart the answer is the same.
        hits.sort(key=lambda hit: (-hit[1], hit[0]))
        return hits[:k]


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
        if len(hits) < want or hits[-1][1] < hits[k - 1][1] or want >= k + TIES_MAX:
            return hits
        want = min(2 * want, k + TIES_MAX)
