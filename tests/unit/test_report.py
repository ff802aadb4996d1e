"""The HTML report of `lookalike evaluate --html`: its structure, read back with an HTML parser."""

from __future__ import annotations

import base64
import io
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from cli.client import ApiClient
from cli.evaluate import Evaluation
from cli.report import MAX_GROUPS, data_uri, render_html, write_html

MODEL = {"model_id": "resnet50-max-wtest", "notice": "demo model: seeded random weights"}
WHEN = datetime(2024, 5, 6, 7, 8)
VOID = {"img", "meta", "br", "input", "link", "hr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        return " ".join(" ".join([*self.parts, *(child.text for child in self.children)]).split())

    def all(self, tag: str = "*", cls: str | None = None) -> list[Node]:
        found = []
        for child in self.children:
            if (tag in ("*", child.tag)) and (cls is None or cls in child.classes):
                found.append(child)
            found += child.all(tag, cls)
        return found

    def one(self, tag: str = "*", cls: str | None = None, id: str | None = None) -> Node:
        nodes = [node for node in self.all(tag, cls) if id is None or node.attrs.get("id") == id]
        assert len(nodes) == 1, f"{len(nodes)} <{tag} class={cls} id={id}>"
        return nodes[0]


class Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Node("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].parts.append(data)


def parse(page: str) -> Node:
    tree = Tree()
    tree.feed(page)
    tree.close()
    assert tree.stack == [tree.root], "unclosed elements"
    return tree.root


def jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 32), colour).save(out, "JPEG")
    return out.getvalue()


def product(pid: str, kind: str, colour: str = "Red", name: str = "") -> dict:
    metadata = {"articleType": kind, "baseColour": colour, "masterCategory": "Apparel"}
    return {"product_id": pid, "metadata": {**metadata, "productDisplayName": name or pid}}


def hit(found: dict, score: float) -> dict:
    return {"product_id": found["product_id"], "score": score, "metadata": found["metadata"]}


CATALOG = [
    product("s1", "Shirts", name="Blue <script>alert(1)</script> shirt"),
    product("s2", "Shirts", "Blue"),
    product("s3", "Shirts"),
    product("t1", "Shoes"),
    product("t2", "Shoes", "Black"),
    product("b1", "Bags"),
]


def neighbours(query: dict, k: int = 3) -> list[dict]:
    """The other items, those of the same kind first, with falling scores."""
    others = [p for p in CATALOG if p is not query]
    others.sort(key=lambda p: p["metadata"]["articleType"] != query["metadata"]["articleType"])
    return [hit(found, 0.9 - 0.1 * rank) for rank, found in enumerate(others[:k])]


@pytest.fixture
def report() -> Evaluation:
    report = Evaluation.of(3, "articleType", [(p, neighbours(p)) for p in CATALOG])
    report.chance = {"articleType": 0.2, "baseColour": 0.4, "masterCategory": 1.0}
    report.catalog_size, report.sampled = 60, True
    return report


THUMBNAILS = {p["product_id"]: jpeg((40 * i, 90, 200 - 30 * i)) for i, p in enumerate(CATALOG)}


def render(report: Evaluation, sheet: int = 3, seed: int = 0, thumbnails=None) -> Node:
    fetch = (thumbnails or THUMBNAILS).get
    return parse(render_html(report, fetch, MODEL, sheet, seed, generated=WHEN))


def test_header_says_what_was_measured_on_which_model(report):
    page = render(report)
    assert page.one("h1").text == "lookalike quality report"
    assert page.one(id="heading").text == "precision@3 over 6 of 60 indexed items (a random sample)"
    facts = page.one("dl", "facts").text
    assert "k 3" in facts and "by articleType" in facts and "2024-05-06 07:08" in facts
    assert page.one(id="model").text == MODEL["model_id"]
    assert page.one("p", "notice").text == MODEL["notice"]
    headings = [h.text for h in page.all("h2")]
    assert headings == [
        "Precision@3 per label",
        "Precision@3 of articleType, per value",
        "Worst queries",
        "Random sample",
    ]


def test_no_notice_without_one(report):
    page = parse(render_html(report, THUMBNAILS.get, {"model_id": "m"}, generated=WHEN))
    assert page.all("p", "notice") == []


