"""`lookalike import`: upload a Fashion Product Images catalog through the API, resumably."""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cli.client import ApiClient, ApiError
from cli.styles import StyleRow, check_header, count_rows, read_styles
from shared.records import FINISHED, TaskState

FOLLOW_WINDOW = 64  # unfinished tasks checked per round while following (they finish in order)


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # product id -> reason
    missing_images: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.imported / self.elapsed if self.elapsed else 0.0

    def summary(self) -> str:
        lines = [
            f"imported {self.imported}, skipped {self.skipped}, failed {len(self.failed)}, "
            f"without image file {len(self.missing_images)}",
            f"elapsed {self.elapsed:.1f}s, {self.rate:.1f} images/s",
        ]
        if self.skipped:
            lines.append(f"skipped {self.skipped}: already indexed with the same image (--force)")
        if self.missing_images:
            lines.append("rows without an image file: " + ", ".join(self.missing_images))
        for product_id, reason in sorted(self.failed.items()):
            lines.append(f"failed {product_id}: {reason}")
        return "\n".join(lines)


class CatalogImporter:
    def __init__(self, client: ApiClient, concurrency: int = 8, force: bool = False) -> None:
        self.client = client
        self.concurrency = concurrency
        self.force = force

    def run(self, dataset: Path, progress: bool = True) -> ImportReport:
        """Upload every row, then follow the tasks to completion."""
        started = time.monotonic()
        report = ImportReport()
        pending = self._upload_phase(dataset, report, progress)
        self._follow(pending, report, progress)
        report.elapsed = time.monotonic() - started
        return report

    def upload_only(self, dataset: Path) -> int:
        """Upload without following the tasks; the number queued (for benchmarks)."""
        return len(self._upload_phase(dataset, ImportReport(), progress=False))

    def _upload_phase(self, dataset: Path, report: ImportReport, progress: bool) -> dict[str, str]:
        """Upload rows (skipping unchanged ones); task id -> product id, in order."""
        styles = dataset / "styles.csv"
        check_header(styles)  # before anything else, so a wrong file costs nothing
        indexed = {} if self.force else self._indexed_digests()
        pending: dict[str, str] = {}
        with tqdm(total=count_rows(styles), unit="img", desc="upload", disable=not progress) as bar:
            for row, outcome in self._upload_all(read_styles(styles), dataset, indexed):
                bar.update(1)
                if outcome == "missing":
                    report.missing_images.append(row.product_id)
                elif outcome == "skipped":
                    report.skipped += 1
                elif outcome.startswith("task:"):
                    pending[outcome[5:]] = row.product_id
                else:
                    report.failed[row.product_id] = outcome
        return pending

    def _indexed_digests(self) -> dict[str, str]:
        return {
            product["product_id"]: product["image_sha256"]
            for product in self.client.products()
            if product["indexed"] and product["image_sha256"]
        }

    def _upload_all(
        self, rows: Iterator[StyleRow], dataset: Path, indexed: dict[str, str]
    ) -> Iterator[tuple[StyleRow, str]]:
        """(row, outcome) as uploads finish, at most 2x concurrency in flight (flat memory)."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="upload") as pool:
            in_flight: dict[Future[str], StyleRow] = {}
            for row in rows:
                if len(in_flight) >= 2 * self.concurrency:
                    yield from _collect(in_flight, FIRST_COMPLETED)
                in_flight[pool.submit(self._upload, row, dataset, indexed)] = row
            yield from _collect(in_flight, None)

    def _upload(self, row: StyleRow, dataset: Path, indexed: dict[str, str]) -> str:
        image = dataset / "images" / f"{row.product_id}.jpg"
        if not image.is_file():
            return "missing"
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        if indexed.get(row.product_id) == digest:
            return "skipped"
        try:
            accepted = self.client.post_product(row.product_id, image, row.metadata)
            return "task:" + accepted["task_id"]
        except ApiError as exc:
            return f"{exc.code}: {exc.message}"

    def _follow(self, pending: dict[str, str], report: ImportReport, progress: bool) -> None:
        """Poll tasks, oldest first, until every one has succeeded or failed."""
        queue = deque(pending.items())
        with tqdm(total=len(queue), unit="img", desc="index", disable=not progress) as bar:
            while queue:
                window = [queue.popleft() for _ in range(min(FOLLOW_WINDOW, len(queue)))]
                unfinished = [item for item in window if not self._finished(*item, report)]
                queue.extendleft(reversed(unfinished))
                bar.update(len(window) - len(unfinished))
                if len(unfinished) == len(window):
                    time.sleep(0.5)

    def _finished(self, task_id: str, product_id: str, report: ImportReport) -> bool:
        task = self.client.get(f"/api/v1/tasks/{task_id}")
        if task["state"] == TaskState.SUCCEEDED:
            report.imported += 1
        elif task["state"] == TaskState.FAILED:
            error = task["error"]
            report.failed[product_id] = f"{error['code']}: {error['message']}"
        return task["state"] in FINISHED


def _collect(
    in_flight: dict[Future[str], StyleRow], return_when: str | None
) -> Iterator[tuple[StyleRow, str]]:
    done, _ = wait(in_flight, return_when=return_when or "ALL_COMPLETED")
    for future in done:
        yield in_flight.pop(future), future.result()
