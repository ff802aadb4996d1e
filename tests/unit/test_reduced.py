"""The reduced-memory mode (LOOKALIKE_INDEX_DIMS): a PCA projection fitted once, at the same
journal entry in every process, kept in the snapshot, reloaded as it was, never mixed."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from shared.catalog import Catalog
from shared.errors import DimensionMismatch
from shared.index import FORMAT_VERSION, PROJECTED_FORMAT_VERSION, Projection, VectorIndex
from shared.journal import JournalEntry
from shared.settings import Settings
from shared.snapshots import MANIFEST, SnapshotStore

MODEL = "resnet50-test"
DIM = 2048
DIMS = 8
FIT = 40


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Non-negative 2048-d vectors in 4 clusters, varying in a few directions each."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(4, DIM)))
    basis = rng.normal(size=(5, DIM)) * 0.3
    rows = centres[np.arange(n) % 4] + rng.normal(size=(n, 5)) @ basis
    return np.abs(rows).astype(np.float32)


VECTORS = clustered(120)


def upsert(seq: int, product_id: str, vector: np.ndarray) -> JournalEntry:
    return JournalEntry(f"{seq}-0", "upsert", product_id, MODEL, vector, {"n": seq}, seq=seq)


def delete(seq: int, product_id: str) -> JournalEntry:
    return JournalEntry(f"{seq}-0", "delete", product_id, seq=seq)


def journal() -> list[JournalEntry]:
    """120 upserts with deletes and a replacement mixed in, around the fit point."""
    entries: list[JournalEntry] = []
    for i, vector in enumerate(VECTORS):
        entries.append(upsert(len(entries) + 1, f"p{i}", vector))
        if i in (10, 35, 41):
            entries.append(delete(len(entries) + 1, f"p{i - 3}"))
        if i == 38:
            entries.append(upsert(len(entries) + 1, "p2", VECTORS[100] + 0.5))
    return entries


def settings(tmp_path, dims: int = DIMS, fit: int = FIT) -> Settings:
    return Settings(data_dir=tmp_path, index_dims=dims, index_fit_items=fit)


def apply_in_batches(catalog: Catalog, entries: list[JournalEntry], size: int) -> Catalog:
    for start in range(0, len(entries), size):
        catalog.apply(entries[start : start + size])
    return catalog


def components(catalog: Catalog) -> np.ndarray:
    assert catalog.index is not None and catalog.index.projection is not None
    return catalog.index.projection.components


def test_the_index_stays_full_until_it_holds_fit_items_then_is_projected(tmp_path):
    catalog = Catalog(settings(tmp_path))
    entries = [upsert(i + 1, f"p{i}", v) for i, v in enumerate(VECTORS)]
    catalog.apply(entries[: FIT - 1])
    assert catalog.index is not None and catalog.index.projection is None
    assert catalog.index.stored_dim == DIM
    catalog.apply(entries[FIT - 1 : FIT + 5])
    projection = catalog.index.projection
    assert projection is not None and projection.fitted_on == FIT
    assert (catalog.index.dim, catalog.index.stored_dim) == (DIM, DIMS)
    assert len(catalog) == FIT + 5 and catalog.position == f"{FIT + 5}-0"
    catalog.apply(entries[FIT + 5 :])
    assert catalog.index.projection is projection  # fitted once
    assert len(catalog) == len(VECTORS)
    assert catalog.index.get_vector("p3").shape == (DIMS,)


def test_the_fit_does_not_depend_on_how_the_journal_is_read(tmp_path):
    entries = journal()
    whole = Catalog(settings(tmp_path))
    whole.apply(entries)
    for size in (1, 7, 39):
        batched = apply_in_batches(Catalog(settings(tmp_path)), entries, size)
        assert np.array_equal(components(batched), components(whole))
        assert sorted(batched.metadata) == sorted(whole.metadata)


def test_projection_is_kept_in_the_snapshot_and_reloads_with_the_same_results(tmp_path):
    store = SnapshotStore(tmp_path / "index")
    catalog = Catalog(settings(tmp_path))
    catalog.apply(journal())
    snapshot = catalog.save(store)
    assert snapshot is not None
    manifest = json.loads((snapshot.folder / MANIFEST).read_text())
    assert manifest["format"] == PROJECTED_FORMAT_VERSION and manifest["dim"] == DIMS
    assert manifest["projection"]["fitted_on"] == FIT

    reloaded, _ = Catalog.restore(settings(tmp_path), store)
    assert np.array_equal(components(reloaded), components(catalog))
    for product_id in ("p0", "p50", "p119"):
        assert reloaded.similar(product_id, 10, {}) == catalog.similar(product_id, 10, {})
    query = VECTORS[60] * 3.0  # a 2048-d query, projected on the way in
    assert reloaded.search(query, 5, {}) == catalog.search(query, 5, {})
    assert reloaded.search(query, 1, {})[0]["product_id"] == "p60"


def test_a_snapshot_from_before_the_fit_then_the_journal_gives_the_same_projection(tmp_path):
    entries = journal()
    store = SnapshotStore(tmp_path / "index")
    early = Catalog(settings(tmp_path))
    early.apply(entries[:25])
    early.save(store)
    restored, _ = Catalog.restore(settings(tmp_path), store)
    assert restored.index is not None and restored.index.projection is None
    apply_in_batches(restored, entries[25:], 11)

    whole = Catalog(settings(tmp_path))
    whole.apply(entries)
    assert np.array_equal(components(restored), components(whole))


def test_default_mode_never_projects_and_writes_the_old_manifest(tmp_path):
    catalog = Catalog(settings(tmp_path, dims=0))
    catalog.apply(journal())
    assert catalog.index is not None and catalog.index.projection is None
    assert catalog.index.stored_dim == DIM
    snapshot = catalog.save(SnapshotStore(tmp_path / "index"))
    assert snapshot is not None
    manifest = json.loads((snapshot.folder / MANIFEST).read_text())
    assert manifest["format"] == FORMAT_VERSION and "projection" not in manifest


def test_projected_index_refuses_vectors_of_another_dimension(tmp_path):
    catalog = Catalog(settings(tmp_path))
    catalog.apply(journal())
    index = catalog.index
    assert index is not None
    with pytest.raises(DimensionMismatch):
        index.upsert(["x"], np.ones((1, DIMS), dtype=np.float32))  # already projected
    with pytest.raises(DimensionMismatch):
        index.query(np.ones(DIMS, dtype=np.float32), 3)
    with pytest.raises(DimensionMismatch, match="fitted once"):
        index.project(Projection.fit(VECTORS, DIMS))
    assert index.unprojectable(VECTORS[:5]) == []


def test_a_projection_for_another_input_dimension_is_refused():
    projection = Projection.fit(clustered(30)[:, :64], 4)
    with pytest.raises(DimensionMismatch):
        VectorIndex(DIM, MODEL, projection=projection)
    full = VectorIndex(DIM, MODEL)
    with pytest.raises(DimensionMismatch):
        full.project(projection)


def test_settings_asking_other_dims_keep_the_index_projection(tmp_path, caplog):
    store = SnapshotStore(tmp_path / "index")
    catalog = Catalog(settings(tmp_path))
    catalog.apply(journal())
    catalog.save(store)
    for dims in (0, 16):
        with caplog.at_level(logging.WARNING, logger="shared.catalog"):
            reloaded, _ = Catalog.restore(settings(tmp_path, dims=dims), store)
        assert reloaded.index is not None and reloaded.index.stored_dim == DIMS
        assert "projection is kept" in caplog.text
        reloaded.apply([upsert(1000, "late", VECTORS[7])])
        assert reloaded.search(VECTORS[7], 1, {})[0]["product_id"] in {"p7", "late"}


def test_a_manifest_whose_projection_does_not_fit_is_refused(tmp_path):
    store = SnapshotStore(tmp_path / "index")
    catalog = Catalog(settings(tmp_path))
    catalog.apply(journal())
    snapshot = catalog.save(store)
    assert snapshot is not None
    path = snapshot.folder / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["projection"]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    loaded = store.load_newest()
    assert loaded.index is None and "sha256" in loaded.refused[0]


def test_projection_rows_are_orthonormal_and_deterministic():
    first = Projection.fit(VECTORS, DIMS)
    again = Projection.fit(VECTORS.copy(), DIMS)
    assert np.array_equal(first.components, again.components)
    gram = first.components @ first.components.T
    assert np.allclose(gram, np.eye(DIMS), atol=1e-5)
    assert 0.9 < first.explained <= 1.0  # the data vary in a few directions
    restored = Projection.from_manifest(json.loads(json.dumps(first.manifest())))
    assert np.array_equal(restored.components, first.components)


def test_a_perturbed_copy_finds_its_item_first(tmp_path):
    catalog = Catalog(settings(tmp_path))
    catalog.apply([upsert(i + 1, f"p{i}", v) for i, v in enumerate(VECTORS)])
    rng = np.random.default_rng(1)
    for row in range(0, len(VECTORS), 9):
        copy = VECTORS[row] + 0.02 * rng.normal(size=DIM).astype(np.float32)
        assert catalog.search(np.abs(copy), 1, {})[0]["product_id"] == f"p{row}"


def test_settings_read_the_reduced_memory_variables(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_INDEX_DIMS", "256")
    monkeypatch.setenv("LOOKALIKE_INDEX_FIT_ITEMS", "5000")
    assert (Settings().index_dims, Settings().index_fit_items) == (256, 5000)
    assert Settings.model_fields["index_dims"].default == 0


@pytest.mark.parametrize("rows", [30, 100])  # fewer rows than dimensions, and more
def test_projection_is_the_top_principal_directions_of_unit_rows(rows):
    sample = clustered(rows)[:, :64]
    unit = sample / np.linalg.norm(sample, axis=1, keepdims=True)
    _, singular, right = np.linalg.svd(unit.astype(np.float64), full_matrices=False)
    projection = Projection.fit(sample, 6)
    overlap = np.abs(projection.components @ right[:6].T)
    assert np.allclose(overlap, np.eye(6), atol=1e-3)
    assert projection.explained == pytest.approx((singular[:6] ** 2).sum() / rows, rel=1e-4)
