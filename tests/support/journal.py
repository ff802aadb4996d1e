"""Feeding an API's replica through the real journal, as embed workers do, without a model."""

from __future__ import annotations

import numpy as np
import redis

from shared import keys
from shared.journal import upsert_entry
from tests.support.stack import wait_until

COLOURS = ("Red", "Blue", "Black")


def journal(app, count: int, model: str = "resnet50-test") -> None:
    """Vectors and metadata written to the journal as embed workers do; wait for the replica."""
    client = redis.Redis.from_url(app.extensions["lookalike"].settings.redis_url)
    rng = np.random.default_rng(0)
    for n in range(count):
        metadata = {"productDisplayName": f"Item {n}", "baseColour": COLOURS[n % 3]}
        vector = np.abs(rng.normal(size=2048)).astype(np.float32)
        client.xadd(keys.JOURNAL, upsert_entry(str(n), vector, model, metadata))
    client.set(keys.INDEX_MODEL, model)
    replica = app.extensions["lookalike"].replica
    wait_until(lambda: len(replica.catalog) == count, 10, "the replica did not catch up")
