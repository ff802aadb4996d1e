"""The OpenAPI 3.1 description of the API (a test checks it against the app's routes)."""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
PRODUCT_ID = {
    "name": "product_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"},
}
K = {"type": "integer", "minimum": 1, "maximum": 100, "default": 5}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*statuses: int) -> dict[str, Any]:
    return {str(status): json_body(ERROR, "error") for status in statuses}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def multipart(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


IMAGE_FIELD = {"type": "string", "contentMediaType": "application/octet-stream"}

PATHS: dict[str, Any] = {
    "/api/v1/products": {
        "post": {
            "summary": "Add or replace a product: queues its image for embedding",
            "requestBody": multipart(
                {
                    "image": IMAGE_FIELD,
                    "product_id": {"type": "string"},
                    "metadata": {"type": "string", "description": "a JSON object"},
                },
                ["image", "product_id"],
            ),
            "responses": {
                "202": json_body(ref("Accepted"), "queued"),
                **errors(400, 401, 413, 415),
            },
        },
        "get": {
            "summary": "A page of products; pass next_cursor back until it is null",
            "parameters": [
                {"name": "cursor", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 5000}},
            ],
            "responses": {"200": json_body(ref("ProductPage"), "products"), **errors(400)},
        },
    },
    "/api/v1/products/{product_id}": {
        "parameters": [PRODUCT_ID],
        "get": {
            "summary": "A product's record",
            "responses": {"200": json_body(ref("Product"), "the product"), **errors(404)},
        },
        "delete": {
            "summary": "Remove a product from the index and from results",
            "responses": {"204": {"description": "deleted"}, **errors(401, 404)},
        },
    },
    "/api/v1/products/{product_id}/similar": {
        "parameters": [PRODUCT_ID],
        "get": {
            "summary": "The k most similar products; other query parameters filter metadata",
            "parameters": [{"name": "k", "in": "query", "schema": K}],
            "responses": {"200": json_body(ref("Results"), "neighbours"), **errors(400, 404, 409)},
        },
    },
    "/api/v1/products/{product_id}/image": {
        "parameters": [PRODUCT_ID],
        "get": {
            "summary": "A JPEG thumbnail of the product image",
            "responses": {
                "200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                **errors(404),
            },
        },
    },
    "/api/v1/search": {
        "post": {
            "summary": "Products similar to an uploaded image; other form fields filter metadata",
            "requestBody": multipart({"image": IMAGE_FIELD, "k": K}, ["image"]),
            "responses": {
                "200": json_body(ref("Results"), "neighbours"),
                "202": json_body(ref("Accepted"), "still embedding: poll the task"),
                **errors(400, 413, 415, 422),
            },
        }
    },
    "/api/v1/tasks/{task_id}": {
        "parameters": [TASK_ID],
        "get": {
            "summary": "A task's state, and its result or error",
            "responses": {"200": json_body(ref("Task"), "the task"), **errors(404)},
        },
    },
    "/api/v1/openapi.json": {
        "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
    },
    "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "up"}}}},
    "/readyz": {
        "get": {
            "summary": "Readiness: Redis, index replica, embed workers",
            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
        }
    },
    "/metrics": {
        "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}
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
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                "required": ["code", "message"],
            }
        },
        "required": ["error"],
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
            "image_url": {"type": "string"},
            "similar_url": {"type": "string"},
        },
        "required": ["product_id", "metadata", "indexed"],
    },
    "ProductPage": {
        "type": "object",
        "properties": {
            "products": {"type": "array", "items": {"$ref": "#/components/schemas/Product"}},
            "next_cursor": {"type": ["integer", "null"]},
            "total": {"type": "integer"},
        },
        "required": ["products", "next_cursor", "total"],
    },
    "Results": {
        "type": "object",
        "properties": {"k": K, "results": {"type": "array", "items": HIT}},
        "required": ["results"],
    },
    "Task": {
        "type": "object",
        "properties": {
            "task_id": {"type": "string"},
            "kind": {"enum": ["index", "search", "delete"]},
            "state": {"enum": ["queued", "running", "succeeded", "failed"]},
            "product_id": {"type": ["string", "null"]},
            "error": {"type": "object"},
            "result": {"type": "object"},
        },
        "required": ["task_id", "kind", "state"],
    },
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "lookalike", "version": "1"},
        "paths": PATHS,
        "components": {"schemas": SCHEMAS},
    }
