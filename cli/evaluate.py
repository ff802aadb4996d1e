"""`lookalike evaluate`: precision@k of neighbours sharing the query item's labels."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd
from tqdm import tqdm

from cli.client import ApiClient, ApiError

LABELS = ("articleType", "subCategory", "masterCategory", "baseColour")


@dataclass
class Evaluation:
    """One row per query item: its labels and, per label, the share of neighbours that match."""

    k: int
    by: str
    rows: pd.DataFrame
    chance: dict[str, float]

    @classmethod
    def of(
        cls, k: int, by: str, queries: Iterable[tuple[dict[str, Any], list[dict[str, Any]]]]
    ) -> Evaluation:
        labels = sorted({*LABELS, by})
        records = [_precisions(metadata, hits, labels) for metadata, hits in queries if hits]
        rows = pd.DataFrame.from_records(records, columns=[*labels, *map(_hit_column, labels)])
        return cls(k, by, rows, {})

    @property
    def items(self) -> int:
        return len(self.rows)

    def overall(self) -> pd.DataFrame:
        """Per label: items that carry it, mean precision and the chance level."""
        labels = sorted({*LABELS, self.by})
        table = pd.DataFrame(
            {
                "items": [int(self.rows[_hit_column(label)].count()) for label in labels],
                "precision": [self.rows[_hit_column(label)].mean() for label in labels],
                "chance": [self.chance.get(label, 0.0) for label in labels],
            },
            index=labels,
        )
        return table[table["items"] > 0]

    def groups(self) -> pd.DataFrame:
        """Per value of `by`: items and mean precision of that label, largest groups first."""
        column = _hit_column(self.by)
        rated = self.rows[self.rows[column].notna()]
        grouped = rated.groupby(self.by)[column].agg(items="count", precision="mean")
        return grouped.sort_values(["items"], ascending=False, kind="stable")

    def table(self) -> str:
        lines = [f"precision@{self.k} over {self.items} indexed items", ""]
        lines.append(f"{'label':<16}{'items':>8}{'precision':>11}{'chance':>9}")
        for label, row in self.overall().iterrows():
            lines.append(
                f"{label:<16}{int(row['items']):>8}{row['precision']:>11.3f}{row['chance']:>9.3f}"
            )
        lines += ["", f"by {self.by}:", f"{self.by:<24}{'items':>8}{'precision':>11}"]
        for value, row in self.groups().iterrows():
            lines.append(f"{str(value)[:24]:<24}{int(row['items']):>8}{row['precision']:>11.3f}")
        return "\n".join(lines)


def _hit_column(label: str) -> str:
    return f"precision:{label}"


def _precisions(
    metadata: dict[str, Any], hits: list[dict[str, Any]], labels: list[str]
) -> dict[str, Any]:
    """The query's labels and, where it has a label, the share of hits with the same value."""
    row: dict[str, Any] = {}
    for label in labels:
        value = metadata.get(label)
        if value in (None, ""):
            row[label], row[_hit_column(label)] = None, None
            continue
        row[label] = str(value)
        row[_hit_column(label)] = sum(h["metadata"].get(label) == value for h in hits) / len(hits)
    return row


def chance_precision(values: Iterable[str]) -> float:
    """Expected precision if neighbours were drawn at random from the rest of the catalog."""
    counts = pd.Series([value for value in values if value], dtype="object").value_counts()
    total = int(counts.sum())
    if total < 2:
        return 0.0
    return float((counts * (counts - 1)).sum() / (total * (total - 1)))


def evaluate(
    client: ApiClient, k: int, by: str, concurrency: int = 8, progress: bool = True
) -> Evaluation:
    products = [product for product in client.products() if product["indexed"]]

    def neighbours(product: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            body = client.get(f"/api/v1/products/{product['product_id']}/similar", k=k)
        except ApiError:  # deleted or re-posted meanwhile: not part of this report
            return product["metadata"], []
        return product["metadata"], body["results"]

    with ThreadPoolExecutor(concurrency) as pool:
        results = pool.map(neighbours, products)
        report = Evaluation.of(k, by, tqdm(results, total=len(products), disable=not progress))
    for label in {*LABELS, by}:
        report.chance[label] = chance_precision(
            str(product["metadata"].get(label) or "") for product in products
        )
    return report
