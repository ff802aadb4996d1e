"""Follow cost (issue 14): what following the journal costs each API replica during a bulk import.

For each of --replicas R: the writer and R API processes (bench/stack.py); --seed-items items
journalled and settled (in a snapshot, the journal trimmed, every replica on it); one client (a
process of its own) queries /similar on API 1 in a loop (back to back, or at --rate requests a
second, each timed from when it was due), --idle seconds idle, through the import of --items more
at full speed, and idle again after. Reports each API's and the writer's CPU-seconds (utime +
stime of /proc/<pid>/stat, gunicorn's master and worker) over the import, /similar p50/p99/max in
the three windows (and, during the import, apart for the requests that overlapped one of API 1's
rebases, and of the others those while API 1 followed nothing, waiting for the writer's snapshot
with its exact tail full: what the writer's work beside it costs the queries by itself, see also
bench/interference.py), when each replica serves all, its rebases and reloads (its log), and that
nothing is lost (every replica holds every item, and a sample of them, the last ones included, is
served). --pin puts the writer, Redis and the import on CPU 0 and the replicas and the client on
CPU 1, as if the writer had a host of its own (--redis-with-replicas: Redis on CPU 1 instead).
--query-all gives every other API a client of its own too (as behind a load balancer), reported
in the three windows per API. The time each API 1 thread and its client spent waiting for a core
(on a run queue) is reported per window. --client-first runs the clients at the real-time policy
(SCHED_FIFO, which needs CAP_SYS_NICE), so that a client sharing the stack's cores does not wait
for a core behind it as a client on another host would not: what is left is the API's latency.

Until 2026-11-29 this was `bench/scale.py --follow-items N` (--follow-seed, --follow-idle).
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
import contextlib
import itertools
import json
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import requests
from stack import (
    DIM,
    MODEL,
    REBASE_LINE,
    RELOAD_LINE,
    Child,
    Data,
    K,
    Sampler,
    Stack,
    api_items,
    common_arguments,
    mib,
    pin,
    ratio,
    rss_kib,
    run_each,
    secs,
    wait_for,
)

from shared import keys
from tests.support.procs import cpu_seconds, run_queue

REBASE_WAIT = 8.0  # seconds for replicas to look for a newer snapshot (every 5 s) and load it
# The same line with logging's time stamp (api/app.py's format): when each load ended.
STAMPED_REBASE_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*replica moved onto snapshot .* in ([\d.]+)s$",
    re.MULTILINE,
)


# ... and when its exact tail filled during the import: it then follows nothing until its next
# rebase (api/replica.py, Replica._fitting).
STAMPED_WAIT_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*replica: exact tail full at ", re.MULTILINE
)
# ... and its handovers (api/handover.py): asked for by the worker serving, done by the new one.
STAMPED_HANDOVER_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*replica(: handing over| took over)",
    re.MULTILINE,
)
# The writer's snapshots (workers/writer.py): when each was logged and how long it took from the
# fork through writing, syncing and hashing the file to the prune and the trim.
STAMPED_SNAPSHOT_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*snapshot \S+: \d+ items in ([\d.]+)s;",
    re.MULTILINE,
)
TOOK_OVER = "replica took over from the previous worker"
Spans = list[tuple[float, float]]


def rebase_spans(text: str, wall_minus_monotonic: float) -> Spans:
    """(monotonic start, end) of each rebase a replica's log tells of (its load and catch-up)."""
    return timed_spans(STAMPED_REBASE_LINE, text, wall_minus_monotonic)


def snapshot_spans(text: str, wall_minus_monotonic: float) -> Spans:
    """(monotonic start, end) of each snapshot the writer's log tells of."""
    return timed_spans(STAMPED_SNAPSHOT_LINE, text, wall_minus_monotonic)


def timed_spans(line: re.Pattern[str], text: str, wall_minus_monotonic: float) -> Spans:
    """(monotonic start, end) of each line's event: logged at its end, with its seconds."""
    spans = []
    for stamp, seconds in line.findall(text):
        end = logged_at(stamp) - wall_minus_monotonic
        spans.append((end - float(seconds), end))
    return spans


