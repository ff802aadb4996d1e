"""VectorIndex on a real hnswlib: semantics, growth, persistence, concurrency and recall."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from shared.errors import DimensionMismatch, InvalidVector, ModelMismatch, SnapshotError
from shared.index import BRUTE_FORCE_MAX_FRACTION, BRUTE_FORCE_MAX_ITEMS, INDEX_FILE, VectorIndex
from tests.support.damage import HOW, damage

DIM = 32
MODEL = "resnet50-max-test"


def clustered(
    rng: np.random.Generator, n: int, dim: int = DIM, centres: np.ndarray | None = None
) -> np.ndarray:
    """Non-negative vectors around 20 gaussian centres, like ReLU CNN features."""
    if centres is None:
        centres = rng.normal(size=(20, dim))
    points = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, dim))
    return np.abs(points).astype(np.float32)


def exact_top(matrix: np.ndarray, ids: list[str], query: np.ndarray, k: int) -> list[str]:
    """The k ids most cosine-similar to query, by numpy brute force."""
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def names(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def filled(rng: np.random.Generator) -> tuple[VectorIndex, list[str], np.ndarray]:
    vectors = clustered(rng, 500)
    ids = names(500)
    index = VectorIndex(DIM, MODEL, capacity=64)
    index.upsert(ids, vectors)
    return index, ids, vectors


def test_self_is_top_hit_with_score_one(filled):
    index, _, vectors = filled
    hits = index.query(vectors[3], k=5)
    assert hits[0][0] == "p3"
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 5


def test_scores_are_cosine_similarities_best_first(filled):
    index, ids, vectors = filled
    query = vectors[10] + 0.1
    hits = index.query(query, k=10)
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)
    for id_, score in hits:
        vector = vectors[ids.index(id_)]
        cosine = vector @ query / (np.linalg.norm(vector) * np.linalg.norm(query))
        assert score == pytest.approx(cosine, abs=1e-5)
    assert [id_ for id_, _ in hits] == exact_top(vectors, ids, query, 10)


def test_query_excludes_given_ids(filled):
    index, ids, vectors = filled
    expected = exact_top(vectors, ids, vectors[0], 13)
    excluded = set(expected[:3]) | {"not-in-index"}
    hits = index.query(vectors[0], k=10, exclude=excluded)
    assert [id_ for id_, _ in hits] == expected[3:13]


def test_query_on_empty_index_returns_nothing():
    index = VectorIndex(DIM, MODEL)
    assert index.query(np.ones(DIM, dtype=np.float32), k=5) == []
    assert len(index) == 0


def test_query_with_k_above_count_returns_all(rng):
    index = VectorIndex(DIM, MODEL)
    vectors = clustered(rng, 4)
    index.upsert(names(4), vectors)
    assert sorted(id_ for id_, _ in index.query(vectors[0], k=10)) == names(4)
    assert sorted(id_ for id_, _ in index.query(vectors[0], k=10, exclude={"p0"})) == names(4)[1:]
    assert index.query(vectors[0], k=10, exclude=names(4)) == []


def test_query_allow_small_is_exact(filled):
    index, ids, vectors = filled
    allowed = ids[100:140]
    hits = index.query(vectors[0], k=5, allow=set(allowed), exclude={"p100"})
    sub = vectors[100:140]
    expected = [id_ for id_ in exact_top(sub, allowed, vectors[0], 6) if id_ != "p100"][:5]
    assert [id_ for id_, _ in hits] == expected
    for id_, score in hits:
        vector = vectors[ids.index(id_)]
        cosine = vector @ vectors[0] / (np.linalg.norm(vector) * np.linalg.norm(vectors[0]))
        assert score == pytest.approx(cosine, abs=1e-5)


def test_query_allow_large_uses_filtered_graph(rng):
    n = 6000
    vectors = clustered(rng, n)
    ids = names(n)
    index = VectorIndex(DIM, MODEL, capacity=n)
    index.upsert(ids, vectors)
    allowed = ids[::2]  # 3000 items: above both brute-force limits
    assert len(allowed) > max(BRUTE_FORCE_MAX_ITEMS, BRUTE_FORCE_MAX_FRACTION * n)
    allowed_set = set(allowed)
    found = 0
    for row in range(1, 41, 2):
        hits = index.query(vectors[row], k=10, allow=allowed_set, exclude={"p2"})
        assert len(hits) == 10
        assert all(id_ in allowed_set and id_ != "p2" for id_, _ in hits)
        expected = [i for i in exact_top(vectors[::2], allowed, vectors[row], 11) if i != "p2"]
        found += len({id_ for id_, _ in hits} & set(expected[:10]))
    assert found / (20 * 10) >= 0.95


def test_query_allow_ignores_unknown_ids(filled):
    index, _, vectors = filled
    assert index.query(vectors[0], k=3, allow={"nope"}) == []
    assert [id_ for id_, _ in index.query(vectors[0], k=3, allow={"p1", "nope"})] == ["p1"]


def test_upsert_replaces_vector_in_place(filled):
    index, _, vectors = filled
    before = index.query(vectors[200], k=5)
    assert "p0" not in [id_ for id_, _ in before]
    slots = index.slots_used
    index.upsert(["p0"], vectors[200:201] * 1.01)
    after = [id_ for id_, _ in index.query(vectors[200], k=5)]
    assert "p0" in after[:2]
    assert "p0" not in [id_ for id_, _ in index.query(vectors[0], k=5)]
    assert len(index) == 500
    assert index.slots_used == slots
    unit = vectors[200] / np.linalg.norm(vectors[200])
    assert np.allclose(index.get_vector("p0"), unit, atol=1e-6)


def test_upsert_duplicate_ids_last_wins(rng):
    index = VectorIndex(DIM, MODEL)
    vectors = clustered(rng, 3)
    index.upsert(["a", "b", "a"], vectors)
    assert len(index) == 2
    unit = vectors[2] / np.linalg.norm(vectors[2])
    assert np.allclose(index.get_vector("a"), unit, atol=1e-6)


def test_delete_removes_from_results(filled):
    index, _, vectors = filled
    assert index.delete(["p3", "p4", "p3", "unknown"]) == 2
    assert index.delete(["p3"]) == 0
    assert "p3" not in index
    assert len(index) == 498
    hits = index.query(vectors[3], k=20)
    assert {"p3", "p4"}.isdisjoint(id_ for id_, _ in hits)
    with pytest.raises(KeyError):
        index.get_vector("p3")


def test_delete_then_insert_reuses_slots(filled, rng):
    index, ids, _ = filled
    capacity, slots = index.capacity, index.slots_used
    index.delete(ids[:100])
    fresh = clustered(rng, 100)
    index.upsert(names(100, "new"), fresh)
    assert (index.capacity, index.slots_used) == (capacity, slots)
    assert len(index) == 500
    assert index.query(fresh[5], k=1)[0][0] == "new5"
    # A deleted id coming back is a new item in a reused slot, not a resurrected one.
    index.delete(["new1"])
    index.upsert(["p0"], fresh[1:2])
    assert index.query(fresh[1], k=1)[0][0] == "p0"
    assert index.slots_used == slots


def test_grows_past_initial_capacity(rng):
    index = VectorIndex(DIM, MODEL, capacity=8)
    vectors = clustered(rng, 300)
    for start in range(0, 300, 7):
        index.upsert(names(300)[start : start + 7], vectors[start : start + 7])
    assert len(index) == 300
    assert index.capacity >= 300
    assert all(index.query(vectors[i], k=1)[0][0] == f"p{i}" for i in range(0, 300, 17))


def test_wrong_dimension_is_refused_with_clear_message():
    index = VectorIndex(DIM, MODEL)
    with pytest.raises(DimensionMismatch) as raised:
        index.upsert(["a", "b"], np.ones((2, 16), dtype=np.float32))
    assert str(raised.value) == "index has dimension 32, got vectors of shape (2, 16)"
    with pytest.raises(DimensionMismatch) as raised:
        index.upsert(["a"], np.ones(DIM, dtype=np.float32))
    assert str(raised.value) == "index has dimension 32, got vectors of shape (32,)"
    with pytest.raises(DimensionMismatch) as raised:
        index.query(np.ones(31, dtype=np.float32), k=1)
    assert str(raised.value) == "index has dimension 32, got a query vector of shape (31,)"
    assert len(index) == 0


def test_zero_and_nan_vectors_are_refused():
    index = VectorIndex(DIM, MODEL)
    vectors = np.ones((2, DIM), dtype=np.float32)
    vectors[1] = 0
    with pytest.raises(InvalidVector) as raised:
        index.upsert(["a", "b"], vectors)
    assert str(raised.value) == "vector for id 'b' is all zeros: cosine similarity is undefined"
    assert isinstance(raised.value, ValueError)
    vectors[1, 3] = np.nan
    with pytest.raises(InvalidVector, match="vector for id 'b' has NaN or infinite values"):
        index.upsert(["a", "b"], vectors)
    with pytest.raises(InvalidVector, match="query vector is all zeros"):
        index.query(np.zeros(DIM, dtype=np.float32), k=1)
    assert len(index) == 0


def test_mismatched_id_count_and_bad_k_are_refused():
    index = VectorIndex(DIM, MODEL)
    with pytest.raises(ValueError, match="got 1 ids but 2 vectors"):
        index.upsert(["a"], np.ones((2, DIM), dtype=np.float32))
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        index.query(np.ones(DIM, dtype=np.float32), k=0)
    with pytest.raises(TypeError):
        index.delete("abc")


@pytest.mark.parametrize("short_reads", [False, True])
def test_save_load_round_trip(filled, tmp_path: Path, rng, short_reads):
    index, ids, vectors = filled
    index.delete(ids[:20])
    extra = {"metadata": {"p21": {"gender": "Women"}}}
    manifest = index.save(tmp_path, journal_position="1700000000000-5", extra=extra)
    assert manifest["index_file"] == INDEX_FILE
    assert manifest["index_bytes"] == (tmp_path / INDEX_FILE).stat().st_size
    loaded = VectorIndex.load(tmp_path, manifest, MODEL, 64, short_reads)
    assert loaded.journal_position == "1700000000000-5"
    assert loaded.extra == extra
    assert loaded.model_id == MODEL
    assert sorted(loaded.ids()) == sorted(index.ids())
    assert (loaded.capacity, loaded.slots_used) == (index.capacity, index.slots_used)
    for row in range(0, 500, 25):
        assert loaded.query(vectors[row], k=10) == index.query(vectors[row], k=10)
    # Deleted slots stay reusable and labels stay unique after a reload.
    slots = loaded.slots_used
    loaded.upsert(["fresh"], clustered(rng, 1))
    loaded.upsert(["p30"], vectors[31:32])
    assert loaded.slots_used == slots
    assert loaded.query(vectors[31], k=2)[0][0] in {"p30", "p31"}
    assert len(loaded) == 481


@pytest.mark.parametrize("short_reads", [False, True])
@pytest.mark.parametrize("how", HOW)
def test_load_refuses_a_damaged_index_file(filled, tmp_path: Path, how, short_reads):
    manifest = filled[0].save(tmp_path)
    message = damage(tmp_path / INDEX_FILE, how)
    with pytest.raises(SnapshotError) as raised:
        VectorIndex.load(tmp_path, manifest, short_reads=short_reads)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("format", 9, "format 9 is not supported"),
        ("space", "l2", "space 'l2' is not 'cosine'"),
        ("index_file", "../x.bin", "index_file '../x.bin' is not 'hnsw.bin'"),
        ("count", 3, "count 3 does not match"),
    ],
)
def test_load_refuses_an_invalid_manifest(filled, tmp_path: Path, field, value, problem):
    manifest = {**filled[0].save(tmp_path), field: value}
    with pytest.raises(SnapshotError, match=rf"snapshot manifest in {tmp_path} is invalid: .*"):
        VectorIndex.load(tmp_path, manifest)
    with pytest.raises(SnapshotError) as raised:
        VectorIndex.load(tmp_path, manifest)
    assert problem in str(raised.value)


def test_load_refuses_other_model(filled, tmp_path: Path):
    manifest = filled[0].save(tmp_path)
    with pytest.raises(ModelMismatch) as raised:
        VectorIndex.load(tmp_path, manifest, model_id="resnet50-avg-other")
    assert str(raised.value) == (
        "snapshot was built with model resnet50-max-test, this process uses resnet50-avg-other"
    )


def test_concurrent_queries_during_writes_and_resizes(rng):
    index = VectorIndex(DIM, MODEL, capacity=16)
    vectors = clustered(rng, 3000)
    ids = names(3000)
    index.upsert(ids[:50], vectors[:50])
    errors: list[BaseException] = []
    answered: list[int] = []
    done = threading.Event()

    def read(seed: int) -> None:
        local = np.random.default_rng(seed)
        count = 0
        try:
            while not done.is_set():
                row = int(local.integers(0, 50))
                hits = index.query(vectors[row], k=10, exclude={ids[row]})
                scores = [score for _, score in hits]
                assert len(hits) == 10 and ids[row] not in dict(hits)
                assert scores == sorted(scores, reverse=True)
                assert all(-1.0001 <= score <= 1.0001 for score in scores)
                count += 1
        except BaseException as exc:
            errors.append(exc)
        answered.append(count)

    readers = [threading.Thread(target=read, args=(seed,)) for seed in range(4)]
    for thread in readers:
        thread.start()
    try:
        for start in range(50, 3000, 50):
            index.upsert(ids[start : start + 50], vectors[start : start + 50])
            index.delete(ids[start : start + 5])
            index.upsert(ids[start : start + 3], vectors[start : start + 3])
    finally:
        done.set()
        for thread in readers:
            thread.join()
    assert errors == []
    assert min(answered) > 0, "every reader got queries in between the writes"
    assert len(index) == 3000 - 59 * 2
    assert index.capacity >= index.slots_used


def test_recall_after_updates_and_deletes():
    rng = np.random.default_rng(2024)
    n, dim = 6000, 256
    centres = rng.normal(size=(20, dim))
    vectors = clustered(rng, n, dim, centres)
    ids = names(n)
    index = VectorIndex(dim, MODEL)
    index.upsert(ids, vectors)
    updated = rng.choice(n, n // 10, replace=False)
    vectors[updated] = clustered(rng, len(updated), dim, centres)
    index.upsert([ids[i] for i in updated], vectors[updated])
    deleted = set(rng.choice(n, n // 10, replace=False).tolist())
    index.delete([ids[i] for i in deleted])
    live = [i for i in range(n) if i not in deleted]
    live_ids = [ids[i] for i in live]
    queries = clustered(rng, 200, dim, centres)
    found = 0
    for query in queries:
        expected = set(exact_top(vectors[live], live_ids, query, 10))
        found += len(expected & {id_ for id_, _ in index.query(query, k=10)})
    assert found / (len(queries) * 10) >= 0.99
