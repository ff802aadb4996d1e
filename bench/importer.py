"""Catalog import: is the importer faster than the embed workers, and is its memory flat?

Runs a real stack (redis-server, gunicorn API, later one embed worker and the writer). First the
importer uploads a demo catalog with no embed worker running: its upload rate is the most it
could feed the workers. Then one embed worker drains the queue: its rate is what a worker takes.
The importer's peak RSS is measured for two catalog sizes to show memory does not grow with it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.demo_catalog import write_demo_catalog
from cli.redis_server import RedisServer, free_port
from cli.stack import stack_specs
from cli.supervisor import Supervisor
from shared import keys
from shared.settings import Settings
from tests.support.stack import answers, wait_until
from workers.weights import write_random_weights

IMPORT = """
import json, resource, sys, time
from pathlib import Path
from cli.client import ApiClient
from cli.importer import CatalogImporter
started = time.monotonic()
importer = CatalogImporter(ApiClient(sys.argv[1]), concurrency=8)
uploaded = importer.upload_only(Path(sys.argv[2]))
print(json.dumps({"uploaded": uploaded, "seconds": time.monotonic() - started,
                  "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def import_catalog(api: str, dataset: Path) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-c", IMPORT, api, str(dataset)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, float] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs=2, default=[500, 2000])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    weights = write_random_weights(Path(".pytest_cache/weights/resnet50_seed1234_notop.h5"), 1234)
    settings = Settings(data_dir=root / "data", weights=str(weights), batch_size=32)
    server = RedisServer(root / "redis", appendonly=True)
    server.start()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    specs = {spec.name: spec for spec in stack_specs(settings, server.url, "127.0.0.1", port)}
    env = {
        **(specs["api"].env or {}),
        "LOOKALIKE_WEIGHTS": str(weights),
        "LOOKALIKE_BATCH_SIZE": "32",
    }
    specs = {name: replace(spec, env=env) for name, spec in specs.items()}
    log = (root / "stack.log").open("w")
    api = Supervisor([specs["api"], specs["writer"]], log_stream=log)
    api.start()
    rows = []
    try:
        wait_until(lambda: answers(api_url + "/healthz"), 60, "the API did not answer")
        for size in args.sizes:
            dataset = root / f"catalog{size}"
            write_demo_catalog(dataset, size, seed=size)
            result = import_catalog(api_url, dataset)
            rows.append((size, result))
        client = redis.Redis.from_url(server.url)
        queued = sum(int(result["uploaded"]) for _, result in rows)
        worker = Supervisor([specs["embed"]], log_stream=log)
        worker.start()
        started = None
        deadline = time.monotonic() + 3600
        while True:
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker did not drain {queued} tasks in an hour; see {root}")
            done = int(client.hget(keys.STATS, "tasks_succeeded") or 0)
            done += int(client.hget(keys.STATS, "tasks_failed") or 0)
            if started is None and done:
                started, first = time.monotonic(), done  # model loaded, first batch in
            if done >= queued:
                break
            time.sleep(0.5)
        assert started is not None
        drain_rate = (done - first) / (time.monotonic() - started)
        worker.stop()
    finally:
        api.stop()
        server.stop()
    print(f"demo catalog images 240x320 JPEG, importer concurrency 8, {settings.batch_size=}")
    print(f"{'measure':<44}{'items':>8}{'items/s':>10}{'peak RSS MiB':>14}")
    for size, result in rows:
        rate = result["uploaded"] / result["seconds"]
        rss = result["max_rss_kib"] / 1024
        print(f"{'importer upload (no worker running)':<44}{size:>8}{rate:>10.1f}{rss:>14.1f}")
    print(f"{'one embed worker draining the queue':<44}{queued:>8}{drain_rate:>10.1f}{'':>14}")
    best = max(r["uploaded"] / r["seconds"] for _, r in rows)
    print(f"importer / worker rate: {best / drain_rate:.1f}x")


if __name__ == "__main__":
    main()
