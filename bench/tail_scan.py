"""What a replica's exact tail (shared/tail.py) costs: a query against its rows and BLAS threads,
with the host's other cores idle or busy (a writer building its graph), and filling it (against
hnswlib making the same bits).

A query is a /similar by product id's: k=10, the product itself excluded. The other cores are
kept busy by processes spinning in Python. Ratios are against one BLAS thread on an idle host
at the same rows. Run: `python bench/tail_scan.py` (about 15 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.cosine import normalised_by_hnswlib, stored_form
from shared.layered import TAIL_CHUNK as CHUNK
from shared.tail import ExactTail

DIM = 2048


@contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """count processes spinning on a core each while the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.3)  # scheduled and spinning
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def filled(rows: int, seed: int) -> tuple[ExactTail, float, float]:
    """A tail of rows random non-negative vectors; the seconds filling it took, and the seconds
    hnswlib itself takes to make the same rows' bits (a scratch index: the fallback, and the way
    until bb91e3c)."""
    data = np.abs(np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32))
    tail = ExactTail(DIM, rows)
    stored_form(data[:1])  # its once-a-process check of hnswlib's bits, not part of a fill
    began = time.perf_counter()
    for start in range(0, rows, CHUNK):
        chunk = data[start : start + CHUNK]
        tail.upsert([str(start + row) for row in range(len(chunk))], chunk)
    fill = time.perf_counter() - began
    began = time.perf_counter()
    for start in range(0, rows, CHUNK):
        normalised_by_hnswlib(data[start : start + CHUNK])
    return tail, fill, time.perf_counter() - began


def query_ms(tail: ExactTail, queries: int, seed: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of queries by a stored item's vector, that item excluded."""
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(queries):
        id_ = str(int(rng.integers(len(tail))))
        vector = tail.get_vector(id_)
        began = time.perf_counter()
        tail.query(vector, 10, exclude={id_})
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"# exact tail, {DIM}-d, k=10, one id excluded; {cores} cores; {time.ctime()}")
    print(
        "| rows | fill (ms) | by hnswlib (ms) | BLAS threads | other cores | p50 (ms) | p99 (ms) "
        "| p50 ratio |"
    )
    print("|---:|---:|---:|---:|---|---:|---:|---:|")
    for rows in args.rows:
        tail, fill, by_hnswlib = filled(rows, args.seed)
        base = None
        for busy in (False, True):
            for threads in sorted({1, cores}):
                with busy_cores(cores - 1 if busy else 0), threadpool_limits(threads, "blas"):
                    query_ms(tail, 20, args.seed)  # warm
                    p50, p99 = query_ms(tail, args.queries, args.seed)
                base = base or p50
                print(
                    f"| {rows:,} | {fill * 1000:.0f} | {by_hnswlib * 1000:.0f} | {threads} "
                    f"| {'busy' if busy else 'idle'} "
                    f"| {p50:.2f} | {p99:.2f} | {p50 / base:.2f} |"
                )


if __name__ == "__main__":
    main()
