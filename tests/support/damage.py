"""Damage done to snapshot files on purpose, and the error each must be refused with."""

from __future__ import annotations

from pathlib import Path

HOW = ("missing", "truncated", "flipped byte")


def damage(path: Path, how: str) -> str:
    """Damage a saved index file; the message loading it must give."""
    size = path.stat().st_size
    if how == "missing":
        path.unlink()
        return f"snapshot index file {path} is missing"
    if how == "truncated":
        with path.open("r+b") as file:
            file.truncate(size // 2)
        return (
            f"snapshot index file {path} is partial or corrupt: {size // 2} bytes, expected {size}"
        )
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"snapshot index file {path} is corrupt: sha256 does not match"
