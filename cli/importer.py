"""`lookalike import`: upload a Fashion Product Images catalog through the API, resumably."""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cli.client import ApiClient, ApiError
from cli.styles import StyleRow, check_header, count_rows, read_styles
from shared.records import FINISHED, TaskState

FOLLOW_INTERVAL = 0.2  # seconds between looks at the oldest unfinished task
NEAR_DUPLICATE_WAIT = 10.0  # seconds to wait for the API's replica to apply the last vectors
NEAR_DUPLICATE_INTERVAL = 0.1  # seconds between asks (few tasks are left to ask for by then)
NEAR_DUPLICATES_LISTED = 5  # near duplicates named per warning line


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # product id -> reason
    missing_images: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    # product id -> other products at or above the near-duplicate threshold, as the task said
    near_duplicates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)  # no near-duplicate answer in time

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
        for product_id, others in sorted(self.near_duplicates.items()):
            if others:
                listed = ", ".join(
                    f"{other['product_id']} ({other['score']:.3f})"
                    for other in others[:NEAR_DUPLICATES_LISTED]
                )
                if len(others) > NEAR_DUPLICATES_LISTED:
                    listed += f" and {len(others) - NEAR_DUPLICATES_LISTED} more"
                lines.append(f"warning: {product_id} is a near duplicate of {listed}")
        if self.unchecked:
            lines.append(
                f"near duplicates not checked for {len(self.unchecked)} items: the API had "
                "not applied their vectors yet"
            )
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
        unchecked = self._follow(pending, report, progress)
        self._near_duplicates(unchecked, report)
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

    def _follow(
        self, pending: dict[str, str], report: ImportReport, progress: bool
    ) -> dict[str, str]:
        """Poll tasks, oldest first, until every one has succeeded or failed; returns those
        that succeeded without a near-duplicate answer yet (task id -> product id).

        Tasks finish about in order: while the oldest is unfinished only it is asked for, every
        FOLLOW_INTERVAL; once it has finished the next ones are asked for `concurrency` at a
        time. About one request per task, however long the workers take."""
        queue = deque(pending.items())
        unchecked: dict[str, str] = {}
        width = 1
        with (
            tqdm(total=len(queue), unit="img", desc="index", disable=not progress) as bar,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="follow") as pool,
        ):
            while queue:
                chunk = [queue.popleft() for _ in range(min(width, len(queue)))]
                tasks = pool.map(self.client.get, [f"/api/v1/tasks/{t}" for t, _ in chunk])
                unfinished = [
                    item
                    for item, task in zip(chunk, tasks, strict=True)
                    if not _record(task, *item, report, unchecked)
                ]
                queue.extendleft(reversed(unfinished))
                bar.update(len(chunk) - len(unfinished))
                width = 1 if unfinished else self.concurrency
                if unfinished:
                    time.sleep(FOLLOW_INTERVAL)
        return unchecked

    def _near_duplicates(self, unchecked: dict[str, str], report: ImportReport) -> None:
        """Ask again for the near duplicates of tasks that succeeded before the API's replica
        had their vectors, for up to NEAR_DUPLICATE_WAIT seconds."""
        deadline = time.monotonic() + NEAR_DUPLICATE_WAIT

        def task(task_id: str) -> dict[str, Any]:
            try:
                return dict(self.client.get(f"/api/v1/tasks/{task_id}"))
            except ApiError:  # expired: nothing more to learn
                return {}

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="check") as pool:
            while unchecked:
                asked = list(unchecked.items())
                for (task_id, product_id), found in zip(
                    asked, pool.map(task, [task_id for task_id, _ in asked]), strict=True
                ):
                    if not found or _near_duplicates_of(found, product_id, report):
                        del unchecked[task_id]
                if not unchecked or time.monotonic() > deadline:
                    break
                time.sleep(NEAR_DUPLICATE_INTERVAL)
        report.unchecked = sorted(unchecked.values())


def _record(
    task: dict[str, Any],
    task_id: str,
    product_id: str,
    report: ImportReport,
    unchecked: dict[str, str],
) -> bool:
    """Record a task's outcome in the report; False while it is unfinished."""
    if task["state"] == TaskState.SUCCEEDED:
        report.imported += 1
        if not _near_duplicates_of(task, product_id, report):
            unchecked[task_id] = product_id
    elif task["state"] == TaskState.FAILED:
        error = task["error"]
        report.failed[product_id] = f"{error['code']}: {error['message']}"
    return task["state"] in FINISHED


def _near_duplicates_of(task: dict[str, Any], product_id: str, report: ImportReport) -> bool:
    """Record what a succeeded task says of near duplicates; False when it says nothing yet."""
    found = (task.get("result") or {}).get("near_duplicates")
    if found is None:
        return False
    report.near_duplicates[product_id] = found
    return True


def _collect(
    in_flight: dict[Future[str], StyleRow], return_when: str | None
) -> Iterator[tuple[StyleRow, str]]:
    done, _ = wait(in_flight, return_when=return_when or "ALL_COMPLETED")
    for future in done:
        yield in_flight.pop(future), future.result()
