"""What one journal read costs an API process's other threads (api/replica.py JOURNAL_READ).

redis-py's parser (hiredis) builds a read's reply holding the GIL: while it does, no request
thread of the process runs. For each --counts N: reads of N journal entries of 2048-d from a
redis-server of its own (shared.follower.read_after, as a replica reads), the time a read takes,
and the longest another thread of the process (sleeping 0.2 ms at a time, the switch interval
0.5 ms as while a replica follows) went without running during the reads, against the same
thread's longest gap with no read going on.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import tempfile
import threading
import time

import numpy as np
import redis

from cli.redis_server import RedisServer
from shared.follower import read_after
from shared.journal import START, append, upsert_entry

DIM = 2048
READS = 30  # per count


def fill(client: redis.Redis, entries: int) -> None:
    rng = np.random.default_rng(0)
    pipe = client.pipeline(transaction=False)
    for n in range(entries):
        vector = rng.random(DIM, dtype=np.float32)
        append(client, pipe, upsert_entry(str(n), vector, "bench", {"name": f"item {n}"}))
        if n % 200 == 199:
            pipe.execute()
    pipe.execute()


class Ticker:
    """A thread that notes the longest time it went without running."""

    def __init__(self) -> None:
        self.longest, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.0002)
            now = time.perf_counter()
            self.longest, last = max(self.longest, now - last), now

    def __enter__(self) -> Ticker:
        self._thread.start()
        time.sleep(0.05)
        self.longest = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[32, 128, 512, 1000])
    args = parser.parse_args()
    sys.setswitchinterval(0.0005)
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder)) as server:
        client = redis.Redis.from_url(server.url)
        fill(client, max(args.counts))
        with Ticker() as idle:
            time.sleep(0.5)
        print(f"longest gap with no read: {idle.longest * 1000:.2f} ms")
        print(f"{'entries a read':>15}{'ms a read':>11}{'longest gap ms':>16}")
        for count in args.counts:
            with Ticker() as ticker:
                started = time.perf_counter()
                for _ in range(READS):
                    read_after(client, START, count, None)
                seconds = (time.perf_counter() - started) / READS
            print(f"{count:>15}{seconds * 1000:>11.2f}{ticker.longest * 1000:>16.2f}")


if __name__ == "__main__":
    main()
