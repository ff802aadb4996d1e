"""The index journal: a Redis stream of upserts and deletes, the source of every index."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from redis.typing import EncodableT, FieldT

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
    if op == "delete":
        return JournalEntry(pos, "delete", product_id)
    return JournalEntry(
        pos,
        "upsert",
        product_id,
        model_id=fields[b"model"].decode(),
        vector=np.frombuffer(fields[b"vec"], dtype="<f4"),
        metadata=json.loads(fields[b"meta"]),
    )


def position_key(position: str) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence)."""
    millis, _, sequence = position.partition("-")
    return int(millis), int(sequence or 0)
