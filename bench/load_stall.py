"""What a snapshot load at the idle scheduling priority costs a normal process on the same CPU.

A handover's new worker loads at SCHED_IDLE beside the serving worker (api/handover.py). This
bench runs, on one CPU: a watcher at the normal priority that sleeps 5 ms and works ~1 ms in a
loop, recording how late each wake-up is, while a SCHED_IDLE process does one thing: nothing,
spin 1 s, fill fresh memory the size of the index file, read() the file (from the page cache)
into fresh or into touched memory, or load it as shared/index.py does: the sha256 check, then
hnswlib's load_index; or in short reads (shared/hnsw_file.py: reads of a MiB, hashed as read,
then hnswlib's pickle state). Prints the watcher's lateness (p99, max) per case and against the
idle case, and each case's seconds; measured in the same run.

Then, for the two loaders, what a load costs the other threads of its own process (a thread
sleeping 1 ms in a loop, on the same CPU): the longest and the p99 wait past its 1 ms, which is
the loader holding the GIL.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from shared.hnsw_file import open_index, read_checked, verify_file

DIM = 2048
LOADERS = ["hash + load_index", "short reads"]
CASES = ["none", "spin", "fill", "read", "read into touched memory", *LOADERS]


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
    else:
        load(case, path, digest)
    took.put(time.perf_counter() - began)


def load(loader: str, path: Path, digest: str) -> hnswlib.Index:
    """The index file loaded as shared/index.py's two openers do."""
    size = path.stat().st_size
    if loader == "short reads":
        return open_index(read_checked(path, size, digest), "cosine", DIM, 0)
    verify_file(path, size, digest)
    index = hnswlib.Index("cosine", DIM)
    index.load_index(str(path))
    return index


def gil_wait(cpu: int, loader: str, path: Path, digest: str, out: Any) -> None:
    """In a process of its own on cpu: how late a 1 ms sleeper thread wakes while loading (ms)."""
    os.sched_setaffinity(0, {cpu})
    lateness: list[float] = []
    stop = threading.Event()

    def sleeper() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            time.sleep(0.001)
            lateness.append((time.perf_counter() - began - 0.001) * 1000)

    thread = threading.Thread(target=sleeper)
    thread.start()
    time.sleep(0.2)
    lateness.clear()
    load(loader, path, digest)
    stop.set()
    thread.join()
    out.put(lateness)


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
        print(f"\n{'its own process, loading':<28}{'p99 ms':>10}{'max ms':>10}")
        for loader in LOADERS:
            out: mp.Queue[list[float]] = mp.Queue()
            process = mp.Process(target=gil_wait, args=(args.cpu, loader, path, digest, out))
            process.start()
            waits = out.get()
            process.join()
            print(f"{loader:<28}{np.percentile(waits, 99):>10.2f}{max(waits):>10.1f}")


if __name__ == "__main__":
    main()
