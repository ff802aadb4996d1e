"""What the writer's kinds of work on the other CPU cost an idle replica's /similar (issue 14).

The stack of bench/follow.py --pin: Redis and the writer on CPU 0, one API replica and one client
on CPU 1; --seed-items items imported and settled, then nothing imported: the replica follows
nothing. The client queries /similar k=10 in a loop while CPU 0 runs, in turn, --seconds each,
nothing and one process (5 nicer, as the writer) doing one kind of the writer's work: spinning in
Python, building an HNSW graph of 2048-d vectors (hnswlib, M=16, ef_construction 200), writing
snapshot-sized files with fsync (each replacing the oldest), forking a process of 256 MiB, and
nothing again. Prints p50 / p99 against both idle windows together: the part of a following
replica's latency during an import that no way of following can remove on a machine where the
writer shares the memory, caches and disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project first; bench/ (put first by Python, as the script's directory) last, for its
# sibling modules: they must not shadow an installed or standard module of the same name.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))

import argparse
import json
import os
import subprocess
import time
from dataclasses import dataclass

from follow import Latency, QueriedStack
from stack import MODEL, Data, Sampler, common_arguments, pin, run_each

from shared import keys

WRITER_CPU, REPLICA_CPU = 0, 1
# Each load as a program: what it repeats until it is killed.
IDLE = "idle"
LOADS = {
    IDLE: None,
    "python spinning": "while True:\n    pass\n",
    "graph building": (
        "import hnswlib, numpy as np\n"
        "graph = hnswlib.Index(space='cosine', dim=2048)\n"
        "graph.init_index(max_elements=400_000, M=16, ef_construction=200)\n"
        "rng, n = np.random.default_rng(1), 0\n"
        "while True:\n"
        "    rows = rng.random((500, 2048), dtype=np.float32)\n"
        "    graph.add_items(rows, np.arange(n, n + 500), num_threads=1)\n"
        "    n += 500\n"
    ),
    "snapshot files": (
        "import os, sys\n"
        "block, n = os.urandom(64 << 20), 0\n"
        "while True:\n"
        "    path = os.path.join(sys.argv[1], f'snapshot-{n % 3}')  # the oldest: freed\n"
        "    with open(path, 'wb') as file:\n"
        "        for _ in range(6):\n"
        "            file.write(block)\n"
        "        file.flush()\n"
        "        os.fsync(file.fileno())\n"
        "    n += 1\n"
    ),
    "forking": (
        "import os, time, numpy as np\n"
        "memory = np.ones(256 << 20, dtype=np.uint8)\n"
        "while True:\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        time.sleep(0.5)\n"
        "        os._exit(0)\n"
        "    memory[::4096] += 1  # copy-on-write, as the writer goes on applying\n"
        "    os.waitpid(child, 0)\n"
    ),
}


@dataclass
class Window:
    load: str
    latency: Latency


@dataclass
class InterferenceResult:
    windows: list[Window]


class InterferenceRun(QueriedStack):
    """An idle, pinned replica queried while CPU 0 runs each load in turn."""

    def measure(self, variant: int) -> InterferenceResult:
        args = self.args
        self.start_stack()
        self.apis = [self.start_api("api1")]
        self.replica_cpus = {REPLICA_CPU}
        for pid in (os.getpid(), self.writer.pid, self.redis.pid or 0):
            pin(pid, {WRITER_CPU})
        api, _ = self.apis[0]
        for pid in (api.pid, api.worker_pid() or api.pid):
            pin(pid, self.replica_cpus)
        self.client.set(keys.INDEX_MODEL, MODEL)
        self.data = Data(args.data, args.seed_items, args.seed)
        self.sampler = Sampler(self)
        self.settle_seed()
        stop, results = self.start_client()
        # Idle first and last: the baseline is both together, so that a drift of the machine
        # over the run does not pass for a load's effect.
        order = [*LOADS, IDLE]
        spans = [self.run_load(name, LOADS[name]) for name in order]
        stop.set()
        stamps = results.get(timeout=60)
        self.query_client.join(30)
        idle = [span for name, span in zip(order, spans, strict=True) if name == IDLE]
        windows = [
            Window(
                "idle, first and last",
                Latency.of(stamps, idle[0][0], idle[1][1], lambda began, _: within(began, idle)),
            )
        ]
        windows += [
            Window(name, Latency.of(stamps, *span)) for name, span in zip(order, spans, strict=True)
        ]
        return InterferenceResult(windows)

    def run_load(self, name: str, program: str | None) -> tuple[float, float]:
        """--seconds of queries while program runs on the writer's CPU; their window."""
        load = None
        if program is not None:
            argv = ["nice", "-n", "5", sys.executable, "-c", program, str(self.base)]
            load = subprocess.Popen(argv)
            pin(load.pid, {WRITER_CPU})
            time.sleep(2.0)  # its start-up (the graph's allocation, the first file)
        began = time.monotonic()
        time.sleep(self.args.seconds)
        ended = time.monotonic()
        if load is not None:
            load.kill()
            load.wait()
        print(f"  {name}: done", file=sys.stderr)
        return began, ended


def within(moment: float, spans: list[tuple[float, float]]) -> bool:
    return any(start <= moment < end for start, end in spans)


def report(windows: list[Window]) -> str:
    """Each window against the first (both idle windows together)."""
    idle = windows[0].latency
    lines = [
        f"{'on CPU 0 (the writer)':<22}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'p50 x':>8}{'p99 x':>8}",
    ]
    for window in windows:
        at = window.latency
        lines.append(
            f"{window.load:<22}{at.requests:>10}{at.p50_ms:>9.2f}{at.p99_ms:>9.2f}"
            f"{at.max_ms:>9.1f}{at.p50_ms / idle.p50_ms:>8.2f}{at.p99_ms / idle.p99_ms:>8.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed-items", type=int, default=2000, help="items the replica serves")
    parser.add_argument("--seconds", type=float, default=15.0, help="queried per load")
    parser.add_argument(
        "--client-first",
        action="store_true",
        help="run the client at SCHED_FIFO: no wait for a core behind the others",
    )
    common_arguments(parser, timeout=600)
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two CPUs: the writer's and the replica's")
    # What FollowRun's stack reads; nothing is imported after the seed.
    args.dims, args.fit_items, args.max_backlog = 0, 20_000, 0
    args.pin, args.redis_with_replicas, args.items = True, False, 0
    if args.report:
        for path in args.report:
            (raw,) = json.loads(path.read_text())
            print(report([Window(w["load"], Latency(**w["latency"])) for w in raw["windows"]]))
        return
    (result,) = run_each(lambda v, base: InterferenceRun(args, 0, base), [1], args, "interference")
    print(report(result.windows))


if __name__ == "__main__":
    main()
