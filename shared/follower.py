"""Reading the journal: the batch of entries after a position, and trimming detection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from shared.journal import JournalEntry, parse_entry, position_key
from shared.keys import MAIN, Generation

if TYPE_CHECKING:
    from shared.catalog import Catalog

# Entries a read takes by default (the writer's). redis-py's parser (hiredis) builds a read's reply
# holding the GIL, 9-15 ms for 1,000 entries of 2048-d (bench/journal_read.py): a process that also
# answers queries reads fewer at a time (api/replica.py).
READ_COUNT = 1000


def read_after(
    client: redis.Redis,
    position: str,
    count: int = READ_COUNT,
    block_ms: int | None = 1000,
    gen: Generation = MAIN,
) -> list[JournalEntry]:
    """Entries after position, oldest first; waits up to block_ms for the first one."""
    reply: Any = client.xread({gen.journal: position}, count=count, block=block_ms)
    if not reply:
        return []
    _, raw_entries = reply[0]
    return [parse_entry(entry_id, fields) for entry_id, fields in raw_entries]


def trimmed_past(client: redis.Redis, position: str, gen: Generation = MAIN) -> bool:
    """True when entries after position were trimmed away: only a snapshot has them now.

    The writer records the newest entry it trims (XTRIM does not update max-deleted-entry-id).
    """
    raw = client.get(gen.journal_trimmed)
    return raw is not None and position_key(_decode(raw)) > position_key(position)


def trim_before(client: redis.Redis, position: str, gen: Generation = MAIN) -> int:
    """Trim the journal's entries older than position (never position itself); how many."""
    reply: Any = client.xrevrange(gen.journal, max=f"({position}", count=1)
    if not reply:
        return 0
    last = _decode(reply[0][0])
    pipe = client.pipeline()
    pipe.set(gen.journal_trimmed, last)
    pipe.xtrim(gen.journal, minid=position, approximate=False)
    return int(pipe.execute()[1])


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def lag_seconds(client: redis.Redis, position: str, gen: Generation = MAIN) -> float:
    """How long the oldest journal entry after position has waited (0.0: caught up).

    Stream ids are the Redis server's milliseconds, so the wait is read on the same clock.
    """
    reply: Any = client.xrange(gen.journal, min=f"({position}", count=1)
    if not reply:
        return 0.0
    oldest_ms = position_key(_decode(reply[0][0]))[0]
    seconds, micros = client.time()
    return max(0.0, seconds + micros / 1e6 - oldest_ms / 1000)


def catch_up_unbroken(
    client: redis.Redis,
    catalog: Catalog,
    gen: Generation = MAIN,
    until: str | None = None,
    count: int = READ_COUNT,
) -> bool:
    """catch_up (to position until, if given), checking after each read that nothing after the
    position it read from had been trimmed: False (the catalog is then incomplete) as soon as a
    gap is possible."""
    while until is None or position_key(catalog.position) < position_key(until):
        before = catalog.position
        entries = read_after(client, before, count, None, gen)
        if trimmed_past(client, before, gen):
            return False
        if until is not None:
            entries = [e for e in entries if position_key(e.position) <= position_key(until)]
        if not entries:
            return True
        catalog.apply(entries)
    return True


def catch_up(
    client: redis.Redis, catalog: Catalog, gen: Generation = MAIN, count: int = READ_COUNT
) -> int:
    """Apply every journal entry after the catalog's position, count a read; how many."""
    applied = 0
    while entries := read_after(client, catalog.position, count, None, gen):
        applied += catalog.apply(entries)
    return applied
