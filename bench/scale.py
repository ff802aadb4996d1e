"""Scale: the real index writer and API processes under a fast import of N synthetic vectors.

One run per --dims value (0: full 2048-d float32; N: LOOKALIKE_INDEX_DIMS=N), on the same data:
a redis-server of its own (appendonly, everysec, as `lookalike up` starts it, but no maxmemory),
the writer (`python -m workers.writer`) and one API process (gunicorn, cli/processes.py), each
with its own LOOKALIKE_DATA_DIR; the API reads the writer's snapshots through
LOOKALIKE_SNAPSHOT_URL (the writer's index directory), as a replica on another host reads a
bucket. N clustered non-negative 2048-d vectors are journalled as fast as Redis takes them
(pipelined shared.journal.append, with the product records an embed worker writes).

Every second: the replica's items and lag, the writer's lag (entries, seconds), the journal's
length, the newest snapshot's item count (its manifest), Redis' used memory, the writer's and
the API's RSS (/proc). Then: a second API process is started from the snapshot (its catch-up
time), and /similar (k=10) is timed and scored through it against exact search (numpy, full
2048-d), with near-duplicate queries (a perturbed copy of an item, by vector, through a
search task) that should find the item first.

--api-after (for a million items): no API follows the import; the writer imports alone (the
import paced to keep at most --max-backlog entries unapplied) and the API starts afterwards
from the snapshot: two HNSW builds on two cores would double the wall time. The import is then
paced to 50,000 unapplied entries unless --max-backlog says otherwise: unpaced, a million entries
(about 10 KiB each) would wait in Redis beside the writer.

The replicas' follow cost (issue 14) is bench/follow.py; both run the stack of bench/stack.py.
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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import redis
import requests
from stack import (
    DIM,
    MODEL,
    REBASE_LINE,
    RELOAD_LINE,
    Child,
    Data,
    K,
    Sample,
    Sampler,
    Stack,
    api_items,
    available_bytes,
    common_arguments,
    mib,
    perturbed,
    ratio,
    rss_kib,
    run_each,
    secs,
    wait_for,
)

from shared import keys
from shared.records import TaskRecord, TaskState, TaskStore

TARGET_RATIO, TARGET_SLACK = 1.5, 20.0  # snapshot time <= 1.5 x replica time + 20 s
API_AFTER_BACKLOG = 50_000  # --api-after's default --max-backlog: about 0.5 GiB of journal
SNAPSHOT_LINE = re.compile(r"^(\S+ \S+) INFO snapshot (\S+): (\d+) items in ([\d.]+)s")
LOADED_LINE = re.compile(r"replica loaded (\d+) items at \S+ in ([\d.]+)s")
PROJECTED_LINE = re.compile(r"^(\S+ \S+) INFO (index projected to .*)$")


@dataclass
class Truth:
    """Exact answers (numpy, full 2048-d cosine): each query's top k, itself excluded, and the
    best item for each near-duplicate."""

    neighbours: list[set[int]]
    dup_best: list[int]


def exact(data: Data, rows: np.ndarray, queries: np.ndarray, dups: np.ndarray) -> Truth:
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_d = dups / np.linalg.norm(dups, axis=1, keepdims=True)
    best_ids = np.empty((len(rows), 0), dtype=np.int64)
    best = np.empty((len(rows), 0), dtype=np.float32)
    dup_best = np.full(len(rows), -1, dtype=np.int64)
    dup_score = np.full(len(rows), -np.inf, dtype=np.float32)
    for start, block in data.chunks():
        unit = block / np.linalg.norm(block, axis=1, keepdims=True)
        ids = np.arange(start, start + len(block))
        scores = unit_q @ unit.T
        scores[rows[:, None] == ids[None, :]] = -np.inf
        best_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        best = np.concatenate([best, scores], axis=1)
        top = np.argpartition(-best, K - 1, axis=1)[:, :K]
        best_ids = np.take_along_axis(best_ids, top, axis=1)
        best = np.take_along_axis(best, top, axis=1)
        dscores = unit_d @ unit.T
        arg = dscores.argmax(axis=1)
        value = dscores[np.arange(len(rows)), arg]
        better = value > dup_score
        dup_best[better], dup_score[better] = ids[arg[better]], value[better]
    return Truth([set(row.tolist()) for row in best_ids], dup_best.tolist())


# One run.


@dataclass
class Result:
    dims: int
    items: int
    inject_s: float = 0.0
    replica_s: float | None = None
    writer_s: float | None = None  # until the writer applied all N
    snapshot_s: float | None = None
    trim_s: float | None = None
    snapshots: list[tuple[float, int, float]] = field(default_factory=list)  # t, items, seconds
    projected: str | None = None
    redis_base: int = 0
    redis_peak: int = 0
    redis_peak_info: int = 0
    redis_trimmed: int = 0
    redis_records: int = 0  # MEMORY USAGE of the product records (hashes, products, indexed)
    redis_journal: int = 0  # MEMORY USAGE of the journal stream, once trimmed
    writer_base_rss: int = 0
    writer_rss: int = 0
    writer_hwm: int = 0
    writer_pss_peak: int = 0  # of the writer and its snapshot child together (sampled)
    api_base_rss: int = 0
    api_rss: int = 0
    api_hwm: int = 0
    api_rebases: int = 0  # the following API's "moved onto snapshot" (api/replica.py)
    api_reloads: int = 0  # its "reloaded" (the journal was trimmed past it)
    late_api_s: float = 0.0
    late_api_load_s: float | None = None
    late_api_rss: int = 0
    late_api_hwm: int = 0
    available_before_late: int = 0
    writer_stopped: str | None = None
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    recall: float = 0.0
    dup_top1: float = 0.0
    dup_top1_exact: float = 0.0
    timeline: list[Sample] = field(default_factory=list)
    ef_sweep: list[EfPoint] = field(default_factory=list)


@dataclass
class EfPoint:
    """The late API's answers with LOOKALIKE_HNSW_EF_SEARCH=ef (--ef-sweep)."""

    ef: int
    p50_ms: float
    p99_ms: float
    recall: float
    dup_top1: float