def handover_spans(text: str, wall_minus_monotonic: float) -> Spans:
    """(monotonic start, end) of each handover a replica's log tells of: from the serving
    worker's asking until the new worker took over."""
    spans, asked = [], None
    for stamp, what in STAMPED_HANDOVER_LINE.findall(text):
        at = logged_at(stamp) - wall_minus_monotonic
        if what == ": handing over":
            asked = at
        elif asked is not None:
            spans.append((asked, at))
            asked = None
    return spans


def wait_spans(text: str, wall_minus_monotonic: float, rebases: Spans) -> Spans:
    """(monotonic start, end) of each time the replica waited for a snapshot, following nothing:
    from its tail filling until the rebase that ended the wait began."""
    spans = []
    for stamp in STAMPED_WAIT_LINE.findall(text):
        start = logged_at(stamp) - wall_minus_monotonic
        ends = [began for began, _ in rebases if began >= start]
        if ends:
            spans.append((start, min(ends)))
    return spans


def logged_at(stamp: str) -> float:
    """The wall-clock time of a logging time stamp (api/app.py's format)."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def query_loop(url: str, ids: list[str], stop: Any, results: Any, rate: float = 0.0) -> None:
    """One client, one request at a time (in a process of its own: the import's Python must not
    hold its GIL): (start, seconds, ok) of each GET /similar, back to back; or at `rate` a
    second, each request due at its turn and its seconds counted from then, not from when it
    could be sent, so that a stall counts for every request it held back (a client waiting for
    each answer before it asks again sees one slow request per stall, however long)."""
    session = requests.Session()
    rng = np.random.default_rng(11)
    stamps = []
    due = time.monotonic()
    while not stop.is_set():
        product_id = ids[int(rng.integers(len(ids)))]
        if rate:
            due += 1.0 / rate
            time.sleep(max(0.0, due - time.monotonic()))
            began = due
        else:
            began = time.monotonic()
        try:
            ok = session.get(
                f"{url}/api/v1/products/{product_id}/similar", params={"k": K}, timeout=30
            ).ok
        except requests.RequestException:
            ok = False
        stamps.append((began, time.monotonic() - began, ok))
        if not ok:
            time.sleep(0.1)  # a stopped API: do not spin
            due = time.monotonic()
    results.put(stamps)


@dataclass
class Latency:
    requests: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    @classmethod
    def of(
        cls,
        stamps: list[tuple[float, float, bool]],
        since: float,
        until: float,
        keep: Callable[[float, float], bool] = lambda began, ended: True,
    ) -> Latency:
        """Of the requests begun in [since, until) that keep(began, ended) holds for."""
        inside = [
            (s, ok) for began, s, ok in stamps if since <= began < until and keep(began, began + s)
        ]
        if not inside:
            return cls()
        seconds = np.asarray([s for s, _ in inside]) * 1000
        p50, p99 = np.percentile(seconds, [50, 99])
        errors = sum(not ok for _, ok in inside)
        return cls(len(inside), errors, float(p50), float(p99), float(seconds.max()))

    def __str__(self) -> str:
        errors = f", {self.errors} failed" if self.errors else ""
        return (
            f"{self.p50_ms:.1f} / {self.p99_ms:.1f} / {self.max_ms:.0f} ({self.requests}{errors})"
        )


class RunQueueWatch:
    """Samples an API's threads' run-queue waits (tests.support.procs.run_queue) twice a second,
    in a thread: how long its requests and following waited for a core, not for Python's lock."""

    EVERY = 0.5

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, dict[int, tuple[int, int]]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(self.EVERY):
            self.samples.append((time.monotonic(), run_queue(self.pid)))

    def waited(self, since: float, until: float) -> tuple[float, float]:
        """Over [since, until): seconds waited a second, all threads together, and ms a
        timeslice; summed from one sample to the next over the threads in both (a handover
        replaces the worker)."""
        waited = slices = seconds = 0.0
        inside = [sample for sample in self.samples if since <= sample[0] <= until]
        for (t1, before), (t2, after) in itertools.pairwise(inside):
            seconds += t2 - t1
            for tid in before.keys() & after.keys():
                waited += (after[tid][0] - before[tid][0]) / 1e9
                slices += after[tid][1] - before[tid][1]
        return waited / max(seconds, 1e-9), 1000 * waited / max(slices, 1)