def test_one_bar_per_label_with_its_chance_marker(report):
    overall = report.overall()
    rows = render(report).one(id="labels").all("tr")[1:]
    assert [row.all("td")[0].text for row in rows] == list(overall.index)
    for row in rows:
        label = row.all("td")[0].text
        svg = row.one("svg", "label-bar")
        precision, chance = overall.loc[label, "precision"], overall.loc[label, "chance"]
        assert row.all("td")[2].text == f"{precision:.3f}"
        assert float(svg.one("rect", "bar").attrs["width"]) == pytest.approx(300 * precision, 0.01)
        marker = svg.one("line", "chance")
        assert float(marker.attrs["x1"]) == pytest.approx(5 + 300 * chance, abs=0.05)
        assert svg.attrs["role"] == "img" and f"chance {chance:.3f}" in svg.attrs["aria-label"]


def test_groups_chart_shows_the_largest_groups_first_at_most_thirty():
    kinds = [f"kind{n:02d}" for n in range(MAX_GROUPS + 5)]
    catalog = [product(f"{kind}-{i}", kind) for n, kind in enumerate(kinds) for i in range(n + 1)]
    queries = [(p, [hit(p, 0.5)]) for p in catalog]
    report = Evaluation.of(1, "articleType", queries)
    section = render(report, sheet=0).one(id="groups")
    bars = section.all("g", "group")
    assert len(bars) == MAX_GROUPS
    assert bars[0].one("text", "value").text == kinds[-1]  # the most items
    assert bars[0].one("text", "figures").text == f"1.000 · {len(kinds)}"
    assert [bar.one("text", "value").text for bar in bars] == kinds[::-1][:MAX_GROUPS]
    assert "5 smaller ones left out" in section.one("p").text


def test_long_values_are_cut_short_in_the_chart_but_whole_in_its_title():
    long = "A very long article type name that goes on and on"
    report = Evaluation.of(1, "articleType", [(product("x", long), [hit(product("y", long), 1)])])
    bar = render(report, sheet=0).one("g", "group")
    assert bar.one("text", "value").text == long[:29] + "…"
    assert bar.one("title").text.startswith(long + ":")


def test_worst_sheet_marks_each_neighbour_same_or_different(report):
    worst = render(report).one(id="worst")
    rows = worst.all("div", "row")
    assert [row.one("figure", "query").one("div", "id").text for row in rows] == [
        f"query {pid}" for pid in report.worst(3)
    ]
    for row in rows:
        query_kind = row.one("figure", "query").one("strong").text
        cards = row.all("figure", "neighbour")
        assert len(cards) == 3
        for card in cards:
            same = card.all("div")[2].text == query_kind
            assert card.classes >= {"card", "neighbour", "same" if same else "different"}
            assert card.one("span", "mark").text == ("✓ same" if same else "✗ different")
        assert f"{sum('same' in c.classes for c in cards)} of 3 share it" in row.text


def test_worst_sheet_puts_the_loneliest_item_first(report):
    first = render(report).one(id="worst").all("div", "row")[0]
    assert "query b1" in first.text  # the only bag: no neighbour can share its label
    assert [card.one("span", "mark").text for card in first.all("figure", "neighbour")] == [
        "✗ different"
    ] * 3
    scores = [card.one("span", "score").text for card in first.all("figure", "neighbour")]
    assert scores == ["0.900", "0.800", "0.700"]


def test_random_sheet_draws_its_queries_with_the_seed(report):
    def sampled(seed: int) -> list[str]:
        sheet = render(report, sheet=2, seed=seed).one(id="sample")
        return [card_id(row.one("figure", "query")) for row in sheet.all("div", "row")]

    assert sampled(1) == sampled(1)
    assert len(sampled(1)) == 2
    assert {tuple(sampled(seed)) for seed in range(8)} != {tuple(sampled(1))}
    assert "2 of the 6 evaluated queries, drawn with seed 1" in (
        render(report, sheet=2, seed=1).one(id="sample").text
    )


def card_id(card: Node) -> str:
    return card.one("div", "id").text.removeprefix("query ")


