"""`lookalike evaluate --hygiene` on hand-made neighbour lists, the import's near-duplicate
warnings, and `near_duplicates` in an index task's result (against a real redis-server)."""

from __future__ import annotations

import io
import re
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cli import importer
from cli.hygiene import (
    DuplicateGroup,
    Hygiene,
    SharedImage,
    check_hygiene,
    miscategorised,
    near_duplicate_groups,
    render_hygiene_html,
    shared_images,
)
from cli.importer import CatalogImporter, ImportReport
from cli.main import build_parser, main
from shared.records import TaskState
from tests.support.stack import wait_until

MODEL = {"model_id": "resnet50-max-wtest", "notice": "demo model: seeded random weights"}
WHEN = datetime(2024, 5, 6, 7, 8)


def hit(product_id: str, score: float, **metadata: str) -> dict[str, Any]:
    return {"product_id": product_id, "score": score, "metadata": metadata}


def product(product_id: str, sha: str | None = None, **metadata: str) -> dict[str, Any]:
    return {"product_id": product_id, "indexed": True, "image_sha256": sha, "metadata": metadata}


# Near-duplicate groups.


def test_links_at_or_above_the_threshold_group_transitively_largest_first():
    hits = {
        "a": [hit("b", 0.99), hit("x", 0.5)],
        "b": [hit("c", 0.98), hit("a", 0.99)],  # c joins a through b
        "d": [hit("e", 0.999)],
        "e": [hit("d", 0.999), hit("f", 0.979)],  # just below: f stays out
        "c": [hit("c", 1.0)],  # a product listed as its own neighbour is no link
    }
    groups = near_duplicate_groups(hits, 0.98)
    assert groups == [
        DuplicateGroup(("a", "b", "c"), links=2, min_score=0.98, mean_score=0.985, max_score=0.99),
        DuplicateGroup(("d", "e"), links=1, min_score=0.999, mean_score=0.999, max_score=0.999),
    ]


def test_groups_of_one_size_put_the_most_similar_first_and_ids_in_numeric_order():
    hits = {
        "10": [hit("9", 0.985)],
        "200": [hit("100", 1.0)],
        "3": [hit("4", 0.985)],
    }
    groups = near_duplicate_groups(hits, 0.98)
    assert [group.ids for group in groups] == [("100", "200"), ("3", "4"), ("9", "10")]


def test_a_link_seen_from_both_ends_counts_once_with_its_best_score():
    hits = {"p": [hit("q", 0.991)], "q": [hit("p", 0.993)]}
    (group,) = near_duplicate_groups(hits, 0.99)
    assert (group.links, group.min_score, group.max_score) == (1, 0.993, 0.993)


def test_a_chain_of_links_is_one_group_even_when_its_ends_are_not_neighbours():
    chain = {str(n): [hit(str(n + 1), 0.995)] for n in range(30)}
    (group,) = near_duplicate_groups(chain, 0.99)
    assert group.size == 31 and group.links == 30
    assert near_duplicate_groups(chain, 0.996) == []


# Likely mis-categorised.


def test_an_item_whose_neighbours_mostly_carry_another_label_is_flagged():
    products = {"s": product("s", articleType="Shirts")}
    hits = {
        "s": [
            hit("1", 0.95, articleType="Tshirts"),
            hit("2", 0.93, articleType="Tshirts"),
            hit("3", 0.92, articleType="Shirts"),
            hit("4", 0.91, articleType="Tshirts"),
            hit("5", 0.90),  # no label: neither agrees nor disagrees
            hit("6", 0.89, articleType="Dresses"),
        ]
    }
    (found,) = miscategorised(products, hits, "articleType")
    assert (found.product_id, found.label, found.instead) == ("s", "Shirts", "Tshirts")
    assert (found.carried, found.labelled, found.share) == (3, 5, 0.8)
    assert found.mean_score == pytest.approx((0.95 + 0.93 + 0.91) / 3)


