"""What a quiet API process's idle priority costs the first request after a quiet spell
(LOOKALIKE_REPLICA_IDLE_AFTER, api/traffic.py).

One process as an API process is: a Traffic whose work thread follows in small pieces of Python
(about a millisecond each, holding the GIL, then `pace`, as a replica's following does between
inserts) at the same GIL switch interval, and a request thread that, every --every seconds
(a quiet spell longer than --quiet, the setting's seconds here), wakes and goes through
Traffic's middleware. The request's lateness, from when it was due to when the app ran, is what
it waited for the GIL and a core. Cases: following at the normal priority and idle when quiet,
each with the cores free and with --busy processes spinning at the normal priority (the writer
or other replicas on the host). Ratios against the normal priority with the same cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project first; bench/ (put first by Python, as the script's directory) last.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))

import argparse
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from api.priority import can_restore_priority
from api.replica import FOLLOW_SWITCH_INTERVAL
from api.traffic import Traffic

# (following, whether --busy processes spin)
CASES = [(case, busy) for busy in (False, True) for case in ("normal", "idle when quiet")]


def spin() -> None:
    while True:
        pass


def follow(traffic: Traffic, stop: threading.Event) -> None:
    """Pieces of about a millisecond of Python, each followed by pace."""
    while not stop.is_set():
        total = 0
        for i in range(20000):
            total += i
        traffic.pace()


def lateness(traffic: Traffic, requests: int, every: float) -> list[float]:
    """Milliseconds each request waited, from when it was due until the app ran."""
    waited: list[float] = []
    due = 0.0

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        waited.append((time.perf_counter() - due) * 1000)
        return [b"ok"]

    counted = traffic.middleware(app)
    for _ in range(requests):
        due = time.perf_counter() + every
        time.sleep(every)
        counted({"PATH_INFO": "/api/v1/products/p/similar"}, lambda *args: None)
    return waited


def measure(case: str, busy: int, args: argparse.Namespace) -> list[float]:
    """The lateness of each request of one case, with `busy` processes spinning."""
    spinners = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
    for each in spinners:
        each.start()
    traffic, stop = Traffic(longest_wait=0.01), threading.Event()
    if case == "idle when quiet":
        traffic.idle_when_quiet(args.quiet)
    worker = threading.Thread(target=follow, args=(traffic, stop), daemon=True)
    worker.start()
    try:
        return lateness(traffic, args.requests, args.every)
    finally:
        stop.set()
        worker.join(10)
        for each in spinners:
            each.kill()
            each.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="requests a case")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between requests")
    parser.add_argument(
        "--quiet", type=float, default=0.2, help="seconds without a request before it idles"
    )
    parser.add_argument(
        "--busy", type=int, default=os.cpu_count() or 1, help="spinning processes when busy"
    )
    args = parser.parse_args()
    if args.quiet >= args.every:
        parser.error("--quiet must be shorter than --every: each request must find it quiet")
    if not can_restore_priority():
        raise SystemExit("needs CAP_SYS_NICE or RLIMIT_NICE of 20 (idle when quiet is off)")
    sys.setswitchinterval(FOLLOW_SWITCH_INTERVAL)
    print(
        f"{args.requests} requests a case, one every {args.every} s, quiet after {args.quiet} s; "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"{'following':<18}{'busy':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'p50 x':>8}{'p99 x':>8}"
    )
    base: dict[int, tuple[float, float]] = {}
    for case, busy in CASES:
        spinning = args.busy if busy else 0
        waited = measure(case, spinning, args)
        p50, p99 = float(np.percentile(waited, 50)), float(np.percentile(waited, 99))
        base.setdefault(spinning, (p50, p99))
        ratio50, ratio99 = p50 / base[spinning][0], p99 / base[spinning][1]
        print(
            f"{case:<18}{spinning:>6}{p50:>9.2f}{p99:>9.2f}{max(waited):>9.1f}"
            f"{ratio50:>8.2f}{ratio99:>8.2f}"
        )


if __name__ == "__main__":
    main()
