"""`lookalike evaluate`: precision@k of neighbours sharing the query item's labels."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from cli.client import ApiClient, ApiError

LABELS = ("articleType", "subCategory", "masterCategory", "baseColour")


@dataclass
class Evaluation:
    k: int
    by: str
    items: int = 0
    # label -> [sum of precision, number of items]
    overall: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0]))
    # value of `by` -> [sum of precision, number of items]
    groups: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0]))
    chance: dict[str, float] = field(default_factory=dict)

    def add(self, metadata: dict[str, Any], hits: list[dict[str, Any]]) -> None:
        if not hits:
            return
        self.items += 1
        for label in {*LABELS, self.by}:
            value = metadata.get(label)
            if value in (None, ""):
                continue
            precision = sum(hit["metadata"].get(label) == value for hit in hits) / len(hits)
            self.overall[label][0] += precision
            self.overall[label][1] += 1
            if label == self.by:
                self.groups[str(value)][0] += precision
                self.groups[str(value)][1] += 1

    def table(self) -> str:
        lines = [f"precision@{self.k} over {self.items} indexed items", ""]
        lines.append(f"{'label':<16}{'items':>8}{'precision':>11}{'chance':>9}")
        for label, (total, count) in sorted(self.overall.items()):
            chance = self.chance.get(label, 0.0)
            lines.append(f"{label:<16}{count:>8}{total / count:>11.3f}{chance:>9.3f}")
        lines += ["", f"by {self.by}:", f"{self.by:<24}{'items':>8}{'precision':>11}"]
        ranked = sorted(self.groups.items(), key=lambda item: (-item[1][1], item[0]))
        for value, (total, count) in ranked:
            lines.append(f"{value[:24]:<24}{count:>8}{total / count:>11.3f}")
        return "\n".join(lines)


def chance_precision(values: Iterable[str]) -> float:
    """Expected precision if neighbours were drawn at random from the rest of the catalog."""
    counts = Counter(value for value in values if value)
    total = sum(counts.values())
    if total < 2:
        return 0.0
    return sum(n * (n - 1) for n in counts.values()) / (total * (total - 1))


def evaluate(
    client: ApiClient, k: int, by: str, concurrency: int = 8, progress: bool = True
) -> Evaluation:
    products = [product for product in client.products() if product["indexed"]]
    report = Evaluation(k=k, by=by)
    for label in {*LABELS, by}:
        report.chance[label] = chance_precision(
            str(product["metadata"].get(label) or "") for product in products
        )

    def neighbours(product: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            body = client.get(f"/api/v1/products/{product['product_id']}/similar", k=k)
        except ApiError:  # deleted or re-posted meanwhile: not part of this report
            return product["metadata"], []
        return product["metadata"], body["results"]

    with ThreadPoolExecutor(concurrency) as pool:
        results = pool.map(neighbours, products)
        for metadata, hits in tqdm(results, total=len(products), disable=not progress):
            report.add(metadata, hits)
    return report
