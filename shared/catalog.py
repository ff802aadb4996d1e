"""The searchable catalog: a VectorIndex plus each product's metadata, built from the journal."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from shared.index import Projection, VectorIndex, unusable_reason
from shared.journal import START, JournalEntry
from shared.layered import LayeredIndex
from shared.model_id import EMBEDDING_DIM
from shared.settings import Settings
from shared.snapshots import Loaded, PendingSnapshot, Snapshot, SnapshotStore

log = logging.getLogger(__name__)
Hit = dict[str, Any]


class Catalog:
    """Vectors and metadata at one journal position; snapshot + later entries = the index."""

    def __init__(
        self,
        settings: Settings,
        index: VectorIndex | None = None,
        layered: bool = False,
        pause: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        self._pause = pause  # a layered index's, before each chunk of changes
        # An API replica's: changes go to a small graph over the snapshot's (shared.layered).
        # Not in the reduced-memory mode, nor over a snapshot projected by it (the index's
        # space wins over the settings', see _check_dims): the replica builds those whole.
        self.layered = (
            layered and settings.index_dims == 0 and (index is None or index.projection is None)
        )
        self.index: VectorIndex | LayeredIndex | None = index
        if self.layered and index is not None:
            self.index = LayeredIndex(settings, index, index.dim, index.model_id, pause)
        self.position = START if index is None else (index.journal_position or START)
        # The journal number of the entry at position (None: unknown, before numbering).
        self.seq: int | None = None if index is None else index.extra.get("seq")
        self.metadata: dict[str, dict[str, Any]] = {}
        # field -> value -> ids: filters, and the values a filter menu offers.
        self._by_field: dict[str, dict[str, set[str]]] = {}
        self._order: list[str] | None = None  # every id in browse order, rebuilt when ids change
        self._lock = threading.Lock()
        if index is not None:
            for product_id, meta in index.extra.get("metadata", {}).items():
                self._set_metadata(product_id, meta)
            self._check_dims(index)

    @classmethod
    def restore(
        cls,
        settings: Settings,
        store: SnapshotStore,
        layered: bool = False,
        pause: Callable[[], object] | None = None,
        short_reads: bool = False,
    ) -> tuple[Catalog, Loaded]:
        """The catalog of the newest snapshot that loads (empty when none does), and how the
        snapshots fared: the caller applies the journal after catalog.position (short_reads:
        see VectorIndex.load)."""
        loaded = store.load_newest(ef_search=settings.hnsw_ef_search, short_reads=short_reads)
        return cls(settings, loaded.index, layered, pause), loaded

    @property
    def pause(self) -> Callable[[], object] | None:
        """Called before each chunk of a layered index's changes (a replica's: a lull in the
        queries); None for a catalog no query reads yet (a rebase catching up)."""
        return self._pause

    @pause.setter
    def pause(self, pause: Callable[[], object] | None) -> None:
        self._pause = pause
        if isinstance(self.index, LayeredIndex):
            self.index.pause = pause

    @property
    def base_position(self) -> str | None:
        """A replica's: the position of the snapshot its small graph lies over."""
        return self.index.base_position if isinstance(self.index, LayeredIndex) else None

    @property
    def overlay_items(self) -> int:
        """A replica's: items the journal changed since its snapshot (exact tail, small graph)."""
        return self.index.since_base if isinstance(self.index, LayeredIndex) else 0

    @property
    def exact_room(self) -> int | None:
        """A replica's: how many more new items its exact tail takes (None: not layered yet)."""
        return self.index.tail.room if isinstance(self.index, LayeredIndex) else None

    @property
    def model_id(self) -> str | None:
        return None if self.index is None else self.index.model_id

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)

    def __contains__(self, product_id: object) -> bool:
        return self.index is not None and product_id in self.index

    def apply(self, entries: Iterable[JournalEntry]) -> int:
        """Apply journal entries in order (upserts in one batch); returns how many applied.

        The position moves only once the batch is in the index, so a reader that sees the
        position also sees its vectors.
        """
        if self._fit_pending():
            return self._apply_until_fit(list(entries))
        return self._apply_batch(entries)

    def _apply_batch(self, entries: Iterable[JournalEntry]) -> int:
        pending: dict[str, JournalEntry] = {}
        applied = 0
        position, seq = self.position, self.seq
        for entry in entries:
            position, seq = entry.position, entry.seq if entry.seq is not None else seq
            if entry.op == "delete":
                pending.pop(entry.product_id, None)
                self._delete(entry.product_id)
            elif self._accepts(entry):
                pending[entry.product_id] = entry
            else:
                continue
            applied += 1
        if pending:
            self._upsert(list(pending.values()))
        self.position, self.seq = position, seq
        if self.index is not None:
            self.index.journal_position = position
        return applied

    # The reduced-memory mode (settings.index_dims > 0): the index stays full-dimensional until
    # it first holds fit_items items, then is projected through a PCA fitted on exactly those.
    # That moment is a journal entry, whatever the batches it is read in, so the writer and
    # every replica fit on the same vectors; the projection then travels in every snapshot.

    @property
    def fit_items(self) -> int:
        """How many items the projection is fitted on (at least its dims)."""
        return max(self.settings.index_fit_items, self.settings.index_dims)

    def _fit_pending(self) -> bool:
        if self.settings.index_dims == 0:
            return False
        if self.index is None:
            return True
        return self.index.projection is None and len(self.index) < self.fit_items

    def _apply_until_fit(self, entries: list[JournalEntry]) -> int:
        """Apply in journal order until the index holds fit_items items, fit and project it
        there, then apply the rest as one batch."""
        batch: dict[str, JournalEntry] = {}
        new = 0  # ids in batch the index lacks
        applied = 0
        for done, entry in enumerate(entries, start=1):
            if entry.op == "delete":
                self._flush(batch)
                batch, new = {}, 0
                self._delete(entry.product_id)
                applied += 1
            elif self._accepts(entry):
                assert self.index is not None
                if entry.product_id not in batch and entry.product_id not in self.index:
                    new += 1
                batch[entry.product_id] = entry
                applied += 1
            if self.index is not None and len(self.index) + new >= self.fit_items:
                self._flush(batch)
                self._advance(entries[done - 1])
                self._fit()
                return applied + self._apply_batch(entries[done:])
        self._flush(batch)
        if entries:
            self._advance(entries[-1])
        return applied

    def _flush(self, batch: dict[str, JournalEntry]) -> None:
        if batch:
            self._upsert(list(batch.values()))

    def _advance(self, entry: JournalEntry) -> None:
        self.position = entry.position
        if entry.seq is not None:
            self.seq = entry.seq
        if self.index is not None:
            self.index.journal_position = self.position

    def _fit(self) -> None:
        """Fit the projection on every item of the index (sorted by id: the same sample in the
        same order in every process) and project the index through it."""
        assert isinstance(self.index, VectorIndex)  # never layered: see __init__
        started = time.perf_counter()
        ids = sorted(self.index.ids())
        projection = Projection.fit(self.index.get_vectors(ids), self.settings.index_dims)
        dropped = self.index.project(projection)
        with self._lock:
            for product_id in dropped:
                self._drop_metadata(product_id)
        if dropped:
            log.error(
                "%d items project to zero and were dropped from the index: %s",
                len(dropped), ", ".join(dropped[:10]),
            )  # fmt: skip
        log.info(
            "index projected to %d dims (PCA on %d items, %.1f%% of their energy) in %.1fs",
            projection.dims, projection.fitted_on, 100 * projection.explained,
            time.perf_counter() - started,
        )  # fmt: skip

    def _check_dims(self, index: VectorIndex) -> None:
        """Say when the index's space is not the one settings ask for: the index's wins, so
        that vectors of two spaces never mix; changing it takes a new index."""
        wanted = self.settings.index_dims
        if index.projection is not None and index.projection.dims != wanted:
            log.warning(
                "the index is projected to %d dims, LOOKALIKE_INDEX_DIMS is %d: the index's "
                "projection is kept (a new one takes a new index, i.e. a new data directory "
                "and journal)", index.projection.dims, wanted,
            )  # fmt: skip
        elif index.projection is None and wanted and len(index) >= self.fit_items:
            log.warning(
                "LOOKALIKE_INDEX_DIMS is %d but the index holds %d full-dimensional items "
                "already: it stays full-dimensional (the projection is fitted when a new index "
                "first reaches %d items)", wanted, len(index), self.fit_items,
            )  # fmt: skip

    def _accepts(self, entry: JournalEntry) -> bool:
        if self.index is None and self.layered:
            self.index = LayeredIndex(
                self.settings, None, EMBEDDING_DIM, entry.model_id, self._pause
            )
        elif self.index is None:
            self.index = VectorIndex.from_settings(self.settings, EMBEDDING_DIM, entry.model_id)
        if entry.model_id != self.index.model_id:
            log.error(
                "journal entry %s for %s is from model %s, the index from %s: skipped",
                entry.position, entry.product_id, entry.model_id, self.index.model_id,
            )  # fmt: skip
            return False
        reason = unusable_reason(entry.vector) if entry.vector is not None else "has no vector"
        if reason is not None:
            log.error(
                "journal entry %s for %s %s: skipped", entry.position, entry.product_id, reason
            )
            return False
        return True

    def _upsert(self, entries: list[JournalEntry]) -> None:
        assert self.index is not None
        vectors = np.stack([entry.vector for entry in entries])  # type: ignore[misc]
        if self.index.projection is not None:
            # Checked for the whole batch at once: one product per vector costs far more.
            bad = self.index.unprojectable(vectors)
            for row in bad:
                log.error(
                    "journal entry %s for %s projects to zero: skipped",
                    entries[row].position, entries[row].product_id,
                )  # fmt: skip
            if bad:
                keep = sorted(set(range(len(entries))) - set(bad))
                entries, vectors = [entries[row] for row in keep], vectors[keep]
                if not entries:
                    return
        self.index.upsert([entry.product_id for entry in entries], vectors)
        with self._lock:
            for entry in entries:
                self._drop_metadata(entry.product_id)
                self._set_metadata(entry.product_id, entry.metadata)

    def _delete(self, product_id: str) -> None:
        if self.index is not None:
            self.index.delete([product_id])
        with self._lock:
            self._drop_metadata(product_id)

    def _set_metadata(self, product_id: str, meta: dict[str, Any]) -> None:
        self.metadata[product_id] = meta
        self._order = None
        for key, value in meta.items():
            self._by_field.setdefault(key, {}).setdefault(str(value), set()).add(product_id)

    def _drop_metadata(self, product_id: str) -> None:
        self._order = None
        for key, value in self.metadata.pop(product_id, {}).items():
            self._by_field.get(key, {}).get(str(value), set()).discard(product_id)

    def matching(self, filters: Mapping[str, str]) -> set[str] | None:
        """Ids whose metadata equals every filter value; None when there are no filters."""
        if not filters:
            return None
        with self._lock:
            sets = [self._by_field.get(key, {}).get(value, set()) for key, value in filters.items()]
            return set.intersection(*sets)

    def field_values(self, key: str) -> list[str]:
        """The distinct values of a metadata field among indexed products (for filter menus)."""
        with self._lock:
            return sorted(value for value, ids in self._by_field.get(key, {}).items() if ids)

    def browse(self, filters: Mapping[str, str], start: int, count: int) -> tuple[list[Hit], int]:
        """A page of the indexed catalog in id order (numbers by value), and how many match."""
        allow = self.matching(filters)
        with self._lock:
            if self._order is None:
                self._order = sorted(self.metadata, key=_id_order)
            if allow is None:
                ordered = self._order
            elif len(allow) * 8 < len(self._order):  # few: sorting them is cheaper than a scan
                ordered = sorted(allow, key=_id_order)
            else:
                ordered = [i for i in self._order if i in allow]
            page = [
                {"product_id": i, "metadata": self.metadata[i]} for i in ordered[start:][:count]
            ]
        return page, len(ordered)

    def similar(self, product_id: str, k: int, filters: Mapping[str, str]) -> list[Hit]:
        """The k nearest other products to an indexed one (KeyError when it is not indexed)."""
        if self.index is None or product_id not in self.index:
            raise KeyError(product_id)
        allow = self.matching(filters)
        if allow is not None and not allow:
            return []
        hits = self.index.query_like(product_id, k, exclude={product_id}, allow=allow)
        return self._results(hits)

    def search(
        self,
        vector: np.ndarray,
        k: int,
        filters: Mapping[str, str],
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        if self.index is None or len(self.index) == 0:
            return []
        allow = self.matching(filters)
        if allow is not None and not allow:
            return []
        hits = self.index.query(vector, k, exclude=set(exclude), allow=allow)
        return self._results(hits)

    def _results(self, hits: list[tuple[str, float]]) -> list[Hit]:
        return [
            {"product_id": hit, "score": round(score, 6), "metadata": self.metadata.get(hit, {})}
            for hit, score in hits
        ]

    def save(self, store: SnapshotStore) -> Snapshot | None:
        """Snapshot vectors and metadata together at the current journal position."""
        pending = self.begin_save(store, fork=False)
        return None if pending is None else store.commit(pending)

    def begin_save(self, store: SnapshotStore, fork: bool = True) -> PendingSnapshot | None:
        """Start a snapshot of the catalog as it is now (see VectorIndex.begin_save); the
        store's commit() publishes it."""
        if self.index is None:
            return None
        assert isinstance(self.index, VectorIndex), "a replica's layered index is not saved"
        with self._lock:
            metadata = {pid: dict(meta) for pid, meta in self.metadata.items()}
        extra = {"metadata": metadata, "seq": self.seq}
        return store.begin(self.index, self.position, extra, fork)


def _id_order(product_id: str) -> tuple[int, int, str]:
    """Numeric ids first and by value (9 before 10), then the others as text."""
    if product_id.isdecimal() and product_id.isascii():
        return (0, int(product_id), product_id)
    return (1, 0, product_id)
