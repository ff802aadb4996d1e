"""The OpenAPI document against the app: its routes, every documented constraint, every status."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.openapi import openapi_document
from tests.support.images import encode, pattern

KEY = "s3cret"
JPEG = encode(pattern(64, 48, seed=1), "JPEG")
ICO = encode(pattern(16, 16), "ICO")
DOCUMENT = openapi_document()
PRODUCT, SIMILAR = "/api/v1/products/{product_id}", "/api/v1/products/{product_id}/similar"
NOT_INTEGERS = ("x", "1.5", "5.0", "1e3", " 5", "5 ", "5\n", "+5", "0x10", "1_0")
NOT_INTEGERS += ("\u00b2", "\u0663", "\uff15")  # str.isdigit() takes these
HUGE = "9" * 5000  # more digits than int() takes by default
IDS = ("a", "Z9", "a._:-b", "0" + "x" * 127, "-a", ".a", "_a", ":a", "x" * 129, "a b", "a*")
IDS += ("a\n", "a+b", "\u00e9", "\uff41")


@pytest.fixture(scope="module")
def app(launch) -> Iterator[Flask]:
    """One app for the module (each test makes its own ids), with an API key to check 401s."""
    with launch(api_key=KEY) as app:
        assert app.extensions["lookalike"].replica.loaded.wait(10), "the replica did not load"
        yield app


@dataclass(frozen=True)
class Input:
    """One documented input of an operation: a path or query parameter or a form field."""

    method: str
    path: str
    where: str
    name: str
    schema: dict[str, Any] = field(compare=False)
    required: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.where} {self.name}"


def operations() -> Iterator[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]:
    """Each documented (method, path, operation, parameters shared by the path)."""
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield method.upper(), path, operation, item.get("parameters", [])


def documented_inputs() -> Iterator[Input]:
    for method, path, operation, shared in operations():
        for parameter in [*shared, *operation.get("parameters", [])]:
            where, name, required = parameter["in"], parameter["name"], parameter["required"]
            yield Input(method, path, where, name, parameter["schema"], required)
        body = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
        if body:
            required = body["schema"]["required"]
            for name, schema in body["schema"]["properties"].items():
                yield Input(method, path, "form", name, schema, name in required)


INPUTS = list(documented_inputs())
INTEGERS = [spot for spot in INPUTS if spot.schema.get("type") == "integer"]
PATTERNED = [spot for spot in INPUTS if "pattern" in spot.schema]


def the_input(method: str, path: str, name: str) -> Input:
    (found,) = [s for s in INPUTS if (s.method, s.path, s.name) == (method, path, name)]
    return found


def sample(spot: Input) -> Any:
    """A valid value: the image for a file field, else the documented example or default."""
    if "contentMediaType" in spot.schema:
        return (io.BytesIO(JPEG), "x.jpg")
    return str(spot.schema.get("examples", [spot.schema.get("default")])[0])


def send(client: FlaskClient, target: Input, value: str):
    """Call the operation with every required input valid and the target input at value."""
    path, query, form = target.path, {}, {}
    for spot in INPUTS:
        if (spot.method, spot.path) != (target.method, target.path):
            continue
        if spot == target or spot.required:
            given = value if spot == target else sample(spot)
            if spot.where == "path":
                path = path.replace(f"{{{spot.name}}}", quote(given, safe=""))
            else:
                (query if spot.where == "query" else form)[spot.name] = given
    return client.open(
        path, method=target.method, query_string=query, data=form, headers={"X-API-Key": KEY}
    )


def assert_bad_request(response, message: str | None = None) -> None:
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"code", "message"}
    assert error["code"] == "bad_request"
    if message is not None:
        assert error["message"] == message


def cases(spots: list[Input], values: Callable[[Input], list[Any]]) -> list[Any]:
    """(input, value) parameters with readable ids."""
    return [
        pytest.param(spot, str(value), id=f"{spot}={value!r:.20}")
        for spot in spots
        for value in values(spot)
    ]


def inside(spot: Input) -> list[Any]:
    schema = spot.schema
    bounds = [schema[key] for key in ("minimum", "maximum", "default") if key in schema]
    return [*bounds, f"0{schema['minimum']}", ""]


def test_the_served_document_is_the_generated_one(client):
    assert client.get("/api/v1/openapi.json").get_json() == DOCUMENT


def test_openapi_documents_exactly_the_routes_of_the_app(app):
    assert DOCUMENT["openapi"] == "3.1.0"
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("gallery."):
            continue  # HTML pages, not the API
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update((rule.methods or set()) - {"HEAD", "OPTIONS"})
    documented = {
        path: {method.upper() for method in item if method != "parameters"}
        for path, item in DOCUMENT["paths"].items()
    }
    assert documented == routes


def test_the_constrained_inputs_are_documented():
    constrained = {str(spot) for spot in INTEGERS + PATTERNED}
    assert constrained == {
        "GET /api/v1/products query cursor",
        "GET /api/v1/products query limit",
        f"GET {SIMILAR} query k",
        "POST /api/v1/search form k",
        "POST /api/v1/products form product_id",
        *(f"{method} {PRODUCT} path product_id" for method in ("GET", "DELETE")),
        f"GET {SIMILAR} path product_id",
        f"GET {PRODUCT}/image path product_id",
    }
    assert all("minimum" in spot.schema and "maximum" in spot.schema for spot in INTEGERS)


@pytest.mark.parametrize(("spot", "value"), cases(INTEGERS, inside))
def test_integer_inside_bounds_is_not_400(client, spot, value):
    assert send(client, spot, value).status_code != 400


@pytest.mark.parametrize(("spot", "value"), cases(INTEGERS, lambda s: [s.schema["minimum"] - 1]))
def test_integer_below_minimum_is_400(client, spot, value):
    response = send(client, spot, value)
    assert_bad_request(response)
    assert response.get_json()["error"]["message"].startswith(f"{spot.name} must be ")


@pytest.mark.parametrize(("spot", "value"), cases(INTEGERS, lambda s: [s.schema["maximum"] + 1]))
def test_integer_above_maximum_is_400(client, spot, value):
    assert_bad_request(send(client, spot, value))


@pytest.mark.parametrize(("spot", "value"), cases(INTEGERS, lambda s: [*NOT_INTEGERS, HUGE]))
def test_not_an_ascii_decimal_integer_is_400(client, spot, value):
    response = send(client, spot, value)
    assert_bad_request(response)
    assert response.get_json()["error"]["message"].endswith(f", got {value!r}")


def matching(spot: Input) -> list[str]:
    return [value for value in IDS if re.fullmatch(spot.schema["pattern"], value)]


def violating(spot: Input) -> list[str]:
    return [value for value in IDS if not re.fullmatch(spot.schema["pattern"], value)]


def invalid_product_id() -> str:
    rule = the_input("POST", "/api/v1/products", "product_id").schema["description"]
    return f"invalid product_id: use {rule}"


def test_the_pattern_cases_fall_on_both_sides():
    assert all(matching(spot) and violating(spot) for spot in PATTERNED)


@pytest.mark.parametrize(("spot", "value"), cases(PATTERNED, matching))
def test_string_matching_pattern_is_not_400(client, spot, value):
    assert send(client, spot, value).status_code != 400


@pytest.mark.parametrize(("spot", "value"), cases(PATTERNED, violating))
def test_string_violating_pattern_is_400(client, spot, value):
    assert_bad_request(send(client, spot, value), invalid_product_id())


def k_message(got: str) -> str:
    k = the_input("GET", SIMILAR, "k").schema
    return f"k must be an integer from {k['minimum']} to {k['maximum']}, got {got}"


def test_similar_k_above_maximum_is_400(client):
    above = the_input("GET", SIMILAR, "k").schema["maximum"] + 1
    response = client.get(f"/api/v1/products/shirt-1/similar?k={above}")
    assert_bad_request(response, k_message(str(above)))


def test_similar_k_below_minimum_is_400(client):
    below = the_input("GET", SIMILAR, "k").schema["minimum"] - 1
    response = client.get(f"/api/v1/products/shirt-1/similar?k={below}")
    assert_bad_request(response, k_message(str(below)))


def test_similar_k_non_ascii_digit_is_400(client):
    response = client.get("/api/v1/products/shirt-1/similar", query_string={"k": "٣"})
    assert_bad_request(response, k_message("'٣'"))


def test_search_k_above_maximum_is_400(client):
    spot = the_input("POST", "/api/v1/search", "k")
    above = spot.schema["maximum"] + 1
    assert_bad_request(send(client, spot, str(above)), k_message(str(above)))


def test_search_empty_k_is_the_documented_default(app, client):
    spot = the_input("POST", "/api/v1/search", "k")
    task_id = send(client, spot, "").get_json()["task_id"]
    record = app.extensions["lookalike"].task(task_id)
    assert record.options["k"] == spot.schema["default"]


def limit_message(got: str) -> str:
    limit = the_input("GET", "/api/v1/products", "limit").schema
    return f"limit must be an integer from {limit['minimum']} to {limit['maximum']}, got {got!r}"


def test_listing_limit_above_maximum_is_400(client):
    above = str(the_input("GET", "/api/v1/products", "limit").schema["maximum"] + 1)
    response = client.get("/api/v1/products", query_string={"limit": above})
    assert_bad_request(response, limit_message(above))


def test_listing_limit_superscript_digit_is_400(client):
    response = client.get("/api/v1/products", query_string={"limit": "²"})
    assert_bad_request(response, limit_message("²"))


def test_listing_cursor_below_minimum_is_400(client):
    response = client.get("/api/v1/products", query_string={"cursor": "-1"})
    assert_bad_request(response, "cursor must be a cursor from next_cursor, got '-1'")


def test_listing_cursor_above_maximum_is_400(client):
    above = str(the_input("GET", "/api/v1/products", "cursor").schema["maximum"] + 1)
    response = client.get("/api/v1/products", query_string={"cursor": above})
    assert_bad_request(response, f"cursor must be a cursor from next_cursor, got {above!r}")


@pytest.mark.parametrize("spot", [spot for spot in PATTERNED if spot.where == "path"], ids=str)
def test_path_product_id_violating_pattern_is_400(client, spot):
    assert_bad_request(send(client, spot, "-bad"), invalid_product_id())


def test_form_product_id_missing_is_400(client):
    spot = the_input("POST", "/api/v1/products", "product_id")
    assert_bad_request(send(client, spot, ""), "missing field product_id")


@dataclass(frozen=True)
class Row:
    """A request and the status it must answer; {stored} and {task}: a product just posted.

    redis_down: sent while the test's redis-server is stopped.
    """

    operation: str
    status: int
    url: str
    form: dict[str, str] | None = None
    image: bytes | None = None
    key: bool = True
    redis_down: bool = False

    def __str__(self) -> str:
        return f"{self.operation} {self.status}" + (" redis down" if self.redis_down else "")

    def send(self, client: FlaskClient, stored: str, task: str):
        method = self.operation.split()[0]
        data: dict[str, Any] = dict(self.form or {})
        if self.image is not None:
            data["image"] = (io.BytesIO(self.image), "x.jpg")
        headers = {"X-API-Key": KEY} if self.key else {}
        url = self.url.format(stored=stored, task=task)
        return client.open(url, method=method, data=data, headers=headers)


NEW = {"product_id": "new-1"}
ROWS = [
    Row("POST /api/v1/products", 202, "/api/v1/products", NEW, JPEG),
    Row("POST /api/v1/products", 400, "/api/v1/products", {"product_id": "-bad"}, JPEG),
    Row("POST /api/v1/products", 401, "/api/v1/products", NEW, JPEG, key=False),
    Row("POST /api/v1/products", 413, "/api/v1/products", NEW, b"\xff" * 60_000),
    Row("POST /api/v1/products", 415, "/api/v1/products", NEW, ICO),
    Row("POST /api/v1/products", 503, "/api/v1/products", NEW, JPEG, redis_down=True),
    Row("GET /api/v1/products", 200, "/api/v1/products?limit=1"),
    Row("GET /api/v1/products", 400, "/api/v1/products?limit=0"),
    Row("GET /api/v1/products", 503, "/api/v1/products", redis_down=True),
    Row(f"GET {PRODUCT}", 200, "/api/v1/products/{stored}"),
    Row(f"GET {PRODUCT}", 400, "/api/v1/products/-bad"),
    Row(f"GET {PRODUCT}", 404, "/api/v1/products/missing"),
    Row(f"GET {PRODUCT}", 503, "/api/v1/products/{stored}", redis_down=True),
    Row(f"DELETE {PRODUCT}", 204, "/api/v1/products/{stored}"),
    Row(f"DELETE {PRODUCT}", 400, "/api/v1/products/-bad"),
    Row(f"DELETE {PRODUCT}", 401, "/api/v1/products/{stored}", key=False),
    Row(f"DELETE {PRODUCT}", 404, "/api/v1/products/missing"),
    Row(f"DELETE {PRODUCT}", 503, "/api/v1/products/{stored}", redis_down=True),
    Row(f"GET {SIMILAR}", 400, "/api/v1/products/{stored}/similar?k=0"),
    Row(f"GET {SIMILAR}", 404, "/api/v1/products/missing/similar"),
    Row(f"GET {SIMILAR}", 409, "/api/v1/products/{stored}/similar"),
    Row(f"GET {SIMILAR}", 400, "/api/v1/products/{stored}/similar?gender=Men"),
    Row(f"GET {SIMILAR}", 503, "/api/v1/products/{stored}/similar", redis_down=True),
    Row(f"GET {PRODUCT}/image", 400, "/api/v1/products/-bad/image"),
    Row(f"GET {PRODUCT}/image", 404, "/api/v1/products/{stored}/image"),
    Row(f"GET {PRODUCT}/image", 503, "/api/v1/products/{stored}/image", redis_down=True),
    Row("POST /api/v1/search", 202, "/api/v1/search", {"k": "3"}, JPEG),
    Row("POST /api/v1/search", 400, "/api/v1/search", {"k": "0"}, JPEG),
    Row("POST /api/v1/search", 401, "/api/v1/search", {}, JPEG, key=False),
    Row("POST /api/v1/search", 413, "/api/v1/search", {}, b"\xff" * 60_000),
    Row("POST /api/v1/search", 415, "/api/v1/search", {}, ICO),
    Row("POST /api/v1/search", 400, "/api/v1/search", {"gender": "Men"}, JPEG),
    Row("POST /api/v1/search", 503, "/api/v1/search", {}, JPEG, redis_down=True),
    Row("GET /api/v1/tasks/{task_id}", 200, "/api/v1/tasks/{task}"),
    Row("GET /api/v1/tasks/{task_id}", 404, "/api/v1/tasks/missing"),
    Row("GET /api/v1/tasks/{task_id}", 503, "/api/v1/tasks/{task}", redis_down=True),
    Row("GET /api/v1/index", 200, "/api/v1/index"),
    Row("GET /api/v1/index", 503, "/api/v1/index", redis_down=True),
    Row("GET /api/v1/openapi.json", 200, "/api/v1/openapi.json"),
    Row("GET /healthz", 200, "/healthz"),
    Row("GET /readyz", 503, "/readyz"),
    Row("GET /metrics", 200, "/metrics"),
    Row("GET /metrics", 503, "/metrics", redis_down=True),
]


def documented_responses(operation: str) -> dict[str, Any]:
    method, path = operation.split()
    responses: dict[str, Any] = DOCUMENT["paths"][path][method.lower()]["responses"]
    return responses


# Statuses only a running embed worker can produce, and the end-to-end test that produces each.
ELSEWHERE = {
    ("POST /api/v1/search", 422): "tests/integration/test_pipeline.py::"
    "test_search_whose_image_the_worker_refuses_is_422",
}


def test_every_documented_error_status_has_a_row():
    for method, path, operation, _ in operations():
        documented = {int(status) for status in operation["responses"]}
        tabled = {row.status for row in ROWS if row.operation == f"{method} {path}"}
        tabled |= {status for (where, status) in ELSEWHERE if where == f"{method} {path}"}
        assert {status for status in documented if status >= 400} <= tabled, (method, path)
        assert tabled <= documented, (method, path)


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_table_request_answers_its_documented_status(app, client, redis_server, row):
    stored = f"stored-{uuid.uuid4().hex}"
    posted = client.post(
        "/api/v1/products",
        data={"product_id": stored, "image": (io.BytesIO(JPEG), "x.jpg")},
        headers={"X-API-Key": KEY},
    )
    with redis_stopped(redis_server) if row.redis_down else nullcontext():
        response = row.send(client, stored, posted.get_json()["task_id"])
    assert response.status_code == row.status, response.get_data(as_text=True)
    documented = documented_responses(row.operation)[str(row.status)]
    assert all(name in response.headers for name in documented.get("headers", {}))
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    if schema == {"$ref": "#/components/schemas/Error"}:
        error = response.get_json()["error"]
        assert set(error) == {"code", "message"}
        assert all(isinstance(value, str) for value in error.values())


@contextmanager
def redis_stopped(server) -> Iterator[None]:
    server.stop()
    try:
        yield
    finally:
        server.start()


def form_names() -> list[Any]:
    """Form field names on both sides of the documented filter pattern of POST /search."""
    schema = DOCUMENT["paths"]["/api/v1/search"]["post"]["requestBody"]["content"]
    schema = schema["multipart/form-data"]["schema"]
    assert schema["additionalProperties"] is False
    (name_pattern,) = schema["patternProperties"]
    names = ["filter.gender", "filter.a.b", "filter.\u00e9", "filter.", "gender", "_", "Filter.x"]
    return [pytest.param(name, bool(re.search(name_pattern, name)), id=name) for name in names]


@pytest.mark.parametrize(("name", "documented"), form_names())
def test_search_form_field_is_refused_unless_documented(client, name, documented):
    data = {"image": (io.BytesIO(JPEG), "x.jpg"), name: "Men"}
    response = client.post("/api/v1/search", data=data, headers={"X-API-Key": KEY})
    if documented:
        assert response.status_code == 202
    else:
        assert_bad_request(
            response, f"unknown form field {name!r}; filters are filter.<field>=<value>"
        )


def test_similar_documents_its_filter_parameters():
    description = DOCUMENT["paths"][SIMILAR]["get"]["description"]
    assert "filter.<field>=<value>" in description
