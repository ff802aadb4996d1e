"""The gallery's catalog grid through Flask's test client, on a replica fed by a real journal."""

from __future__ import annotations

import re

import pytest

from api.gallery import PAGE_SIZE
from shared.model_id import RANDOM_MODEL_NOTICE
from tests.support.journal import journal

RANDOM_MODEL = "resnet50-max-wrandom-0123456789abcdef-224nearest-caffe-float32"


def card_ids(html: str) -> list[str]:
    return re.findall(r'class="card" href="/\?product_id=([^&"]+)', html)


def test_first_page_is_a_grid_of_the_catalog(app, client):
    journal(app, PAGE_SIZE + 5)
    page = client.get("/").get_data(as_text=True)
    assert card_ids(page) == [str(n) for n in range(PAGE_SIZE)]
    assert f"{PAGE_SIZE + 5} items · page 1 of 2" in page
    assert 'class="page-next" href="/?page=2"' in page
    assert "page-previous" not in page
    second = client.get("/?page=2").get_data(as_text=True)
    assert card_ids(second) == [str(n) for n in range(PAGE_SIZE, PAGE_SIZE + 5)]
    assert 'class="page-first" href="/?page=1"' in second


def test_grid_filters_keep_their_values_across_pages(app, client):
    journal(app, 3 * PAGE_SIZE + 3)
    page = client.get("/?baseColour=Blue").get_data(as_text=True)
    assert card_ids(page) == [str(n) for n in range(1, 3 * PAGE_SIZE, 3)][:PAGE_SIZE]
    assert f"{PAGE_SIZE + 1} items match" in page
    assert 'href="/?page=2&amp;baseColour=Blue"' in page
    assert card_ids(client.get("/?baseColour=Green").get_data(as_text=True)) == []


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("0", "page must be an integer from 1 to 1000000, got '0'"),
        ("x", "page must be an integer from 1 to 1000000, got 'x'"),
        ("\u0663", "page must be an integer from 1 to 1000000, got '\u0663'"),
    ],
)
def test_bad_page_number_is_400_with_the_reason(client, page, message):
    response = client.get("/", query_string={"page": page})
    assert response.status_code == 400
    assert message.replace("'", "&#39;") in response.get_data(as_text=True)


def test_page_past_the_end_is_empty_not_an_error(app, client):
    journal(app, 3)
    response = client.get("/?page=9")
    assert response.status_code == 200
    assert card_ids(response.get_data(as_text=True)) == []


def test_empty_catalog_says_how_to_import(client):
    page = client.get("/").get_data(as_text=True)
    assert "The catalog is empty: import some products" in page


def test_random_weights_are_announced_in_the_header(app, client):
    journal(app, 2, model=RANDOM_MODEL)
    page = client.get("/").get_data(as_text=True)
    assert RANDOM_MODEL in page
    assert 'id="model-notice"' in page and RANDOM_MODEL_NOTICE.split(",")[0] in page
    ready = client.get("/readyz").get_json()
    assert ready["model_id"] == RANDOM_MODEL
    assert ready["notice"] == RANDOM_MODEL_NOTICE
