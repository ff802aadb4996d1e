"""What a snapshot load at the idle scheduling priority costs a normal process on the same CPU.

A handover's new worker loads at SCHED_IDLE beside the serving worker (api/handover.py). This
bench runs, on one CPU: a watcher at the normal priority that sleeps 5 ms and works ~1 ms in a
loop, recording how late each wake-up is, while a SCHED_IDLE process does one thing: nothing,
spin 1 s, fill fresh memory the size of the index file, read() the file (from the page cache)
into fresh or into touched memory, hnswlib's load_index of it, or our loader's (shared/hnsw_file.py:
reads of a MiB, then hnswlib's pickle state). Prints the watcher's lateness (p99, max) per case
and against the idle case, and each load's seconds; measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from shared.hnsw_file import open_index, read_checked

DIM = 2048
CASES = ["none", "spin", "fill", "read", "read into touched memory", "load_index", "short reads"]


def build(path: Path, items: int) -> None:
    """A cosine index of items random 2048-d vectors (a thin graph: only its size matters)."""
    index = hnswlib.Index("cosine", DIM)
    index.init_index(items, M=16, ef_construction=10)
    rng = np.random.default_rng(0)
    for start in range(0, items, 5000):
        block = rng.standard_normal((min(5000, items - start), DIM), dtype=np.float32)
        index.add_items(block, np.arange(start, start + len(block)))
    index.save_index(str(path))


def watcher(cpu: int, stop: Any, out: Any) -> None:
    os.sched_setaffinity(0, {cpu})
    lateness = []
    while not stop.is_set():
        began = time.perf_counter()
        time.sleep(0.005)
        lateness.append(time.perf_counter() - began - 0.005)
        total = 0
        for i in range(20000):  # about a millisecond of Python
            total += i
    out.put([x * 1000 for x in lateness])


def work(cpu: int, case: str, path: Path, digest: str, took: Any) -> None:
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    size = path.stat().st_size
    began = time.perf_counter()
    if case == "spin":
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            pass
    elif case == "fill":
        np.ones(size, np.uint8)
    elif case.startswith("read"):
        buffer = np.ones(size, np.uint8) if "touched" in case else np.empty(size, np.uint8)
        with path.open("rb", buffering=0) as file:
            file.readinto(buffer.data)
    elif case == "load_index":
        hnswlib.Index("cosine", DIM).load_index(str(path))
    elif case == "short reads":
        open_index(read_checked(path, size, digest), "cosine", DIM, 0)
    took.put(time.perf_counter() - began)


def measure(cpu: int, case: str, path: Path, digest: str) -> tuple[list[float], float]:
    """The watcher's lateness (ms) while case runs, and the seconds case took."""
    stop = mp.Event()
    took: mp.Queue[float] = mp.Queue()
    out: mp.Queue[list[float]] = mp.Queue()
    watching = mp.Process(target=watcher, args=(cpu, stop, out))
    watching.start()
    time.sleep(0.5)
    seconds = 0.0
    if case == "none":
        time.sleep(1.0)
    else:
        loader = mp.Process(target=work, args=(cpu, case, path, digest, took))
        loader.start()
        seconds = took.get()
        loader.join()
    time.sleep(0.3)
    stop.set()
    lateness: list[float] = out.get()
    watching.join()
    return lateness, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=40_000, help="items in the index file")
    parser.add_argument("--cpu", type=int, default=1, help="the CPU both run on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index.bin"
        build(path, args.items)
        with path.open("rb") as file:  # into the page cache, as a snapshot just written is
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        print(f"{args.items} items, {path.stat().st_size / 2**20:.0f} MiB, CPU {args.cpu}")
        print(
            f"{'SCHED_IDLE process does':<28}{'p99 ms':>10}{'max ms':>10}{'p99 / none':>12}"
            f"{'its seconds':>13}"
        )
        base = None
        for case in CASES:
            lateness, seconds = measure(args.cpu, case, path, digest)
            p99 = float(np.percentile(lateness, 99))
            base = base or p99
            print(
                f"{case:<28}{p99:>10.2f}{max(lateness):>10.1f}{p99 / base:>12.1f}{seconds:>13.2f}"
            )


if __name__ == "__main__":
    main()