def test_thumbnails_are_embedded_as_data_uris(report):
    page = render(report, sheet=6, thumbnails={"s3": THUMBNAILS["s3"]})
    cards = page.all("figure")
    assert len(page.all("img")) == sum(card_id(card) == "s3" for card in cards) > 0
    for img in page.all("img"):
        src = img.attrs["src"]
        assert src.startswith("data:image/jpeg;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == THUMBNAILS["s3"]
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == (24, 32)


def test_a_missing_or_broken_thumbnail_is_a_placeholder(report):
    def flaky(product_id: str) -> bytes | None:
        if product_id == "s2":
            raise OSError("connection reset")
        return {"t1": b"<html>not an image</html>", "t2": None}.get(
            product_id, THUMBNAILS[product_id]
        )

    page = parse(render_html(report, flaky, MODEL, 6, generated=WHEN))
    for card in page.all("figure"):
        if card_id(card) in ("s2", "t1", "t2"):
            assert card.all("img") == [] and card.one("div", "placeholder").text == "no image"
        else:
            assert card.one("img").attrs["src"] == data_uri(THUMBNAILS[card_id(card)])


def test_product_names_are_escaped(report):
    page = render_html(report, THUMBNAILS.get, MODEL, sheet=6, generated=WHEN)
    assert "<script" not in page
    assert "Blue &lt;script&gt;alert(1)&lt;/script&gt; shirt" in page
    names = [div.text for div in parse(page).all("div", "name")]
    assert "Blue <script>alert(1)</script> shirt" in names


def test_an_empty_evaluation_still_renders():
    report = Evaluation.of(5, "articleType", [])
    page = parse(render_html(report, THUMBNAILS.get, {}, generated=WHEN))
    assert page.one(id="model").text == "unknown"
    assert page.all("svg") == []
    assert [p.text for p in page.all("p") if p.text == "No queries to show."] == [
        "No queries to show."
    ] * 2


def test_data_uri_only_for_image_bytes():
    assert data_uri(None) is None and data_uri(b"") is None
    assert (
        data_uri(b"GIF89a...") == "data:image/gif;base64," + base64.b64encode(b"GIF89a...").decode()
    )
    assert data_uri(b"RIFF\0\0\0\0WEBPVP8 ").startswith("data:image/webp;base64,")
    assert data_uri(b"\x89PNG\r\n\x1a\n....").startswith("data:image/png;")
    assert data_uri(b"{}") is None


class FakeApi(BaseHTTPRequestHandler):
    """The two endpoints the report reads, over real HTTP: /readyz answers 503, as when no
    embed worker answers, with the index's model all the same; s2 has no thumbnail."""

    def do_GET(self) -> None:
        pid = self.path.removeprefix("/api/v1/products/").removesuffix("/image")
        if self.path == "/readyz":
            self.answer(503, "application/json", json.dumps({"ready": False, **MODEL}).encode())
        elif self.path.endswith("/image") and pid in THUMBNAILS and pid != "s2":
            self.answer(200, "image/jpeg", THUMBNAILS[pid])
        else:
            body = {"error": {"code": "not_found", "message": "unknown product"}}
            self.answer(404, "application/json", json.dumps(body).encode())

    def answer(self, status: int, mime: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_write_html_fetches_thumbnails_and_model_over_http(report, api_url, tmp_path):
    path = tmp_path / "report.html"
    write_html(report, ApiClient(api_url, retries=0), path, sheet=6, seed=0)
    page = parse(path.read_text(encoding="utf-8"))
    assert page.one(id="model").text == MODEL["model_id"]
    assert page.one("p", "notice").text == MODEL["notice"]
    sources = {img.attrs["src"] for img in page.all("img")}
    assert sources == {data_uri(data) for pid, data in THUMBNAILS.items() if pid != "s2"}
    assert len(page.all("div", "placeholder")) == sum(
        card_id(card) == "s2" for card in page.all("figure")
    )


def test_write_html_without_an_api_still_writes_the_report(report, tmp_path):
    path = tmp_path / "report.html"
    write_html(report, ApiClient("http://127.0.0.1:9", retries=0), path, sheet=2)
    page = parse(path.read_text(encoding="utf-8"))
    assert page.one(id="model").text == "unknown"
    assert page.all("img") == [] and page.all("div", "placeholder")


def test_sample_order_follows_evaluation_order(report):
    rows = render(report, sheet=4, seed=3).one(id="sample").all("div", "row")
    shown = [card_id(row.one("figure", "query")) for row in rows]
    evaluated = list(report.rows["product_id"])
    assert shown == [pid for pid in evaluated if pid in shown]
    assert set(shown) == set(random.Random(3).sample(evaluated, 4))
