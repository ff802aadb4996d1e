"""The fault suite: real processes, real signals, and what each fault costs.

Each fault runs on a fresh stack (redis-server, an embed worker, the index writer, gunicorn, as
tests/support/stack.py starts them) while products are being posted, then the stack is brought
back as an operator (or `lookalike up`'s supervisor) would. A row: what was done, uploads
accepted (202), tasks succeeded, items the API then serves, items lost (accepted, not failed,
not served), and seconds from the fault until every accepted item was served again.
Writes the table to stdout and, with --out, as Markdown.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from shared.index import INDEX_FILE
from shared.snapshots import SnapshotStore
from tests.support.client import post_product, product_image, similar
from tests.support.damage import damage
from tests.support.stack import Stack, wait_until
from workers.weights import write_random_weights


@dataclass
class Row:
    fault: str
    action: str
    accepted: int = 0
    succeeded: int = 0
    served: int = 0
    lost: int = 0
    recover_s: float = 0.0


class Run:
    """One stack and the products posted to it."""

    def __init__(self, root: Path, weights: Path, **settings: object) -> None:
        self.stack = Stack(root, weights, snapshot_interval=1, **settings)
        self.stack.start_redis()
        self.api = self.stack.ensure_up()
        self.stack.wait_ready(self.api, 180)
        self.tasks: dict[str, str] = {}

    def post(self, prefix: str, count: int, start: int = 0) -> None:
        def one(n: int) -> tuple[str, str | None]:
            product_id = f"{prefix}{n}"
            try:
                response = post_product(self.api, product_id, product_image(start + n), {"n": n})
            except requests.RequestException:
                return product_id, None
            return product_id, response.json()["task_id"] if response.status_code == 202 else None

        with ThreadPoolExecutor(4) as pool:
            for product_id, task_id in pool.map(one, range(count)):
                if task_id is not None:
                    self.tasks[product_id] = task_id

    def states(self) -> dict[str, str]:
        api = self.stack.api_urls[-1]
        return {
            pid: requests.get(f"{api}/api/v1/tasks/{task}", timeout=10).json().get("state", "?")
            for pid, task in self.tasks.items()
        }

    def served(self) -> set[str]:
        api = self.stack.api_urls[-1]
        return {pid for pid in self.tasks if similar(api, pid).status_code == 200}

    def settle(self, since: float, timeout: float = 300) -> float:
        """Seconds from `since` until every accepted, not failed, item is served; or -1."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = self.states()
                wanted = {pid for pid, state in states.items() if state != "failed"}
                if all(state in ("succeeded", "failed") for state in states.values()) and (
                    wanted <= self.served()
                ):
                    return time.monotonic() - since
            except requests.RequestException:
                pass
            time.sleep(0.5)
        return -1.0

    def row(self, fault: str, action: str, since: float) -> Row:
        recover = self.settle(since)
        states = self.states()
        served = self.served()
        failed = {pid for pid, state in states.items() if state == "failed"}
        lost = set(self.tasks) - failed - served
        succeeded = sum(state == "succeeded" for state in states.values())
        return Row(fault, action, len(self.tasks), succeeded, len(served), len(lost), recover)


def kill(stack: Stack, name: str) -> None:
    os.killpg(stack.processes.pop(name).pid, signal.SIGKILL)


def worker_killed(run: Run) -> tuple[str, float]:
    run.stack.stop("embed")
    run.post("w", 24)
    run.stack.start_worker()
    wait_until(lambda: "running" in run.states().values(), 120, "no task started", 0.05)
    kill(run.stack, "embed")
    since = time.monotonic()
    run.stack.start_worker()
    return "SIGKILL the embed worker mid-batch, start a new one", since


def redis_killed(run: Run) -> tuple[str, float]:
    run.post("r", 12)
    run.stack.redis.kill()
    since = time.monotonic()
    run.stack.redis.start()
    run.post("r", 12, start=12)
    return "SIGKILL redis-server (appendonly everysec) after 12 uploads, restart it", since


def writer_killed(run: Run) -> tuple[str, float]:
    run.post("k", 16)
    kill(run.stack, "writer")
    run.post("k", 8, start=16)
    since = time.monotonic()
    run.stack.ensure_up()
    return "SIGKILL the index writer during ingest, start it again", since


def api_killed(run: Run) -> tuple[str, float]:
    run.post("a", 16)
    kill(run.stack, "api")
    since = time.monotonic()
    run.api = run.stack.ensure_up()
    return "SIGKILL the API (gunicorn) after 16 uploads, start it again", since


