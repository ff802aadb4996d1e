"""`lookalike evaluate --compare`: the quality of two index generations side by side.

Both generations are loaded here, as an API replica loads one (newest snapshot, then the journal
to its head), so the comparison needs the stack's Redis and snapshots, not the API; the same
queries are asked of both, and each answer is judged as `lookalike evaluate` judges it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import redis

from cli.evaluate import Evaluation, chance_precision
from shared.catalog import Catalog
from shared.follower import catch_up
from shared.keys import Generation
from shared.settings import Settings
from shared.snapshots import open_store


@dataclass
class Comparison:
    names: tuple[str, str]
    reports: tuple[Evaluation, Evaluation]
    queries: int
    changed: int  # queries whose top-k lists differ (as sets)
    overlap: float  # mean share of one list found in the other

    def table(self) -> str:
        first, second = self.names
        lines = [
            f"precision@{self.reports[0].k} of generations {first} and {second} over the same "
            f"{self.queries} queries",
            "",
            f"{'label':<16}{first:>12}{second:>12}{'change':>9}{'chance':>9}",
        ]
        a, b = (report.overall() for report in self.reports)
        for label in a.index:
            pa, pb = a.loc[label, "precision"], b.loc[label, "precision"]
            chance = a.loc[label, "chance"]
            lines.append(f"{label:<16}{pa:>12.3f}{pb:>12.3f}{pb - pa:>+9.3f}{chance:>9.3f}")
        lines += [
            "",
            f"top-{self.reports[0].k} lists changed: {self.changed} of {self.queries} "
            f"(mean overlap {self.overlap:.2f})",
        ]
        return "\n".join(lines)


def load(settings: Settings, client: redis.Redis, gen: Generation) -> Catalog:
    """The generation's whole index, as a replica would hold it."""
    catalog, _ = Catalog.restore(settings, open_store(settings, gen))
    catch_up(client, catalog, gen)
    return catalog


def compare(
    settings: Settings,
    client: redis.Redis,
    gens: tuple[Generation, Generation],
    k: int,
    by: str,
    sample: int = 0,
    seed: int = 0,
) -> Comparison:
    catalogs = [load(settings, client, gen) for gen in gens]
    shared_ids = sorted(set(catalogs[0].metadata) & set(catalogs[1].metadata))
    if 0 < sample < len(shared_ids):
        shared_ids = random.Random(seed).sample(shared_ids, sample)
    answers = [
        [(_product(catalog, pid), catalog.similar(pid, k, {})) for pid in shared_ids]
        for catalog in catalogs
    ]
    reports = tuple(Evaluation.of(k, by, queries) for queries in answers)
    for report, catalog in zip(reports, catalogs, strict=True):
        report.catalog_size = len(catalog)
        for label in report.overall().index:
            values = (str(meta.get(label) or "") for meta in catalog.metadata.values())
            report.chance[label] = chance_precision(values)
    overlaps = [
        len({h["product_id"] for h in a} & {h["product_id"] for h in b}) / max(len(a), 1)
        for (_, a), (_, b) in zip(answers[0], answers[1], strict=True)
    ]
    return Comparison(
        names=(gens[0].label, gens[1].label),
        reports=(reports[0], reports[1]),
        queries=len(shared_ids),
        changed=sum(share < 1.0 for share in overlaps),
        overlap=sum(overlaps) / len(overlaps) if overlaps else 1.0,
    )


def _product(catalog: Catalog, product_id: str) -> dict[str, object]:
    return {"product_id": product_id, "metadata": catalog.metadata.get(product_id, {})}
