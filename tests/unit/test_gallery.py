"""The gallery's catalog grid through Flask's test client, on a replica fed by a real journal."""

from __future__ import annotations

import io
import re
import time

import pytest

from api.gallery import PAGE_SIZE
from shared.model_id import RANDOM_MODEL_NOTICE
from tests.support.images import encode, pattern
from tests.support.journal import journal

RANDOM_MODEL = "resnet50-max-wrandom-0123456789abcdef-224nearest-caffe-float32"
JPEG = encode(pattern(64, 48, seed=1), "JPEG")
KEY_FIELD = 'name="api_key"'


def upload(client, **form: str):
    """The gallery's upload search form, with the image and any other fields."""
    data = {"k": "5", "image": (io.BytesIO(JPEG), "q.jpg"), **form}
    return client.post("/", data=data, content_type="multipart/form-data")


def alert(response) -> str:
    """The page's error message, unescaped as the browser shows it."""
    match = re.search(r'role="alert">([^<]*)', response.get_data(as_text=True))
    assert match, response.get_data(as_text=True)[:300]
    return match.group(1).replace("&#39;", "'")


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


def test_upload_form_asks_for_an_api_key_only_when_keys_are_configured(client, launch):
    assert KEY_FIELD not in client.get("/").get_data(as_text=True)
    assert upload(client).status_code == 202  # no keys: open, as the API
    with launch(api_key="k1, k2") as keyed:
        assert KEY_FIELD in keyed.test_client().get("/").get_data(as_text=True)


@pytest.mark.parametrize(
    ("form", "headers", "status"),
    [
        ({}, {}, 401),
        ({"api_key": "wrong"}, {}, 401),
        ({"api_key": ""}, {"X-API-Key": "wrong"}, 401),
        ({"api_key": "k2"}, {}, 202),
        ({}, {"X-API-Key": "k1"}, 202),
    ],
)
def test_upload_search_needs_an_api_key_when_keys_are_configured(launch, form, headers, status):
    with launch(api_key="k1, k2") as app:
        client = app.test_client()
        data = {"k": "5", "image": (io.BytesIO(JPEG), "q.jpg"), **form}
        response = client.post("/", data=data, headers=headers)
        assert response.status_code == status
        if status == 401:
            assert alert(response) == "missing or wrong API key: enter it in the API key field"
            assert app.extensions["lookalike"].queue_depth() == 0


def test_upload_search_gets_503_while_the_queue_is_full(launch):
    with launch(max_queued=1) as app:
        client = app.test_client()
        assert upload(client).status_code == 202
        response = upload(client)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert alert(response) == (
            "the embed queue holds 1 tasks, at its limit of 1 (LOOKALIKE_MAX_QUEUED); "
            "try again later"
        )
        assert app.extensions["lookalike"].queue_depth() == 1


def test_gallery_fields_are_translated_to_metadata_filters(app, client):
    journal(app, 9)
    product = {"product_id": "0", "image": (io.BytesIO(JPEG), "0.jpg")}
    assert client.post("/api/v1/products", data=product).status_code == 202  # its record
    page = client.get("/?product_id=0&k=20&baseColour=Blue").get_data(as_text=True)
    assert sorted(card_ids(page)) == ["1", "4", "7"]
    task_id = re.search(r"tasks/(\w+)", upload(client, baseColour="Red").get_data(as_text=True))
    assert task_id, "the upload search did not answer with its task"
    record = app.extensions["lookalike"].task(task_id.group(1))
    assert record.options["filters"] == {"baseColour": "Red"}


def test_upload_search_without_a_free_waiting_slot_is_202_at_once(launch):
    with launch(max_waiting_searches=0, search_wait=30) as app:
        started = time.monotonic()
        response = upload(app.test_client())
        assert response.status_code == 202
        assert time.monotonic() - started < 2
        assert alert(response).startswith("still embedding the image (task ")