@dataclass
class FollowResult:
    replicas: int
    seed: int
    items: int
    rate: float = 0.0  # the client's requests a second (0: back to back)
    client_first: bool = False  # the clients at SCHED_FIFO (--client-first)
    inject_s: float = 0.0
    writer_s: float | None = None
    served_s: list[float] = field(default_factory=list)  # per API, from the import's start
    snapshot_s: float | None = None
    settled_s: float | None = None
    writer_cpu_served: float = 0.0  # CPU-s from the import's start until the last API serves all
    writer_cpu_settled: float = 0.0  # ... until the journal is trimmed and the APIs rebased
    api_cpu_served: list[float] = field(default_factory=list)
    api_cpu_settled: list[float] = field(default_factory=list)
    idle_cpu_per_request: float = 0.0  # API 1's CPU-s per /similar while nothing is imported
    requests_settled: int = 0  # API 1's /similar from the import's start until settled
    rebases: list[tuple[int, float]] = field(default_factory=list)  # per API: count, seconds
    reloads: list[int] = field(default_factory=list)  # per API: "reloaded" (trimmed past it)
    # per API: gunicorn workers booted, less 1 and less the handovers'
    restarts: list[int] = field(default_factory=list)
    handovers: list[int] = field(default_factory=list)  # per API: new workers that took over
    idle: Latency = field(default_factory=Latency)
    # from the import's start until API 1 serves all
    ingest: Latency = field(default_factory=Latency)
    # ... until the writer has applied every entry and every API serves every item: a replica
    # that follows slower than the writer (LOOKALIKE_FOLLOW_SHARE) has a longer first window
    whole: Latency = field(default_factory=Latency)
    # ... of it, the requests that overlapped one of API 1's rebases (a snapshot's load holds
    # the GIL), and the others
    rebasing: Latency = field(default_factory=Latency)
    between: Latency = field(default_factory=Latency)
    # ... of the others, those while API 1 waited for a snapshot and followed nothing: what the
    # writer's work (and Redis) alone costs API 1's queries, the floor for any way of following
    waiting: Latency = field(default_factory=Latency)
    # ... the requests that overlapped one of the writer's snapshots (from its fork through
    # writing, syncing and hashing the file), and those that overlapped neither that nor one of
    # API 1's rebases
    committing: Latency = field(default_factory=Latency)
    neither: Latency = field(default_factory=Latency)
    after: Latency = field(default_factory=Latency)
    # --query-all: the other APIs' own clients, per API: idle before, the import (until all
    # applied and served), idle after
    others: list[tuple[Latency, Latency, Latency]] = field(default_factory=list)
    # API 1's threads on a run queue (RunQueueWatch.waited): idle before, the import (until all
    # applied and served), idle after; and its client's, which a client on another host would
    # not have
    run_queue: list[tuple[float, float]] = field(default_factory=list)
    client_run_queue: list[tuple[float, float]] = field(default_factory=list)
    items_final: list[int] = field(default_factory=list)
    sampled: list[tuple[int, int]] = field(default_factory=list)  # per API: found, asked
    api_rss: list[int] = field(default_factory=list)

    def whole_end(self, t0: float) -> float:
        """When the writer had applied every entry and every API served every item."""
        return t0 + max([*self.served_s, self.writer_s or 0.0])


@dataclass
class Timeline:
    """What API 1 and the writer did when during an import (monotonic start, end)."""

    rebases: Spans  # API 1's rebases and handovers
    waits: Spans  # API 1 waiting for a snapshot, following nothing
    commits: Spans  # the writer's snapshots


def overlaps(began: float, ended: float, spans: Spans) -> bool:
    return any(began < end and ended > start for start, end in spans)


