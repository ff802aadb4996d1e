"""Catalog import, the CLI client commands, evaluation and the gallery, on a real stack."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from api.gallery import PAGE_SIZE
from cli.client import ApiClient
from cli.demo_catalog import write_demo_catalog
from cli.importer import FOLLOW_INTERVAL, CatalogImporter
from cli.styles import read_styles
from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.support.stack import Stack, wait_until

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))
N_ITEMS = 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("catalog")
    write_demo_catalog(directory, N_ITEMS, seed=3)
    return directory


@pytest.fixture(scope="module")
def api(stack: Stack) -> str:
    return stack.api_urls[0]


def lookalike(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOOKALIKE, *args], capture_output=True, text=True, timeout=600, check=False, env=env
    )


@pytest.fixture(scope="module")
def imported(api, dataset) -> subprocess.CompletedProcess[str]:
    return lookalike("import", str(dataset), "--api-url", api, "-q")


def rows_with_images(dataset: Path) -> list[str]:
    return [
        row.product_id
        for row in read_styles(dataset / "styles.csv")
        if (dataset / "images" / f"{row.product_id}.jpg").exists()
    ]


def test_import_uploads_every_row_with_an_image(imported, dataset, api):
    assert imported.returncode == 0, imported.stdout + imported.stderr
    with_images = rows_with_images(dataset)
    missing = N_ITEMS - len(with_images)
    assert f"imported {len(with_images)}, skipped 0, failed 0, without image file {missing}" in (
        imported.stdout
    )
    total = requests.get(f"{api}/api/v1/products?limit=1", timeout=10).json()["total"]
    assert total == len(with_images)


def test_import_keeps_full_names_and_empty_fields(imported, dataset, api):
    rows = {row.product_id: row for row in read_styles(dataset / "styles.csv")}
    with_comma = next(pid for pid, row in rows.items() if "," in row.metadata["productDisplayName"]
                      and (dataset / "images" / f"{pid}.jpg").exists())  # fmt: skip
    product = requests.get(f"{api}/api/v1/products/{with_comma}", timeout=10).json()
    assert product["metadata"] == rows[with_comma].metadata
    assert all(value == value for value in product["metadata"].values())  # no NaN


def test_second_import_skips_what_is_indexed(imported, dataset, api):
    again = lookalike("import", str(dataset), "--api-url", api, "-q")
    assert again.returncode == 0
    assert f"imported 0, skipped {len(rows_with_images(dataset))}, failed 0" in again.stdout


def test_import_force_uploads_everything_again(imported, dataset, api):
    forced = lookalike("import", str(dataset), "--api-url", api, "-q", "--force")
    assert forced.returncode == 0
    assert f"imported {len(rows_with_images(dataset))}, skipped 0, failed 0" in forced.stdout


class CountingClient(ApiClient):
    """The real client, counting the task lookups it makes."""

    task_lookups = 0

    def get(self, path: str, **params: Any) -> Any:
        if path.startswith("/api/v1/tasks/"):
            self.task_lookups += 1
        return super().get(path, **params)


def test_import_asks_about_once_per_task_while_following(imported, api, tmp_path):
    write_demo_catalog(tmp_path / "demo", 40, seed=11)
    rows = (tmp_path / "demo" / "styles.csv").read_text().splitlines()
    (tmp_path / "styles.csv").write_text(
        "\n".join([rows[0]] + [f"follow-{row}" for row in rows[1:]])
    )
    (tmp_path / "images").mkdir()
    for image in (tmp_path / "demo" / "images").iterdir():
        image.rename(tmp_path / "images" / f"follow-{image.name}")
    client = CountingClient(api)
    try:
        report = CatalogImporter(client, concurrency=4).run(tmp_path, progress=False)
        tasks = report.imported + len(report.failed)
        assert tasks == len(rows_with_images(tmp_path)), report.summary()
        # Once per task, plus the oldest task once per interval while it runs, plus a chunk's
        # unfinished rest; asking about every unfinished task every round cost 7 lookups a task.
        assert client.task_lookups <= 2 * tasks + report.elapsed / FOLLOW_INTERVAL
    finally:
        for row in read_styles(tmp_path / "styles.csv"):
            requests.delete(f"{api}/api/v1/products/{row.product_id}", timeout=10)


def test_import_lists_rows_without_image_and_fails_on_bad_images(imported, tmp_path, api, dataset):
    (tmp_path / "images").mkdir()
    header = (dataset / "styles.csv").read_text().splitlines()[0]
    (tmp_path / "styles.csv").write_text(
        header + "\n1,Men,Apparel,Topwear,Shirts,Red,Summer,2012,Casual,Red shirt\n"
        "2,Men,Apparel,Topwear,Shirts,Red,Summer,2012,Casual,No picture\n"
    )
    (tmp_path / "images" / "1.jpg").write_bytes(b"not a jpeg at all")
    result = lookalike("import", str(tmp_path), "--api-url", api, "-q")
    assert result.returncode == 1
    assert "rows without an image file: 2" in result.stdout
    assert "failed 1: not_an_image: not an image: the data is in no format we can read" in (
        result.stdout
    )


def test_similar_command_prints_a_table(imported, dataset, api):
    product_id = rows_with_images(dataset)[0]
    wait_until(
        lambda: requests.get(f"{api}/api/v1/products/{product_id}/similar", timeout=5).ok, 5, "x"
    )
    result = lookalike("similar", product_id, "-k", "3", "--api-url", api)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["id", "score", "name", "category"]
    assert len(lines) == 4


def test_search_command_finds_the_same_image_first(imported, dataset, api):
    product_id = rows_with_images(dataset)[5]
    image = dataset / "images" / f"{product_id}.jpg"
    result = lookalike("search", str(image), "-k", "2", "--api-url", api)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[0] == product_id


def test_evaluate_reports_precision_by_label(imported, api):
    result = lookalike("evaluate", "--by", "articleType", "-k", "3", "--api-url", api, "-q")
    assert result.returncode == 0, result.stderr
    assert "precision@3 over" in result.stdout
    for label in ("articleType", "subCategory", "masterCategory", "baseColour"):
        assert any(line.startswith(label) for line in result.stdout.splitlines())


def test_evaluate_samples_queries_and_says_how_many(imported, api):
    result = lookalike("evaluate", "-k", "3", "--sample", "5", "--api-url", api, "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("precision@3 over 5 of ")
    assert result.stdout.splitlines()[0].endswith(" indexed items (a random sample)")
    every = lookalike("evaluate", "-k", "3", "--sample", "0", "--api-url", api, "-q")
    assert every.returncode == 0, every.stderr
    assert " of " not in every.stdout.splitlines()[0]
    refused = lookalike("evaluate", "--sample", "-1", "--api-url", api, "-q")
    assert refused.returncode == 2 and "0 or more" in refused.stderr


def test_evaluate_html_report_embeds_the_sampled_queries(imported, api, tmp_path):
    products = requests.get(f"{api}/api/v1/products?limit=500", timeout=10).json()["products"]
    indexed = [product["product_id"] for product in products if product["indexed"]]
    wait_until(
        lambda: all(
            requests.get(f"{api}/api/v1/products/{pid}/similar", timeout=5).ok for pid in indexed
        ),
        10,
        "the replica does not answer for every indexed product",
    )
    report = tmp_path / "report.html"
    result = lookalike(
        "evaluate", "-k", "3", "--sample", "20", "--seed", "1", "--sheet", "4",
        "--html", str(report), "--api-url", api, "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    heading = f"precision@3 over 20 of {len(indexed)} indexed items (a random sample)"
    assert result.stdout.splitlines()[0] == heading  # the text table is still printed
    assert result.stdout.splitlines()[-1] == f"wrote {report}"
    page = report.read_text(encoding="utf-8")
    assert f'<p id="heading">{heading}</p>' in page
    rows = 2 * 4  # worst and random sheets, 4 queries each
    assert page.count("<img ") == page.count('<img src="data:image/jpeg;base64,') == rows * 4
    assert page.count('class="placeholder"') == 0
    assert page.count('<svg class="label-bar"') == 4
    assert page.count("✓ same") + page.count("✗ different") == rows * 3
    assert report.stat().st_size > 30_000


def test_gallery_shows_neighbours_as_pictures(imported, dataset, api):
    product_id = rows_with_images(dataset)[2]
    page = requests.get(f"{api}/", params={"product_id": product_id, "k": 5}, timeout=10)
    assert page.status_code == 200
    assert page.text.count('class="card"') == 5
    assert f"/api/v1/products/{product_id}/image" in page.text
    unknown = requests.get(f"{api}/", params={"product_id": "nope"}, timeout=10)
    assert unknown.status_code == 404
    assert "unknown product nope" in unknown.text


def test_gallery_random_redirects_to_a_product(imported, api):
    response = requests.get(f"{api}/random", allow_redirects=False, timeout=10)
    assert response.status_code == 302
    assert "/?product_id=" in response.headers["Location"]


def test_gallery_upload_search(imported, dataset, api):
    product_id = rows_with_images(dataset)[7]
    data = (dataset / "images" / f"{product_id}.jpg").read_bytes()
    page = requests.post(
        f"{api}/", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": 5}, timeout=60
    )
    assert page.status_code == 200
    assert 'src="data:image/jpeg;base64,' in page.text
    assert f'href="/?product_id={product_id}&amp;k=5"' in page.text


def all_images_loaded(page) -> bool:
    loaded = page.eval_on_selector_all(
        "img", "images => images.map(i => i.complete && i.naturalWidth > 0)"
    )
    return bool(loaded) and all(loaded)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_gallery_grid_pages_and_clicks_through_in_a_real_browser(imported, dataset, api):
    from playwright.sync_api import sync_playwright

    with_images = sorted(rows_with_images(dataset), key=int)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(f"{api}/")
            page.wait_for_load_state("networkidle")
            cards = page.locator("#catalog .card")
            assert cards.count() == PAGE_SIZE
            assert all_images_loaded(page)
            assert (
                page.locator("#grid-count")
                .inner_text()
                .startswith(f"{len(with_images)} items · page 1 of 2")
            )
            hrefs = cards.evaluate_all("cards => cards.map(c => c.getAttribute('href'))")
            first_page = [href.split("=")[1].split("&")[0] for href in hrefs]
            assert first_page == with_images[:PAGE_SIZE]
            page.click("a.page-next")
            page.wait_for_load_state("networkidle")
            assert page.locator("#catalog .card").count() == len(with_images) - PAGE_SIZE
            assert all_images_loaded(page)
            page.locator("#catalog .card").first.click()
            page.wait_for_selector("#results .card")
            assert page.locator("#results .card").count() == 5
            assert f"product_id={with_images[PAGE_SIZE]}" in page.url
            page.select_option("select[name=articleType]", index=1)
            page.fill("input[name=product_id]", "")
            page.click("#by-id button[type=submit]")
            page.wait_for_load_state("networkidle")
            chosen = page.locator("select[name=articleType]").input_value()
            shown = page.locator("#catalog .card .muted").all_inner_texts()
            assert shown and set(shown) == {chosen}
        finally:
            browser.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_gallery_in_a_real_browser(imported, dataset, api, tmp_path):
    from playwright.sync_api import sync_playwright

    product_id = rows_with_images(dataset)[3]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(f"{api}/")
            page.fill("input[name=product_id]", product_id)
            page.click("#by-id button[type=submit]")
            page.wait_for_selector("#results .card")
            page.wait_for_load_state("networkidle")
            cards = page.locator("#results .card")
            assert cards.count() == 5
            assert all_images_loaded(page)
            scores = [float(text) for text in page.locator(".score").all_inner_texts()]
            assert scores == sorted(scores, reverse=True)
            first_neighbour = cards.first.get_attribute("href")
            cards.first.click()
            page.wait_for_selector("#results .card")
            assert page.url.endswith(first_neighbour.replace("&amp;", "&"))
            page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "gallery.png").stat().st_size > 10_000


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_evaluate_html_report_in_a_real_browser(imported, api, tmp_path):
    from playwright.sync_api import sync_playwright

    report = tmp_path / "report.html"
    result = lookalike(
        "evaluate", "-k", "4", "--sample", "12", "--sheet", "3",
        "--html", str(report), "--api-url", api, "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            decoded = page.eval_on_selector_all(
                "img", "images => images.map(i => i.complete && i.naturalWidth > 0)"
            )
            assert len(decoded) == 2 * 3 * (1 + 4) and all(decoded)
            bars = page.locator("svg.label-bar")
            assert bars.count() == 4
            for index in range(bars.count()):
                assert bars.nth(index).is_visible()
                box = bars.nth(index).bounding_box()
                assert box is not None and box["width"] > 100
            assert page.locator("svg.groups-chart").is_visible()
            assert page.locator("svg.label-bar line.chance").count() == 4
            assert page.locator("#worst .card.neighbour").count() == 3 * 4
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def post_copy(api: str, dataset: Path, original: str, copy: str) -> str:
    """Post the original's image file under a new id; the task id."""
    image = (dataset / "images" / f"{original}.jpg").read_bytes()
    metadata = requests.get(f"{api}/api/v1/products/{original}", timeout=10).json()["metadata"]
    response = requests.post(
        f"{api}/api/v1/products",
        data={"product_id": copy, "metadata": json.dumps(metadata)},
        files={"image": (f"{copy}.jpg", image, "image/jpeg")},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def near_duplicates_known(api: str, task_id: str) -> dict:
    """The task once it succeeded and the API's replica has its vector (near_duplicates said)."""
    return wait_until(
        lambda: "near_duplicates" in (task := requests.get(
            f"{api}/api/v1/tasks/{task_id}", timeout=10).json()).get("result", {}) and task,
        120, f"task {task_id} never said near_duplicates",
    )  # fmt: skip


def forget(api: str, product_ids: list[str]) -> None:
    """Delete the products and wait for the replica to apply it: other tests count items."""
    for product_id in product_ids:
        requests.delete(f"{api}/api/v1/products/{product_id}", timeout=10)
    wait_until(
        lambda: requests.get(f"{api}/readyz", timeout=10).json()["lag"]["replica"]["entries"] == 0,
        30, "the replica did not apply the deletes",
    )  # fmt: skip


def test_hygiene_a_posted_copy_names_the_original_as_its_near_duplicate(imported, dataset, api):
    original = rows_with_images(dataset)[4]
    try:
        task = near_duplicates_known(api, post_copy(api, dataset, original, "hyg-copy"))
        assert task["state"] == "succeeded" and task["result"]["product_id"] == "hyg-copy"
        found = task["result"]["near_duplicates"]
        assert found[0] == {"product_id": original, "score": 1.0}  # the same image file
        scores = [other["score"] for other in found]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 0.98  # the default
        assert "hyg-copy" not in {other["product_id"] for other in found}
    finally:
        forget(api, ["hyg-copy"])


def test_hygiene_import_warns_of_an_item_that_copies_another(imported, dataset, api, tmp_path):
    original = rows_with_images(dataset)[6]
    (tmp_path / "images").mkdir()
    header = (dataset / "styles.csv").read_text().splitlines()[0]
    row = "hyg-imported,Men,Apparel,Topwear,Shirts,Red,Summer,2012,Casual,A copy"
    (tmp_path / "styles.csv").write_text(f"{header}\n{row}\n")
    (tmp_path / "images" / "hyg-imported.jpg").write_bytes(
        (dataset / "images" / f"{original}.jpg").read_bytes()
    )
    try:
        result = lookalike("import", str(tmp_path), "--api-url", api, "-q")
        assert result.returncode == 0, result.stdout + result.stderr
        warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
        assert len(warnings) == 1
        assert warnings[0].startswith(f"warning: hyg-imported is a near duplicate of {original} "
                                      "(1.000)")  # fmt: skip
        assert "near duplicates not checked" not in result.stdout
    finally:
        forget(api, ["hyg-imported"])


def test_hygiene_report_groups_copies_lists_shared_images_and_embeds_pictures(
    imported, dataset, api, tmp_path
):
    with_images = rows_with_images(dataset)
    listing, placeholder = with_images[8], with_images[9]
    copies = {"hyg-a1": listing, "hyg-a2": listing}
    copies.update({f"hyg-p{n}": placeholder for n in range(1, 6)})
    try:
        tasks = [post_copy(api, dataset, original, copy) for copy, original in copies.items()]
        for task_id in tasks:
            near_duplicates_known(api, task_id)
        products = requests.get(f"{api}/api/v1/products?limit=500", timeout=10).json()
        indexed = sum(product["indexed"] for product in products["products"])
        report = tmp_path / "hygiene.html"
        result = lookalike(
            "evaluate", "--hygiene", "--threshold", "0.99999", "--html", str(report),
            "--api-url", api, "-q",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        # distinct items score below 0.9999 even on the random model; copies 1.0
        assert lines[:6] == [
            f"catalog hygiene over {indexed} indexed items, 10 nearest neighbours each",
            "near-duplicate threshold 0.99999 (cosine), placeholders: 5 or more products with "
            "one image or near-identical vectors",
            "",
            "near-duplicate listings: 2 groups, 9 products (cosine >= 0.99999; largest, then "
            "most similar, first)",
            "group   size     min    mean  ids",
            f"1          6  1.0000  1.0000  {placeholder} hyg-p1 hyg-p2 hyg-p3 hyg-p4 hyg-p5",
        ]
        assert lines[6] == f"2          3  1.0000  1.0000  {listing} hyg-a1 hyg-a2"
        assert "likely mis-categorised: most of an item's neighbours carry one other value " in (
            result.stdout
        )
        assert "shared images: 2 images on 9 products (same image_sha256)" in lines
        shared = [line for line in lines if line.endswith("(placeholder?)")]
        assert len(shared) == 1
        assert shared[0].endswith(f"6  {placeholder} hyg-p1 hyg-p2 hyg-p3 hyg-p4 hyg-p5  "
                                  "(placeholder?)")  # fmt: skip
        assert "likely placeholders: 1 near-duplicate group of 5 or more products (group 1)" in (
            lines
        )
        assert re.fullmatch(rf"{indexed} neighbour queries in [\d.]+s \(\d+/s\)", lines[-2])
        assert lines[-1] == f"wrote {report}"

        page = report.read_text(encoding="utf-8")
        assert page.count("<img ") == page.count('<img src="data:image/jpeg;base64,') > 9
        assert 'class="placeholder"' not in page  # every thumbnail was fetched
        groups = page[page.index('<section id="duplicates">') : page.index('id="miscategorised"')]
        assert groups.count('<img src="data:image/jpeg;base64,') == 9
        assert groups.count('<span class="flag">placeholder?</span>') == 1
        for product_id in [listing, placeholder, *copies]:
            assert f'<div class="id">{product_id}</div>' in groups
        assert '<dd id="threshold">0.99999</dd>' in page
    finally:
        forget(api, list(copies))
