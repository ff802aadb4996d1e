"""Checks of client input; each failure is a BadRequest with a message that says what is wrong."""

from __future__ import annotations

import json
import re
from typing import Any

from werkzeug.datastructures import FileStorage

from api.errors import BadRequest
from shared.errors import ImageTooLarge
from shared.images import open_image
from shared.settings import Settings

PRODUCT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_K = 100


def product_id(value: str | None) -> str:
    if not value:
        raise BadRequest("missing field product_id")
    if not PRODUCT_ID.fullmatch(value):
        raise BadRequest(
            "invalid product_id: use 1-128 characters of A-Z a-z 0-9 . _ : -, "
            "starting with a letter or digit"
        )
    return value


def metadata(raw: str | None, settings: Settings) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if len(raw.encode()) > settings.max_metadata_bytes:
        raise BadRequest(f"metadata is larger than {settings.max_metadata_bytes} bytes")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("metadata must be a JSON object")
    return value


def image(upload: FileStorage | None, settings: Settings) -> bytes:
    """The upload's bytes, once they are known to be an image we can embed."""
    if upload is None:
        raise BadRequest("missing file field image")
    data = upload.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise ImageTooLarge(f"image file is larger than {settings.max_image_bytes} bytes")
    open_image(data, settings.max_image_pixels)
    return data


def k(raw: str | None, default: int = 5) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"k must be an integer from 1 to {MAX_K}, got {raw!r}") from None
    if not 1 <= value <= MAX_K:
        raise BadRequest(f"k must be an integer from 1 to {MAX_K}, got {value}")
    return value


def cursor(raw: str | None) -> int:
    try:
        value = int(raw or 0)
    except ValueError:
        raise BadRequest(f"cursor must be a cursor from next_cursor, got {raw!r}") from None
    if value < 0:
        raise BadRequest(f"cursor must be a cursor from next_cursor, got {raw!r}")
    return value


def limit(raw: str | None, default: int = 500, most: int = 5000) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise BadRequest(f"limit must be an integer from 1 to {most}, got {raw!r}")
    return int(raw)


def filters(args: Any, reserved: tuple[str, ...] = ("k",)) -> dict[str, str]:
    """Exact-match metadata filters: every query parameter that is not one of ours."""
    return {key: value for key, value in args.items() if key not in reserved}
