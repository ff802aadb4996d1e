"""The writer's start: the index from the newest snapshot that loads plus the journal after it,
and, when neither can give back every vector, the products that lost theirs marked as such."""

from __future__ import annotations

import logging

import redis

from shared.catalog import Catalog
from shared.follower import catch_up, trimmed_past
from shared.keys import MAIN, Generation
from shared.records import ProductStore
from shared.settings import Settings
from shared.snapshots import Loaded, SnapshotStore

log = logging.getLogger("lookalike.writer")


def restore(
    settings: Settings, client: redis.Redis, store: SnapshotStore, gen: Generation = MAIN
) -> Catalog:
    """The whole index, or as much of it as exists with the rest marked lost (never silently)."""
    ProductStore(client, gen).backfill_indexed()
    catalog, loaded = Catalog.restore(settings, store)
    gap = _gap(client, loaded, catalog.position, gen)
    catch_up(client, catalog, gen)
    log.info("index restored: %d items at journal position %s", len(catalog), catalog.position)
    if gap is not None:
        _mark_lost(client, catalog, gap, gen)
    return catalog


def _gap(client: redis.Redis, loaded: Loaded, position: str, gen: Generation) -> str | None:
    """Why the journal cannot complete this snapshot, or None when it can."""
    if not trimmed_past(client, position, gen):
        return None
    where = f"snapshot {loaded.snapshot.name}" if loaded.snapshot else "no snapshot"
    refused = "; ".join(loaded.refused) or "no newer snapshot exists"
    return (
        f"the journal was trimmed past {position} ({where} loaded; {refused}): "
        "the vectors indexed in between are gone"
    )


def _mark_lost(client: redis.Redis, catalog: Catalog, reason: str, gen: Generation) -> None:
    """Products Redis says are indexed but the index lacks: not indexed any more, and why.

    Watching the journal makes this atomic with it: a vector journalled meanwhile is applied
    first, so a product re-indexed concurrently is never marked lost.
    """
    products = ProductStore(client, gen)
    while True:
        with client.pipeline() as pipe:
            try:
                pipe.watch(gen.journal)
                if catch_up(client, catalog, gen):
                    continue
                lost = sorted(products.indexed_ids() - set(catalog.metadata))
                pipe.multi()
                ProductStore.mark_lost(pipe, lost, reason, gen)
                pipe.execute()
            except redis.WatchError:
                continue
        break
    log.error("%s; %d products marked not indexed: re-import them", reason, len(lost))
