"""`lookalike evaluate --hygiene`: what the neighbours say about the catalog's listings.

From each item's k nearest neighbours (`/similar`, the API's index: never an all-pairs matrix)
and the product records (`GET /api/v1/products`):

- near-duplicate listings: products whose cosine to another is at or above a threshold, grouped
  transitively (union-find over those links), largest and most similar groups first;
- likely mis-categorised products: for each label field, items most of whose neighbours carry one
  other value of it, with the share of neighbours that disagree and the value they carry instead;
- shared images and placeholders: one image (same `image_sha256`) on several ids, and
  near-duplicate groups of at least `placeholder_min` ids (the same picture, or nearly, on many
  products: a "no image" placeholder, a logo, a size chart).

The findings are pure functions of neighbour lists, so they are tested on hand-made ones.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cli.client import ApiClient, ApiError
from cli.report import Card, Thumbnail, api_thumbnail, data_uris, index_model, template

LABEL_FIELDS = ("articleType", "subCategory", "masterCategory", "baseColour", "gender")
DEFAULT_K = 10
DEFAULT_PLACEHOLDER_MIN = 5
MIN_LABELLED = 3  # fewer labelled neighbours than this: no majority worth reporting
TEXT_ROWS = 20  # mis-categorised items listed per field in the text report
TEXT_IDS = 20  # ids printed per group in the text report
Product = dict[str, Any]
Hit = dict[str, Any]


@dataclass(frozen=True)
class DuplicateGroup:
    """Products linked, directly or through each other, by cosine >= the threshold; `links`
    counts the distinct pairs seen among the neighbour lists, scored min/mean/max."""

    ids: tuple[str, ...]
    links: int
    min_score: float
    mean_score: float
    max_score: float

    @property
    def size(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Miscategorised:
    """An item whose neighbours mostly carry `instead` where it carries `label`."""

    product_id: str
    field: str
    label: str
    instead: str
    share: float  # of its labelled neighbours, the share that carry another value than label
    carried: int  # neighbours that carry `instead`
    labelled: int  # neighbours that carry any value of the field
    mean_score: float  # the mean score of the neighbours that carry `instead`


@dataclass(frozen=True)
class SharedImage:
    """One image file (by its SHA-256) on several products."""

    image_sha256: str
    ids: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.ids)


def id_order(product_id: str) -> tuple[int, int, str]:
    """Numeric ids first and by value (9 before 10), then the others as text."""
    if product_id.isdecimal() and product_id.isascii():
        return (0, int(product_id), product_id)
    return (1, 0, product_id)


def label_of(metadata: Mapping[str, Any] | None, name: str) -> str | None:
    value = (metadata or {}).get(name)
    return None if value in (None, "") else str(value)


def near_duplicate_groups(
    hits: Mapping[str, Sequence[Hit]], threshold: float
) -> list[DuplicateGroup]:
    """Groups of products linked by a neighbour score >= threshold, transitively: the
    components of that graph (union-find). Largest first, then the most similar (mean link
    score), then by first id."""
    links: dict[tuple[str, str], float] = {}
    for query, found in hits.items():
        for hit in found:
            other, score = str(hit["product_id"]), float(hit["score"])
            if other == query or score < threshold:
                continue
            pair = (query, other) if id_order(query) < id_order(other) else (other, query)
            links[pair] = max(score, links.get(pair, score))

    parent: dict[str, str] = {}

    def find(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    for a, b in links:
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b, key=id_order)] = min(root_a, root_b, key=id_order)
    members: dict[str, list[str]] = defaultdict(list)
    for node in parent:
        members[find(node)].append(node)
    scores: dict[str, list[float]] = defaultdict(list)
    for (a, _), score in links.items():
        scores[find(a)].append(score)
    groups = [
        DuplicateGroup(
            ids=tuple(sorted(ids, key=id_order)),
            links=len(scores[root]),
            min_score=min(scores[root]),
            mean_score=sum(scores[root]) / len(scores[root]),
            max_score=max(scores[root]),
        )
        for root, ids in members.items()
    ]
    return sorted(groups, key=lambda g: (-g.size, -g.mean_score, id_order(g.ids[0])))


def miscategorised(
    products: Mapping[str, Product], hits: Mapping[str, Sequence[Hit]], name: str
) -> list[Miscategorised]:
    """Items whose labelled neighbours (at least MIN_LABELLED of them) mostly, more than half,
    carry one value of the field `name` other than the item's own. The most confident first:
    the largest share of disagreeing neighbours, then the highest mean score of those that
    carry the other value."""
    found: list[Miscategorised] = []
    for product_id, neighbours in hits.items():
        own = label_of(products.get(product_id, {}).get("metadata"), name)
        if own is None:
            continue
        labelled = [
            (value, float(hit["score"]))
            for hit in neighbours
            if (value := label_of(hit.get("metadata"), name)) is not None
        ]
        if len(labelled) < MIN_LABELLED:
            continue
        others: dict[str, list[float]] = defaultdict(list)
        for value, score in labelled:
            if value != own:
                others[value].append(score)
        if not others:
            continue
        instead, scores = min(others.items(), key=lambda item: (-len(item[1]), -sum(item[1])))
        if 2 * len(scores) <= len(labelled):
            continue
        disagree = sum(len(s) for s in others.values())
        found.append(
            Miscategorised(
                product_id=product_id,
                field=name,
                label=own,
                instead=instead,
                share=disagree / len(labelled),
                carried=len(scores),
                labelled=len(labelled),
                mean_score=sum(scores) / len(scores),
            )
        )
    return sorted(found, key=lambda m: (-m.share, -m.mean_score, id_order(m.product_id)))


def shared_images(products: Iterable[Product]) -> list[SharedImage]:
    """Images (by SHA-256 of the uploaded bytes) that two or more products carry, most first."""
    by_digest: dict[str, list[str]] = defaultdict(list)
    for product in products:
        if product.get("image_sha256"):
            by_digest[str(product["image_sha256"])].append(str(product["product_id"]))
    shared = [
        SharedImage(digest, tuple(sorted(ids, key=id_order)))
        for digest, ids in by_digest.items()
        if len(ids) >= 2
    ]
    return sorted(shared, key=lambda s: (-s.size, id_order(s.ids[0])))


@dataclass
class Hygiene:
    """The findings over the queried items, with what the HTML report needs to show them."""

    k: int
    threshold: float
    placeholder_min: int
    products: dict[str, Product]  # every indexed product's record, by id
    hits: dict[str, list[Hit]]  # each queried item's neighbours
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    miscategorised: dict[str, list[Miscategorised]] = field(default_factory=dict)
    shared: list[SharedImage] = field(default_factory=list)
    sampled: bool = False
    seconds: float = 0.0  # the neighbour queries' wall time

    @classmethod
    def of(
        cls,
        products: Iterable[Product],
        hits: Mapping[str, Sequence[Hit]],
        k: int,
        threshold: float,
        placeholder_min: int = DEFAULT_PLACEHOLDER_MIN,
        fields: Sequence[str] = LABEL_FIELDS,
    ) -> Hygiene:
        records = {str(product["product_id"]): product for product in products}
        answered = {pid: list(found) for pid, found in hits.items() if found}
        return cls(
            k=k,
            threshold=threshold,
            placeholder_min=placeholder_min,
            products=records,
            hits=answered,
            duplicates=near_duplicate_groups(answered, threshold),
            miscategorised={name: miscategorised(records, answered, name) for name in fields},
            shared=shared_images(records.values()),
        )

    @property
    def queried(self) -> int:
        return len(self.hits)

    @property
    def catalog_size(self) -> int:
        return len(self.products)

    @property
    def placeholder_groups(self) -> list[DuplicateGroup]:
        """Near-identical vectors on placeholder_min ids or more."""
        return [group for group in self.duplicates if group.size >= self.placeholder_min]

    @property
    def placeholder_images(self) -> list[SharedImage]:
        """Identical images on placeholder_min ids or more."""
        return [image for image in self.shared if image.size >= self.placeholder_min]

    def heading(self) -> str:
        if self.sampled:
            over = f"{self.queried} of {self.catalog_size} indexed items (a random sample)"
        else:
            over = f"{self.queried} indexed items"
        return f"catalog hygiene over {over}, {self.k} nearest neighbours each"

    def settings_line(self) -> str:
        return (
            f"near-duplicate threshold {self.threshold:g} (cosine), placeholders: "
            f"{self.placeholder_min} or more products with one image or near-identical vectors"
        )

    def name(self, product_id: str) -> str:
        metadata = self.products.get(product_id, {}).get("metadata") or {}
        return str(metadata.get("productDisplayName") or "")

    def table(self) -> str:
        lines = [self.heading(), self.settings_line(), ""]
        lines += self._duplicates_table()
        lines += ["", *self._miscategorised_table()]
        lines += ["", *self._shared_table()]
        if self.seconds:
            rate = self.queried / self.seconds
            lines += ["", f"{self.queried} neighbour queries in {self.seconds:.1f}s ({rate:.0f}/s)"]
        return "\n".join(lines)

    def _duplicates_table(self) -> list[str]:
        listed = sum(group.size for group in self.duplicates)
        lines = [
            f"near-duplicate listings: {_count(len(self.duplicates), 'group')}, "
            f"{_count(listed, 'product')} "
            f"(cosine >= {self.threshold:g}; largest, then most similar, first)"
        ]
        if not self.duplicates:
            return lines
        lines.append(f"{'group':<7}{'size':>5}{'min':>8}{'mean':>8}  ids")
        for number, group in enumerate(self.duplicates, start=1):
            lines.append(
                f"{number:<7}{group.size:>5}{group.min_score:>8.4f}{group.mean_score:>8.4f}  "
                + _ids(group.ids)
            )
        return lines

    def _miscategorised_table(self) -> list[str]:
        lines = [
            "likely mis-categorised: most of an item's neighbours carry one other value "
            "(most confident first: share disagreeing, then their mean score)",
            f"{'field':<16}{'items':>7}",
        ]
        for name, found in self.miscategorised.items():
            lines.append(f"{name:<16}{len(found):>7}")
        for name, found in self.miscategorised.items():
            if not found:
                continue
            shown = found[:TEXT_ROWS]
            first = f", the {len(shown)} most confident" if len(found) > len(shown) else ""
            lines += ["", f"{name}: {_count(len(found), 'item')}{first}"]
            lines.append(f"{'id':<14}{'label':<22}{'instead':<28}{'share':>7}{'score':>7}")
            for item in shown:
                instead = f"{item.instead[:18]} ({item.carried}/{item.labelled})"
                lines.append(
                    f"{item.product_id[:13]:<14}{item.label[:21]:<22}{instead:<28}"
                    f"{item.share:>7.3f}{item.mean_score:>7.3f}"
                )
        return lines

    def _shared_table(self) -> list[str]:
        on = sum(image.size for image in self.shared)
        lines = [
            f"shared images: {_count(len(self.shared), 'image')} on {_count(on, 'product')} "
            "(same image_sha256)"
        ]
        if self.shared:
            lines.append(f"{'sha256':<14}{'size':>5}  ids")
            for image in self.shared:
                mark = "  (placeholder?)" if image.size >= self.placeholder_min else ""
                digest = image.image_sha256[:12]
                lines.append(f"{digest:<14}{image.size:>5}  {_ids(image.ids)}{mark}")
        groups = self.placeholder_groups
        numbers = [str(self.duplicates.index(group) + 1) for group in groups]
        line = (
            f"likely placeholders: {_count(len(groups), 'near-duplicate group')} of "
            f"{self.placeholder_min} or more products"
        )
        if numbers:
            line += f" ({'group' if len(numbers) == 1 else 'groups'} {', '.join(numbers)})"
        return [*lines, line]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ids(ids: Sequence[str]) -> str:
    shown = " ".join(ids[:TEXT_IDS])
    return shown + (f" … (+{len(ids) - TEXT_IDS})" if len(ids) > TEXT_IDS else "")


def check_hygiene(
    client: ApiClient,
    k: int,
    threshold: float,
    placeholder_min: int = DEFAULT_PLACEHOLDER_MIN,
    concurrency: int = 8,
    progress: bool = True,
    sample: int = 0,
    seed: int = 0,
) -> Hygiene:
    """Query the k neighbours of every indexed product (or of `sample` drawn at random), in
    `concurrency` requests at a time, and judge them."""
    products = [product for product in client.products() if product["indexed"]]
    queries = products
    if 0 < sample < len(products):
        queries = random.Random(seed).sample(products, sample)

    def neighbours(product: Product) -> tuple[str, list[Hit]]:
        product_id = str(product["product_id"])
        try:
            body = client.get(f"/api/v1/products/{product_id}/similar", k=k)
        except ApiError:  # deleted or re-posted meanwhile: not part of this report
            return product_id, []
        return product_id, body["results"]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = pool.map(neighbours, queries)
        hits = dict(tqdm(answers, total=len(queries), disable=not progress, unit="item"))
    seconds = time.perf_counter() - started
    report = Hygiene.of(products, hits, k, threshold, placeholder_min)
    report.sampled, report.seconds = queries is not products, seconds
    return report


# The HTML page (`--hygiene --html FILE`): the same findings, each with its products' thumbnails.

MAX_GROUPS_SHOWN = 30  # near-duplicate groups and shared images with pictures
MAX_CARDS = 12  # pictures per group; the other ids are listed


@dataclass(frozen=True)
class GroupView:
    """A group of products on the page: a title, cards of the first MAX_CARDS, other ids."""

    title: str
    cards: list[Card]
    more: list[str]
    flag: str = ""


@dataclass(frozen=True)
class MiscategorisedView:
    item: Miscategorised
    product: Card
    neighbours: list[Card]


def write_hygiene_html(report: Hygiene, client: ApiClient, path: Path, sheet: int = 8) -> None:
    """Render the hygiene report, with thumbnails and the model id from the API, into path."""
    page = render_hygiene_html(report, api_thumbnail(client), index_model(client), sheet)
    path.write_text(page, encoding="utf-8")


def render_hygiene_html(
    report: Hygiene,
    thumbnail: Thumbnail,
    model: Mapping[str, Any],
    sheet: int = 8,
    generated: datetime | None = None,
) -> str:
    """The page; `thumbnail(product_id)` gives an image's bytes, or None when it has none.
    `sheet` mis-categorised items are shown per field, with their neighbours."""
    groups = report.duplicates[:MAX_GROUPS_SHOWN]
    shared = report.shared[:MAX_GROUPS_SHOWN]
    flagged = {name: found[:sheet] for name, found in report.miscategorised.items()}
    shown = [pid for group in groups for pid in group.ids[:MAX_CARDS]]
    shown += [pid for image in shared for pid in image.ids[:MAX_CARDS]]
    for found in flagged.values():
        for item in found:
            neighbours = report.hits[item.product_id]
            shown += [item.product_id, *(str(hit["product_id"]) for hit in neighbours)]
    images = data_uris(thumbnail, list(dict.fromkeys(shown)))
    numbers = {group: number for number, group in enumerate(report.duplicates, start=1)}
    return template("hygiene.html").render(
        report=report,
        model_id=model.get("model_id") or "unknown",
        notice=model.get("notice"),
        generated=(generated or datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M %Z"),
        duplicates=[_group_view(report, group, numbers[group], images) for group in groups],
        duplicates_left_out=len(report.duplicates) - len(groups),
        miscategorised={
            name: [_miscategorised_view(report, item, images) for item in found]
            for name, found in flagged.items()
        },
        shared=[_shared_view(report, image, images) for image in shared],
        shared_left_out=len(report.shared) - len(shared),
        placeholders=[
            _group_view(report, group, numbers[group], images)
            for group in report.placeholder_groups[:MAX_GROUPS_SHOWN]
        ],
        sheet=sheet,
    )


def _card(
    report: Hygiene,
    product_id: str,
    images: Mapping[str, str | None],
    label: str = "articleType",
    score: float | None = None,
    mark: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> Card:
    if metadata is None:
        metadata = report.products.get(product_id, {}).get("metadata") or {}
    return Card(
        product_id=product_id,
        name=str(metadata.get("productDisplayName") or ""),
        label=label_of(metadata, label) or "",
        image=images.get(product_id),
        score=score,
        mark=mark,
    )


def _group_view(
    report: Hygiene, group: DuplicateGroup, number: int, images: Mapping[str, str | None]
) -> GroupView:
    title = (
        f"group {number}: {group.size} products, cosine {group.min_score:.4f} to "
        f"{group.max_score:.4f} (mean {group.mean_score:.4f})"
    )
    return _ids_view(report, title, group.ids, images)


def _shared_view(
    report: Hygiene, image: SharedImage, images: Mapping[str, str | None]
) -> GroupView:
    title = f"sha256 {image.image_sha256[:12]}…: {image.size} products"
    return _ids_view(report, title, image.ids, images)


def _ids_view(
    report: Hygiene, title: str, ids: Sequence[str], images: Mapping[str, str | None]
) -> GroupView:
    """A group of products shown as cards (the first MAX_CARDS), flagged when it is large."""
    flag = "placeholder?" if len(ids) >= report.placeholder_min else ""
    cards = [_card(report, pid, images) for pid in ids[:MAX_CARDS]]
    return GroupView(title, cards, list(ids[MAX_CARDS:]), flag)


def _miscategorised_view(
    report: Hygiene, item: Miscategorised, images: Mapping[str, str | None]
) -> MiscategorisedView:
    neighbours = []
    for hit in report.hits[item.product_id]:
        value = label_of(hit.get("metadata"), item.field)
        mark = (
            "unknown" if value is None
            else "same" if value == item.label
            else "instead" if value == item.instead
            else "different"
        )  # fmt: skip
        neighbours.append(
            _card(report, str(hit["product_id"]), images, item.field, float(hit["score"]), mark,
                  hit.get("metadata"))
        )  # fmt: skip
    return MiscategorisedView(item, _card(report, item.product_id, images, item.field), neighbours)
