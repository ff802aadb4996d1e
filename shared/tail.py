"""The newest vectors of an API replica, searched exactly instead of through a graph.

Adding a vector costs a copy, not a graph insert: while the writer's snapshots keep coming, a
replica following a bulk import holds what they lack here and builds no graph of its own
(shared.layered, api/replica.py). A query scans every row, so the tail is kept small
(LOOKALIKE_REPLICA_EXACT_ITEMS, 1,024): 8 KiB a row at 2048-d, 8 MiB in all (a query over 1,024
rows takes 0.4 ms p50, over 4,096 1.3 ms, on one BLAS thread: bench/tail_scan.py).
Rows are stored with hnswlib's own bits (shared.cosine.stored_form), so a query made from one is
the graph's query, but summed as numpy does: an equal vector scores within SCORE_TIE of a graph's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from shared.cosine import exact_scores, stored_form, unit
from shared.index import SCORE_TIE, Hits, Vectors, checked_query, checked_vectors

# A BLAS product's score may differ from exact_scores in the last bits: rows within this of
# the k-th are scored exactly before the k are chosen.
NEAR = 1e-5


class ExactTail:
    """Up to `capacity` unit vectors keyed by string id, scored exactly by cosine similarity."""

    def __init__(self, dim: int, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be at least 0, got {capacity}")
        self.dim = dim
        self.capacity = capacity
        self._vectors = np.empty((capacity, dim), dtype=np.float32)
        self._ids: list[str] = []  # row -> id
        self._rows: dict[str, int] = {}  # id -> row

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._rows

    @property
    def room(self) -> int:
        """How many more new ids it takes."""
        return self.capacity - len(self._ids)

    def ids(self) -> list[str]:
        return list(self._ids)

    def check(self, ids: Sequence[str], vectors: npt.ArrayLike) -> Vectors:
        """vectors as rows for ids, or the error an index would raise for them."""
        return checked_vectors(list(ids), vectors, self.dim)

    def upsert(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """Store ids' vectors at unit length; of duplicate ids the last wins. Refused whole
        (ValueError) when the new ids do not fit."""
        data = self.check(ids, vectors)
        rows = {id_: row for row, id_ in enumerate(ids)}
        new = [id_ for id_ in rows if id_ not in self._rows]
        if len(new) > self.room:
            raise ValueError(f"{len(new)} new ids do not fit: room for {self.room}")
        for id_ in new:
            self._rows[id_] = len(self._ids)
            self._ids.append(id_)
        at = np.fromiter((self._rows[id_] for id_ in rows), dtype=np.intp, count=len(rows))
        self._vectors[at] = stored_form(data[list(rows.values())])

    def delete(self, ids: Iterable[str]) -> int:
        """Remove ids (unknown ones are ignored); the last row moves into each hole."""
        removed = 0
        for id_ in dict.fromkeys(ids):
            row = self._rows.pop(id_, None)
            if row is None:
                continue
            last = self._ids.pop()
            if last != id_:
                self._ids[row], self._rows[last] = last, row
                self._vectors[row] = self._vectors[len(self._ids)]
            removed += 1
        return removed

    def get_vector(self, id_: str) -> Vectors:
        """The stored (unit) vector of id_ (KeyError when absent)."""
        return self._vectors[self._rows[id_]].copy()

    def _eligible(self, n: int, exclude: set[str] | None, allow: set[str] | None) -> np.ndarray:
        """The rows a query may return: allowed, not excluded (a query for a product's
        neighbours excludes the product, so this must not cost a pass over every id)."""
        eligible = np.ones(n, dtype=bool)
        if allow is not None:
            eligible[:] = False
            if len(allow) < n:
                held = [self._rows[id_] for id_ in allow if id_ in self._rows]
            else:
                held = [row for row, id_ in enumerate(self._ids) if id_ in allow]
            eligible[np.asarray(held, dtype=np.intp)] = True
        if exclude:
            held = [self._rows[id_] for id_ in exclude if id_ in self._rows]
            eligible[np.asarray(held, dtype=np.intp)] = False
        return np.flatnonzero(eligible)

    def query(
        self,
        vector: npt.ArrayLike,
        k: int,
        exclude: set[str] | None = None,
        allow: set[str] | None = None,
        ties_max: int = 0,
    ) -> Hits:
        """The k best (id, cosine similarity), best first, and up to ties_max more that score
        the same as the k-th (within SCORE_TIE)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query = checked_query(vector, self.dim)
        n = len(self._ids)
        if n == 0:
            return []
        query = unit(query)
        rough = self._vectors[:n] @ query  # the candidates by a fast product (no copy)
        rows = self._eligible(n, exclude, allow)
        if len(rows) == 0:
            return []
        if len(rows) < n:
            rough = rough[rows]
        if len(rows) > k:
            kth = np.partition(rough, len(rough) - k)[len(rough) - k]
            rows = rows[rough >= kth - NEAR]
        # Then scored exactly (exact_scores): the same bits whatever rows are scored with it.
        scores = exact_scores(query, self._vectors[rows])
        order = np.argsort(-scores, kind="stable")
        if len(order) > k:  # the k, and those that score the same as the k-th
            tied = scores[order[: k + ties_max]] >= scores[order[k - 1]] - SCORE_TIE
            order = order[: k + ties_max][tied]
        # As hnswlib makes a score (1 - its float32 distance), to be as close to its as can be.
        return [(self._ids[int(rows[i])], 1.0 - float(np.float32(1) - scores[i])) for i in order]