def test_no_single_majority_too_few_labels_or_no_own_label_is_not_flagged():
    products = {
        "split": product("split", articleType="Shirts"),
        "few": product("few", articleType="Shirts"),
        "bare": product("bare"),
        "half": product("half", articleType="Shirts"),
    }
    hits = {
        "split": [hit("1", 0.9, articleType="Tshirts"), hit("2", 0.9, articleType="Tshirts"),
                  hit("3", 0.9, articleType="Dresses"), hit("4", 0.9, articleType="Dresses")],
        "few": [hit("1", 0.9, articleType="Tshirts"), hit("2", 0.9, articleType="Tshirts"),
                hit("3", 0.9)],
        "bare": [hit(str(n), 0.9, articleType="Tshirts") for n in range(5)],
        "half": [hit("1", 0.9, articleType="Tshirts"), hit("2", 0.9, articleType="Tshirts"),
                 hit("3", 0.9, articleType="Shirts"), hit("4", 0.9, articleType="Shirts")],
    }  # fmt: skip
    assert miscategorised(products, hits, "articleType") == []


def test_mis_categorised_items_are_sorted_by_share_then_mean_score():
    products = {pid: product(pid, gender="Men") for pid in ("low", "high", "sure")}
    women = {"gender": "Women"}
    hits = {
        "low": [hit("1", 0.80, **women), hit("2", 0.80, **women), hit("3", 0.8, gender="Men")],
        "high": [hit("1", 0.99, **women), hit("2", 0.99, **women), hit("3", 0.9, gender="Men")],
        "sure": [hit("1", 0.70, **women), hit("2", 0.70, **women), hit("3", 0.7, **women)],
    }
    found = miscategorised(products, hits, "gender")
    assert [item.product_id for item in found] == ["sure", "high", "low"]
    assert [round(item.share, 3) for item in found] == [1.0, 0.667, 0.667]


# Shared images and placeholders.


def test_images_on_two_or_more_products_are_shared_most_first():
    products = [
        product("1", "aaa"), product("2", "bbb"), product("3", "aaa"), product("4", "bbb"),
        product("5", "bbb"), product("6", "ccc"), product("7", None),
    ]  # fmt: skip
    assert shared_images(products) == [
        SharedImage("bbb", ("2", "4", "5")),
        SharedImage("aaa", ("1", "3")),
    ]


