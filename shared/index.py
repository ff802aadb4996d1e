"""The vector index: HNSW (hnswlib, cosine) keyed by product id, thread-safe, snapshottable."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hnswlib
import numpy as np
import numpy.typing as npt

from shared.errors import (
    DimensionMismatch,
    InvalidVector,
    ModelMismatch,
    SnapshotError,
)
from shared.rwlock import RWLock

if TYPE_CHECKING:
    from shared.settings import Settings

SPACE = "cosine"
FORMAT_VERSION = 1
INDEX_FILE = "hnsw.bin"
# Allow-lists up to this size (or fraction of the index) are scored exactly: a filtered graph
# walk must pass through roughly 1/selectivity disallowed nodes per hit, so below this an
# exact scan is both cheaper and never misses.
BRUTE_FORCE_MAX_ITEMS = 2048
BRUTE_FORCE_MAX_FRACTION = 0.05
SCAN_CHUNK = 4096  # vectors fetched per step of an exact scan, to bound its memory

Vectors = npt.NDArray[np.float32]
Hits = list[tuple[str, float]]


class VectorIndex:
    """HNSW over vectors keyed by string id; queries run shared, every change runs exclusive."""

    def __init__(
        self,
        dim: int,
        model_id: str,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        capacity: int = 1024,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        index = hnswlib.Index(space=SPACE, dim=dim)
        index.init_index(
            max_elements=max(1, capacity),
            M=m,
            ef_construction=ef_construction,
            allow_replace_deleted=True,
        )
        self._attach(index, model_id, ef_search, {}, 0, None)

    def _attach(
        self,
        index: hnswlib.Index,
        model_id: str,
        ef_search: int,
        labels: dict[str, int],
        next_label: int,
        journal_position: str | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Set up the state around an initialised or loaded hnswlib index."""
        self._index = index
        self.extra: dict[str, Any] = extra or {}  # caller's data saved with the snapshot
        self.dim: int = index.dim
        self.model_id = model_id
        self.journal_position = journal_position
        self._labels = labels
        self._ids = {label: id_ for id_, label in labels.items()}
        self._next_label = next_label
        self._vacant = index.element_count - len(labels)  # deleted slots hnswlib can reuse
        self._ef_search = ef_search
        index.set_ef(ef_search)
        self._lock = RWLock()
        self._save_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, dim: int, model_id: str) -> VectorIndex:
        """An empty index with the HNSW parameters from settings."""
        return cls(
            dim,
            model_id,
            m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            ef_search=settings.hnsw_ef_search,
        )

    @property
    def m(self) -> int:
        """HNSW graph degree M."""
        return int(self._index.M)

    @property
    def ef_construction(self) -> int:
        """HNSW build beam width."""
        return int(self._index.ef_construction)

    @property
    def ef_search(self) -> int:
        """HNSW query beam width (a query for more than ef results widens it to that count)."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        with self._lock.write():
            self._index.set_ef(value)
            self._ef_search = value

    @property
    def capacity(self) -> int:
        """Slots allocated in the HNSW arrays; grows geometrically on demand."""
        return int(self._index.max_elements)

    @property
    def slots_used(self) -> int:
        """Slots holding an item, live or deleted-and-reusable."""
        return int(self._index.element_count)

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._labels

    def ids(self) -> list[str]:
        """The ids in the index, in no particular order."""
        with self._lock.read():
            return list(self._labels)

    def get_vector(self, id_: str) -> Vectors:
        """The vector stored for id_, at unit length (the cosine space keeps only direction)."""
        with self._lock.read():
            label = self._labels.get(id_)
            if label is None:
                raise KeyError(id_)
            return np.asarray(self._index.get_items([label])[0], dtype=np.float32)

    # Changes.

    def upsert(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """Insert new ids and replace the vectors of known ones; of duplicate ids the last wins."""
        ids = _as_id_list(ids)
        data = self._check_vectors(ids, vectors)
        rows = {id_: row for row, id_ in enumerate(ids)}
        with self._lock.write():
            known = [id_ for id_ in rows if id_ in self._labels]
            new = [id_ for id_ in rows if id_ not in self._labels]
            if known:
                # replace_deleted=False: with it, hnswlib would move a known label into a vacant
                # slot and leave its old slot live under the same label, duplicating the item.
                self._index.add_items(
                    data[[rows[id_] for id_ in known]],
                    np.array([self._labels[id_] for id_ in known], dtype=np.uint64),
                    num_threads=-1,
                    replace_deleted=False,
                )
            if new:
                self._insert(new, data[[rows[id_] for id_ in new]])

    def _insert(self, ids: list[str], data: Vectors) -> None:
        """Add ids never seen before under fresh labels, reusing deleted slots first."""
        needed = self._index.element_count + max(0, len(ids) - self._vacant)
        if needed > self._index.max_elements:
            self._index.resize_index(max(needed, 2 * self._index.max_elements))
        first = self._next_label
        # Labels are never reused, even when the add below fails part-way.
        self._next_label += len(ids)
        labels = np.arange(first, first + len(ids), dtype=np.uint64)
        self._index.add_items(data, labels, num_threads=-1, replace_deleted=True)
        self._vacant = max(0, self._vacant - len(ids))
        for id_, label in zip(ids, labels.tolist(), strict=True):
            self._labels[id_] = label
            self._ids[label] = id_

    def delete(self, ids: Iterable[str]) -> int:
        """Remove ids; unknown ones are ignored. Returns how many were removed."""
        removed = 0
        with self._lock.write():
            for id_ in dict.fromkeys(_as_id_list(ids)):
                label = self._labels.pop(id_, None)
                if label is None:
                    continue
                self._index.mark_deleted(label)
                del self._ids[label]
                self._vacant += 1
                removed += 1
        return removed

    def _check_vectors(self, ids: list[str], vectors: npt.ArrayLike) -> Vectors:
        """The vectors as a C-contiguous (n, dim) float32 array, or a clear error."""
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        if data.ndim != 2 or data.shape[1] != self.dim:
            raise DimensionMismatch(
                f"index has dimension {self.dim}, got vectors of shape {data.shape}"
            )
        if data.shape[0] != len(ids):
            raise ValueError(f"got {len(ids)} ids but {data.shape[0]} vectors")
        bad = _first_unusable(data)
        if bad is not None:
            row, reason = bad
            raise InvalidVector(f"vector for id {ids[row]!r} {reason}")
        return data

    # Queries.

    def query(
        self,
        vector: npt.ArrayLike,
        k: int,
        exclude: Collection[str] | None = None,
        allow: Collection[str] | None = None,
    ) -> Hits:
        """Up to k (id, cosine similarity) pairs, best first, skipping excluded ids.

        With allow, only those ids are candidates (a metadata filter's result).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query = self._check_query(vector)
        with self._lock.read():
            skip = self._labels_of(exclude or ())
            if allow is not None:
                return self._query_allowed(query, k, self._labels_of(allow) - skip)
            return self._query_graph(query, k, skip)

    def _check_query(self, vector: npt.ArrayLike) -> Vectors:
        query = np.ascontiguousarray(vector, dtype=np.float32)
        if query.shape != (self.dim,):
            raise DimensionMismatch(
                f"index has dimension {self.dim}, got a query vector of shape {query.shape}"
            )
        bad = _first_unusable(query[np.newaxis, :])
        if bad is not None:
            raise InvalidVector(f"query vector {bad[1]}")
        return query

    def _labels_of(self, ids: Iterable[str]) -> set[int]:
        labels = self._labels
        return {labels[id_] for id_ in _as_id_list(ids) if id_ in labels}

    def _query_graph(self, query: Vectors, k: int, skip: set[int]) -> Hits:
        n = min(k + len(skip), len(self._labels))
        if n == 0:
            return []
        # hnswlib searches with max(ef, n), which is the ef = max(ef_search, k + excluded)
        # we want; setting ef per query instead would race between concurrent queries.
        try:
            labels, distances = self._index.knn_query(query, k=n, num_threads=1)
        except RuntimeError:
            # Fewer than n live items reachable (a graph thinned by deletions): scan exactly.
            return self._exact(query, k, [lb for lb in self._ids if lb not in skip])
        return self._hits(labels[0], distances[0], k, skip)

    def _query_allowed(self, query: Vectors, k: int, allowed: set[int]) -> Hits:
        if not allowed:
            return []
        limit = max(BRUTE_FORCE_MAX_ITEMS, BRUTE_FORCE_MAX_FRACTION * len(self._labels))
        if len(allowed) <= limit:
            return self._exact(query, k, list(allowed))
        try:
            labels, distances = self._index.knn_query(
                query, k=min(k, len(allowed)), num_threads=1, filter=allowed.__contains__
            )
        except RuntimeError:
            return self._exact(query, k, list(allowed))
        return self._hits(labels[0], distances[0], k, set())

    def _hits(self, labels: npt.NDArray[Any], distances: Vectors, k: int, skip: set[int]) -> Hits:
        hits: Hits = []
        for label, distance in zip(labels.tolist(), distances.tolist(), strict=True):
            id_ = self._ids.get(label)
            # None: a label an add that failed part-way left in the graph but not in our map.
            if id_ is None or label in skip:
                continue
            hits.append((id_, 1.0 - distance))
            if len(hits) == k:
                break
        return hits

    def _exact(self, query: Vectors, k: int, labels: list[int]) -> Hits:
        """Exact top k among labels, fetched in chunks so memory stays bounded."""
        unit = query / np.linalg.norm(query)
        best_labels = np.empty(0, dtype=np.uint64)
        best_scores = np.empty(0, dtype=np.float32)
        for start in range(0, len(labels), SCAN_CHUNK):
            chunk = np.asarray(labels[start : start + SCAN_CHUNK], dtype=np.uint64)
            # Stored vectors are unit length already: the cosine space normalises on add.
            scores = self._index.get_items(chunk) @ unit
            best_labels = np.concatenate([best_labels, chunk])
            best_scores = np.concatenate([best_scores, scores])
            if len(best_scores) > k:
                top = np.argpartition(-best_scores, k - 1)[:k]
                best_labels, best_scores = best_labels[top], best_scores[top]
        order = np.argsort(-best_scores, kind="stable")
        return [(self._ids[int(best_labels[i])], float(best_scores[i])) for i in order]

    # Persistence.

    def save(
        self,
        folder: Path,
        journal_position: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write the index file into folder, durably, and return its manifest (not written:
        committing the snapshot is the caller's, see shared.snapshots)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        position = self.journal_position if journal_position is None else journal_position
        with self._save_lock:
            # Shared is enough: writing the file only reads the graph, so queries go on while
            # changes wait.
            with self._lock.read():
                self._index.save_index(str(folder / INDEX_FILE))
                manifest = self._manifest(position)
            manifest["extra"] = self.extra if extra is None else extra
            manifest.update(_seal_file(folder / INDEX_FILE))
            self.journal_position = position
            self.extra = manifest["extra"]
        return manifest

    def _manifest(self, journal_position: str | None) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model_id": self.model_id,
            "dim": self.dim,
            "count": len(self._labels),
            "space": SPACE,
            "M": self.m,
            "ef_construction": self.ef_construction,
            "max_elements": self.capacity,
            "next_label": self._next_label,
            "labels": dict(self._labels),
            "journal_position": journal_position,
            "created_at": datetime.now(UTC).isoformat(),
        }

    @classmethod
    def load(
        cls,
        folder: Path,
        manifest: dict[str, Any],
        model_id: str | None = None,
        ef_search: int = 64,
    ) -> VectorIndex:
        """Open the index file of a snapshot after checking it is whole and from model_id."""
        try:
            parsed = _parse_manifest(manifest)
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"snapshot manifest in {folder} is invalid: {exc!r}") from exc
        if model_id is not None and parsed.model_id != model_id:
            raise ModelMismatch(
                f"snapshot was built with model {parsed.model_id}, this process uses {model_id}"
            )
        path = Path(folder) / parsed.index_file
        verify_file(path, parsed.index_bytes, parsed.index_sha256)
        index = hnswlib.Index(space=SPACE, dim=parsed.dim)
        try:
            index.load_index(
                str(path), max_elements=parsed.max_elements, allow_replace_deleted=True
            )
        except RuntimeError as exc:
            raise SnapshotError(f"snapshot index file {path} cannot be loaded: {exc}") from exc
        if index.element_count < len(parsed.labels):
            raise SnapshotError(f"snapshot index file {path} holds fewer items than its manifest")
        opened = cls.__new__(cls)
        opened._attach(
            index,
            parsed.model_id,
            ef_search,
            dict(parsed.labels),
            parsed.next_label,
            parsed.journal_position,
            parsed.extra,
        )
        return opened


@dataclass(frozen=True)
class _Manifest:
    """The fields of snapshot.json that loading needs, validated."""

    model_id: str
    dim: int
    max_elements: int
    next_label: int
    labels: dict[str, int]
    journal_position: str | None
    index_file: str
    index_bytes: int
    index_sha256: str
    extra: dict[str, Any]


def _parse_manifest(raw: Any) -> _Manifest:
    if raw["format"] != FORMAT_VERSION:
        raise ValueError(f"format {raw['format']} is not supported (expected {FORMAT_VERSION})")
    if raw["space"] != SPACE:
        raise ValueError(f"space {raw['space']!r} is not {SPACE!r}")
    index_file = str(raw["index_file"])
    if index_file != INDEX_FILE:
        raise ValueError(f"index_file {index_file!r} is not {INDEX_FILE!r}")
    labels = {str(id_): int(label) for id_, label in raw["labels"].items()}
    if len(labels) != int(raw["count"]):
        raise ValueError(f"count {raw['count']} does not match {len(labels)} labels")
    position = raw["journal_position"]
    return _Manifest(
        model_id=str(raw["model_id"]),
        dim=int(raw["dim"]),
        max_elements=int(raw["max_elements"]),
        next_label=int(raw["next_label"]),
        labels=labels,
        journal_position=None if position is None else str(position),
        index_file=index_file,
        index_bytes=int(raw["index_bytes"]),
        index_sha256=str(raw["index_sha256"]),
        extra=dict(raw.get("extra") or {}),
    )


def verify_file(path: Path, size: int, sha256: str) -> None:
    """Refuse an index file that is missing, partial or not byte-identical to what was saved."""
    try:
        actual = path.stat().st_size
        if actual != size:
            raise SnapshotError(
                f"snapshot index file {path} is partial or corrupt: {actual} bytes, expected {size}"
            )
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError:
        raise SnapshotError(f"snapshot index file {path} is missing") from None
    if digest != sha256:
        raise SnapshotError(f"snapshot index file {path} is corrupt: sha256 does not match")


def _seal_file(path: Path) -> dict[str, Any]:
    """Make the file durable; return its manifest fields (name, size, SHA-256)."""
    with path.open("r+b") as file:
        os.fsync(file.fileno())
        digest = hashlib.file_digest(file, "sha256").hexdigest()
        size = os.fstat(file.fileno()).st_size
    return {"index_file": path.name, "index_bytes": size, "index_sha256": digest}


def unusable_reason(vector: npt.ArrayLike) -> str | None:
    """Why cosine similarity is undefined for this vector (zero, NaN, inf), or None if usable."""
    bad = _first_unusable(np.asarray(vector, dtype=np.float32).reshape(1, -1))
    return None if bad is None else bad[1]


def _first_unusable(data: Vectors) -> tuple[int, str] | None:
    """The first row cosine similarity is undefined for, with the reason, or None."""
    finite = np.isfinite(data).all(axis=1)
    if not finite.all():
        return int(np.flatnonzero(~finite)[0]), "has NaN or infinite values"
    zero = ~data.any(axis=1)
    if zero.any():
        return int(np.flatnonzero(zero)[0]), "is all zeros: cosine similarity is undefined"
    return None


def _as_id_list(ids: Iterable[str]) -> list[str]:
    """ids as a list, refusing a bare string (which would iterate as characters)."""
    if isinstance(ids, str):
        raise TypeError("ids must be a collection of strings, not a single string")
    return list(ids)
