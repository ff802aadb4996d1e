"""The OpenAPI 3.1 description of the API; its inputs come from the request models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from api.schemas import (
    FILTER_PREFIX,
    NeighboursQuery,
    ProductForm,
    ProductPageQuery,
    ProductPath,
    TaskPath,
)

ERROR = {"$ref": "#/components/schemas/Error"}
IMAGE_FIELD = {"type": "string", "contentMediaType": "application/octet-stream"}


def fields(model: type[BaseModel]) -> tuple[dict[str, Any], list[str]]:
    """The model's properties (without pydantic's titles) and its required names."""
    schema = model.model_json_schema()
    properties = {
        name: {key: value for key, value in field.items() if key != "title"}
        for name, field in schema["properties"].items()
    }
    return properties, schema.get("required", [])


def parameters(model: type[BaseModel], where: str) -> list[dict[str, Any]]:
    """One parameter per field of the model; path parameters are always required."""
    properties, required = fields(model)
    return [
        {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "description": schema.get("description", ""),
            "schema": {key: value for key, value in schema.items() if key != "description"},
        }
        for name, schema in properties.items()
    ]


def multipart(model: type[BaseModel], filters: bool = False) -> dict[str, Any]:
    """A form body: the model's fields and the image file, and filter fields if it takes them."""
    properties, required = fields(model)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"image": IMAGE_FIELD, **properties},
        "required": ["image", *required],
    }
    if filters:
        schema["patternProperties"] = {FILTER_FIELD: {"type": "string", "description": FILTERS}}
        schema["additionalProperties"] = False
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


FILTER_FIELD = "^" + FILTER_PREFIX.replace(".", "\\.") + ".+$"
FILTERS = (
    f"Exact-match metadata filters: one {FILTER_PREFIX}<field>=<value> each "
    f"(e.g. {FILTER_PREFIX}gender=Men); any other unknown name is a 400."
)
WHY = {
    400: "a parameter or field breaks its schema, is unknown, or the image cannot be read",
    401: "missing or wrong X-API-Key",
    404: "unknown product or task, or no image yet",
    409: "the product is not indexed yet",
    413: "the image is too large",
    415: "the image format is not supported",
    503: "Redis is unavailable (redis_unavailable) or refuses a write, out of memory (overloaded)",
}
LOADING = ", or this process's index is still loading (index_loading)"
OVERLOADED = ", or the embed queue or Redis' memory is full (overloaded)"
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
STRING = {"schema": {"type": "string"}}
REVALIDATE = {
    "ETag": {
        "description": "a weak tag of this process's index state (generation, journal "
        "position, model id) and of the request (product, k, filters): any change to the index "
        "changes it; replicas at the same journal position give the same tag",
        **STRING,
    },
    "Cache-Control": {"description": "no-cache: keep the answer, but revalidate it", **STRING},
}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "ETags of answers the client holds (compared weakly; a list, or *): "
    "when one is current, the answer is a 304 with no body and no search runs",
    **STRING,
}


def errors(*statuses: int, unavailable: str = "") -> dict[str, Any]:
    """Error answers; a 503 says why, with the extra reasons given, and carries Retry-After."""
    answers = {str(status): json_body(ERROR, WHY[status]) for status in statuses}
    if "503" in answers:
        answers["503"]["description"] += f"{unavailable}: try again after Retry-After seconds"
        answers["503"]["headers"] = RETRY_AFTER
    return answers


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


PRODUCT_ID = parameters(ProductPath, "path")

