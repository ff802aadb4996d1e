"""The HTTP endpoints of /api/v1: each validates, calls one service function, answers."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from api import validation
from api.services import current_services

v1 = Blueprint("v1", __name__, url_prefix="/api/v1")


services = current_services
UPLOADS = ("v1.post_product", "v1.post_search")
KEY_HINT = "send it in the X-API-Key header"


@v1.before_request
def require_api_key() -> None:
    """Changes (POST, DELETE) need the API key when one is configured; reads are open."""
    if request.method in ("POST", "DELETE"):
        given = request.headers.get("X-API-Key", "")
        validation.api_key(given, services().settings.api_keys, KEY_HINT)


@v1.before_request
def refuse_when_overloaded() -> None:
    """Uploads wait in Redis: refuse them while it or the queue is full, before reading them."""
    if request.endpoint in UPLOADS:
        services().check_capacity()


@v1.before_request
def check_path() -> None:
    """A product_id in the path obeys the rules of the form field (after the API key check)."""
    product_id = (request.view_args or {}).get("product_id")
    if product_id is not None:
        validation.product_id(product_id)


def accepted(task_id: str, **extra: Any) -> tuple[Response, int, dict[str, str]]:
    status_url = url_for("v1.get_task", task_id=task_id)
    body = jsonify(task_id=task_id, status_url=status_url, **extra)
    return body, 202, {"Location": status_url}


@v1.post("/products")
def post_product() -> Any:
    settings = services().settings
    product_id = validation.product_id(request.form.get("product_id"))
    metadata = validation.metadata(request.form.get("metadata"), settings)
    image = validation.image(request.files.get("image"), settings)
    task_id = services().accept_product(product_id, image, metadata)
    return accepted(task_id, product_id=product_id)


@v1.get("/products")
def list_products() -> Any:
    cursor = validation.cursor(request.args.get("cursor"))
    limit = validation.limit(request.args.get("limit"))
    products, next_cursor = services().products.page(cursor, limit)
    return jsonify(
        products=products,
        next_cursor=next_cursor or None,
        total=services().products.count(),
    )


@v1.get("/products/<product_id>")
def get_product(product_id: str) -> Any:
    record = services().product(product_id)
    record["image_url"] = url_for("v1.get_image", product_id=product_id)
    record["similar_url"] = url_for("v1.get_similar", product_id=product_id)
    return jsonify(record)


@v1.get("/products/<product_id>/similar")
def get_similar(product_id: str) -> Any:
    k = validation.k(request.args.get("k"))
    filters = validation.filters(request.args, ("k",), "query parameter")
    etag, unchanged = services().similar_etag(product_id, k, filters, request.if_none_match)
    if unchanged:  # the client holds this answer already: 304, no search, no body
        response = Response(status=304)
    else:
        _, results = services().similar(product_id, k, filters)
        response = jsonify(product_id=product_id, k=k, filters=filters, results=results)
    response.set_etag(etag, weak=True)  # weak: replicas' HNSW graphs may differ at the margin
    response.headers["Cache-Control"] = "no-cache"  # clients may keep it, but revalidate
    return response


@v1.delete("/products/<product_id>")
def delete_product(product_id: str) -> Any:
    services().delete_product(product_id)
    return "", 204


@v1.get("/products/<product_id>/image")
def get_image(product_id: str) -> Any:
    data = services().thumbnail(product_id)
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "max-age=60"})


@v1.post("/search")
def post_search() -> Any:
    settings = services().settings
    k = validation.k(request.form.get("k"))
    image = validation.image(request.files.get("image"), settings)
    filters = validation.filters(request.form, ("k", "image"), "form field")
    record = services().wait_for_search(services().start_search(image, k, filters))
    if record.state in ("queued", "running"):
        return accepted(record.task_id)
    if record.state == "failed":
        error = record.error or {}
        body = {"error": error, "task_id": record.task_id}
        return jsonify(body), 422
    results = services().search_results(record)
    return jsonify(task_id=record.task_id, k=k, filters=filters, results=results)


@v1.get("/tasks/<task_id>")
def get_task(task_id: str) -> Any:
    return jsonify(services().public_task(services().task(task_id)))


@v1.get("/index")
def get_index() -> Any:
    return jsonify(services().index_status())
