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

--follow-items N (issue 14, replica follow cost), for each of --replicas R: the writer and R API
processes; --follow-seed items journalled and settled; one client (a process of its own) queries
/similar on API 1 in a loop, --follow-idle seconds idle, through the import of N more items at full
speed, and idle again after. Reports each API's and the writer's CPU-seconds (utime + stime of
/proc/<pid>/stat, gunicorn's master and worker) over the import, /similar p50/p99/max in the three
windows, when each replica serves all, its rebases and reloads (its log), and that nothing is
lost (every replica holds every item, and a sample of them, the last ones included, is served).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project on the path, and not bench/ (the script's directory, put first by Python): it holds
# modules named like the standard library's (http.py), which `requests` would import instead.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import redis
import requests

from cli import processes
from cli.redis_server import RedisServer, free_port
from shared import keys
from shared.follower import lag_seconds
from shared.journal import append, upsert_entry
from shared.records import ProductStore, TaskRecord, TaskState, TaskStore
from shared.snapshots import MANIFEST, SnapshotStore
from tests.support.procs import cpu_seconds

REPO = Path(__file__).resolve().parent.parent

MODEL = "resnet50-max-wbench-224nearest-caffe-float32"
DIM = 2048
CHUNK = 10_000  # rows made at a time
PIPELINE = 500  # journal entries per round trip
TARGET_RATIO, TARGET_SLACK = 1.5, 20.0  # snapshot time <= 1.5 x replica time + 20 s
K = 10
API_AFTER_BACKLOG = 50_000  # --api-after's default --max-backlog: about 0.5 GiB of journal
SNAPSHOT_LINE = re.compile(r"^(\S+ \S+) INFO snapshot (\S+): (\d+) items in ([\d.]+)s")
LOADED_LINE = re.compile(r"replica loaded (\d+) items at \S+ in ([\d.]+)s")
PROJECTED_LINE = re.compile(r"^(\S+ \S+) INFO (index projected to .*)$")
METRIC = re.compile(r"^(lookalike_\w+) ([-+0-9.eE]+|NaN)$", re.MULTILINE)
GENDERS = ("Men", "Women", "Boys", "Girls", "Unisex")


class Data:
    """N clustered non-negative 2048-d rows, made chunk by chunk from (seed, chunk number):
    any chunk can be made again alone, so a million rows never need to be in memory at once.

    lowrank: |centre + 32-d within-cluster variation + isotropic noise| (bench/index.py's
    "lowrank", 100 clusters); decay: max(0, centre + variation whose variance falls as 1/i over
    512 directions + a little isotropic noise), a spectrum like CNN features' (100 clusters).
    """

    def __init__(self, kind: str, n: int, seed: int) -> None:
        self.kind, self.n, self.seed = kind, n, seed
        rng = np.random.default_rng([seed, 1 << 30])
        self.centres = rng.standard_normal((100, DIM), dtype=np.float32)
        if kind == "lowrank":
            self.basis = rng.standard_normal((32, DIM), dtype=np.float32) / np.float32(32**0.5)
        else:
            self.centres = np.abs(self.centres)
            basis, _ = np.linalg.qr(rng.standard_normal((DIM, 512), dtype=np.float32))
            spectrum = np.arange(1, 513, dtype=np.float32) ** -0.5
            spectrum *= np.float32((0.25 * DIM / float((spectrum**2).sum())) ** 0.5)
            self.basis = np.ascontiguousarray((basis * spectrum).T, dtype=np.float32)

    def chunk(self, number: int) -> np.ndarray:
        start = number * CHUNK
        rows = min(CHUNK, self.n - start)
        rng = np.random.default_rng([self.seed, number])
        block = self.centres[rng.integers(0, len(self.centres), rows)]
        block += rng.standard_normal((rows, len(self.basis)), dtype=np.float32) @ self.basis
        if self.kind == "lowrank":
            block += rng.standard_normal((rows, DIM), dtype=np.float32)
            return np.abs(block)
        block += np.float32(0.1) * rng.standard_normal((rows, DIM), dtype=np.float32)
        return np.maximum(block, 0)

    def chunks(self, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """The chunks holding rows lo..hi-1 (all by default), whole."""
        hi = self.n if hi is None else hi
        for number in range(lo // CHUNK, (hi + CHUNK - 1) // CHUNK):
            yield number * CHUNK, self.chunk(number)


def metadata(i: int) -> dict[str, str]:
    """Metadata in the Fashion Product Images shape: filterable fields and a name."""
    return {
        "gender": GENDERS[i % 5],
        "articleType": f"type{i % 143}",
        "baseColour": f"colour{i % 46}",
        "productDisplayName": f"Synthetic product {i}",
    }


def perturbed(rows: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Near-duplicates: each row plus gaussian noise of `noise` times its entries' std."""
    rng = np.random.default_rng([seed, 1 << 31])
    scale = noise * rows.std(axis=1, keepdims=True)
    return np.maximum(rows + scale * rng.standard_normal(rows.shape, dtype=np.float32), 0)


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


# Processes.


def rss_kib(pid: int | None) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, (0, 0) when it is gone."""
    if pid is None:
        return 0, 0
    found = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            parts = line.split()
            if parts and parts[0] in found:
                found[parts[0]] = int(parts[1])
    except OSError:
        pass
    return found["VmRSS:"], found["VmHWM:"]


def tree_pss_kib(pid: int | None) -> int:
    """Proportional set size of pid and its children in KiB: the memory they hold together,
    pages they share counted once (what a forked snapshot's copy-on-write adds shows here)."""
    if pid is None:
        return 0
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(child) for child in (task / "children").read_text().split()]
    total = 0
    for each in pids:
        with contextlib.suppress(OSError):
            found = re.search(
                r"^Pss:\s+(\d+) kB", Path(f"/proc/{each}/smaps_rollup").read_text(), re.M
            )
            total += int(found.group(1)) if found else 0
    return total


def pin(pid: int, cpus: set[int] | None) -> None:
    """Every thread of pid onto cpus (--pin: the writer's host and the replicas' host on one
    machine); threads made later inherit it."""
    if cpus is None or not pid:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


class Child:
    """One process of the stack, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, process_group=0,
            )  # fmt: skip
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pid(self) -> int | None:
        """gunicorn's worker (the process holding the replica), or the process itself."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def metrics(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {name: float(value) for name, value in METRIC.findall(text)}


def wait_for(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> float:
    """Poll until check() holds; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(requests.RequestException, OSError, ValueError):
            if check():
                return time.monotonic() - started
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def api_items(url: str) -> int:
    return int(metrics(url).get("lookalike_index_items", -1))


# Sampling.


@dataclass
class Sample:
    t: float
    replica_items: int | None
    replica_lag_entries: int | None
    writer_applied: int
    writer_lag_entries: int
    writer_lag_s: float
    journal_entries: int
    snapshot_items: int
    redis_used: int
    writer_rss: int
    api_rss: int
    writer_tree_pss: int = 0  # the writer and its snapshot child, if one is writing


class Sampler:
    """Samples once a second in a thread, and notes when each milestone is first reached."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.samples: list[Sample] = []
        self.counts: dict[str, int] = {}  # snapshot name -> items, read once each
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def newest_snapshot_items(self) -> int:
        snapshots = self.run.store.snapshots()
        if not snapshots:
            return 0
        newest = snapshots[0]
        if newest.name not in self.counts:
            try:
                with (newest.folder / MANIFEST).open("rb") as file:
                    head = file.read(4096).decode(errors="replace")  # "count" comes early
            except OSError:
                return 0
            found = re.search(r'"count": (\d+)', head)
            self.counts[newest.name] = int(found.group(1)) if found else 0
        return self.counts[newest.name]

    def take(self) -> Sample:
        run = self.run
        client = run.client
        pipe = client.pipeline(transaction=False)
        pipe.get(keys.WRITER_POSITION)
        pipe.get(keys.WRITER_SEQ)
        pipe.get(keys.JOURNAL_SEQ)
        pipe.xlen(keys.JOURNAL)
        position, writer_seq, head, entries = pipe.execute()
        head_seq = int(head or 0)
        replica_items = replica_lag = None
        writer_lag = head_seq - int(writer_seq or 0)
        writer_lag_s = lag_seconds(client, position.decode() if position else "0-0")
        if run.api is not None:
            with contextlib.suppress(requests.RequestException):
                found = metrics(run.api_url)
                replica_items = int(found.get("lookalike_index_items", 0))
                replica_lag = int(found.get("lookalike_replica_lag_entries", -1))
                writer_lag = int(found.get("lookalike_writer_lag_entries", writer_lag))
                writer_lag_s = found.get("lookalike_writer_lag_seconds", writer_lag_s)
        used = int(client.info("memory")["used_memory"])
        api_pid = run.api.worker_pid() if run.api is not None else None
        return Sample(
            t=time.monotonic() - run.t0,
            replica_items=replica_items,
            replica_lag_entries=replica_lag,
            writer_applied=int(writer_seq or 0),
            writer_lag_entries=writer_lag,
            writer_lag_s=float(writer_lag_s),
            journal_entries=int(entries),
            snapshot_items=self.newest_snapshot_items(),
            redis_used=used,
            writer_rss=rss_kib(run.writer.pid)[0] * 1024,
            writer_tree_pss=tree_pss_kib(run.writer.pid) * 1024,
            api_rss=rss_kib(api_pid)[0] * 1024,
        )

    def _loop(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                self.samples.append(self.take())
            except (redis.RedisError, OSError) as exc:
                print(f"  sample failed: {exc}", file=sys.stderr)
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - began)))

    def first(self, test: Callable[[Sample], bool]) -> float | None:
        return next((s.t for s in self.samples if test(s)), None)


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


class Run:
    def __init__(self, args: argparse.Namespace, dims: int, base: Path) -> None:
        self.args, self.dims, self.base = args, dims, base
        self.redis = RedisServer(base / "redis", appendonly=True)
        self.api: Child | None = None
        self.api_url = ""
        self.t0 = time.monotonic()
        self.children: list[Child] = []

    def env(self, data_dir: Path, snapshots: Path | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            "LOOKALIKE_REDIS_URL": self.redis.url,
            "LOOKALIKE_DATA_DIR": str(data_dir),
            "LOOKALIKE_SNAPSHOT_INTERVAL": str(self.args.interval),
            "LOOKALIKE_INDEX_DIMS": str(self.dims),
            "LOOKALIKE_INDEX_FIT_ITEMS": str(self.args.fit_items),
            "PYTHONUNBUFFERED": "1",
        }
        if snapshots is not None:
            env["LOOKALIKE_SNAPSHOT_URL"] = str(snapshots)
        return env

    def start_api(self, name: str, settings: dict[str, str] | None = None) -> tuple[Child, str]:
        port = free_port()
        argv = processes.api_server(f"127.0.0.1:{port}")
        env = {**self.env(self.base / name, self.base / "writer" / "index"), **(settings or {})}
        child = Child(name, argv, env, self.base / f"{name}.log")
        self.children.append(child)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(f"{url}/healthz", timeout=2).ok, 120, f"{name} to answer")
        wait_for(lambda: child.worker_pid() is not None, 30, f"{name}'s worker")
        return child, url

    def start_stack(self) -> None:
        """Redis and the writer."""
        self.redis.start()
        self.client = redis.Redis.from_url(self.redis.url)
        self.store = SnapshotStore(self.base / "writer" / "index")
        self.writer = Child(
            "writer", processes.index_writer(), self.env(self.base / "writer"),
            self.base / "writer.log",
        )  # fmt: skip
        self.children.append(self.writer)
        wait_for(lambda: "writer lock acquired" in self.writer.log.read_text(), 60, "the writer")

    def execute(self) -> Result:
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

    def inject(
        self, data: Data, rows: np.ndarray, queries: np.ndarray, lo: int = 0, hi: int | None = None
    ) -> float:
        """Journal rows lo..hi-1 (every row by default), pipelined; collect the query rows'
        vectors on the way."""
        client, backlog = self.client, self.args.max_backlog
        hi = data.n if hi is None else hi
        started = time.monotonic()
        wanted = dict(zip(rows.tolist(), range(len(rows)), strict=True))
        for start, block in data.chunks(lo, hi):
            first, last = max(lo, start), min(hi, start + len(block))
            for offset in range(first, last, PIPELINE):
                if backlog:
                    while self._backlog() > backlog:
                        time.sleep(0.2)
                pipe = client.pipeline(transaction=False)
                for i in range(offset, min(offset + PIPELINE, last)):
                    vector, meta, product_id = block[i - start], metadata(i), str(i)
                    append(client, pipe, upsert_entry(product_id, vector, MODEL, meta))
                    ProductStore.mark_indexed(pipe, product_id, meta, f"sha-{i}")
                    pipe.sadd(keys.PRODUCTS, product_id)
                    if i in wanted:
                        queries[wanted[i]] = vector
                pipe.execute()
        return time.monotonic() - started

    def _backlog(self) -> int:
        head, applied = self.client.mget(keys.JOURNAL_SEQ, keys.WRITER_SEQ)
        return int(head or 0) - int(applied or 0)

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

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        with contextlib.suppress(Exception):
            self.redis.stop()


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


# Follow cost (--follow-items): what following the journal costs each API replica.

RELOAD_LINE = re.compile(r"replica reloaded (\d+) items")
REBASE_LINE = re.compile(
    r"replica moved onto snapshot \S+: (\d+) items, (\d+) since it, in ([\d.]+)s"
)
# The same line with logging's time stamp (api/app.py's format): when each load ended.
STAMPED_REBASE_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*replica moved onto snapshot .* in ([\d.]+)s$",
    re.MULTILINE,
)


def rebase_spans(text: str, wall_minus_monotonic: float) -> list[tuple[float, float]]:
    """(monotonic start, end) of each rebase a replica's log tells of (its load and catch-up)."""
    spans = []
    for stamp, seconds in STAMPED_REBASE_LINE.findall(text):
        ended = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        end = ended - wall_minus_monotonic
        spans.append((end - float(seconds), end))
    return spans


def query_loop(url: str, ids: list[str], stop: Any, results: Any) -> None:
    """One client, one request at a time (in a process of its own: the import's Python must not
    hold its GIL): (monotonic start, seconds, ok) of each GET /similar."""
    session = requests.Session()
    rng = np.random.default_rng(11)
    stamps = []
    while not stop.is_set():
        product_id = ids[int(rng.integers(len(ids)))]
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


@dataclass
class FollowResult:
    replicas: int
    seed: int
    items: int
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
    restarts: list[int] = field(default_factory=list)  # per API: gunicorn workers booted, less 1
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
    after: Latency = field(default_factory=Latency)
    items_final: list[int] = field(default_factory=list)
    sampled: list[tuple[int, int]] = field(default_factory=list)  # per API: found, asked
    api_rss: list[int] = field(default_factory=list)


class FollowRun(Run):
    """A writer and R API replicas; a seed imported and settled; one client querying API 1 in a
    loop while nothing is imported, while --follow-items are journalled as fast as Redis takes
    them, and once all is settled again."""

    query_client: Any = None

    def close(self) -> None:
        if self.query_client is not None and self.query_client.is_alive():
            self.query_client.terminate()
            self.query_client.join(10)
        super().close()

    def follow(self, replicas: int) -> FollowResult:
        args = self.args
        seed, n = args.follow_seed, args.follow_seed + args.follow_items
        out = FollowResult(replicas, seed, args.follow_items)
        self.start_stack()
        apis = [self.start_api(f"api{i + 1}") for i in range(replicas)]
        writer_cpus, replica_cpus = ({0}, {1}) if args.pin else (None, None)
        for pid in (os.getpid(), self.writer.pid, self.redis.pid or 0):
            pin(pid, writer_cpus)
        for api, _ in apis:
            pin(api.pid, replica_cpus)
            pin(api.worker_pid() or api.pid, replica_cpus)
        self.client.set(keys.INDEX_MODEL, MODEL)
        data = Data(args.data, n, args.seed)
        nothing, no_vectors = np.empty(0, dtype=np.int64), np.empty((0, DIM), dtype=np.float32)
        sampler = Sampler(self)

        # The seed, settled: in a snapshot, the journal trimmed, every replica on the snapshot.
        self.inject(data, nothing, no_vectors, 0, seed)
        wait_for(lambda: all(api_items(url) >= seed for _, url in apis), 600, "the seed")
        wait_for(
            lambda: sampler.newest_snapshot_items() >= seed and self.client.xlen(keys.JOURNAL) <= 1,
            600, "the seed's snapshot",
        )  # fmt: skip
        time.sleep(REBASE_WAIT)

        context = multiprocessing.get_context("spawn")
        stop, results = context.Event(), context.Queue()
        client = context.Process(
            target=query_loop,
            args=(apis[0][1], [str(i) for i in range(seed)], stop, results),
            daemon=True,
        )
        client.start()
        pin(client.pid or 0, replica_cpus)
        self.query_client = client  # stopped by close() too, when the run fails
        wait_for(lambda: api_items(apis[0][1]) >= seed, 30, "the client")
        time.sleep(2.0)  # its start-up
        idle0, api1_cpu0 = time.monotonic(), cpu_seconds(apis[0][0].pid)
        time.sleep(args.follow_idle)

        # The import, at full speed.
        idle1, api1_cpu1 = time.monotonic(), cpu_seconds(apis[0][0].pid)
        t0 = time.monotonic()
        cpu0 = [cpu_seconds(api.pid) for api, _ in apis]
        writer0 = cpu_seconds(self.writer.pid)
        logs0 = [api.log.stat().st_size for api, _ in apis]
        wall_minus_monotonic = time.time() - time.monotonic()
        out.inject_s = self.inject(data, nothing, no_vectors, seed, n)
        head = int(self.client.get(keys.JOURNAL_SEQ) or 0)
        print(f"  {replicas} replicas: {args.follow_items} journalled in {out.inject_s:.1f} s",
              file=sys.stderr)  # fmt: skip
        served: list[float | None] = [None] * replicas
        api_cpu_served: list[float] = [0.0] * replicas
        deadline = t0 + args.timeout
        while None in served or out.writer_s is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"{replicas} replicas: not all served after {args.timeout:.0f} s")
            for i, (api, url) in enumerate(apis):
                with contextlib.suppress(requests.RequestException, ValueError):
                    if served[i] is None and api_items(url) >= n:
                        served[i] = time.monotonic() - t0
                        api_cpu_served[i] = cpu_seconds(api.pid) - cpu0[i]
            if out.writer_s is None and int(self.client.get(keys.WRITER_SEQ) or 0) >= head:
                out.writer_s = time.monotonic() - t0
            time.sleep(0.5)
        last_served = t0 + max(s for s in served if s is not None)
        out.served_s = [s for s in served if s is not None]
        out.api_cpu_served = api_cpu_served
        out.writer_cpu_served = cpu_seconds(self.writer.pid) - writer0  # a little late: see doc
        wait_for(lambda: sampler.newest_snapshot_items() >= n, args.timeout, "the last snapshot")
        out.snapshot_s = time.monotonic() - t0
        wait_for(lambda: self.client.xlen(keys.JOURNAL) <= 1, args.timeout, "the trim")
        time.sleep(REBASE_WAIT)
        out.settled_s = time.monotonic() - t0
        pairs = zip(apis, cpu0, strict=True)
        out.api_cpu_settled = [cpu_seconds(api.pid) - c for (api, _), c in pairs]
        out.writer_cpu_settled = cpu_seconds(self.writer.pid) - writer0
        spans: list[tuple[float, float]] = []
        for (api, _), offset in zip(apis, logs0, strict=True):
            with api.log.open("rb") as file:
                file.seek(offset)
                text = file.read().decode(errors="replace")
            found = REBASE_LINE.findall(text)
            if not out.rebases:  # API 1's
                spans = rebase_spans(text, wall_minus_monotonic)
            out.rebases.append((len(found), sum(float(f[2]) for f in found)))
            out.reloads.append(len(RELOAD_LINE.findall(text)))
            # A worker killed (gunicorn's timeout) takes its CPU-seconds with it: count them.
            out.restarts.append(api.log.read_text(errors="replace").count("Booting worker") - 1)

        # Idle again, over the whole catalog.
        after0 = time.monotonic()
        time.sleep(args.follow_idle)
        after1 = time.monotonic()
        stop.set()
        stamps = results.get(timeout=60)
        client.join(30)
        out.idle = Latency.of(stamps, idle0, idle1)
        out.ingest = Latency.of(stamps, t0, last_served)
        whole_end = max(last_served, t0 + (out.writer_s or 0.0))
        out.whole = Latency.of(stamps, t0, whole_end)

        def rebasing(began: float, ended: float) -> bool:
            return any(began < end and ended > start for start, end in spans)

        out.rebasing = Latency.of(stamps, t0, whole_end, rebasing)
        out.between = Latency.of(stamps, t0, whole_end, lambda b, e: not rebasing(b, e))
        if args.stamps is not None:  # for a timeline of each request
            args.stamps.write_text(json.dumps({
                "t0": t0, "idle": [idle0, idle1], "whole_end": whole_end,
                "writer_s": out.writer_s, "served_s": out.served_s,
                "rebases": spans, "stamps": stamps,
            }))  # fmt: skip
        out.after = Latency.of(stamps, after0, after1)
        out.idle_cpu_per_request = (api1_cpu1 - api1_cpu0) / max(1, out.idle.requests)
        out.requests_settled = Latency.of(stamps, t0, t0 + out.settled_s).requests

        # Nothing lost: every replica holds n items (only these n ids were ever journalled, each
        # once), and a sample of them, the last ones included, is served.
        rng = np.random.default_rng([args.seed, 13])
        sample = sorted({*rng.choice(n, size=min(n, 2000), replace=False).tolist(),
                         *range(max(0, n - 100), n)})  # fmt: skip
        session = requests.Session()
        for api, url in apis:
            out.items_final.append(api_items(url))
            ok = sum(
                session.get(f"{url}/api/v1/products/{i}/similar", params={"k": 1}, timeout=30).ok
                for i in sample
            )
            out.sampled.append((ok, len(sample)))
            out.api_rss.append(rss_kib(api.worker_pid())[0] * 1024)
        return out


REBASE_WAIT = 8.0  # seconds for replicas to look for a newer snapshot (every 5 s) and load it


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
        ("gunicorn worker restarts", lambda r: each(r.restarts, str)),
        (f"/similar k={K} idle: p50/p99/max ms (n)", lambda r: str(r.idle)),
        ("  import, until API 1 serves all", lambda r: str(r.ingest)),
        ("  import, until all applied and served", lambda r: str(r.whole)),
        ("    of it, overlapping a rebase of API 1", lambda r: str(r.rebasing)),
        ("    of it, the others", lambda r: str(r.between)),
        ("  idle after, all items", lambda r: str(r.after)),
        ("items served at end", lambda r: each(r.items_final, str)),
        ("sampled ids served", lambda r: each(r.sampled, lambda v: f"{v[0]}/{v[1]}")),
        ("API RSS MiB at end", lambda r: each(r.api_rss, mib)),
    ]
    lines = [
        f"Follow cost: {args.follow_seed} seed items, then {args.follow_items} journalled at full "
        f"speed ({args.data}, 2048-d), {os.cpu_count()} CPUs; one client queries /similar k={K} "
        f"on API 1 in a loop; idle windows {args.follow_idle:g} s; values per API are API 1 / "
        "API 2"
        + (
            "; pinned: writer, Redis and the import on CPU 0, the APIs and client on CPU 1"
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


def load_follow(path: Path) -> list[FollowResult]:
    results = []
    for raw in json.loads(path.read_text()):
        for name in ("idle", "ingest", "whole", "rebasing", "between", "after"):
            raw[name] = Latency(**raw.get(name, {}))
        raw["rebases"] = [tuple(v) for v in raw["rebases"]]
        raw["sampled"] = [tuple(v) for v in raw["sampled"]]
        raw.setdefault("reloads", [])
        raw.setdefault("restarts", [])
        results.append(FollowResult(**raw))
    return results


# Report.


def mib(value: float) -> str:
    return f"{value / 2**20:.0f}"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


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
    parser.add_argument("--data", choices=["lowrank", "decay"], default="lowrank")
    parser.add_argument("--interval", type=float, default=5.0, help="LOOKALIKE_SNAPSHOT_INTERVAL")
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
    parser.add_argument("--timeout", type=float, default=7200.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where the data goes")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--report", type=Path, nargs="+", default=None, help="print --json files' report"
    )
    parser.add_argument(
        "--follow-items", type=int, default=0,
        help="measure the replicas' follow cost instead (issue 14): items journalled at full speed",
    )  # fmt: skip
    parser.add_argument(
        "--replicas", type=int, nargs="+", default=[1, 2], help="with --follow-items"
    )
    parser.add_argument("--follow-seed", type=int, default=2000, help="items there before")
    parser.add_argument("--follow-idle", type=float, default=20.0, help="idle windows, seconds")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="with --follow-items: the writer, Redis and the import on CPU 0, the replicas and "
        "the query client on CPU 1, as if the writer had a host of its own",
    )
    parser.add_argument(
        "--stamps", type=Path, default=None,
        help="with --follow-items: write each /similar's start and seconds, and API 1's rebases, "
        "here (JSON, monotonic seconds; the last replica count's run)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.max_backlog is None:
        # Unpaced, a million entries would wait in Redis (about 10 KiB each) beside the writer.
        args.max_backlog = API_AFTER_BACKLOG if args.api_after else 0
    if args.report is not None:
        if args.follow_items:
            print(follow_report([r for path in args.report for r in load_follow(path)], args))
        else:
            print(report([r for path in args.report for r in load_results(path)], args))
        return
    # A plain kill stops the stack too (SIGINT is ignored where the shell started us in the
    # background).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.follow_items:
        follows = []
        for replicas in args.replicas:
            base = Path(tempfile.mkdtemp(prefix=f"lookalike-follow-{replicas}-", dir=args.dir))
            follower = FollowRun(args, 0, base)
            try:
                follows.append(follower.follow(replicas))
            finally:
                follower.close()
                shutil.rmtree(base, ignore_errors=True)
            if args.json:
                args.json.write_text(json.dumps([asdict(r) for r in follows], indent=1))
        print(follow_report(follows, args))
        return
    results = []
    for dims in args.dims:
        base = Path(tempfile.mkdtemp(prefix=f"lookalike-scale-{dims}-", dir=args.dir))
        run = Run(args, dims, base)
        try:
            results.append(run.execute())
        finally:
            run.close()
            shutil.rmtree(base, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(report(results, args))


if __name__ == "__main__":
    main()