PATHS: dict[str, Any] = {
    "/api/v1/products": {
        "post": {
            "summary": "Add or replace a product: queues its image for embedding",
            "requestBody": multipart(ProductForm),
            "responses": {
                "202": json_body(ref("Accepted"), "queued"),
                **errors(400, 401, 413, 415, 503, unavailable=OVERLOADED),
            },
        },
        "get": {
            "summary": "A page of products; pass next_cursor back until it is null",
            "parameters": parameters(ProductPageQuery, "query"),
            "responses": {
                "200": json_body(ref("ProductPage"), "products"),
                **errors(400, 503),
            },
        },
    },
    "/api/v1/products/{product_id}": {
        "parameters": PRODUCT_ID,
        "get": {
            "summary": "A product's record",
            "responses": {
                "200": json_body(ref("Product"), "the product"),
                **errors(400, 404, 503),
            },
        },
        "delete": {
            "summary": "Remove a product from the index and from results",
            "responses": {"204": {"description": "deleted"}, **errors(400, 401, 404, 503)},
        },
    },
    "/api/v1/products/{product_id}/similar": {
        "parameters": PRODUCT_ID,
        "get": {
            "summary": "The k most similar products, from this process's index replica",
            "description": f"{FILTERS} While Redis is away, a product the replica holds is still "
            "answered. Answers carry an ETag and Cache-Control: no-cache; a request whose "
            "If-None-Match holds the current ETag gets a 304 without a search.",
            "parameters": [*parameters(NeighboursQuery, "query"), IF_NONE_MATCH],
            "responses": {
                "200": {**json_body(ref("Results"), "neighbours"), "headers": REVALIDATE},
                "304": {
                    "description": "not modified: If-None-Match holds the current ETag",
                    "headers": REVALIDATE,
                },
                **errors(400, 404, 409, 503, unavailable=LOADING),
            },
        },
    },
    "/api/v1/products/{product_id}/image": {
        "parameters": PRODUCT_ID,
        "get": {
            "summary": "A JPEG thumbnail of the product image",
            "responses": {
                "200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                **errors(400, 404, 503),
            },
        },
    },
    "/api/v1/search": {
        "post": {
            "summary": "Products similar to an uploaded image",
            "description": f"{FILTERS} The answer waits up to LOOKALIKE_SEARCH_WAIT seconds for "
            "the image's vector, unless LOOKALIKE_MAX_WAITING_SEARCHES searches wait already: "
            "then it is a 202 at once.",
            "requestBody": multipart(NeighboursQuery, filters=True),
            "responses": {
                "200": json_body(ref("Results"), "neighbours"),
                "202": json_body(ref("Accepted"), "still embedding: poll the task"),
                "422": json_body(ref("TaskFailed"), "the image could not be embedded"),
                **errors(400, 401, 413, 415, 503, unavailable=LOADING + OVERLOADED),
            },
        }
    },
    "/api/v1/tasks/{task_id}": {
        "parameters": parameters(TaskPath, "path"),
        "get": {
            "summary": "A task's state, and its result or error",
            "responses": {"200": json_body(ref("Task"), "the task"), **errors(404, 503)},
        },
    },
    "/api/v1/index": {
        "get": {
            "summary": "The generation this process serves: model id, items, journal position, "
            "writer lag; and every generation of the index",
            "responses": {"200": json_body({"type": "object"}, "the index"), **errors(503)},
        },
    },
    "/api/v1/openapi.json": {
        "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
    },
    "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "up"}}}},
    "/readyz": {
        "get": {
            "summary": "Readiness: Redis, index replica, embed workers",
            "responses": {
                "200": json_body(ref("Readiness"), "ready"),
                "503": {**json_body(ref("Readiness"), "not ready"), "headers": RETRY_AFTER},
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "text"}, **errors(503)},
        }
    },
}

HIT = {
    "type": "object",
    "properties": {
        "product_id": {"type": "string"},
        "score": {"type": "number", "description": "cosine similarity"},
        "metadata": {"type": "object"},
    },
}
SCHEMAS: dict[str, Any] = {
    "ErrorBody": {
        "type": "object",
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        "required": ["code", "message"],
    },
    "Error": {
        "type": "object",
        "properties": {"error": ref("ErrorBody")},
        "required": ["error"],
    },
    "TaskFailed": {
        "type": "object",
        "properties": {"error": ref("ErrorBody"), "task_id": {"type": "string"}},
        "required": ["error", "task_id"],
    },
    "Accepted": {
        "type": "object",
        "properties": {
            "task_id": {"type": "string"},
            "product_id": {"type": "string"},
            "status_url": {"type": "string"},
        },
        "required": ["task_id", "status_url"],
    },
    "Product": {
        "type": "object",
        "properties": {
            "product_id": {"type": "string"},
            "metadata": {"type": "object"},
            "indexed": {"type": "boolean"},
            "image_sha256": {"type": ["string", "null"]},
            "model_id": {"type": ["string", "null"]},
            "pending_task": {"type": ["string", "null"]},
            "updated_at": {"type": "number", "description": "Unix time"},
            "image_url": {"type": "string"},
            "similar_url": {"type": "string"},
        },
        "required": ["product_id", "metadata", "indexed"],
    },
    "ProductPage": {
        "type": "object",
        "properties": {
            "products": {"type": "array", "items": ref("Product")},
            "next_cursor": {"type": ["integer", "null"]},
            "total": {"type": "integer"},
        },
        "required": ["products", "next_cursor", "total"],
    },
    "Results": {
        "type": "object",
        "properties": {
            "product_id": {"type": "string", "description": "GET .../similar: the query product"},
            "task_id": {"type": "string", "description": "POST /search: the search task"},
            "k": {"type": "integer"},
            "filters": {"type": "object", "additionalProperties": {"type": "string"}},
            "results": {"type": "array", "items": HIT},
        },
        "required": ["k", "filters", "results"],
    },
    "Readiness": {
        "type": "object",
        "properties": {
            "ready": {"type": "boolean"},
            "checks": {
                "type": "object",
                "description": "true, a count, or the reason the check fails",
                "additionalProperties": {"type": ["boolean", "integer", "string"]},
            },
            "model_id": {"type": ["string", "null"]},
            "notice": {"type": ["string", "null"]},
        },
        "required": ["ready", "checks"],
    },
    "Task": {
        "type": "object",
        "properties": {
            "task_id": {"type": "string"},
            "kind": {"enum": ["index", "search", "delete"]},
            "state": {"enum": ["queued", "running", "succeeded", "failed"]},
            "product_id": {"type": ["string", "null"]},
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
            "error": ref("ErrorBody"),
            "result": {"type": "object"},
        },
        "required": ["task_id", "kind", "state", "created_at", "updated_at"],
    },
}


def openapi_document() -> dict[str, Any]:
    """The whole document, as /api/v1/openapi.json serves it."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "lookalike", "version": "1"},
        "paths": PATHS,
        "components": {"schemas": SCHEMAS},
    }
