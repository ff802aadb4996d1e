"""/similar's ETag: derived from the replica's index state and the request; If-None-Match gets a
304 with no body and no search; any change to the index changes it. Flask's test client against
a real redis-server, the replica fed through the real journal (no workers)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from api.openapi import openapi_document
from api.replica import Replica
from api.schemas import NeighboursQuery
from shared import keys
from shared.catalog import Catalog
from shared.follower import read_after, trim_before
from shared.journal import START, delete_entry, upsert_entry
from shared.settings import Settings
from tests.support.images import encode, pattern
from tests.support.journal import journal
from tests.support.stack import wait_until

JPEG = encode(pattern(64, 48, seed=1), "JPEG")
SIMILAR = "/api/v1/products/0/similar"
WEAK_TAG = re.compile(r'W/"([0-9a-f]{32})"')
DEFAULT_K = NeighboursQuery.model_fields["k"].default
MODEL = "resnet50-test"


@pytest.fixture
def app(launch) -> Iterator[Flask]:
    """An app whose replica holds items 0..8 (journalled), products 0 and 1 posted to Redis."""
    with launch() as app:
        assert app.extensions["lookalike"].replica.loaded.wait(10), "the replica did not load"
        journal(app, 9)
        post(app.test_client(), "0")
        post(app.test_client(), "1")
        yield app


def post(client: FlaskClient, product_id: str) -> None:
    data = {"product_id": product_id, "image": (io.BytesIO(JPEG), "x.jpg")}
    assert client.post("/api/v1/products", data=data).status_code == 202


def etag_of(client: FlaskClient, url: str = SIMILAR) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    return str(response.headers["ETag"])


def revalidate(client: FlaskClient, if_none_match: str, url: str = SIMILAR) -> Any:
    return client.get(url, headers={"If-None-Match": if_none_match})


def add_item(app: Flask, product_id: str) -> None:
    """One more upsert in the journal, once the replica has applied it."""
    catalog = app.extensions["lookalike"].replica.catalog
    before = catalog.position
    vector = np.abs(np.random.default_rng(99).normal(size=2048)).astype(np.float32)
    client = redis.Redis.from_url(app.extensions["lookalike"].settings.redis_url)
    client.xadd(keys.JOURNAL, upsert_entry(product_id, vector, MODEL, {"baseColour": "Red"}))
    replica = app.extensions["lookalike"].replica
    wait_until(lambda: replica.catalog.position != before, 10, "the replica did not apply it")


def test_similar_carries_a_weak_etag_and_no_cache(client):
    response = client.get(SIMILAR)
    assert response.status_code == 200
    assert WEAK_TAG.fullmatch(response.headers["ETag"])
    assert response.headers["Cache-Control"] == "no-cache"
    assert len(response.get_json()["results"]) == DEFAULT_K


def test_revalidation_with_the_etag_is_a_304_with_no_body(client):
    etag = etag_of(client)
    response = revalidate(client, etag)
    assert response.status_code == 304
    assert response.data == b""
    assert "Content-Type" not in response.headers
    assert response.headers.get("Content-Length", "0") == "0"
    assert response.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    "header",
    [
        "{etag}",
        '"{tag}"',  # the strong form: If-None-Match compares weakly
        '"other", W/"nope", {etag}',
        '"other",{etag} , "more"',
        "*",
    ],
    ids=["weak", "strong", "list", "list without spaces", "star"],
)
def test_if_none_match_compares_weakly_lists_and_star(client, header):
    etag = etag_of(client)
    tag = WEAK_TAG.fullmatch(etag).group(1)  # type: ignore[union-attr]
    response = revalidate(client, header.format(etag=etag, tag=tag))
    assert (response.status_code, response.data) == (304, b"")
    assert response.headers["ETag"] == etag


def test_the_304_runs_no_neighbour_search(client, monkeypatch):
    searches: list[str] = []
    similar = Catalog.similar

    def counted(self: Catalog, product_id: str, *args: Any) -> Any:
        searches.append(product_id)
        return similar(self, product_id, *args)

    monkeypatch.setattr(Catalog, "similar", counted)
    etag = etag_of(client)
    assert searches == ["0"]
    assert revalidate(client, etag).status_code == 304
    assert revalidate(client, "*").status_code == 304
    assert searches == ["0"]
    assert revalidate(client, '"stale"').status_code == 200
    assert searches == ["0", "0"]


def test_different_k_or_filters_give_different_etags(client):
    urls = [
        SIMILAR,
        f"{SIMILAR}?k=3",
        f"{SIMILAR}?filter.baseColour=Blue",
        f"{SIMILAR}?filter.baseColour=Red",
        f"{SIMILAR}?filter.productDisplayName=Item 4",
        f"{SIMILAR}?filter.baseColour=Blue&filter.productDisplayName=Item 4",
        f"{SIMILAR}?k=3&filter.baseColour=Blue",
        "/api/v1/products/1/similar",
    ]
    etags = [etag_of(client, url) for url in urls]
    assert len(set(etags)) == len(urls)
    response = revalidate(client, etags[0], f"{SIMILAR}?k=3")
    assert response.status_code == 200
    assert response.headers["ETag"] == etags[1]


def test_equivalent_requests_share_the_etag(client):
    both = "filter.baseColour=Blue&filter.productDisplayName=Item 4"
    swapped = "filter.productDisplayName=Item 4&filter.baseColour=Blue"
    assert etag_of(client) == etag_of(client, f"{SIMILAR}?k={DEFAULT_K}")
    assert etag_of(client) == etag_of(client, f"{SIMILAR}?k=")
    assert etag_of(client, f"{SIMILAR}?k=3") == etag_of(client, f"{SIMILAR}?k=03")
    assert etag_of(client, f"{SIMILAR}?{both}") == etag_of(client, f"{SIMILAR}?{swapped}")


def test_a_new_journal_entry_changes_the_etag(app, client):
    etag = etag_of(client)
    add_item(app, "fresh")
    response = revalidate(client, etag)
    assert response.status_code == 200
    assert response.headers["ETag"] != etag
    assert revalidate(client, response.headers["ETag"]).status_code == 304


def test_a_delete_changes_the_etag(app, client):
    etag = etag_of(client)
    catalog = app.extensions["lookalike"].replica.catalog
    before = catalog.position
    assert client.delete("/api/v1/products/0").status_code == 204
    wait_until(lambda: catalog.position != before, 10, "the replica did not apply the delete")
    assert revalidate(client, etag).status_code == 404  # as the unconditional request


def test_an_entry_for_another_product_changes_the_etag_too(app, client):
    """The tag names the index state, not the answer: a conservative 200 after any change."""
    etag = etag_of(client, "/api/v1/products/1/similar")
    catalog = app.extensions["lookalike"].replica.catalog
    before = catalog.position
    stored = redis.Redis.from_url(app.extensions["lookalike"].settings.redis_url)
    stored.xadd(keys.JOURNAL, delete_entry("never-there"))
    wait_until(lambda: catalog.position != before, 10, "the replica did not apply it")
    assert revalidate(client, etag, "/api/v1/products/1/similar").status_code == 200


def test_a_reload_changes_the_etag(app, client):
    """A replica that fell behind a trimmed journal reloads a newer snapshot: a new tag."""
    services = app.extensions["lookalike"]
    settings, stale = services.settings, services.replica
    etag = etag_of(client)
    stale.stop()  # it stops following here, at the position of etag
    add_to = redis.Redis.from_url(settings.redis_url)
    for n in range(3):
        vector = np.abs(np.random.default_rng(7 + n).normal(size=2048)).astype(np.float32)
        add_to.xadd(keys.JOURNAL, upsert_entry(f"late{n}", vector, MODEL, {}))
    writer_side = Catalog(settings)
    writer_side.apply(read_after(add_to, START, block_ms=None))
    writer_side.save(stale.store)
    trim_before(add_to, writer_side.position)  # late0 and late1 are only in the snapshot now
    replica = Replica(settings, services.redis)
    replica.catalog = stale.catalog
    replica.loaded.set()
    services.replica = replica.start()  # the fixture stops this one
    wait_until(lambda: replica.catalog is not stale.catalog, 10, "the replica did not reload")
    assert replica.catalog.position == writer_side.position
    response = revalidate(client, etag)
    assert response.status_code == 200
    assert response.headers["ETag"] != etag
    assert {"late0", "late1", "late2"} <= set(replica.catalog.index.ids())


def test_replicas_at_one_position_agree_on_the_etag(app, client, tmp_path: Path):
    """Another API process on the same journal: a tag from one revalidates on the other."""
    settings = app.extensions["lookalike"].settings
    other = create_app(Settings(redis_url=settings.redis_url, data_dir=tmp_path))
    try:
        replica = other.extensions["lookalike"].replica
        position = app.extensions["lookalike"].replica.catalog.position
        wait_until(lambda: replica.catalog.position == position, 10, "it did not catch up")
        etag = etag_of(client)
        response = revalidate(other.test_client(), etag)
        assert (response.status_code, response.headers["ETag"]) == (304, etag)
    finally:
        other.extensions["lookalike"].replica.stop()


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        '"unterminated',
        "W/",
        'W/"',
        ",,,",
        '"a" junk "b"',
        "\xff\xfe",
        "W/" * 5000,
        '"' + "x" * 10_000 + '"',
    ],
    ids=["bare", "unterminated", "W/", "W/ quote", "commas", "junk", "latin-1", "long", "huge"],
)
def test_a_malformed_if_none_match_is_harmless(client, header):
    etag = etag_of(client)
    response = revalidate(client, header)
    assert response.status_code == 200
    assert response.headers["ETag"] == etag
    assert len(response.get_json()["results"]) == DEFAULT_K


def test_a_mangled_copy_of_the_etag_does_not_match(client):
    etag = etag_of(client)
    tag = WEAK_TAG.fullmatch(etag).group(1)  # type: ignore[union-attr]
    for header in (f'W/"{tag[:-1]}"', f'W/"{tag.upper()}"', f'"{tag}x"', f'W/"W/{tag}"'):
        assert revalidate(client, header).status_code == 200, header


def test_star_is_a_304_only_where_the_answer_would_be_a_200(client):
    post(client, "posted-only")  # in Redis, not in the index: 409 either way
    assert revalidate(client, "*", "/api/v1/products/posted-only/similar").status_code == 409
    assert revalidate(client, "*", "/api/v1/products/unknown/similar").status_code == 404
    assert revalidate(client, "*", f"{SIMILAR}?k=0").status_code == 400


def test_while_the_index_loads_a_revalidation_is_503(app, client):
    etag = etag_of(client)
    replica = app.extensions["lookalike"].replica
    replica.stop()
    replica.loaded.clear()  # as a process whose replica has not loaded yet
    for header in (etag, "*"):
        response = revalidate(client, header)
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "index_loading"


def test_the_openapi_document_describes_the_etag_and_the_304():
    operation = openapi_document()["paths"]["/api/v1/products/{product_id}/similar"]["get"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"If-None-Match"}
    assert set(operation["responses"]["200"]["headers"]) == {"ETag", "Cache-Control"}
    not_modified = operation["responses"]["304"]
    assert set(not_modified["headers"]) == {"ETag", "Cache-Control"}
    assert "content" not in not_modified
