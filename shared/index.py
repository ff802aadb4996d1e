"""The vector index: HNSW (hnswlib, cosine) keyed by product id, thread-safe, snapshottable."""

from __future__ import annotations

import base64
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
from shared.hnsw_file import open_index, read_checked, verify_file
from shared.rwlock import RWLock

if TYPE_CHECKING:
    from shared.settings import Settings

SPACE = "cosine"
FORMAT_VERSION = 1
# Snapshots of a projected index (reduced-memory mode): older code must refuse them, not load
# a 256-d graph and fail on every 2048-d vector.
PROJECTED_FORMAT_VERSION = 2
INDEX_FILE = "hnsw.bin"
FIT_CHUNK = 4096  # rows of the sample per step of a projection's fit
FETCH_CHUNK = 1024  # vectors read from hnswlib per step when many are read
# Allow-lists up to this size (or fraction of the index) are scored exactly: a filtered graph
# walk must pass through roughly 1/selectivity disallowed nodes per hit, so below this an
# exact scan is both cheaper and never misses.
BRUTE_FORCE_MAX_ITEMS = 2048
BRUTE_FORCE_MAX_FRACTION = 0.05
# Scores this close are equal: hnswlib's sums and exact_scores' (shared.cosine) differ in the last
# bits, so equal vectors held in different parts of a replica's index score a few 1e-8 apart.
SCORE_TIE = 1e-6
SCAN_CHUNK = 4096  # vectors fetched per step of an exact scan, to bound its memory

Vectors = npt.NDArray[np.float32]
Hits = list[tuple[str, float]]


