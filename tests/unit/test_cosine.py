"""Unit vectors with hnswlib's own bits, and exact scores that do not depend on their batch."""

from __future__ import annotations

import numpy as np
import pytest

from shared import cosine
from shared.cosine import exact_scores, normalised_by_hnswlib, stored_form, unit
from shared.index import VectorIndex


@pytest.mark.parametrize(("n", "dim"), [(1, 8), (7, 2048), (64, 2048), (1000, 100), (5, 3)])
def test_a_rows_exact_score_does_not_depend_on_the_rows_beside_it(n, dim):
    data = np.random.default_rng(n).normal(size=(n, dim)).astype(np.float32)
    query = unit(data[0])
    together = exact_scores(query, data)
    for i in range(n):
        assert together[i] == exact_scores(query, data[i : i + 1])[0]
        assert together[i] == exact_scores(query, data[[i, (i + 1) % n, i]])[0]


def kinds() -> list[tuple[str, np.ndarray]]:
    """Rows of the kinds an index holds and a few it may: widths, magnitudes, signs."""
    rng = np.random.default_rng(5)

    def normal(n: int, dim: int) -> np.ndarray:
        return rng.standard_normal((n, dim)).astype(np.float32)

    relu = np.maximum(normal(40, 2048), 0) * np.float32(30)  # ResNet50 max-pooled features
    sparse = relu.copy()
    sparse[:, rng.random(2048) < 0.9] = 0
    return [
        ("2048-d non-negative", relu),
        ("2048-d mostly zeros", sparse),
        ("2048-d signed, tiny", normal(20, 2048) * np.float32(1e-6)),
        ("2048-d signed, huge", normal(20, 2048) * np.float32(1e6)),
        ("256-d (a projection)", normal(30, 256)),
        ("odd width", normal(9, 37)),
        ("one row", normal(1, 2048)),
        ("one entry", np.asarray([[3.0], [-2.0]], dtype=np.float32)),
    ]


def graph_bits(data: np.ndarray) -> np.ndarray:
    graph = VectorIndex(data.shape[1], "m", capacity=len(data))
    graph.upsert([str(i) for i in range(len(data))], data)
    return graph.get_vectors([str(i) for i in range(len(data))])


@pytest.mark.parametrize(("kind", "data"), kinds(), ids=[k for k, _ in kinds()])
def test_rows_are_stored_with_the_bits_a_graph_stores(kind, data):
    assert np.array_equal(stored_form(data), graph_bits(data))


@pytest.mark.parametrize(("kind", "data"), kinds(), ids=[k for k, _ in kinds()])
def test_a_build_that_rounds_otherwise_still_gets_a_graphs_bits(kind, data, monkeypatch):
    """Where numpy's normalisation does not match this hnswlib's, hnswlib makes them."""
    monkeypatch.setattr(cosine, "matches_hnswlib", lambda dim: False)
    assert np.array_equal(stored_form(data), graph_bits(data))
    assert np.array_equal(normalised_by_hnswlib(data), graph_bits(data))


def test_no_rows_are_no_rows():
    assert stored_form(np.empty((0, 2048), dtype=np.float32)).shape == (0, 2048)
