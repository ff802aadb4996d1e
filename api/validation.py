"""Checks of client input through the request models; each failure is a BadRequest that says why."""

from __future__ import annotations

import hmac
import json
import math
import sys
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError
from werkzeug.datastructures import FileStorage

from api.errors import BadRequest, Unauthorized
from api.schemas import FILTER_PREFIX, GridQuery, NeighboursQuery, ProductForm, ProductPageQuery
from shared.errors import ImageTooLarge
from shared.images import check_header
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


MAX_METADATA_DEPTH = 20
TOO_DEEP = f"metadata must not be nested more than {MAX_METADATA_DEPTH} levels deep"
NOT_FINITE = "metadata must not contain NaN or Infinity"


def metadata(raw: str | None, settings: Settings) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if len(raw.encode()) > settings.max_metadata_bytes:
        raise BadRequest(f"metadata is larger than {settings.max_metadata_bytes} bytes")
    try:
        value = json.loads(raw, parse_constant=not_finite, parse_float=finite, parse_int=integer)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"metadata is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None
    if not isinstance(value, dict):
        raise BadRequest("metadata must be a JSON object")
    if depth(value) > MAX_METADATA_DEPTH:
        raise BadRequest(TOO_DEEP)
    return value


def not_finite(text: str) -> Any:
    """JSON's NaN, Infinity and -Infinity: Python reads them, no JSON parser must."""
    raise BadRequest(NOT_FINITE)


def finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as inf
        raise BadRequest(NOT_FINITE)
    return value


def integer(text: str) -> int:
    digits = sys.get_int_max_str_digits()
    if len(text.lstrip("-")) > digits:  # int() would raise a ValueError of its own
        raise BadRequest(f"metadata must not contain integers of more than {digits} digits")
    return int(text)


def depth(value: Any) -> int:
    """How many objects and arrays nest in a JSON value ({} is 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def image(upload: FileStorage | None, settings: Settings) -> bytes:
    """The upload's bytes, once its header shows an image we can embed (size, format, pixels).

    The pixels are decoded by the embed worker only, once: broken data fails its task there.
    """
    if upload is None:
        raise BadRequest("missing file field image")
    data = upload.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise ImageTooLarge(f"image file is larger than {settings.max_image_bytes} bytes")
    check_header(data, settings.max_image_pixels)
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


def filters(values: Any, known: tuple[str, ...], where: str) -> dict[str, str]:
    """Exact-match metadata filters, filter.<field>=<value>; any other unknown name is a 400."""
    chosen = {}
    for name in values:
        if not isinstance(name, str):  # a multipart part whose name werkzeug cannot read
            raise BadRequest(f"a {where} without a readable name; filters are {FILTER_PREFIX}"
                             "<field>=<value>")  # fmt: skip
        field = name.removeprefix(FILTER_PREFIX)
        if name.startswith(FILTER_PREFIX) and field:
            chosen[field] = values[name]
        elif name not in known:
            hint = f"filters are {FILTER_PREFIX}<field>=<value>"
            raise BadRequest(f"unknown {where} {name!r}; {hint}")
    return chosen


def api_key(given: str, keys: tuple[str, ...], how: str) -> None:
    """Nothing when no keys are configured or one of them is given, else an Unauthorized."""
    # Every key compared, in constant time each: which one matched must not leak either.
    if keys and not sum(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise Unauthorized(f"missing or wrong API key: {how}")
