"""Durability: what `appendfsync always` costs against `everysec`, in accepted uploads per second.

Each round starts the embedded Redis of `lookalike up` (appendonly, password, in a fresh data
directory on the disk under --dir) with one policy, and the real API (gunicorn) in front of it,
with no embed worker: only the API + Redis path of `POST /api/v1/products` is measured. A few
threads post N small distinct JPEGs; the rate is N / wall time, every answer must be 202.
Policies alternate within the run, so both see the same machine; the table gives the median
round of each and the ratio.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.redis_server import free_port
from cli.stack import stack_specs, start_embedded_redis
from cli.supervisor import Supervisor
from shared.settings import Settings
from tests.support.stack import answers, wait_until

Policy = Literal["everysec", "always"]
POLICIES: tuple[Policy, Policy] = ("everysec", "always")
WARMUP = 200


def jpeg(n: int) -> bytes:
    """A small JPEG (64x64), distinct for every n."""
    colour = (n % 251, (n // 251) % 251, (n * 7) % 251)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def post_all(url: str, ids: range, threads: int, key: str | None) -> list[float]:
    """Post one image per id from `threads` threads; each request's seconds. Anything but 202
    stops the benchmark."""
    local = threading.local()
    headers = {"X-API-Key": key} if key else {}

    def post(n: int) -> float:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        began = time.perf_counter()
        answer = session.post(
            f"{url}/api/v1/products",
            data={"product_id": f"p{n}"},
            files={"image": (f"p{n}.jpg", jpeg(n), "image/jpeg")},
            headers=headers,
            timeout=30,
        )
        if answer.status_code != 202:
            raise SystemExit(f"upload p{n}: {answer.status_code} {answer.text[:200]}")
        return time.perf_counter() - began

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, ids))


def one_round(root: Path, policy: Policy, uploads: int, threads: int) -> tuple[float, float]:
    """Uploads per second and median request milliseconds of one fresh stack with `policy`."""
    settings = Settings(data_dir=root, redis_url=None, appendfsync=policy)
    server = start_embedded_redis(settings)
    port = free_port()
    specs = stack_specs(settings, server.url, "127.0.0.1", port)
    api = next(spec for spec in specs if spec.name == "api")
    with (root / "api.log").open("w") as log:
        supervisor = Supervisor([api], log_stream=log)
        supervisor.start()
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: answers(url + "/healthz"), 60, "the API did not answer")
            post_all(url, range(-WARMUP, 0), threads, settings.client_api_key)
            began = time.perf_counter()
            seconds = post_all(url, range(uploads), threads, settings.client_api_key)
            elapsed = time.perf_counter() - began
        finally:
            supervisor.stop()
            server.stop()
    return uploads / elapsed, statistics.median(seconds) * 1000


def fsync_ms(directory: Path, times: int = 200) -> float:
    """Median milliseconds of appending 512 bytes to a file in `directory` and fdatasync-ing it:
    what `always` waits for, and what makes these figures this disk's."""
    samples = []
    with (directory / "fsync-probe").open("ab", buffering=0) as probe:
        for _ in range(times):
            began = time.perf_counter()
            probe.write(b"x" * 512)
            os.fdatasync(probe.fileno())
            samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=2000, help="timed uploads per round")
    parser.add_argument("--threads", type=int, default=4, help="uploads in flight")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each policy")
    parser.add_argument("--dir", type=Path, default=None, help="where the data goes (a disk)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="lookalike-durability-", dir=args.dir))
    results: dict[str, list[tuple[float, float]]] = {policy: [] for policy in POLICIES}
    for round_ in range(args.rounds):
        for policy in POLICIES if round_ % 2 == 0 else POLICIES[::-1]:
            rate, latency = one_round(
                base / f"{policy}-{round_}", policy, args.uploads, args.threads
            )
            results[policy].append((rate, latency))
            print(f"round {round_ + 1} {policy:<9} {rate:8.1f} uploads/s", file=sys.stderr)
    probe = fsync_ms(base)
    shutil.rmtree(base)
    print_table(results, args)
    print(f"fdatasync of 512 appended bytes on this disk: {probe:.2f} ms median")


def print_table(results: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    print(
        f"POST /api/v1/products, 64x64 JPEGs, no embed worker, {args.uploads} uploads x "
        f"{args.rounds} rounds per policy, {args.threads} threads"
    )
    print(f"{'appendfsync':<12}{'uploads/s':>11}{'min':>9}{'max':>9}{'median ms':>11}")
    medians = {}
    for policy, rows in results.items():
        rates = [rate for rate, _ in rows]
        medians[policy] = statistics.median(rates)
        latency = statistics.median(ms for _, ms in rows)
        print(
            f"{policy:<12}{medians[policy]:>11.1f}{min(rates):>9.1f}{max(rates):>9.1f}"
            f"{latency:>11.1f}"
        )
    print(f"always / everysec: {medians['always'] / medians['everysec']:.2f}")


if __name__ == "__main__":
    main()
