"""Reading the journal: the batch of entries after a position, and trimming detection."""

from __future__ import annotations

from typing import Any

import redis

from shared import keys
from shared.journal import JournalEntry, parse_entry, position_key


def read_after(
    client: redis.Redis, position: str, count: int = 1000, block_ms: int | None = 1000
) -> list[JournalEntry]:
    """Entries after position, oldest first; waits up to block_ms for the first one."""
    reply: Any = client.xread({keys.JOURNAL: position}, count=count, block=block_ms)
    if not reply:
        return []
    _, raw_entries = reply[0]
    return [parse_entry(entry_id, fields) for entry_id, fields in raw_entries]


def trimmed_past(client: redis.Redis, position: str) -> bool:
    """True when entries after position may have been trimmed away: reload a snapshot.

    The writer trims with MINID, so everything older than the first entry is gone; that may
    include entries after position. (XTRIM does not update max-deleted-entry-id.)
    """
    try:
        info: Any = client.xinfo_stream(keys.JOURNAL)
    except redis.ResponseError:  # no stream yet
        return False
    first = info.get("first-entry")
    oldest = _decode(first[0]) if first else _decode(info["last-generated-id"])
    return position_key(oldest) > position_key(position)


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def lag_seconds(client: redis.Redis, position: str) -> float:
    """How long the oldest journal entry after position has waited (0.0: caught up).

    Stream ids are the Redis server's milliseconds, so the wait is read on the same clock.
    """
    reply: Any = client.xrange(keys.JOURNAL, min=f"({position}", count=1)
    if not reply:
        return 0.0
    oldest_ms = position_key(_decode(reply[0][0]))[0]
    seconds, micros = client.time()
    return max(0.0, seconds + micros / 1e6 - oldest_ms / 1000)
