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
    """True when entries after position were trimmed away: only a snapshot has them now.

    The writer records the newest entry it trims (XTRIM does not update max-deleted-entry-id).
    """
    raw = client.get(keys.JOURNAL_TRIMMED)
    return raw is not None and position_key(_decode(raw)) > position_key(position)


def trim_before(client: redis.Redis, position: str) -> int:
    """Trim the journal's entries older than position (never position itself); how many."""
    reply: Any = client.xrevrange(keys.JOURNAL, max=f"({position}", count=1)
    if not reply:
        return 0
    last = _decode(reply[0][0])
    pipe = client.pipeline()
    pipe.set(keys.JOURNAL_TRIMMED, last)
    pipe.xtrim(keys.JOURNAL, minid=position, approximate=False)
    return int(pipe.execute()[1])


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