class Run(Stack):
    """The import of --items through the writer and an API following it (or none:
    --api-after), then an API started late from the snapshot, queried and scored."""

    def measure(self, variant: int) -> Result:
        """The import and the late API's answers (variant: the dims this Run was made for)."""
        args = self.args
        out = Result(self.dims, args.items)
        self.start_stack()
        self.api, self.api_url = self.start_api("api")
        time.sleep(2.0)
        out.api_base_rss = rss_kib(self.api.worker_pid())[0] * 1024
        if args.api_after:  # its empty RSS is the baseline; it must not follow the import
            self.api.stop()
            self.api = None
        out.redis_base = int(self.client.info("memory")["used_memory"])
        out.writer_base_rss = rss_kib(self.writer.pid)[0] * 1024
        self.client.set(keys.INDEX_MODEL, MODEL)

        data = Data(args.data, args.items, args.seed)
        rng = np.random.default_rng([args.seed, 7])
        rows = np.sort(rng.choice(args.items, size=min(args.queries, args.items), replace=False))
        queries = np.empty((len(rows), DIM), dtype=np.float32)

        sampler = Sampler(self)
        self.t0 = time.monotonic()
        wall0 = time.time()
        sampler.thread.start()
        try:
            out.inject_s = self.inject(data, rows, queries)
            print(
                f"  dims={self.dims}: {args.items} entries journalled in {out.inject_s:.1f} s",
                file=sys.stderr,
            )
            self.wait_done(sampler, out)
        finally:
            sampler.stop.set()
            sampler.thread.join()
        out.timeline = sampler.samples
        info = self.client.info("memory")
        out.redis_trimmed = int(info["used_memory"])
        out.redis_records, out.redis_journal = redis_breakdown(self.client)
        out.redis_peak_info = int(info["used_memory_peak"])
        out.redis_peak = max(s.redis_used for s in sampler.samples)
        out.writer_pss_peak = max(s.writer_tree_pss for s in sampler.samples)
        out.snapshots, out.projected = parse_writer_log(self.writer.log, wall0)
        out.writer_rss, out.writer_hwm = (v * 1024 for v in rss_kib(self.writer.pid))
        if self.api is not None:
            out.api_rss, out.api_hwm = (v * 1024 for v in rss_kib(self.api.worker_pid()))
            text = self.api.log.read_text(errors="replace")
            out.api_rebases = len(REBASE_LINE.findall(text))
            out.api_reloads = len(RELOAD_LINE.findall(text))

        needed = max(out.writer_rss, out.api_rss) - out.api_base_rss + 2**30
        out.available_before_late = available_bytes()
        if needed > out.available_before_late:
            # Both would not fit: measure the API alone, and say so.
            out.writer_stopped = (
                f"the writer ({mib(out.writer_rss)} MiB) was stopped before the late API "
                f"started: it needs about {mib(needed)} MiB, {mib(out.available_before_late)} "
                "MiB were available"
            )
            print(f"  dims={self.dims}: {out.writer_stopped}", file=sys.stderr)
            self.writer.stop()
        late, late_url, out.late_api_s = self.start_late_api("api2")
        found = LOADED_LINE.search(late.log.read_text())
        out.late_api_load_s = float(found.group(2)) if found else None
        time.sleep(1.0)
        out.late_api_rss, out.late_api_hwm = (v * 1024 for v in rss_kib(late.worker_pid()))
        print(f"  dims={self.dims}: late API serves all in {out.late_api_s:.1f} s", file=sys.stderr)

        truth = exact(data, rows, queries, perturbed(queries, args.dup_noise, args.seed))
        self.query(late_url, rows, queries, truth, out)
        for ef in args.ef_sweep:
            late.stop()  # one late API at a time: at a million items two would not fit
            name = f"api-ef{ef}"
            late, late_url, _ = self.start_late_api(name, {"LOOKALIKE_HNSW_EF_SEARCH": str(ef)})
            swept = Result(self.dims, args.items)
            self.query(late_url, rows, queries, truth, swept)
            out.ef_sweep.append(
                EfPoint(ef, swept.p50_ms, swept.p99_ms, swept.recall, swept.dup_top1)
            )
            print(f"  dims={self.dims}: ef {ef}: recall {swept.recall:.4f}", file=sys.stderr)
        return out

    def start_late_api(
        self, name: str, settings: dict[str, str] | None = None
    ) -> tuple[Child, str, float]:
        """An API started after the import, once it serves every item; the seconds that took."""
        started = time.monotonic()
        late, url = self.start_api(name, settings)
        wait_for(lambda: api_items(url) >= self.args.items, 3600, name, every=0.05)
        return late, url, time.monotonic() - started

    def wait_done(self, sampler: Sampler, out: Result) -> None:
        """Until the replica serves all, the newest snapshot holds all, the journal is trimmed."""
        n, deadline = self.args.items, time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            samples = sampler.samples
            if not samples:
                continue
            out.writer_s = sampler.first(lambda s: s.writer_applied >= n)
            if self.api is not None:
                out.replica_s = sampler.first(lambda s: (s.replica_items or 0) >= n)
            out.snapshot_s = sampler.first(lambda s: s.snapshot_items >= n)
            if out.snapshot_s is not None:
                out.trim_s = sampler.first(
                    lambda s: s.t > (out.snapshot_s or 0) and s.journal_entries <= 1
                )
            if out.trim_s is not None and (self.api is None or out.replica_s is not None):
                time.sleep(1.0)
                return
        raise SystemExit(f"dims={self.dims}: not done after {self.args.timeout:.0f} s")

    def query(
        self, url: str, rows: np.ndarray, queries: np.ndarray, truth: Truth, out: Result
    ) -> None:
        session = requests.Session()
        ids = [str(row) for row in rows.tolist()]
        order = ids * (1 + self.args.requests // max(1, len(ids)))
        for product_id in order[:20]:  # warm-up
            session.get(f"{url}/api/v1/products/{product_id}/similar", params={"k": K})
        seconds, found = [], {}
        for product_id in order[: self.args.requests]:
            began = time.perf_counter()
            answer = session.get(f"{url}/api/v1/products/{product_id}/similar", params={"k": K})
            seconds.append(time.perf_counter() - began)
            answer.raise_for_status()
            found[product_id] = {int(hit["product_id"]) for hit in answer.json()["results"]}
        out.requests = len(seconds)
        p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
        out.p50_ms, out.p99_ms = float(p50), float(p99)
        hits = sum(len(found[i] & t) for i, t in zip(ids, truth.neighbours, strict=True))
        out.recall = hits / (K * len(ids))

        tasks = TaskStore(self.client, 3600)
        dups = perturbed(queries, self.args.dup_noise, self.args.seed)
        first = 0
        for row, vector in zip(rows.tolist(), dups, strict=True):
            task_id = f"bench-dup-{row}"
            record = TaskRecord(task_id, "search", TaskState.SUCCEEDED, options={"k": 1})
            record.result = {"model_id": MODEL}
            tasks.save(record)
            self.client.set(keys.query_vector(task_id), vector.astype("<f4").tobytes(), ex=3600)
            answer = session.get(f"{url}/api/v1/tasks/{task_id}").json()
            results = answer["result"]["results"]
            first += bool(results) and results[0]["product_id"] == str(row)
        out.dup_top1 = first / len(rows)
        out.dup_top1_exact = float(np.mean(np.asarray(truth.dup_best) == rows))


def redis_breakdown(client: redis.Redis) -> tuple[int, int]:
    """(the product records', the journal stream's) bytes by MEMORY USAGE (SAMPLES 0: exact):
    what stays in Redis once the journal is trimmed is the catalog's records, not the journal."""
    records = 0
    pipe = client.pipeline(transaction=False)
    for n, key in enumerate(client.scan_iter(match=keys.product("*"), count=1000), 1):
        pipe.memory_usage(key)
        if n % 1000 == 0:
            records += sum(v or 0 for v in pipe.execute())
    for key in (keys.PRODUCTS, keys.INDEXED):
        pipe.memory_usage(key, samples=0)
    records += sum(v or 0 for v in pipe.execute())
    return records, int(client.memory_usage(keys.JOURNAL, samples=0) or 0)


def parse_writer_log(log: Path, wall0: float) -> tuple[list[tuple[float, int, float]], str | None]:
    snapshots, projected = [], None
    for line in log.read_text().splitlines():
        found = SNAPSHOT_LINE.match(line)
        if found:
            at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            snapshots.append((at - wall0, int(found.group(3)), float(found.group(4))))
        found = PROJECTED_LINE.match(line)
        if found:
            at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            projected = f"{found.group(2)} (at {at - wall0:.0f} s)"
    return snapshots, projected


# Report.


def target(r: Result) -> str:
    """The snapshot target, 1.5 x the replica's time + 20 s, and whether it was met."""
    if r.replica_s is None:
        return "-"
    bound = TARGET_RATIO * r.replica_s + TARGET_SLACK
    met = r.snapshot_s is not None and r.snapshot_s <= bound
    return f"{bound:.1f} {'met' if met else 'MISSED'}"


def per_item(rss: int, base: int, items: int) -> str:
    return f"{(rss - base) / items:.0f}" if rss else "-"


def rss_pair(rss: int, hwm: int) -> str:
    return f"{mib(rss)} ({mib(hwm)})" if rss else "-"


ROWS: list[tuple[str, Callable[[Result], str]]] = [
    ("journalled (s)", lambda r: secs(r.inject_s)),
    ("journal rate (entries/s)", lambda r: f"{r.items / r.inject_s:.0f}"),
    ("replica serves all (s)", lambda r: secs(r.replica_s)),
    ("writer applied all (s)", lambda r: secs(r.writer_s)),
    (
        "apply rate, writer (items/s)",
        lambda r: f"{r.items / r.writer_s:.0f}" if r.writer_s else "-",
    ),
    ("snapshot holds all (s)", lambda r: secs(r.snapshot_s)),
    ("snapshot / replica", lambda r: ratio(r.snapshot_s, r.replica_s)),
    ("target 1.5 x replica + 20 (s)", target),
    ("journal trimmed to 1 (s)", lambda r: secs(r.trim_s)),
    ("snapshots written", lambda r: str(len(r.snapshots))),
    ("snapshot seconds, total", lambda r: f"{sum(s[2] for s in r.snapshots):.1f}"),
    ("last snapshot: items in s", lambda r: f"{r.snapshots[-1][1]} in {r.snapshots[-1][2]:.1f}"),
    ("Redis used MiB: baseline", lambda r: mib(r.redis_base)),
    ("Redis used MiB: peak", lambda r: mib(r.redis_peak_info)),
    ("Redis used MiB: after trim", lambda r: mib(r.redis_trimmed)),
    ("  of it product records MiB", lambda r: mib(r.redis_records)),
    ("  of it the journal KiB", lambda r: f"{r.redis_journal / 1024:.0f}"),
    ("  after trim less records MiB", lambda r: mib(r.redis_trimmed - r.redis_records)),
    ("writer RSS MiB (peak)", lambda r: rss_pair(r.writer_rss, r.writer_hwm)),
    ("writer + snapshot child PSS MiB, peak", lambda r: f"{mib(r.writer_pss_peak)}"),
    ("writer bytes/item over empty", lambda r: per_item(r.writer_rss, r.writer_base_rss, r.items)),
    ("API RSS MiB, empty", lambda r: mib(r.api_base_rss)),
    ("API RSS MiB, followed (peak)", lambda r: rss_pair(r.api_rss, r.api_hwm)),
    ("followed bytes/item over empty", lambda r: per_item(r.api_rss, r.api_base_rss, r.items)),
    ("replica: rebases / reloads", lambda r: f"{r.api_rebases} / {r.api_reloads}"),
    ("late API serves all (s)", lambda r: secs(r.late_api_s)),
    ("late API: snapshot load (s)", lambda r: secs(r.late_api_load_s)),
    ("late API RSS MiB (peak)", lambda r: rss_pair(r.late_api_rss, r.late_api_hwm)),
    ("late bytes/item over empty", lambda r: per_item(r.late_api_rss, r.api_base_rss, r.items)),
    (f"/similar k={K} p50 ms", lambda r: f"{r.p50_ms:.2f}"),
    (f"/similar k={K} p99 ms", lambda r: f"{r.p99_ms:.2f}"),
    (f"recall@{K} vs exact 2048-d", lambda r: f"{r.recall:.4f}"),
    ("near-dup top-1 (exact)", lambda r: f"{r.dup_top1:.3f} ({r.dup_top1_exact:.3f})"),
]


def report(results: list[Result], args: argparse.Namespace) -> str:
    api = "an API after the import" if args.api_after else "an API following the import"
    if args.max_backlog:
        api += f", the import paced to {args.max_backlog} unapplied entries"
    lines = [
        f"{args.items} items ({args.data}), 2048-d float32 in, LOOKALIKE_SNAPSHOT_INTERVAL="
        f"{args.interval:g}, {os.cpu_count()} CPUs, {api}, {args.requests} /similar requests, "
        f"{args.queries} recall and near-dup queries (noise {args.dup_noise:g} x std)",
        "",
    ]
    names = [f"dims={r.dims or 'full'}" for r in results]
    width = max(len(name) for name, _ in ROWS)
    lines.append(f"{'':<{width}}" + "".join(f"{n:>18}" for n in names))
    lines.append("-" * (width + 18 * len(names)))
    for name, cell in ROWS:
        lines.append(f"{name:<{width}}" + "".join(f"{cell(r):>18}" for r in results))
    for r in results:
        lines += ["", f"dims={r.dims or 'full'}:"]
        if r.projected:
            lines.append(f"  {r.projected}")
        if r.writer_stopped:
            lines.append(f"  {r.writer_stopped}")
        lines.append(
            "  snapshots (s after start: items in s): "
            + ", ".join(f"{t:.0f}: {n} in {s:.1f}" for t, n, s in r.snapshots)
        )
        lines.append(timeline(r.timeline, args.every))
        for point in r.ef_sweep:
            lines.append(
                f"  late API with LOOKALIKE_HNSW_EF_SEARCH={point.ef}: /similar p50 / p99 "
                f"{point.p50_ms:.2f} / {point.p99_ms:.2f} ms, recall@{K} {point.recall:.4f}, "
                f"near-dup top-1 {point.dup_top1:.3f}"
            )
    return "\n".join(lines)


def timeline(samples: list[Sample], every: float) -> str:
    """One line per `every` seconds; "w rate" is the writer's apply rate since the line before."""
    header = (
        f"  {'t s':>5} {'replica':>8} {'writer':>8} {'w rate':>6} {'w lag':>7} {'w lag s':>7} "
        f"{'journal':>7} {'snapshot':>8} {'Redis MiB':>9} {'writer MiB':>10} {'API MiB':>8}"
    )
    lines, shown = [header], None
    for i, s in enumerate(samples):
        if shown is not None and s.t + 0.5 < shown.t + every and i != len(samples) - 1:
            continue
        rate = 0.0 if shown is None else (s.writer_applied - shown.writer_applied) / (s.t - shown.t)
        shown = s
        replica = "-" if s.replica_items is None else str(s.replica_items)
        lines.append(
            f"  {s.t:>5.0f} {replica:>8} {s.writer_applied:>8} {rate:>6.0f} "
            f"{s.writer_lag_entries:>7} {s.writer_lag_s:>7.1f} {s.journal_entries:>7} "
            f"{s.snapshot_items:>8} {mib(s.redis_used):>9} {mib(s.writer_rss):>10} "
            f"{mib(s.api_rss):>8}"
        )
    return "\n".join(lines)


def load_results(path: Path) -> list[Result]:
    """Results written by --json (the report's options are the command line's)."""
    results = []
    for raw in json.loads(path.read_text()):
        raw["timeline"] = [Sample(**sample) for sample in raw["timeline"]]
        raw["snapshots"] = [tuple(snapshot) for snapshot in raw["snapshots"]]
        raw["ef_sweep"] = [EfPoint(**point) for point in raw.get("ef_sweep", [])]
        results.append(Result(**raw))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[0], help="LOOKALIKE_INDEX_DIMS runs"
    )
    parser.add_argument("--fit-items", type=int, default=20_000, help="LOOKALIKE_INDEX_FIT_ITEMS")
    parser.add_argument("--queries", type=int, default=200, help="recall and near-dup queries")
    parser.add_argument("--requests", type=int, default=400, help="timed /similar requests")
    parser.add_argument("--dup-noise", type=float, default=0.25, help="near-dup noise / std")
    parser.add_argument(
        "--ef-sweep", type=int, nargs="*", default=[],
        help="then restart the late API with each LOOKALIKE_HNSW_EF_SEARCH and measure again",
    )  # fmt: skip
    parser.add_argument("--api-after", action="store_true", help="no API during the import")
    parser.add_argument(
        "--max-backlog", type=int, default=None,
        help=f"pace the import (0: none; default: none, {API_AFTER_BACKLOG} with --api-after)",
    )  # fmt: skip
    parser.add_argument("--every", type=float, default=10.0, help="timeline step, seconds")
    common_arguments(parser, timeout=7200.0)
    args = parser.parse_args()
    if args.max_backlog is None:
        # Unpaced, a million entries would wait in Redis (about 10 KiB each) beside the writer.
        args.max_backlog = API_AFTER_BACKLOG if args.api_after else 0
    if args.report is not None:
        print(report([r for path in args.report for r in load_results(path)], args))
        return
    results = run_each(lambda dims, base: Run(args, dims, base), args.dims, args, "scale")
    print(report(results, args))


if __name__ == "__main__":
    main()
