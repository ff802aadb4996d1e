"""The gallery: the catalog as a paged grid, an item's neighbours as pictures, search by upload."""

from __future__ import annotations

import base64
from typing import Any

import redis
from flask import Blueprint, redirect, render_template, request, url_for

from api import validation
from api.errors import domain_error
from api.services import current_services
from shared import keys
from shared.errors import LookalikeError

gallery = Blueprint("gallery", __name__)
FILTERS = ("gender", "masterCategory", "articleType", "baseColour")
K_CHOICES = (5, 10, 20)
PAGE_SIZE = 24
KEY_HINT = "enter it in the API key field"


services = current_services


def page(status: int = 200, **context: Any) -> tuple[str, int]:
    catalog = services().replica.catalog
    choices = {key: catalog.field_values(key) for key in FILTERS}
    # The query string only: reading a POST's form here would read the body a 503 refused.
    filters = {key: request.args.get(key, "") for key in FILTERS}
    defaults = {
        "product_id": request.args.get("product_id", "").strip(),
        "query": None, "results": None, "error": None, "pending": None, "grid": None,
        "k": validation.k(None),
    }  # fmt: skip
    return render_template(
        "gallery.html",
        choices=choices,
        filters=filters,
        k_choices=K_CHOICES,
        count=len(catalog),
        model=services().index_model(),
        needs_key=bool(services().settings.api_keys),
        **{**defaults, **context},
    ), status


@gallery.errorhandler(LookalikeError)
@gallery.errorhandler(redis.RedisError)
def error_page(exc: Exception) -> tuple[str, int]:
    """The API's errors, as the gallery's page with the message and the same status."""
    error = domain_error(exc)
    assert error is not None  # both handled classes are domain errors
    return page(error.http_status, error=error.message)


@gallery.before_request
def check_upload() -> None:
    """The upload search obeys the API's rules: capacity first (the body unread), then the key."""
    if request.method != "POST":
        return
    services().check_capacity()
    keys = services().settings.api_keys
    if keys:
        given = request.headers.get("X-API-Key") or request.form.get("api_key", "")
        validation.api_key(given, keys, KEY_HINT)


def chosen_filters(values: Any) -> dict[str, str]:
    """The gallery's own fields (gender=...) as the metadata filters they stand for."""
    return {key: values[key] for key in FILTERS if values.get(key)}


@gallery.get("/")
def index() -> Any:
    product_id = request.args.get("product_id", "").strip()
    if not product_id:
        return catalog_grid()
    k = validation.k(request.args.get("k"))
    product, results = services().similar(product_id, k, chosen_filters(request.args))
    query = {
        "image_url": url_for("v1.get_image", product_id=product_id),
        "product_id": product_id,
        "metadata": product["metadata"],
    }
    return page(product_id=product_id, k=k, query=query, results=results)


def catalog_grid() -> Any:
    """One page of the indexed catalog, filtered; each item links to its neighbours."""
    number = validation.page(request.args.get("page"))
    services().require_index()
    filters: dict[str, Any] = chosen_filters(request.args)
    start = (number - 1) * PAGE_SIZE
    items, total = services().replica.catalog.browse(filters, start, PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    links = {
        name: url_for("gallery.index", page=target, **filters)
        for name, target in (("first", 1), ("previous", number - 1), ("next", number + 1),
                             ("last", pages))
        if 1 <= target <= pages and target != number
    }  # fmt: skip
    grid = {"items": items, "page": number, "pages": pages, "total": total, "links": links}
    return page(grid=grid)


@gallery.get("/random")
def random_product() -> Any:
    product_id = services().products.random_id()
    if product_id is None:
        return page(404, error="the catalog is empty: import some products first")
    values: dict[str, Any] = {"product_id": product_id, **chosen_filters(request.args)}
    return redirect(url_for("gallery.index", **values))


@gallery.post("/")
def search_upload() -> Any:
    settings = services().settings
    k = validation.k(request.form.get("k"))
    image = validation.image(request.files.get("image"), settings)
    record = services().start_search(image, k, chosen_filters(request.form))
    record = services().wait_for_search(record)
    if record.state != "succeeded":
        message = (record.error or {}).get("message", "still embedding the image")
        return page(202 if record.state != "failed" else 422, error=message, k=k,
                    pending=record.task_id)  # fmt: skip
    results = services().search_results(record)
    query = {
        "image_url": query_image_url(record.task_id),
        "product_id": None,
        "metadata": {"productDisplayName": request.files["image"].filename or "your image"},
    }
    return page(k=k, query=query, results=results)


def query_image_url(task_id: str) -> str:
    """The search image's thumbnail, which its worker made, as a data: URI ("" if none is kept)."""
    thumbnail = services().redis.get(keys.query_thumbnail(task_id))
    if thumbnail is None:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(thumbnail).decode()  # type: ignore[arg-type]
