"""The index journal: a Redis stream of upserts and deletes, the source of every index."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from redis.typing import EncodableT, FieldT

from shared.keys import MAIN, Generation

Op = Literal["upsert", "delete"]
Fields = dict[FieldT, EncodableT]
START = "0-0"  # the position before the first entry


@dataclass
class JournalEntry:
    position: str
    op: Op
    product_id: str
    model_id: str = ""
    vector: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None  # the entry's number in the journal (None: written before numbering)


# XADD with the journal's next number as the entry's first field, in one step: readers then know
# how many entries they are behind the head (the head's number is Generation.journal_seq) in O(1).
APPEND = """
local seq = redis.call('INCR', KEYS[2])
return redis.call('XADD', KEYS[1], '*', 'n', seq, unpack(ARGV))
"""


def append(client: Any, pipe: Any, fields: Fields, gen: Generation = MAIN) -> None:
    """Queue the entry's append on pipe (a transaction, usually); client registers the script."""
    script = client.register_script(APPEND)
    args = [item for pair in fields.items() for item in pair]
    script(keys=[gen.journal, gen.journal_seq], args=args, client=pipe)


def upsert_entry(
    product_id: str, vector: np.ndarray, model_id: str, metadata: dict[str, Any]
) -> Fields:
    return {
        "op": "upsert",
        "id": product_id,
        "model": model_id,
        "vec": np.ascontiguousarray(vector, dtype="<f4").tobytes(),
        "meta": json.dumps(metadata, separators=(",", ":")),
    }


def delete_entry(product_id: str) -> Fields:
    return {"op": "delete", "id": product_id}


def parse_entry(position: bytes | str, fields: dict[bytes, bytes]) -> JournalEntry:
    pos = position.decode() if isinstance(position, bytes) else position
    op = fields[b"op"].decode()
    product_id = fields[b"id"].decode()
    seq = int(fields[b"n"]) if b"n" in fields else None
    if op == "delete":
        return JournalEntry(pos, "delete", product_id, seq=seq)
    return JournalEntry(
        pos,
        "upsert",
        product_id,
        model_id=fields[b"model"].decode(),
        vector=np.frombuffer(fields[b"vec"], dtype="<f4"),
        metadata=json.loads(fields[b"meta"]),
        seq=seq,
    )


def position_key(position: str) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence)."""
    millis, _, sequence = position.partition("-")
    return int(millis), int(sequence or 0)
