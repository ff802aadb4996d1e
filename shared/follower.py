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
    """True when entries after position may have been trimmed away: reload a snapshot."""
    try:
        info: Any = client.xinfo_stream(keys.JOURNAL)
    except redis.ResponseError:  # no stream yet
        return False
    here = position_key(position)
    deleted = info.get("max-deleted-entry-id")
    if deleted is not None:  # Redis 7 knows the newest entry it ever removed
        return position_key(_decode(deleted)) > here
    first = info.get("first-entry")
    oldest = _decode(first[0]) if first else _decode(info["last-generated-id"])
    return position_key(oldest) > here


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
