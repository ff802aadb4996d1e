"""Unit vectors and cosine scores made as exactly as hnswlib's cosine space makes them, for
vectors kept beside its graphs (shared.tail): a query made from one is then the graph's query."""

from __future__ import annotations

import functools

import hnswlib
import numpy as np

from shared.index import SPACE, Vectors

PROBE_ROWS = 32  # random rows a process compares hnswlib's normalisation and normalised()'s on


def stored_form(data: Vectors) -> Vectors:
    """data's rows as hnswlib's cosine space stores them: unit length, the same bits."""
    if len(data) == 0 or matches_hnswlib(data.shape[1]):
        return normalised(data)
    return normalised_by_hnswlib(data)


def normalised(data: Vectors) -> Vectors:
    """Rows at unit length the way hnswlib's normalize_vector makes them: a float32 sum of the
    squares taken in order (cumsum is sequential, a sum is pairwise), 1 / (its root + 1e-30),
    times each entry."""
    squares = np.cumsum(data * data, axis=1, dtype=np.float32)[:, -1]
    scale = np.float32(1) / (np.sqrt(squares) + np.float32(1e-30))
    return np.asarray(data * scale[:, None], dtype=np.float32)


def normalised_by_hnswlib(data: Vectors) -> Vectors:
    """Rows as a scratch hnswlib index stores them (slow: its get_items builds a Python float
    per entry, holding the GIL; 72 ms per 1,024 2048-d rows against normalised()'s 12 for a
    whole tail fill, bench/tail_scan.py)."""
    scratch = hnswlib.Index(space=SPACE, dim=data.shape[1])
    scratch.init_index(max_elements=max(1, len(data)), M=2, ef_construction=2)
    labels = np.arange(len(data), dtype=np.uint64)
    scratch.add_items(data, labels, num_threads=1)
    return np.asarray(scratch.get_items(labels), dtype=np.float32).reshape(data.shape)


@functools.cache
def matches_hnswlib(dim: int) -> bool:
    """Whether normalised() gives this hnswlib build's bits, checked once a process and width on
    random rows of several magnitudes: a build whose compiler fuses the sum's multiply-adds (or
    reorders it) rounds differently, and then stored_form asks hnswlib itself."""
    rng = np.random.default_rng(dim)
    probe = rng.standard_normal((PROBE_ROWS, dim)).astype(np.float32)
    probe *= np.float32(10.0) ** rng.integers(-3, 4, size=(PROBE_ROWS, 1)).astype(np.float32)
    probe[: PROBE_ROWS // 2] = np.abs(probe[: PROBE_ROWS // 2])  # ReLU features are non-negative
    return bool(np.array_equal(normalised(probe), normalised_by_hnswlib(probe)))


def unit(vector: Vectors) -> Vectors:
    """vector at unit length (a query, before exact_scores)."""
    return vector / np.float32(np.linalg.norm(vector))


def exact_scores(query: Vectors, rows: Vectors) -> Vectors:
    """Cosine similarities of unit rows to a unit query, each summed on its own (numpy's pairwise
    sum along the row), so that a row scores the same bits whatever else is scored with it (a
    BLAS product's sums depend on the kernel). hnswlib sums differently: its scores and these
    differ in the last bits (SCORE_TIE in shared.index)."""
    return np.asarray((rows * query).sum(axis=1, dtype=np.float32), dtype=np.float32)
