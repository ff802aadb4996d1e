"""Checks of client input through the request models; each failure is a BadRequest that says why."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError
from werkzeug.datastructures import FileStorage

from api.errors import BadRequest
from api.schemas import GridQuery, NeighboursQuery, ProductForm, ProductPageQuery
from shared.errors import ImageTooLarge
from shared.images import open_image
from shared.settings import Settings


def parsed(model: type[BaseModel], name: str, raw: str | None) -> Any:
    """One field of the model from request text; absent or empty text gives its default."""
    data = {} if raw is None or raw == "" else {name: raw}
    return getattr(model.model_validate(data), name)


@cache
def constraints(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The field's JSON schema, the one the OpenAPI document shows: what messages quote."""
    properties: dict[str, Any] = model.model_json_schema()["properties"]
    return properties[name]


def not_in_range(model: type[BaseModel], name: str, got: object) -> BadRequest:
    field = constraints(model, name)
    bounds = f"from {field['minimum']} to {field['maximum']}"
    return BadRequest(f"{name} must be an integer {bounds}, got {got!r}")


def product_id(value: str | None) -> str:
    try:
        result: str = parsed(ProductForm, "product_id", value)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "missing":
            raise BadRequest("missing field product_id") from None
        rule = constraints(ProductForm, "product_id")["description"]
        raise BadRequest(f"invalid product_id: use {rule}") from None
    return result


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


def k(raw: str | None) -> int:
    """k from text; out of range, the message shows the number, otherwise the text."""
    try:
        result: int = parsed(NeighboursQuery, "k", raw)
    except ValidationError as exc:
        raise not_in_range(NeighboursQuery, "k", exc.errors()[0]["input"]) from None
    return result


def cursor(raw: str | None) -> int:
    try:
        result: int = parsed(ProductPageQuery, "cursor", raw)
    except ValidationError:
        raise BadRequest(f"cursor must be a cursor from next_cursor, got {raw!r}") from None
    return result


def page(raw: str | None) -> int:
    try:
        result: int = parsed(GridQuery, "page", raw)
    except ValidationError:
        raise not_in_range(GridQuery, "page", raw) from None
    return result


def limit(raw: str | None) -> int:
    try:
        result: int = parsed(ProductPageQuery, "limit", raw)
    except ValidationError:
        raise not_in_range(ProductPageQuery, "limit", raw) from None
    return result


def filters(
    args: Any, reserved: tuple[str, ...] = tuple(NeighboursQuery.model_fields)
) -> dict[str, str]:
    """Exact-match metadata filters: every query parameter that is not one of ours."""
    return {key: value for key, value in args.items() if key not in reserved}
