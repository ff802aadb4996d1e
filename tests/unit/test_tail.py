"""A replica's exact tail: scored as the graphs score, whatever the order of changes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from shared.cosine import exact_scores, stored_form, unit
from shared.errors import DimensionMismatch, InvalidVector
from shared.index import SCORE_TIE, VectorIndex
from shared.tail import ExactTail

DIM = 32


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def test_an_equal_vector_scores_within_a_tie_in_the_tail_and_in_a_graph():
    data = rows(40, seed=2)
    graph, tail = VectorIndex(DIM, "m", capacity=64), ExactTail(DIM, 64)
    graph.upsert([f"g{i}" for i in range(40)], data)
    tail.upsert([f"t{i}" for i in range(40)], data)
    for i in range(0, 40, 7):
        query = graph.get_vector(f"g{i}")
        by_graph = dict(graph.query(query, 40))
        by_tail = dict(tail.query(query, 40))
        assert all(abs(by_graph[f"g{j}"] - by_tail[f"t{j}"]) <= SCORE_TIE for j in range(40))


def test_changes_in_any_order_keep_the_tail_equal_to_a_plain_dict():
    """A fuzz of upserts, updates and deletes against the vectors they should leave."""
    rng = np.random.default_rng(3)
    tail, wanted = ExactTail(DIM, 40), dict[str, np.ndarray]()
    for step in range(400):
        ids = [f"p{i}" for i in rng.integers(0, 60, size=int(rng.integers(1, 6)))]
        if rng.random() < 0.35:
            assert tail.delete(ids) == len(set(ids) & set(wanted))
            for id_ in ids:
                wanted.pop(id_, None)
            continue
        data = rows(len(ids), seed=step)
        if len(set(ids) - set(wanted)) > tail.room:
            with pytest.raises(ValueError, match="new ids do not fit: room for"):
                tail.upsert(ids, data)
            continue
        tail.upsert(ids, data)
        wanted.update({id_: stored_form(data[[row]])[0] for row, id_ in enumerate(ids)})
        assert len(tail) == len(wanted) and sorted(tail.ids()) == sorted(wanted)
        assert tail.room == 40 - len(wanted)
        for id_, vector in wanted.items():
            assert np.array_equal(tail.get_vector(id_), vector)
        query = rows(1, seed=1000 + step)[0]
        best = sorted(wanted, key=lambda i: (-exact_scores(unit(query), wanted[i][None])[0], i))
        found = [hit[0] for hit in tail.query(query, 5)]
        assert sorted(found) == sorted(best[:5])


def test_a_query_keeps_the_k_th_s_ties_and_honours_exclude_and_allow():
    same = np.repeat(rows(1, seed=4), 6, axis=0)
    tail = ExactTail(DIM, 16)
    tail.upsert([f"d{i}" for i in range(6)], same)
    tail.upsert(["x1", "x2"], rows(2, seed=5))
    query = same[0]
    assert len(tail.query(query, 2)) == 2
    assert {h[0] for h in tail.query(query, 2, ties_max=10)} == {f"d{i}" for i in range(6)}
    assert {h[0] for h in tail.query(query, 2, ties_max=2)} <= {f"d{i}" for i in range(6)}
    assert len(tail.query(query, 2, ties_max=2)) == 4
    assert tail.query(query, 10, allow={"x1", "d2"})[0][0] == "d2"
    assert "d0" not in {h[0] for h in tail.query(query, 10, exclude={"d0"})}
    assert tail.query(query, 3, allow=set()) == []
    many = {f"other{i}" for i in range(50)} | {"x2", "d3"}  # more ids than the tail holds
    assert {h[0] for h in tail.query(query, 5, allow=many)} == {"x2", "d3"}
    assert tail.query(query, 8, exclude={"unknown", "x1"}, allow=many)[0][0] == "d3"
    assert len(tail.query(query, 8, exclude={"unknown"})) == 8


@pytest.mark.parametrize(
    ("vectors", "error", "message"),
    [
        (np.zeros((1, DIM)), InvalidVector, "vector for id 'a' is all zeros: cosine"),
        (np.full((1, DIM), np.nan), InvalidVector, "vector for id 'a' has NaN or infinite"),
        (np.ones((1, DIM + 1)), DimensionMismatch, "index has dimension 32, got vectors of"),
        (np.ones((2, DIM)), ValueError, "got 1 ids but 2 vectors"),
    ],
)
def test_an_unusable_vector_is_refused_and_changes_nothing(vectors, error, message):
    tail = ExactTail(DIM, 4)
    tail.upsert(["b"], rows(1, seed=6))
    with pytest.raises(error, match="^" + re.escape(message)):
        tail.upsert(["a"], vectors)
    assert tail.ids() == ["b"] and tail.room == 3


def test_a_tail_without_room_takes_no_new_id_but_updates_what_it_holds():
    tail = ExactTail(DIM, 1)
    tail.upsert(["a"], rows(1, seed=7))
    tail.upsert(["a"], rows(1, seed=8))
    with pytest.raises(ValueError, match=r"^1 new ids do not fit: room for 0$"):
        tail.upsert(["b"], rows(1, seed=9))
    assert tail.ids() == ["a"] and np.array_equal(tail.get_vector("a"), stored_form(rows(1, 8))[0])
    with pytest.raises(ValueError, match=r"^capacity must be at least 0, got -1$"):
        ExactTail(DIM, -1)
