"""`lookalike evaluate --html`: the evaluation as one self-contained HTML page.

Precision per label against the chance level, precision per value of the `by` label (inline SVG
bars), and two sheets of queries with their neighbours' thumbnails: the worst queries and a random
sample. Thumbnails are fetched from the API and embedded as data: URIs, so the file stands alone.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import requests

from cli.client import ApiClient, ApiError
from cli.evaluate import Evaluation, Product

MAX_GROUPS = 30
FETCH_CONCURRENCY = 8
Thumbnail = Callable[[str], bytes | None]
SIGNATURES = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"GIF8": "image/gif",
}


@dataclass(frozen=True)
class Bar:
    """One bar of a chart: a label (or a value of `by`), its items and precision."""

    name: str
    items: int
    precision: float
    chance: float | None = None


@dataclass(frozen=True)
class Card:
    """A product on a sheet; `mark` is same/different (its `by` label against the query's),
    empty for the query itself, unknown when the query has no such label."""

    product_id: str
    name: str
    label: str
    image: str | None
    score: float | None = None
    mark: str = ""


@dataclass(frozen=True)
class SheetRow:
    query: Card
    neighbours: list[Card]

    @property
    def same(self) -> int:
        return sum(card.mark == "same" for card in self.neighbours)


def write_html(
    report: Evaluation, client: ApiClient, path: Path, sheet: int = 8, seed: int = 0
) -> None:
    """Render the report, with thumbnails and the model id from the API, into `path`."""
    page = render_html(report, api_thumbnail(client), index_model(client), sheet, seed)
    path.write_text(page, encoding="utf-8")


def render_html(
    report: Evaluation,
    thumbnail: Thumbnail,
    model: Mapping[str, Any],
    sheet: int = 8,
    seed: int = 0,
    generated: datetime | None = None,
) -> str:
    """The page; `thumbnail(product_id)` gives an image's bytes, or None when it has none."""
    worst, sample = report.worst(sheet), sample_queries(report, sheet, seed)
    images = data_uris(thumbnail, shown_ids(report, [*worst, *sample]))
    groups = bars_by_value(report)
    return template("report.html").render(
        report=report,
        model_id=model.get("model_id") or "unknown",
        notice=model.get("notice"),
        generated=(generated or datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M %Z"),
        labels=bars_by_label(report),
        groups=groups[:MAX_GROUPS],
        groups_left_out=max(0, len(groups) - MAX_GROUPS),
        worst=[sheet_row(report, pid, images) for pid in worst],
        sample=[sheet_row(report, pid, images) for pid in sample],
        seed=seed,
    )


@cache
def template(name: str) -> jinja2.Template:
    """A page template of cli/templates (the evaluate report's, the hygiene report's)."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cli", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template(name)


def bars_by_label(report: Evaluation) -> list[Bar]:
    return [
        Bar(str(label), int(row["items"]), float(row["precision"]), float(row["chance"]))
        for label, row in report.overall().iterrows()
    ]


def bars_by_value(report: Evaluation) -> list[Bar]:
    """Every value of `by`, largest groups first."""
    return [
        Bar(str(value), int(row["items"]), float(row["precision"]))
        for value, row in report.groups().iterrows()
    ]


def sample_queries(report: Evaluation, n: int, seed: int) -> list[str]:
    """n of the evaluated queries, drawn at random with `seed`, in evaluation order."""
    evaluated = list(report.rows["product_id"])
    chosen = set(random.Random(seed).sample(evaluated, min(n, len(evaluated))))
    return [pid for pid in evaluated if pid in chosen]


def shown_ids(report: Evaluation, queries: Iterable[str]) -> list[str]:
    """The queries and their neighbours, each once, in order."""
    ids = [pid for query in queries for pid in (query, *_hit_ids(report, query))]
    return list(dict.fromkeys(ids))


def _hit_ids(report: Evaluation, query: str) -> list[str]:
    return [str(hit["product_id"]) for hit in report.hits[query]]


def sheet_row(report: Evaluation, product_id: str, images: Mapping[str, str | None]) -> SheetRow:
    query = report.queries[product_id]
    value = query["metadata"].get(report.by)
    neighbours = [
        _card(hit, report.by, images, mark=_mark(value, hit["metadata"].get(report.by)))
        for hit in report.hits[product_id]
    ]
    return SheetRow(_card(query, report.by, images), neighbours)


def _card(product: Product, by: str, images: Mapping[str, str | None], mark: str = "") -> Card:
    pid, metadata = str(product["product_id"]), product.get("metadata") or {}
    return Card(
        product_id=pid,
        name=str(metadata.get("productDisplayName") or ""),
        label=str(metadata.get(by) or ""),
        image=images.get(pid),
        score=product.get("score"),
        mark=mark,
    )


def _mark(query_value: Any, value: Any) -> str:
    if query_value in (None, ""):
        return "unknown"
    return "same" if value == query_value else "different"


def data_uris(thumbnail: Thumbnail, product_ids: list[str]) -> dict[str, str | None]:
    """Each product's thumbnail as a data: URI, fetched in parallel; None where there is none."""

    def one(product_id: str) -> str | None:
        try:
            return data_uri(thumbnail(product_id))
        except Exception:  # a thumbnail never fails the report: it shows a placeholder
            return None

    with ThreadPoolExecutor(FETCH_CONCURRENCY) as pool:
        return dict(zip(product_ids, pool.map(one, product_ids), strict=True))


def data_uri(data: bytes | None) -> str | None:
    """A data: URI of JPEG, PNG, GIF or WebP bytes; None for anything else."""
    if not data:
        return None
    mime = next((m for magic, m in SIGNATURES.items() if data.startswith(magic)), None)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def api_thumbnail(client: ApiClient) -> Thumbnail:
    """Fetch `GET /api/v1/products/{id}/image`; None when the API has no thumbnail for it."""

    def fetch(product_id: str) -> bytes | None:
        try:
            return client.request("GET", f"/api/v1/products/{product_id}/image").content
        except (ApiError, requests.RequestException):
            return None

    return fetch


def index_model(client: ApiClient) -> dict[str, Any]:
    """`model_id` and `notice` from /readyz (present in its 503 answer too); {} if unreadable."""
    try:
        response = requests.get(f"{client.base_url}/readyz", headers=client.headers, timeout=10)
        body = response.json()
    except (requests.RequestException, ValueError):
        return {}
    return body if isinstance(body, dict) else {}
