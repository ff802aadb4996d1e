"""A replica fed through the real journal and snapshots, without a model or an API: products
journalled as embed workers write them, a writer's first snapshot, requests through its counter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import redis

from api.replica import Replica
from shared import keys
from shared.catalog import Catalog
from shared.follower import read_after
from shared.journal import START, append, upsert_entry
from shared.model_id import EMBEDDING_DIM
from shared.records import ProductStore
from shared.settings import Settings
from shared.snapshots import SnapshotStore
from tests.support.stack import wait_until

MODEL = "resnet50-test"


def clustered(n: int, seed: int = 0, dim: int = EMBEDDING_DIM) -> np.ndarray:
    """Non-negative vectors around 8 centres (the same for every seed), like CNN features."""
    centres = np.abs(np.random.default_rng(99).normal(size=(8, dim)))
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, 8, n)] + 0.3 * rng.random((n, dim))).astype(np.float32)


def journal(
    client: redis.Redis, first: int, count: int, model: str = MODEL, recorded: bool = False
) -> None:
    """Products p<first>.. journalled as embed workers do, all at once; recorded: their records
    and the product list too, as the API then finds them."""
    data = clustered(count, seed=first)
    pipe = client.pipeline()  # one transaction: a replica sees the burst whole, never a part
    for n in range(count):
        product_id = f"p{first + n}"
        append(client, pipe, upsert_entry(product_id, data[n], model, {}))
        if recorded:
            ProductStore.mark_indexed(pipe, product_id, {}, f"sha-{product_id}")
            pipe.sadd(keys.PRODUCTS, product_id)
    pipe.execute()


@contextmanager
def on_a_first_snapshot(
    client: redis.Redis, settings: Settings
) -> Iterator[tuple[Replica, Catalog, SnapshotStore]]:
    """A replica that has loaded the writer's first snapshot (50 items); the writer, its store."""
    store, writer = SnapshotStore(settings.data_dir / "index"), Catalog(settings)
    replica = Replica(settings, client).start()
    try:
        journal(client, 0, 50)
        writer.apply(read_after(client, START, block_ms=None))
        first = writer.save(store)
        assert first is not None
        wait_until(lambda: replica.catalog.base_position == first.position, 10, "no first load")
        yield replica, writer, store
    finally:
        replica.stop()


@contextmanager
def requests_coming(replica: Replica) -> Iterator[threading.Event]:
    """Requests through the replica's traffic counter, one every 20 ms, until the event yielded
    is set or the block ends."""
    stop = threading.Event()
    counted = replica.traffic.middleware(lambda environ, start_response: [b""])

    def send() -> None:
        while not stop.wait(0.02):
            list(counted({}, lambda *args: None))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        yield stop
    finally:
        stop.set()
        sender.join()
