"""Property test of every operation in the OpenAPI document: whatever values a client sends for its
documented parameters and form fields (and for unknown ones), the answer is never a 5xx but a
documented 503, and every error is the JSON error shape."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.openapi import openapi_document
from tests.support.images import encode, pattern
from tests.support.journal import journal

KEY = "fuzz-key"
DOCUMENT = openapi_document()
JPEG = encode(pattern(64, 48, seed=1), "JPEG")
GOOD_IMAGES = [JPEG, encode(pattern(20, 20), "PNG"), encode(pattern(20, 20), "GIF")]
BAD_IMAGES = [
    encode(pattern(16, 16), "ICO"),
    JPEG[:300],
    b"\xff" * 60_000,  # over the test app's 50,000-byte limit
]
EDGES = ["", "0", "-1", "1", "5", "100", "101", "1e3", "0x10", " 5", "\u0663", "\x00", "%", ".."]
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


def texts() -> st.SearchStrategy[str]:
    """Request text: random unicode, edge cases, numbers of any size."""
    return st.one_of(
        st.text(max_size=30),
        st.sampled_from(EDGES),
        st.integers().map(str),
        st.integers(min_value=1, max_value=6000).map(lambda digits: "9" * digits),
    )


def metadata() -> st.SearchStrategy[str]:
    """JSON-ish text: objects, other JSON values, NaN and Infinity, deep nesting, no JSON."""
    return st.one_of(
        st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4).map(json.dumps),
        JSON_VALUES.map(json.dumps),
        st.integers(min_value=0, max_value=6000).map(lambda d: '{"a": ' + "[" * d + "]" * d + "}"),
        texts(),
    )


def value_for(name: str, schema: dict[str, Any], known: list[str]) -> st.SearchStrategy[Any]:
    """Values of one input; `known`: ids that exist, so that requests also get past the 404s."""
    if "contentMediaType" in schema:
        return st.one_of(
            st.sampled_from(GOOD_IMAGES), st.sampled_from(BAD_IMAGES), st.binary(max_size=2000)
        )
    if name == "metadata":
        return metadata()
    values = [texts()]
    if schema.get("type") == "integer":
        values.append(st.integers(schema["minimum"], schema["maximum"]).map(str))
    if "pattern" in schema:
        values.append(st.from_regex(schema["pattern"], fullmatch=True))
    if known:
        values.append(st.sampled_from(known))
    return st.one_of(values)


def inputs(path: str, method: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, name, schema) of each documented parameter and form field of the operation."""
    item = DOCUMENT["paths"][path]
    operation = item[method]
    found = [
        (parameter["in"], parameter["name"], parameter["schema"])
        for parameter in [*item.get("parameters", []), *operation.get("parameters", [])]
    ]
    form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    for name, schema in (form or {}).get("schema", {}).get("properties", {}).items():
        found.append(("form", name, schema))
    return found


def unknown_names() -> st.SearchStrategy[str]:
    """Names no operation documents, and filter.<field> names."""
    return st.one_of(st.text(min_size=1, max_size=10), st.text(max_size=10).map("filter.".__add__))


MOSTLY = st.sampled_from([True] * 9 + [False])


@st.composite
def requests(draw: Any, path: str, method: str, known: dict[str, list[str]]) -> dict[str, Any]:
    """One request to the operation: each input drawn or left out, maybe unknown ones too."""
    url, query, form = path, {}, {}
    for where, name, schema in inputs(path, method):
        value = draw(value_for(name, schema, known.get(name, [])))
        if where == "path":
            url = url.replace(f"{{{name}}}", quote(value, safe=""))
        elif draw(MOSTLY):
            target = query if where == "query" else form
            target[name] = (value, f"{name}.bin") if isinstance(value, bytes) else value
    if not draw(MOSTLY):
        extra = draw(st.dictionaries(unknown_names(), texts(), min_size=1, max_size=2))
        (form if form else query).update({k: v for k, v in extra.items() if k not in form})
    key = KEY if draw(MOSTLY) else draw(st.sampled_from(["wrong", ""]))
    return {"path": url, "query": query, "form": form, "headers": {"X-API-Key": key}}


def send(client: FlaskClient, method: str, request: dict[str, Any]):
    """The request, with a fresh file for each upload (hypothesis replays requests)."""
    form = {
        name: (io.BytesIO(value[0]), value[1]) if isinstance(value, tuple) else value
        for name, value in request["form"].items()
    }
    return client.open(
        request["path"], method=method.upper(), query_string=request["query"],
        data=form or None, headers=request["headers"],
    )  # fmt: skip


def assert_well_formed(operation: dict[str, Any], response) -> None:
    status = response.status_code
    documented = operation["responses"]
    if status >= 500:
        assert status == 503 and "503" in documented, response.get_data(as_text=True)[:500]
    if status < 400:
        return
    assert response.is_json, response.get_data(as_text=True)[:500]
    body = response.get_json()
    schema = documented.get(str(status), {}).get("content", {}).get("application/json", {})
    if schema.get("schema") == {"$ref": "#/components/schemas/Readiness"}:
        assert {"ready", "checks"} <= set(body)
        return
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert all(isinstance(value, str) and value for value in body["error"].values()), body


OPERATIONS = [
    pytest.param(path, method, id=f"{method.upper()} {path}")
    for path, item in DOCUMENT["paths"].items()
    for method in item
    if method != "parameters"
]


@pytest.fixture(scope="module")
def app(launch) -> Iterator[Flask]:
    """One app for the whole module; searches answer at once (no worker embeds them)."""
    with launch(api_key=KEY, search_wait=0) as app:
        assert app.extensions["lookalike"].replica.loaded.wait(10), "the replica did not load"
        yield app


@pytest.fixture
def known(app) -> dict[str, list[str]]:
    """Products "0" to "2", posted and in the replica, and their tasks: ids that exist."""
    journal(app, 3)
    client, tasks = app.test_client(), []
    for product_id in ("0", "1", "2"):
        data = {"product_id": product_id, "image": (io.BytesIO(JPEG), "x.jpg")}
        response = client.post("/api/v1/products", data=data, headers={"X-API-Key": KEY})
        tasks.append(response.get_json()["task_id"])
    return {"product_id": ["0", "1", "2"], "task_id": tasks}


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_request_gets_a_5xx_or_a_shapeless_error(app, known, path, method):
    client = app.test_client()
    operation = DOCUMENT["paths"][path][method]
    # Operations without inputs only get unknown query parameters: a few examples are plenty.
    examples = 60 if inputs(path, method) else 5

    @settings(
        max_examples=examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )  # fmt: skip
    @given(request=requests(path, method, known))
    def check(request: dict[str, Any]) -> None:
        assert_well_formed(operation, send(client, method, request))

    check()
