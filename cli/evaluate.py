"""`lookalike evaluate`: precision@k of neighbours sharing the query item's labels."""

from __future__ import annotations

import random
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm import tqdm

from cli.client import ApiClient, ApiError

LABELS = ("articleType", "subCategory", "masterCategory", "baseColour")
Product = dict[str, Any]
Hits = list[dict[str, Any]]


@dataclass
class Evaluation:
    """One row per query item: its labels and, per label, the share of neighbours that match;
    `hits` and `queries` keep each query's neighbours and product record, by product id."""

    k: int
    by: str
    rows: pd.DataFrame
    hits: dict[str, Hits] = field(default_factory=dict)
    queries: dict[str, Product] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    catalog_size: int = 0
    sampled: bool = False

    @classmethod
    def of(cls, k: int, by: str, queries: Iterable[tuple[Product, Hits]]) -> Evaluation:
        labels = _labels(by)
        records, hits, asked = [], {}, {}
        for product, found in queries:
            if found:
                records.append(_precisions(product, found, labels))
                hits[product["product_id"]] = found
                asked[product["product_id"]] = product
        columns = ["product_id", *labels, *map(hit_column, labels)]
        rows = pd.DataFrame.from_records(records, columns=columns)
        return cls(k, by, rows, hits, asked, catalog_size=len(records))

    @property
    def items(self) -> int:
        return len(self.rows)

    def overall(self) -> pd.DataFrame:
        """Per label: items that carry it, mean precision and the chance level."""
        labels = _labels(self.by)
        table = pd.DataFrame(
            {
                "items": [int(self.rows[hit_column(label)].count()) for label in labels],
                "precision": [self.rows[hit_column(label)].mean() for label in labels],
                "chance": [self.chance.get(label, 0.0) for label in labels],
            },
            index=labels,
        )
        return table[table["items"] > 0]

    def groups(self) -> pd.DataFrame:
        """Per value of `by`: items and mean precision of that label, largest groups first."""
        column = hit_column(self.by)
        rated = self.rows[self.rows[column].notna()]
        grouped = rated.groupby(self.by)[column].agg(items="count", precision="mean")
        return grouped.sort_values(["items"], ascending=False, kind="stable")

    def worst(self, n: int) -> list[str]:
        """The n queries whose neighbours least often share their `by` label, the most
        confidently wrong first (highest top score)."""
        rated = self.rows[self.rows[hit_column(self.by)].notna()].copy()
        rated["top"] = [self.hits[pid][0]["score"] for pid in rated["product_id"]]
        ranked = rated.sort_values([hit_column(self.by), "top"], ascending=[True, False])
        return list(ranked["product_id"][:n])

    def heading(self) -> str:
        if self.sampled:
            return (
                f"precision@{self.k} over {self.items} of {self.catalog_size} indexed items "
                "(a random sample)"
            )
        return f"precision@{self.k} over {self.items} indexed items"

    def table(self) -> str:
        lines = [self.heading(), ""]
        lines.append(f"{'label':<16}{'items':>8}{'precision':>11}{'chance':>9}")
        for label, row in self.overall().iterrows():
            lines.append(
                f"{label:<16}{int(row['items']):>8}{row['precision']:>11.3f}{row['chance']:>9.3f}"
            )
        lines += ["", f"by {self.by}:", f"{self.by:<24}{'items':>8}{'precision':>11}"]
        for value, row in self.groups().iterrows():
            lines.append(f"{str(value)[:24]:<24}{int(row['items']):>8}{row['precision']:>11.3f}")
        return "\n".join(lines)


def hit_column(label: str) -> str:
    return f"precision:{label}"


def _labels(by: str) -> list[str]:
    return sorted({*LABELS, by})


def _precisions(product: Product, hits: Hits, labels: list[str]) -> dict[str, Any]:
    """The query's labels and, where it has a label, the share of hits with the same value."""
    row: dict[str, Any] = {"product_id": product["product_id"]}
    metadata = product["metadata"]
    for label in labels:
        value = metadata.get(label)
        if value in (None, ""):
            row[label], row[hit_column(label)] = None, None
            continue
        row[label] = str(value)
        row[hit_column(label)] = sum(h["metadata"].get(label) == value for h in hits) / len(hits)
    return row


def chance_precision(values: Iterable[str]) -> float:
    """Expected precision if neighbours were drawn at random from the rest of the catalog."""
    counts = pd.Series([value for value in values if value], dtype="object").value_counts()
    total = int(counts.sum())
    if total < 2:
        return 0.0
    return float((counts * (counts - 1)).sum() / (total * (total - 1)))


def evaluate(
    client: ApiClient,
    k: int,
    by: str,
    concurrency: int = 8,
    progress: bool = True,
    sample: int = 0,
    seed: int = 0,
) -> Evaluation:
    """Query the neighbours of every indexed product, or of `sample` of them drawn at random."""
    products = [product for product in client.products() if product["indexed"]]
    queries = products
    if 0 < sample < len(products):
        queries = random.Random(seed).sample(products, sample)

    def neighbours(product: Product) -> tuple[Product, Hits]:
        try:
            body = client.get(f"/api/v1/products/{product['product_id']}/similar", k=k)
        except ApiError:  # deleted or re-posted meanwhile: not part of this report
            return product, []
        return product, body["results"]

    with ThreadPoolExecutor(concurrency) as pool:
        results = pool.map(neighbours, queries)
        report = Evaluation.of(k, by, tqdm(results, total=len(queries), disable=not progress))
    report.catalog_size, report.sampled = len(products), queries is not products
    for label in _labels(by):
        report.chance[label] = chance_precision(
            str(product["metadata"].get(label) or "") for product in products
        )
    return report