@dataclass(frozen=True, eq=False)
class Projection:
    """The reduced-memory mode's linear map from input vectors (2048-d) to the index's dims.

    Its rows are the top principal directions of a sample of unit vectors, uncentred: scaling a
    vector scales its image, so cosine after projection, like cosine before, ignores length, and
    the dot products of unit vectors (their cosines) are kept as well as any rank-dims map can.
    """

    components: Vectors  # (dims, input_dim) float32, orthonormal rows, best first
    fitted_on: int  # how many vectors the sample held
    explained: float  # share of the sample's energy the dims directions hold

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    @classmethod
    def fit(cls, sample: npt.ArrayLike, dims: int) -> Projection:
        """Fit on sample's rows (normalised first): the same rows in the same order give the
        same projection, bit for bit, on the same CPU and BLAS."""
        rows = np.asarray(sample, dtype=np.float32)
        if rows.ndim != 2 or not 1 <= dims < rows.shape[1] or dims > len(rows):
            raise DimensionMismatch(f"cannot fit a {dims}-d projection on {rows.shape} vectors")
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        top, values = _top_directions(unit, dims)
        # An eigenvector's sign is arbitrary: fix it (largest entry positive), for stability.
        top *= np.where(top[np.arange(dims), np.abs(top).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
        total = float(np.einsum("ij,ij->", unit, unit, dtype=np.float64))
        explained = min(1.0, float(values[:dims].sum()) / total) if total > 0 else 0.0
        return cls(np.ascontiguousarray(top, dtype=np.float32), len(rows), explained)

    def apply(self, vectors: Vectors) -> Vectors:
        """(n, input_dim) vectors to (n, dims), C-contiguous float32."""
        return np.ascontiguousarray(vectors @ self.components.T, dtype=np.float32)

    def manifest(self) -> dict[str, Any]:
        """The projection as manifest fields: inside the manifest, so that every snapshot store
        (a directory, S3) carries it with the index file, and every replica uses this one."""
        raw = np.ascontiguousarray(self.components, dtype="<f4").tobytes()
        return {
            "dims": self.dims,
            "input_dim": self.input_dim,
            "fitted_on": self.fitted_on,
            "explained": self.explained,
            "components": base64.b64encode(raw).decode("ascii"),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }

    @classmethod
    def from_manifest(cls, raw: Any) -> Projection:
        dims, input_dim = int(raw["dims"]), int(raw["input_dim"])
        data = base64.b64decode(raw["components"], validate=True)
        if hashlib.sha256(data).hexdigest() != raw["sha256"]:
            raise ValueError("projection components do not match their sha256")
        if len(data) != dims * input_dim * 4 or not 1 <= dims < input_dim:
            raise ValueError(f"projection holds {len(data)} bytes, not {dims} x {input_dim}")
        components = np.frombuffer(data, dtype="<f4").reshape(dims, input_dim)
        return cls(components.astype(np.float32), int(raw["fitted_on"]), float(raw["explained"]))


class VectorIndex:
    """HNSW over vectors keyed by string id; queries run shared, every change runs exclusive.

    With a projection (reduced-memory mode), vectors given to upsert and query have the
    projection's input dimension and are stored and searched projected.
    """

    insert_threads = -1  # hnswlib threads an insert uses (-1: one per core)

    def __init__(
        self,
        dim: int,
        model_id: str,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        capacity: int = 1024,
        projection: Projection | None = None,
        insert_threads: int = -1,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        if projection is not None and projection.input_dim != dim:
            raise DimensionMismatch(
                f"a projection from {projection.input_dim} dims cannot serve a {dim}-d index"
            )
        stored = dim if projection is None else projection.dims
        index = hnswlib.Index(space=SPACE, dim=stored)
        index.init_index(
            max_elements=max(1, capacity),
            M=m,
            ef_construction=ef_construction,
            allow_replace_deleted=True,
        )
        self._attach(index, model_id, ef_search, {}, 0, None, projection=projection)
        self.insert_threads = insert_threads

    def _attach(
        self,
        index: hnswlib.Index,
        model_id: str,
        ef_search: int,
        labels: dict[str, int],
        next_label: int,
        journal_position: str | None,
        extra: dict[str, Any] | None = None,
        projection: Projection | None = None,
    ) -> None:
        """Set up the state around an initialised or loaded hnswlib index."""
        self._index = index
        self.extra: dict[str, Any] = extra or {}  # caller's data saved with the snapshot
        self.projection = projection
        # The dimension of the vectors callers give; the graph's is stored_dim.
        self.dim: int = index.dim if projection is None else projection.input_dim
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
    def stored_dim(self) -> int:
        """The dimension of the stored vectors: dim, or the projection's dims."""
        return int(self._index.dim)

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
        """The vector stored for id_, at unit length (the cosine space keeps only direction);
        projected, with a projection."""
        with self._lock.read():
            return self._stored(id_)

    def _stored(self, id_: str) -> Vectors:
        label = self._labels.get(id_)
        if label is None:
            raise KeyError(id_)
        return np.asarray(self._index.get_items([label])[0], dtype=np.float32)

    def get_vectors(self, ids: Sequence[str]) -> Vectors:
        """The stored vectors of ids (KeyError for an unknown one), one row each, in order."""
        with self._lock.read():
            labels = [self._labels[id_] for id_ in _as_id_list(ids)]
            out = np.empty((len(labels), self.stored_dim), dtype=np.float32)
            # In steps: hnswlib's get_items holds about 10x its answer's size while it works.
            for start in range(0, len(labels), FETCH_CHUNK):
                out[start : start + FETCH_CHUNK] = self._index.get_items(
                    labels[start : start + FETCH_CHUNK]
                )
            return out

    def project(self, projection: Projection) -> list[str]:
        """Rebuild this full-dimensional index through projection (reduced-memory mode), keeping
        every id and label; the ids dropped because their vector projects to zero (none, for
        vectors like the sample the projection was fitted on). Refused on an index that has a
        projection already, or for another input dimension: vectors of two spaces never mix in
        one graph."""
        if self.projection is not None:
            raise DimensionMismatch(
                f"index is projected to {self.projection.dims} dims already: it is fitted once"
            )
        if projection.input_dim != self.dim:
            raise DimensionMismatch(
                f"a projection from {projection.input_dim} dims cannot serve a {self.dim}-d index"
            )
        with self._lock.write():
            old = self._index
            index = hnswlib.Index(space=SPACE, dim=projection.dims)
            index.init_index(
                max_elements=max(1, len(self._labels), old.max_elements),
                M=int(old.M),
                ef_construction=int(old.ef_construction),
                allow_replace_deleted=True,
            )
            index.set_ef(self._ef_search)
            dropped: list[str] = []
            labels = sorted(self._ids)
            for start in range(0, len(labels), FETCH_CHUNK):
                chunk = np.asarray(labels[start : start + FETCH_CHUNK], dtype=np.uint64)
                data = projection.apply(np.asarray(old.get_items(chunk), dtype=np.float32))
                usable = np.isfinite(data).all(axis=1) & data.any(axis=1)
                for label in chunk[~usable].tolist():
                    dropped.append(self._ids.pop(label))
                    del self._labels[dropped[-1]]
                if usable.any():
                    index.add_items(data[usable], chunk[usable], num_threads=self.insert_threads)
            self._index, self.projection, self._vacant = index, projection, 0
        return dropped

    def unprojectable(self, vectors: npt.ArrayLike) -> list[int]:
        """The rows of usable input vectors whose projection is not (zero): none without one."""
        if self.projection is None:
            return []
        data = self.projection.apply(np.asarray(vectors, dtype=np.float32))
        return np.flatnonzero(~(np.isfinite(data).all(axis=1) & data.any(axis=1))).tolist()

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
                    num_threads=self.insert_threads,
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
        self._index.add_items(data, labels, num_threads=self.insert_threads, replace_deleted=True)
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
        data = checked_vectors(ids, vectors, self.dim)
        if self.projection is None:
            return data
        data = self.projection.apply(data)
        bad = _first_unusable(data)
        if bad is not None:
            row, reason = bad
            raise InvalidVector(f"vector for id {ids[row]!r} {reason} after the projection")
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
            return self._search(query, k, exclude, allow)

    def query_like(
        self,
        id_: str,
        k: int,
        exclude: Collection[str] | None = None,
        allow: Collection[str] | None = None,
    ) -> Hits:
        """As query, for the vector stored for id_ (KeyError when it is not indexed)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        with self._lock.read():
            return self._search(self._stored(id_), k, exclude, allow)

    def _search(
        self,
        query: Vectors,
        k: int,
        exclude: Collection[str] | None,
        allow: Collection[str] | None,
    ) -> Hits:
        """A query already in the stored space; the caller holds the lock shared."""
        skip = self._labels_of(exclude or ())
        if allow is not None:
            return self._query_allowed(query, k, self._labels_of(allow) - skip)
        return self._query_graph(query, k, skip)

    def _check_query(self, vector: npt.ArrayLike) -> Vectors:
        query = checked_query(vector, self.dim)
        if self.projection is None:
            return query
        query = self.projection.apply(query[np.newaxis, :])[0]
        bad = _first_unusable(query[np.newaxis, :])
        if bad is not None:
            raise InvalidVector(f"query vector {bad[1]} after the projection")
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
        return self.begin_save(folder, journal_position, extra, fork=False).finish()

    def begin_save(
        self,
        folder: Path,
        journal_position: str | None = None,
        extra: dict[str, Any] | None = None,
        fork: bool = True,
    ) -> PendingSave:
        """Start writing the index file as the index is now; PendingSave.finish() seals it.

        With fork (where the OS has it), a forked copy of this process writes the file, as
        Redis' BGSAVE does: changes go on at once, and the pages they touch meanwhile are
        copied. Without, it is written here before this returns (hnswlib holds the GIL).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        position = self.journal_position if journal_position is None else journal_position
        path = folder / INDEX_FILE
        with self._save_lock:
            # Shared is enough: writing the file only reads the graph, so queries go on while
            # changes wait.
            with self._lock.read():
                if fork and hasattr(os, "fork"):
                    child: int | None = _write_in_child(self._index, path)
                else:
                    child = None
                    self._index.save_index(str(path))
                manifest = self._manifest(position)
            manifest["extra"] = self.extra if extra is None else extra
            self.journal_position = position
            self.extra = manifest["extra"]
        return PendingSave(path, manifest, child)

    def _manifest(self, journal_position: str | None) -> dict[str, Any]:
        projected = self.projection is not None
        manifest = {
            "format": PROJECTED_FORMAT_VERSION if projected else FORMAT_VERSION,
            "model_id": self.model_id,
            "dim": self.stored_dim,
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
        if self.projection is not None:
            manifest["projection"] = self.projection.manifest()
        return manifest

    @classmethod
    def load(
        cls,
        folder: Path,
        manifest: dict[str, Any],
        model_id: str | None = None,
        ef_search: int = 64,
        short_reads: bool = False,
    ) -> VectorIndex:
        """Open the index file of a snapshot after checking it is whole and from model_id;
        short_reads: in reads that stall no other process on the CPU (shared/hnsw_file.py),
        for a load no request of this process waits on; else with hnswlib's load_index."""
        try:
            parsed = _parse_manifest(manifest)
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"snapshot manifest in {folder} is invalid: {exc!r}") from exc
        if model_id is not None and parsed.model_id != model_id:
            raise ModelMismatch(
                f"snapshot was built with model {parsed.model_id}, this process uses {model_id}"
            )
        path = Path(folder) / parsed.index_file
        try:
            index = (_open_short if short_reads else _open_whole)(path, parsed)
        except (RuntimeError, ValueError) as exc:
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
            projection=parsed.projection,
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
    projection: Projection | None


def _parse_manifest(raw: Any) -> _Manifest:
    projection = None
    if raw["format"] == PROJECTED_FORMAT_VERSION:
        projection = Projection.from_manifest(raw["projection"])
        if projection.dims != int(raw["dim"]):
            raise ValueError(f"projection to {projection.dims} dims for an index of {raw['dim']}")
    elif raw["format"] != FORMAT_VERSION:
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
        projection=projection,
    )


def _top_directions(
    unit: Vectors, dims: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The dims leading right singular vectors of unit's rows (as rows, best first) and the
    energy each holds. From the n x n Gram matrix when there are fewer rows than dimensions
    (a small eigenproblem), else from the d x d one, summed chunk by chunk in float64."""
    n, d = unit.shape
    if n < d:
        values, vectors = np.linalg.eigh((unit @ unit.T).astype(np.float64))
        values, vectors = values[::-1][:dims], vectors[:, ::-1][:, :dims]
        if values[-1] > 1e-9 * values[0]:  # else: rank < dims, see below
            top = (unit.T.astype(np.float64) @ vectors / np.sqrt(values)).T
            return top, values
    gram = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, FIT_CHUNK):
        chunk = unit[start : start + FIT_CHUNK]
        gram += chunk.T @ chunk  # float32 products, summed over chunks in float64
    values, vectors = np.linalg.eigh(gram)  # ascending
    return vectors[:, ::-1][:, :dims].T, values[::-1][:dims]


def _open_short(path: Path, parsed: _Manifest) -> hnswlib.Index:
    content = read_checked(path, parsed.index_bytes, parsed.index_sha256)
    return open_index(content, SPACE, parsed.dim, parsed.max_elements)


def _open_whole(path: Path, parsed: _Manifest) -> hnswlib.Index:
    verify_file(path, parsed.index_bytes, parsed.index_sha256)
    index = hnswlib.Index(space=SPACE, dim=parsed.dim)
    index.load_index(str(path), max_elements=parsed.max_elements, allow_replace_deleted=True)
    return index


@dataclass
class PendingSave:
    """An index file being written (by child, a forked process, if not None)."""

    path: Path
    manifest: dict[str, Any]
    child: int | None = None
    expected_sha256: str | None = None  # a copy's: the file it was copied from

    def wait(self) -> int:
        """Wait for the child, if any; its exit code (0: the file is whole)."""
        if self.child is None:
            return 0
        _, status = os.waitpid(self.child, 0)
        self.child = None
        return os.waitstatus_to_exitcode(status)

    def finish(self) -> dict[str, Any]:
        """Wait for the file, make it durable; the manifest with its size and SHA-256."""
        code = self.wait()
        if code != 0:
            raise SnapshotError(f"writing snapshot index file {self.path} failed ({code})")
        sealed = _seal_file(self.path)
        if self.expected_sha256 not in (None, sealed["index_sha256"]):
            raise SnapshotError(f"snapshot index file {self.path} changed while it was copied")
        self.manifest.update(sealed)
        return self.manifest


def _write_in_child(index: hnswlib.Index, path: Path) -> int:
    """Fork; the child writes the graph as it was at the fork and leaves at once (no Python
    clean-up: nothing of the parent's, such as its sockets or buffered output, is touched).

    Exit status 0 only for a whole file: hnswlib does not check its writes (a full disk)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            index.save_index(str(path))
            code = 0 if os.path.getsize(path) == index.index_file_size() else 2
        finally:
            os._exit(code)
    return pid


def _seal_file(path: Path) -> dict[str, Any]:
    """Make the file durable; return its manifest fields (name, size, SHA-256)."""
    with path.open("r+b") as file:
        os.fsync(file.fileno())
        digest = hashlib.file_digest(file, "sha256").hexdigest()
        size = os.fstat(file.fileno()).st_size
    return {"index_file": path.name, "index_bytes": size, "index_sha256": digest}


def checked_vectors(ids: list[str], vectors: npt.ArrayLike, dim: int) -> Vectors:
    """vectors as a C-contiguous (len(ids), dim) float32 array, or a clear error."""
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    if data.ndim != 2 or data.shape[1] != dim:
        raise DimensionMismatch(f"index has dimension {dim}, got vectors of shape {data.shape}")
    if data.shape[0] != len(ids):
        raise ValueError(f"got {len(ids)} ids but {data.shape[0]} vectors")
    bad = _first_unusable(data)
    if bad is not None:
        row, reason = bad
        raise InvalidVector(f"vector for id {ids[row]!r} {reason}")
    return data


def checked_query(vector: npt.ArrayLike, dim: int) -> Vectors:
    """A query vector as a C-contiguous (dim,) float32 array, or a clear error."""
    query = np.ascontiguousarray(vector, dtype=np.float32)
    if query.shape != (dim,):
        raise DimensionMismatch(
            f"index has dimension {dim}, got a query vector of shape {query.shape}"
        )
    bad = _first_unusable(query[np.newaxis, :])
    if bad is not None:
        raise InvalidVector(f"query vector {bad[1]}")
    return query


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
