"""What the writer's graph costs alone, and what loading it costs a process's other threads.

Builds N clustered 2048-d items ("lowrank", as bench/scale.py) with VectorIndex.upsert, 1,000 a
call, on every core (the writer's way): items/s. Then saves the graph and loads it while another
thread of the same process ticks every millisecond (a query thread's stand-in): the load's
seconds against the longest tick gap. hnswlib holds the GIL through load_index, so the gap is
the load: every query of an API process waits for a replica's rebase load that long.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

# The project first; bench/ (put first by Python, as the script's directory) last, for its
# sibling modules: they must not shadow an installed or standard module of the same name.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))

from stack import Data

from shared.index import VectorIndex

CALL = 1000  # items an upsert call, as the writer's journal reads


def build(n: int, seed: int) -> tuple[VectorIndex, float]:
    index = VectorIndex(2048, "bench")
    data = Data("lowrank", n, seed)
    seconds = 0.0
    for start, chunk in data.chunks():
        for at in range(0, len(chunk), CALL):
            ids = [str(start + at + row) for row in range(len(chunk[at : at + CALL]))]
            began = time.perf_counter()
            index.upsert(ids, chunk[at : at + CALL])
            seconds += time.perf_counter() - began
    return index, seconds


def load_stall(index: VectorIndex) -> tuple[float, float]:
    """(load seconds, longest gap between 1 ms ticks of another thread meanwhile)."""
    gaps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    with tempfile.TemporaryDirectory() as folder:
        manifest = index.save(Path(folder), "0-0")
        ticker = threading.Thread(target=tick)
        ticker.start()
        time.sleep(0.2)
        began = time.perf_counter()
        VectorIndex.load(Path(folder), manifest, "bench")
        seconds = time.perf_counter() - began
        time.sleep(0.2)
        stop.set()
        ticker.join()
    return seconds, max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'items':>8} {'build items/s':>14} {'load s':>7} {'longest tick gap s':>19} ", end="")
    print(f"{'gap/load':>8}")
    for n in args.sizes:
        index, seconds = build(n, args.seed)
        load, gap = load_stall(index)
        print(f"{n:>8} {n / seconds:>14.0f} {load:>7.2f} {gap:>19.2f} {gap / load:>8.2f}")


if __name__ == "__main__":
    main()