def catalog() -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Three copies of one picture (p1..p3, one file), a pair (d1, d2) and a shirt (s) among
    t-shirts."""
    tee = {"articleType": "Tshirts", "gender": "Men"}
    products = [
        product("p1", "f00d", articleType="Watches", productDisplayName="No image"),
        product("p2", "f00d", articleType="Watches"),
        product("p3", "f00d", articleType="Bags"),
        product("d1", "d1", articleType="Shirts"),
        product("d2", "d2", articleType="Shirts"),
        product("s", "s", articleType="Shirts", gender="Men", productDisplayName="Blue shirt"),
        product("t1", "t1", **tee), product("t2", "t2", **tee), product("t3", "t3", **tee),
    ]  # fmt: skip
    hits = {
        "p1": [hit("p2", 1.0, articleType="Watches"), hit("p3", 1.0, articleType="Bags")],
        "p2": [hit("p1", 1.0, articleType="Watches")],
        "d1": [hit("d2", 0.991, articleType="Shirts")],
        "s": [hit("t1", 0.9, **tee), hit("t2", 0.8, **tee), hit("t3", 0.7, **tee)],
        "t1": [],  # not answered (deleted meanwhile): not counted as queried
    }
    return products, hits


def test_placeholders_are_groups_and_images_on_placeholder_min_products_or_more():
    report = Hygiene.of(*catalog(), k=3, threshold=0.99, placeholder_min=3)
    assert [group.ids for group in report.placeholder_groups] == [("p1", "p2", "p3")]
    assert report.placeholder_images == [SharedImage("f00d", ("p1", "p2", "p3"))]
    wider = Hygiene.of(*catalog(), k=3, threshold=0.99, placeholder_min=4)
    assert wider.placeholder_groups == [] and wider.placeholder_images == []


def test_the_text_report():
    report = Hygiene.of(*catalog(), k=3, threshold=0.99, placeholder_min=3)
    report.seconds = 0.5
    assert report.table().splitlines() == [
        "catalog hygiene over 4 indexed items, 3 nearest neighbours each",
        "near-duplicate threshold 0.99 (cosine), placeholders: 3 or more products with one "
        "image or near-identical vectors",
        "",
        "near-duplicate listings: 2 groups, 5 products (cosine >= 0.99; largest, then most "
        "similar, first)",
        "group   size     min    mean  ids",
        "1          3  1.0000  1.0000  p1 p2 p3",
        "2          2  0.9910  0.9910  d1 d2",
        "",
        "likely mis-categorised: most of an item's neighbours carry one other value (most "
        "confident first: share disagreeing, then their mean score)",
        "field             items",
        "articleType           1",
        "subCategory           0",
        "masterCategory        0",
        "baseColour            0",
        "gender                0",
        "",
        "articleType: 1 item",
        "id            label                 instead                       share  score",
        "s             Shirts                Tshirts (3/3)                 1.000  0.800",
        "",
        "shared images: 1 image on 3 products (same image_sha256)",
        "sha256         size  ids",
        "f00d              3  p1 p2 p3  (placeholder?)",
        "likely placeholders: 1 near-duplicate group of 3 or more products (group 1)",
        "",
        "4 neighbour queries in 0.5s (8/s)",
    ]


def test_a_sampled_report_says_of_how_many():
    report = Hygiene.of(*catalog(), k=3, threshold=0.99)
    report.sampled = True
    assert report.heading() == (
        "catalog hygiene over 4 of 9 indexed items (a random sample), 3 nearest neighbours each"
    )


class FakeApi:
    """What check_hygiene asks of the API: the product records and /similar."""

    def __init__(self, products: list[dict[str, Any]], hits: dict[str, list[dict[str, Any]]]):
        self.records, self.hits, self.asked = products, hits, []

    def products(self):
        return iter(self.records)

    def get(self, path: str, **params: Any) -> Any:
        product_id = path.split("/")[4]
        self.asked.append((product_id, params))
        return {"results": self.hits.get(product_id, [])}


def test_check_hygiene_asks_every_indexed_product_for_k_neighbours_or_a_sample():
    products, hits = catalog()
    products.append({**product("gone"), "indexed": False})
    api = FakeApi(products, hits)
    report = check_hygiene(api, 7, 0.99, 3, concurrency=2, progress=False)  # type: ignore[arg-type]
    assert sorted(pid for pid, _ in api.asked) == sorted(p["product_id"] for p in products[:-1])
    assert {params["k"] for _, params in api.asked} == {7}
    assert (report.queried, report.catalog_size, report.sampled) == (4, 9, False)
    assert [group.ids for group in report.duplicates] == [("p1", "p2", "p3"), ("d1", "d2")]
    api.asked.clear()
    sampled = check_hygiene(api, 7, 0.99, 3, progress=False, sample=2, seed=1)  # type: ignore[arg-type]
    assert len(api.asked) == 2 and sampled.sampled


# The HTML page.


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 16), (200, 30, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_the_html_page_shows_every_finding_with_embedded_thumbnails():
    report = Hygiene.of(*catalog(), k=3, threshold=0.99, placeholder_min=3)
    data = jpeg()
    asked: list[str] = []

    def thumbnail(product_id: str) -> bytes | None:
        asked.append(product_id)
        return None if product_id == "d2" else data

    page = render_hygiene_html(report, thumbnail, MODEL, sheet=8, generated=WHEN)
    assert sorted(asked) == ["d1", "d2", "p1", "p2", "p3", "s", "t1", "t2", "t3"]  # each once
    sections = re.findall(r'<section id="([\w-]+)"', page)
    assert sections == [
        "duplicates", "miscategorised", "mis-articleType", "mis-subCategory",
        "mis-masterCategory", "mis-baseColour", "mis-gender", "shared", "placeholders",
    ]  # fmt: skip
    # group 1 (3) and 2 (2), the shirt and its 3 neighbours, the shared image (3), placeholders (3)
    images = 3 + 2 + 4 + 3 + 3
    assert page.count('<img src="data:image/jpeg;base64,') == images - 1
    assert page.count('class="placeholder"') == 1  # d2 has no thumbnail
    assert page.count('<span class="flag">placeholder?</span>') == 3
    assert '<dd id="threshold">0.99</dd>' in page
    assert "group 1: 3 products, cosine 1.0000 to 1.0000 (mean 1.0000)" in page
    assert "3 of 3 say <strong>Tshirts</strong>; 100% disagree" in page
    assert page.count('class="card neighbour instead"') == 3
    assert MODEL["notice"] in page and "2024-05-06 07:08" in page


def test_an_empty_report_says_there_is_nothing_to_show():
    report = Hygiene.of([], {}, k=10, threshold=0.98)
    page = render_hygiene_html(report, lambda _: None, {}, generated=WHEN)
    for text in ("No near duplicates.", "No image is shared.", "None.",
                 "No near-duplicate group of 5 or more products."):  # fmt: skip
        assert text in page
    assert "<img " not in page


def test_big_groups_show_their_first_pictures_and_list_the_other_ids():
    hits = {str(n): [hit(str(n + 1), 1.0)] for n in range(20)}
    report = Hygiene.of([product(str(n)) for n in range(21)], hits, k=1, threshold=0.99)
    page = render_hygiene_html(report, lambda _: jpeg(), {}, generated=WHEN)
    assert "and 9 more: 12 13 14 15 16 17 18 19 20" in page


# The command line.


def test_hygiene_defaults_to_every_item_and_ten_neighbours():
    args = build_parser().parse_args(["evaluate", "--hygiene"])
    assert (args.hygiene, args.threshold, args.placeholder_min, args.given) == (
        True, None, 5, frozenset(),
    )  # fmt: skip
    args = build_parser().parse_args(["evaluate", "--hygiene", "-k", "4", "--sample", "9"])
    assert args.given == {"k", "sample"} and (args.k, args.sample) == (4, 9)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--threshold", "1.5"], "error: --threshold takes a cosine above 0 and at most 1"),
        (["--threshold", "0"], "error: --threshold takes a cosine above 0 and at most 1"),
        (["--placeholder-min", "1"], "error: --placeholder-min takes 2 or more"),
    ],
)
def test_hygiene_refuses_bad_settings(option, message, capsys):
    code = main(["evaluate", "--hygiene", *option, "--api-url", "http://127.0.0.1:9", "-q"])
    assert code == 2
    assert capsys.readouterr().err.strip() == message


# The import's warnings.


def test_the_import_summary_warns_once_per_item_with_near_duplicates():
    report = ImportReport(imported=3, elapsed=1.0)
    report.near_duplicates = {
        "b": [{"product_id": "a", "score": 1.0}],
        "c": [],
        "z": [{"product_id": str(n), "score": 0.99 - n / 1000} for n in range(7)],
    }
    report.unchecked = ["q"]
    lines = report.summary().splitlines()
    assert lines[2:] == [
        "warning: b is a near duplicate of a (1.000)",
        "warning: z is a near duplicate of 0 (0.990), 1 (0.989), 2 (0.988), 3 (0.987), "
        "4 (0.986) and 2 more",
        "near duplicates not checked for 1 items: the API had not applied their vectors yet",
    ]


class FakeTasks:
    """Task answers in turn: a succeeded task says nothing of near duplicates at first."""

    def __init__(self, answers: dict[str, list[dict[str, Any]]]) -> None:
        self.answers = answers

    def get(self, path: str, **params: Any) -> Any:
        turns = self.answers[path.rsplit("/", 1)[1]]
        return turns.pop(0) if len(turns) > 1 else turns[0]


def succeeded(**result: Any) -> dict[str, Any]:
    return {"state": TaskState.SUCCEEDED, "result": {"product_id": "x", **result}}


def test_the_import_asks_again_until_the_replica_has_the_vector(monkeypatch):
    monkeypatch.setattr(importer.time, "sleep", lambda _: None)
    monkeypatch.setattr(importer, "NEAR_DUPLICATE_WAIT", 0.2)
    duplicate = [{"product_id": "a", "score": 1.0}]
    tasks = FakeTasks({
        "t1": [{"state": TaskState.RUNNING}, succeeded(), succeeded(near_duplicates=duplicate)],
        "t2": [succeeded(near_duplicates=[])],
        "t3": [succeeded()],  # never answered: reported as unchecked
    })  # fmt: skip
    loader = CatalogImporter(tasks)  # type: ignore[arg-type]
    report = ImportReport()
    unchecked = loader._follow({"t1": "b", "t2": "c", "t3": "d"}, report, progress=False)
    assert unchecked == {"t1": "b", "t3": "d"} and report.imported == 3
    loader._near_duplicates(unchecked, report)
    assert report.near_duplicates == {"b": duplicate, "c": []}
    assert report.unchecked == ["d"]


# `near_duplicates` in a succeeded index task, from the API's replica.


@pytest.fixture
def api(launch):
    with launch(near_duplicate_threshold=0.99) as app:
        services = app.extensions["lookalike"]
        assert services.replica.loaded.wait(10)
        yield app


def post_and_index(app, product_id: str, vector: np.ndarray) -> str:
    """Post a product through the API, then end its task as an embed worker does."""
    from shared.records import TaskStore
    from workers.publish import Publisher

    client = app.test_client()
    data = {"product_id": product_id, "image": (io.BytesIO(jpeg()), "x.jpg")}
    response = client.post("/api/v1/products", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    task_id = response.get_json()["task_id"]
    services = app.extensions["lookalike"]
    record = services.tasks.get(task_id)
    tasks = TaskStore(services.redis, ttl=600)
    assert Publisher(services.redis, tasks, search_ttl=60).indexed(
        record, vector, "resnet50-test", b"image " + product_id.encode(), jpeg()
    )
    return str(task_id)


def task(app, task_id: str) -> dict[str, Any]:
    return app.test_client().get(f"/api/v1/tasks/{task_id}").get_json()


def near_duplicates_of(app, task_id: str) -> dict[str, Any]:
    """The task once its result says near_duplicates (the replica applied its vector)."""
    return wait_until(
        lambda: "near_duplicates" in (body := task(app, task_id)).get("result", {}) and body,
        10, "the task's result never said near_duplicates",
    )  # fmt: skip


def test_an_index_task_names_the_products_its_image_nearly_duplicates(api):
    rng = np.random.default_rng(1)
    original, other, third = np.abs(rng.normal(size=(3, 2048))).astype(np.float32)
    post_and_index(api, "original", original)
    post_and_index(api, "other", other)
    body = near_duplicates_of(api, post_and_index(api, "copy", original))
    assert body["state"] == "succeeded" and body["result"]["product_id"] == "copy"
    assert body["result"]["near_duplicates"] == [{"product_id": "original", "score": 1.0}]
    lone = near_duplicates_of(api, post_and_index(api, "lone", third))
    assert lone["result"]["near_duplicates"] == []


def test_near_duplicates_are_omitted_until_the_replica_has_the_vector(api):
    services = api.extensions["lookalike"]
    services.replica.stop()  # the replica stops following the journal: it never gets the vector
    task_id = post_and_index(api, "late", np.ones(2048, np.float32))
    body = task(api, task_id)
    assert body["state"] == "succeeded"
    assert "near_duplicates" not in body["result"]
    assert body["result"]["product_id"] == "late"