def snapshots_damaged(every: bool) -> Callable[[Run], tuple[str, float]]:
    def fault(run: Run) -> tuple[str, float]:
        store = SnapshotStore(run.stack.root / "data" / "index")
        for round_ in range(3):
            run.post(f"s{round_}-", 6, start=10 * round_)
            count = 6 * (round_ + 1)
            wait_until(lambda c=count: newest(store) >= c, 60, "no snapshot")
        run.stack.stop("api")
        run.stack.stop("writer")
        doomed = store.snapshots() if every else store.snapshots()[:1]
        for snapshot in doomed:
            damage(snapshot.folder / INDEX_FILE, "flipped byte")
        since = time.monotonic()
        run.api = run.stack.ensure_up()
        if every:  # what an operator does when /readyz says so: import the lost items again
            wait_until(lambda: b"lost their vectors" in readyz(run), 120, "no loss reported")
            lost = [pid for pid in run.tasks if similar(run.api, pid).status_code != 200]
            for pid in lost:
                prefix, n = pid.rsplit("-", 1)
                round_ = int(prefix[1:])
                response = post_product(run.api, pid, product_image(10 * round_ + int(n)), {})
                run.tasks[pid] = response.json()["task_id"]
            return "flip a byte in every snapshot, restart writer and API, re-import", since
        return "flip a byte in the newest snapshot, restart writer and API", since

    return fault


def newest(store: SnapshotStore) -> int:
    loaded = store.load_newest()
    return 0 if loaded.index is None else len(loaded.index)


def readyz(run: Run) -> bytes:
    try:
        return requests.get(f"{run.stack.api_urls[-1]}/readyz", timeout=10).content
    except requests.RequestException:
        return b""


def writer_paused(run: Run) -> tuple[str, float]:
    run.post("p", 8)
    run.stack.start_writer("writer2")
    first = run.stack.processes["writer"]
    os.killpg(first.pid, signal.SIGSTOP)
    since = time.monotonic()
    run.post("p", 8, start=8)
    wait_until(lambda: "writer lock acquired" in run.stack.log("writer2"), 60, "no takeover")
    os.killpg(first.pid, signal.SIGCONT)
    return "SIGSTOP the writer past its lock's TTL (second writer waiting), then SIGCONT", since


FAULTS: dict[str, tuple[Callable[[Run], tuple[str, float]], dict[str, object]]] = {
    "embed worker killed (visibility 60 s)": (worker_killed, {"visibility_timeout": 60}),
    "embed worker killed (visibility 10 s)": (worker_killed, {"visibility_timeout": 10}),
    "redis-server killed": (redis_killed, {}),
    "index writer killed": (writer_killed, {}),
    "API killed": (api_killed, {}),
    "newest snapshot corrupt": (snapshots_damaged(every=False), {}),
    "every snapshot corrupt": (snapshots_damaged(every=True), {}),
    "writer paused, lock taken over": (writer_paused, {}),
}


def table(rows: list[Row]) -> str:
    lines = [
        "| fault | what was done | accepted | succeeded | in index | lost | recovered in |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        recovered = f"{row.recover_s:.1f} s" if row.recover_s >= 0 else "not within 300 s"
        lines.append(
            f"| {row.fault} | {row.action} | {row.accepted} | {row.succeeded} | {row.served} "
            f"| {row.lost} | {recovered} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run only faults whose name has this")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_random_weights(Path(tmp) / "weights.h5", seed=1234)
        for name, (fault, settings) in FAULTS.items():
            if args.only and not any(part in name for part in args.only):
                continue
            run = Run(Path(tempfile.mkdtemp(dir=tmp)), weights, **settings)
            try:
                action, since = fault(run)
                rows.append(run.row(name, action, since))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
            finally:
                run.stack.stop_all()
    print(table(rows))
    if args.out:
        write_table(args.out, table(rows))


def write_table(path: Path, text: str) -> None:
    """Into path between its fault-table markers (the rest of the page kept), or the whole file."""
    start, end = "<!-- fault table: bench/faults.py -->", "<!-- end of fault table -->"
    page = path.read_text() if path.exists() else ""
    if start in page and end in page:
        before, rest = page.split(start, 1)
        text = f"{before}{start}\n{text}\n{end}{rest.split(end, 1)[1]}"
    path.write_text(text if text.endswith("\n") else text + "\n")


if __name__ == "__main__":
    main()