class QueriedStack(Stack):
    """A writer and API replicas with a seed imported and settled, and one client querying API 1
    in a loop (a process of its own)."""

    apis: list[tuple[Child, str]]  # each API and its URL
    data: Data
    sampler: Sampler
    query_client: Any = None  # API 1's
    replica_cpus: set[int] | None = None  # --pin: the APIs' and the client's CPUs

    def __init__(self, args: argparse.Namespace, dims: int, base: Path) -> None:
        super().__init__(args, dims, base)
        self.other_clients: list[Any] = []  # --query-all: the other APIs'

    def close(self) -> None:
        for client in [self.query_client, *self.other_clients]:
            if client is not None and client.is_alive():
                client.terminate()
                client.join(10)
        super().close()

    def journal(self, lo: int, hi: int) -> float:
        nothing, no_vectors = np.empty(0, dtype=np.int64), np.empty((0, DIM), dtype=np.float32)
        return self.inject(self.data, nothing, no_vectors, lo, hi)

    def settle_seed(self) -> None:
        """The seed in a snapshot, the journal trimmed, every replica on the snapshot."""
        seed = self.args.seed_items
        self.journal(0, seed)
        wait_for(lambda: all(api_items(url) >= seed for _, url in self.apis), 600, "the seed")
        wait_for(
            lambda: self.sampler.newest_snapshot_items() >= seed
            and self.client.xlen(keys.JOURNAL) <= 1,
            600, "the seed's snapshot",
        )  # fmt: skip
        time.sleep(REBASE_WAIT)

    def start_client(self, rate: float = 0.0, api: int = 0) -> tuple[Any, Any]:
        """The client querying API api+1 (at rate requests a second, or back to back), started;
        its stop event and its results' queue."""
        context = multiprocessing.get_context("spawn")
        stop, results = context.Event(), context.Queue()
        url, ids = self.apis[api][1], [str(i) for i in range(self.args.seed_items)]
        client = context.Process(
            target=query_loop, args=(url, ids, stop, results, rate), daemon=True
        )
        client.start()
        pin(client.pid or 0, self.replica_cpus)
        if self.args.client_first:
            first(client.pid or 0)
        # Stopped by close() too, when the run fails.
        if api == 0:
            self.query_client = client
        else:
            self.other_clients.append(client)
        wait_for(lambda: api_items(url) >= self.args.seed_items, 30, "the client")
        time.sleep(2.0)  # its start-up
        return stop, results


