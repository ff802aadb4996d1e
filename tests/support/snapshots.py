"""Small indexes to snapshot in the snapshot stores' tests."""

from __future__ import annotations

import numpy as np

from shared.index import VectorIndex

DIM = 16
MODEL = "resnet50-test"


def index_of(count: int) -> VectorIndex:
    """An index of count items p0.. of DIM dimensions, the same for the same count."""
    index = VectorIndex(DIM, MODEL, capacity=64)
    rng = np.random.default_rng(count)
    index.upsert([f"p{n}" for n in range(count)], np.abs(rng.normal(size=(count, DIM))))
    return index