class FollowRun(QueriedStack):
    """A writer and R API replicas; a seed imported and settled; one client querying API 1 in a
    loop while nothing is imported, while --items are journalled as fast as Redis takes them,
    and once all is settled again."""

    def measure(self, variant: int) -> FollowResult:
        """The run with variant API replicas."""
        replicas = variant
        args = self.args
        out = FollowResult(replicas, args.seed_items, args.items, args.rate, args.client_first)
        self.start_stack()
        self.apis = [self.start_api(f"api{i + 1}") for i in range(replicas)]
        writer_cpus, self.replica_cpus = ({0}, {1}) if args.pin else (None, None)
        for pid in (os.getpid(), self.writer.pid):
            pin(pid, writer_cpus)
        pin(self.redis.pid or 0, self.replica_cpus if args.redis_with_replicas else writer_cpus)
        for api, _ in self.apis:
            pin(api.pid, self.replica_cpus)
            pin(api.worker_pid() or api.pid, self.replica_cpus)
        self.client.set(keys.INDEX_MODEL, MODEL)
        self.data = Data(args.data, args.seed_items + args.items, args.seed)
        self.sampler = Sampler(self)
        self.settle_seed()
        stop, results = self.start_client(args.rate)
        queried = replicas if args.query_all else 1
        others = [self.start_client(args.rate, api) for api in range(1, queried)]
        watches = [RunQueueWatch(self.apis[0][0].pid), RunQueueWatch(self.query_client.pid)]
        idle0, api1_cpu0 = time.monotonic(), cpu_seconds(self.apis[0][0].pid)
        time.sleep(args.idle)
        idle1, api1_cpu1 = time.monotonic(), cpu_seconds(self.apis[0][0].pid)
        t0, timeline = self.bulk_import(out)
        after0 = time.monotonic()  # idle again, over the whole catalog
        time.sleep(args.idle)
        after1 = time.monotonic()
        for watch in watches:
            watch.stop.set()
        for each_stop, _ in [(stop, results), *others]:
            each_stop.set()
        stamps = results.get(timeout=60)
        self.query_client.join(30)
        theirs = [their_results.get(timeout=60) for _, their_results in others]
        self.tally_latency(out, stamps, theirs, t0, timeline, (idle0, idle1), (after0, after1))
        out.idle_cpu_per_request = (api1_cpu1 - api1_cpu0) / max(1, out.idle.requests)
        windows = [(idle0, idle1), (t0, out.whole_end(t0)), (after0, after1)]
        out.run_queue, out.client_run_queue = (
            [watch.waited(*window) for window in windows] for watch in watches
        )
        self.check_nothing_lost(out)
        return out

    def bulk_import(self, out: FollowResult) -> tuple[float, Timeline]:
        """The import at full speed, until every replica serves it, the snapshot holds it, the
        journal is trimmed; its start, and what API 1 and the writer did when."""
        args, apis = self.args, self.apis
        n = args.seed_items + args.items
        t0 = time.monotonic()
        cpu0 = [cpu_seconds(api.pid) for api, _ in apis]
        writer0 = cpu_seconds(self.writer.pid)
        logs0 = [api.log.stat().st_size for api, _ in apis]
        writer_log0 = self.writer.log.stat().st_size
        wall_minus_monotonic = time.time() - time.monotonic()
        out.inject_s = self.journal(args.seed_items, n)
        print(f"  {len(apis)} replicas: {args.items} journalled in {out.inject_s:.1f} s",
              file=sys.stderr)  # fmt: skip
        self.wait_served(out, t0, cpu0)
        out.writer_cpu_served = cpu_seconds(self.writer.pid) - writer0  # a little late: see doc
        wait_for(lambda: self.sampler.newest_snapshot_items() >= n, args.timeout, "the snapshot")
        out.snapshot_s = time.monotonic() - t0
        wait_for(lambda: self.client.xlen(keys.JOURNAL) <= 1, args.timeout, "the trim")
        time.sleep(REBASE_WAIT)
        out.settled_s = time.monotonic() - t0
        pairs = zip(apis, cpu0, strict=True)
        out.api_cpu_settled = [cpu_seconds(api.pid) - c for (api, _), c in pairs]
        out.writer_cpu_settled = cpu_seconds(self.writer.pid) - writer0
        spans = [
            self.tally_log(out, api, offset, wall_minus_monotonic)
            for (api, _), offset in zip(apis, logs0, strict=True)
        ]
        with self.writer.log.open("rb") as file:
            file.seek(writer_log0)
            commits = snapshot_spans(file.read().decode(errors="replace"), wall_minus_monotonic)
        return t0, Timeline(*spans[0], commits)

    def wait_served(self, out: FollowResult, t0: float, cpu0: list[float]) -> None:
        """Until every API serves every item and the writer has applied every entry."""
        n, apis = self.args.seed_items + self.args.items, self.apis
        head = int(self.client.get(keys.JOURNAL_SEQ) or 0)
        served: list[float | None] = [None] * len(apis)
        out.api_cpu_served = [0.0] * len(apis)
        deadline = t0 + self.args.timeout
        while None in served or out.writer_s is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"not all served after {self.args.timeout:.0f} s")
            for i, (api, url) in enumerate(apis):
                with contextlib.suppress(requests.RequestException, ValueError):
                    if served[i] is None and api_items(url) >= n:
                        served[i] = time.monotonic() - t0
                        out.api_cpu_served[i] = cpu_seconds(api.pid) - cpu0[i]
            if out.writer_s is None and int(self.client.get(keys.WRITER_SEQ) or 0) >= head:
                out.writer_s = time.monotonic() - t0
            time.sleep(0.5)
        out.served_s = [s for s in served if s is not None]

    def tally_log(
        self, out: FollowResult, api: Child, offset: int, wall_minus_monotonic: float
    ) -> tuple[Spans, Spans]:
        """An API's rebases and reloads since offset in its log, into out; the spans of its
        rebases and of its waits for a snapshot."""
        with api.log.open("rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
        found = REBASE_LINE.findall(text)
        out.rebases.append((len(found), sum(float(f[2]) for f in found)))
        out.reloads.append(len(RELOAD_LINE.findall(text)))
        whole = api.log.read_text(errors="replace")
        out.handovers.append(text.count(TOOK_OVER))
        out.restarts.append(whole.count("Booting worker") - 1 - whole.count(TOOK_OVER))
        # A handover's new worker loads beside the one serving: its span counts as a rebase's.
        rebases = rebase_spans(text, wall_minus_monotonic)
        rebases = sorted(rebases + handover_spans(text, wall_minus_monotonic))
        return rebases, wait_spans(text, wall_minus_monotonic, rebases)

    def tally_latency(
        self,
        out: FollowResult,
        stamps: list[tuple[float, float, bool]],
        theirs: list[list[tuple[float, float, bool]]],
        t0: float,
        timeline: Timeline,
        idle: tuple[float, float],
        after: tuple[float, float],
    ) -> None:
        out.idle = Latency.of(stamps, *idle)
        out.ingest = Latency.of(stamps, t0, t0 + max(out.served_s))
        whole_end = out.whole_end(t0)
        out.whole = Latency.of(stamps, t0, whole_end)

        def rebasing(began: float, ended: float) -> bool:
            return overlaps(began, ended, timeline.rebases)

        def waiting(began: float, ended: float) -> bool:
            return any(start <= began and ended <= end for start, end in timeline.waits)

        def committing(began: float, ended: float) -> bool:
            return overlaps(began, ended, timeline.commits)

        out.rebasing = Latency.of(stamps, t0, whole_end, rebasing)
        out.between = Latency.of(stamps, t0, whole_end, lambda b, e: not rebasing(b, e))
        out.waiting = Latency.of(stamps, t0, whole_end, waiting)
        out.committing = Latency.of(stamps, t0, whole_end, committing)
        out.neither = Latency.of(
            stamps, t0, whole_end, lambda b, e: not rebasing(b, e) and not committing(b, e)
        )
        out.after = Latency.of(stamps, *after)
        out.others = [
            (Latency.of(s, *idle), Latency.of(s, t0, whole_end), Latency.of(s, *after))
            for s in theirs
        ]
        out.requests_settled = Latency.of(stamps, t0, t0 + (out.settled_s or 0.0)).requests
        if self.args.stamps is not None:  # for a timeline of each request
            self.args.stamps.write_text(json.dumps({
                "t0": t0, "idle": list(idle), "whole_end": whole_end,
                "writer_s": out.writer_s, "served_s": out.served_s,
                "rebases": timeline.rebases, "waits": timeline.waits,
                "commits": timeline.commits, "stamps": stamps,
            }))  # fmt: skip

    def check_nothing_lost(self, out: FollowResult) -> None:
        """Every replica holds n items (only these n ids were ever journalled, each once), and a
        sample of them, the last ones included, is served."""
        n = self.args.seed_items + self.args.items
        rng = np.random.default_rng([self.args.seed, 13])
        sample = sorted({*rng.choice(n, size=min(n, 2000), replace=False).tolist(),
                         *range(max(0, n - 100), n)})  # fmt: skip
        session = requests.Session()
        for api, url in self.apis:
            out.items_final.append(api_items(url))
            ok = sum(
                session.get(f"{url}/api/v1/products/{i}/similar", params={"k": 1}, timeout=30).ok
                for i in sample
            )
            out.sampled.append((ok, len(sample)))
            out.api_rss.append(rss_kib(api.worker_pid())[0] * 1024)


def follow_report(results: list[FollowResult], args: argparse.Namespace) -> str:
    def each(values: list[Any], form: Callable[[Any], str]) -> str:
        return " / ".join(form(v) for v in values)

    rows: list[tuple[str, Callable[[FollowResult], str]]] = [
        ("items: seed + journalled", lambda r: f"{r.seed} + {r.items}"),
        ("journalled in s (entries/s)", lambda r: f"{r.inject_s:.1f} ({r.items / r.inject_s:.0f})"),
        ("writer applied all (s)", lambda r: secs(r.writer_s)),
        ("API serves all (s), each", lambda r: each(r.served_s, secs)),
        ("snapshot holds all (s)", lambda r: secs(r.snapshot_s)),
        ("trimmed, rebased (s)", lambda r: secs(r.settled_s)),
        ("writer CPU-s: to last served", lambda r: f"{r.writer_cpu_served:.1f}"),
        ("writer CPU-s: to settled", lambda r: f"{r.writer_cpu_settled:.1f}"),
        ("API CPU-s: to it serves all", lambda r: each(r.api_cpu_served, lambda v: f"{v:.1f}")),
        ("API CPU-s: to settled", lambda r: each(r.api_cpu_settled, lambda v: f"{v:.1f}")),
        (
            "API / writer CPU (settled)",
            lambda r: each(r.api_cpu_settled, lambda v: ratio(v, r.writer_cpu_settled)),
        ),
        ("API 1: CPU-ms per /similar idle", lambda r: f"{r.idle_cpu_per_request * 1000:.2f}"),
        (
            "API 1: of it /similar (est.)",
            lambda r: (
                f"{r.idle_cpu_per_request * r.ingest.requests:.1f} / "
                f"{r.idle_cpu_per_request * r.requests_settled:.1f}"
            ),
        ),
        (
            "API 1 CPU-s less /similar (est.)",
            lambda r: (
                f"{r.api_cpu_served[0] - r.idle_cpu_per_request * r.ingest.requests:.1f} / "
                f"{r.api_cpu_settled[0] - r.idle_cpu_per_request * r.requests_settled:.1f}"
            ),
        ),
        (
            "rebases in ingest: n, load s",
            lambda r: each(r.rebases, lambda v: f"{v[0]}, {v[1]:.1f}"),
        ),
        ("reloads in ingest", lambda r: each(r.reloads, str)),
        ("handovers to a new worker", lambda r: each(r.handovers, str)),
        ("gunicorn worker restarts", lambda r: each(r.restarts, str)),
        (f"/similar k={K} idle: p50/p99/max ms (n)", lambda r: str(r.idle)),
        ("  import, until API 1 serves all", lambda r: str(r.ingest)),
        ("  import, until all applied and served", lambda r: str(r.whole)),
        ("    of it, overlapping a rebase/handover of API 1", lambda r: str(r.rebasing)),
        ("    of it, the others", lambda r: str(r.between)),
        ("      of them, while API 1 followed nothing", lambda r: str(r.waiting)),
        ("    of it, overlapping a snapshot by the writer", lambda r: str(r.committing)),
        ("    of it, overlapping neither", lambda r: str(r.neither)),
        ("  idle after, all items", lambda r: str(r.after)),
        ("--query-all, APIs 2.. on their own: idle", lambda r: each(r.others, lambda v: str(v[0]))),
        ("  import, until all applied and served", lambda r: each(r.others, lambda v: str(v[1]))),
        ("  idle after, all items", lambda r: each(r.others, lambda v: str(v[2]))),
        ("on a run queue: ms a slice (s a s)", lambda r: ""),
        ("  API 1, idle / import / after", lambda r: waits(r.run_queue)),
        ("  its client, idle / import / after", lambda r: waits(r.client_run_queue)),
        ("items served at end", lambda r: each(r.items_final, str)),
        ("sampled ids served", lambda r: each(r.sampled, lambda v: f"{v[0]}/{v[1]}")),
        ("API RSS MiB at end", lambda r: each(r.api_rss, mib)),
    ]
    lines = [
        f"Follow cost: {args.seed_items} seed items, then {args.items} journalled at full "
        f"speed ({args.data}, 2048-d), {os.cpu_count()} CPUs; one client queries /similar k={K} "
        f"on API 1 {client_pace(results[0].rate)}"
        + (" at the real-time policy" if results[0].client_first else "")
        + f"; idle windows {args.idle:g} s; "
        "values per API are API 1 / API 2"
        + (
            (
                "; pinned: writer and the import on CPU 0, the APIs, client and Redis on CPU 1"
                if args.redis_with_replicas
                else "; pinned: writer, Redis and the import on CPU 0, the APIs and client on CPU 1"
            )
            if args.pin
            else ""
        ),
        "",
    ]
    names = [f"{r.replicas} replica{'s' if r.replicas > 1 else ''}" for r in results]
    width = max(len(name) for name, _ in rows)
    cells = [[cell(r) for r in results] for _, cell in rows]
    col = max(20, *(len(c) + 2 for row in cells for c in row))
    lines.append(f"{'':<{width}}" + "".join(f"{n:>{col}}" for n in names))
    lines.append("-" * (width + col * len(names)))
    for (name, _), row in zip(rows, cells, strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{c:>{col}}" for c in row))
    return "\n".join(lines)


def first(pid: int) -> None:
    """pid (a client, one thread) at the real-time policy: it waits for no core behind others."""
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        raise SystemExit("--client-first needs CAP_SYS_NICE (SCHED_FIFO)") from None


def waits(windows: list[tuple[float, float]]) -> str:
    return " / ".join(f"{ms:.2f} ({share:.2f})" for share, ms in windows)


def client_pace(rate: float) -> str:
    if not rate:
        return "in a loop, back to back"
    return f"at {rate:g} requests/s, each timed from when it was due"


LATENCIES = ("idle", "ingest", "whole", "rebasing", "between", "waiting", "committing", "neither",
             "after")  # fmt: skip


def load_follow(path: Path) -> list[FollowResult]:
    results = []
    for raw in json.loads(path.read_text()):
        for name in LATENCIES:
            raw[name] = Latency(**raw.get(name, {}))
        raw["rebases"] = [tuple(v) for v in raw["rebases"]]
        raw["sampled"] = [tuple(v) for v in raw["sampled"]]
        raw.setdefault("reloads", [])
        raw.setdefault("restarts", [])
        raw.setdefault("handovers", [])
        raw["others"] = [tuple(Latency(**v) for v in api) for api in raw.get("others", [])]
        for name in ("run_queue", "client_run_queue"):
            raw[name] = [tuple(v) for v in raw.get(name, [])]
        results.append(FollowResult(**raw))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=50_000, help="journalled at full speed")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed-items", type=int, default=2000, help="items there before")
    parser.add_argument("--idle", type=float, default=20.0, help="idle windows, seconds")
    parser.add_argument("--pin", action="store_true", help="the writer's and the replicas' CPUs")
    parser.add_argument(
        "--rate", type=float, default=0.0,
        help="requests a second, each timed from when it was due (default: back to back)",
    )  # fmt: skip
    parser.add_argument(
        "--redis-with-replicas",
        action="store_true",
        help="with --pin: Redis on the replicas' CPU, not the writer's (every /similar reads it)",
    )
    parser.add_argument(
        "--query-all",
        action="store_true",
        help="also a client of its own (the same rate) for each other API, as behind a balancer",
    )
    parser.add_argument(
        "--client-first",
        action="store_true",
        help="run the clients at SCHED_FIFO: no wait for a core behind the stack (as on a host "
        "of their own)",
    )
    parser.add_argument(
        "--stamps", type=Path, default=None,
        help="write each /similar's start and seconds, and API 1's rebases, here (JSON, "
        "monotonic seconds; the last replica count's run)",
    )  # fmt: skip
    common_arguments(parser, timeout=3600.0)
    args = parser.parse_args()
    args.dims, args.fit_items, args.max_backlog = 0, 20_000, 0  # what Stack reads: full 2048-d
    if args.report is not None:
        print(follow_report([r for path in args.report for r in load_follow(path)], args))
        return
    follows = run_each(lambda _, base: FollowRun(args, 0, base), args.replicas, args, "follow")
    print(follow_report(follows, args))


if __name__ == "__main__":
    main()
