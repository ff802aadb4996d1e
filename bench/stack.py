"""The machinery of the stack benches (bench/scale.py, bench/follow.py): synthetic catalogs, the
stack's processes (a redis-server of its own, the writer, gunicorn API processes), journalling
at full speed, and a sampler of where each stands once a second."""

from __future__ import annotations

import abc
import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
import requests

from cli import processes
from cli.redis_server import RedisServer, free_port
from shared import keys
from shared.follower import lag_seconds
from shared.handoff import HandoffStore
from shared.journal import append, upsert_entry
from shared.records import ProductStore
from shared.snapshots import MANIFEST, SnapshotStore

REPO = Path(__file__).resolve().parent.parent

MODEL = "resnet50-max-wbench-224nearest-caffe-float32"
DIM = 2048
CHUNK = 10_000  # rows made at a time
PIPELINE = 500  # journal entries per round trip
K = 10
METRIC = re.compile(r"^(lookalike_\w+) ([-+0-9.eE]+|NaN)$", re.MULTILINE)
GENDERS = ("Men", "Women", "Boys", "Girls", "Unisex")
# An API's log (api/replica.py): a rebase onto the writer's snapshot, a reload after a trim.
RELOAD_LINE = re.compile(r"replica reloaded (\d+) items")
REBASE_LINE = re.compile(
    r"replica moved onto snapshot \S+: (\d+) items, (\d+) since it, in ([\d.]+)s"
)


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

    def __init__(self, run: Stack) -> None:
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


# The stack.


class Stack(abc.ABC):
    """A redis-server of its own under base, the writer, and API processes started on demand,
    each with its own LOOKALIKE_DATA_DIR; APIs read the writer's snapshots through
    LOOKALIKE_SNAPSHOT_URL, as a replica on another host reads a bucket."""

    api: Child | None = None  # the API the sampler watches, if any
    api_url = ""

    def __init__(self, args: argparse.Namespace, dims: int, base: Path) -> None:
        self.args, self.dims, self.base = args, dims, base
        self.redis = RedisServer(base / "redis", appendonly=True)
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
        if self.args.handoff is not None:
            env["LOOKALIKE_SNAPSHOT_HANDOFF_DIR"] = str(handoff_dir(self.args, self.base))
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
        if self.args.handoff is not None:  # to read both, as the APIs do
            memory = SnapshotStore(handoff_dir(self.args, self.base))
            self.store = HandoffStore(memory, self.store, every=float("inf"))
        self.writer = Child(
            "writer", processes.index_writer(), self.env(self.base / "writer"),
            self.base / "writer.log",
        )  # fmt: skip
        self.children.append(self.writer)
        wait_for(lambda: "writer lock acquired" in self.writer.log.read_text(), 60, "the writer")

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

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        with contextlib.suppress(Exception):
            self.redis.stop()

    def measured(self, variant: int) -> Any:
        """measure(variant), the stack stopped after it whatever happens."""
        try:
            return self.measure(variant)
        finally:
            self.close()

    @abc.abstractmethod
    def measure(self, variant: int) -> Any:
        """One run of the bench: variant is what it varies (a dims setting, a replica count)."""


def common_arguments(parser: argparse.ArgumentParser, timeout: float) -> None:
    """The options of every stack bench."""
    parser.add_argument("--data", choices=["lowrank", "decay"], default="lowrank")
    parser.add_argument("--interval", type=float, default=5.0, help="LOOKALIKE_SNAPSHOT_INTERVAL")
    parser.add_argument("--timeout", type=float, default=timeout)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where the data goes")
    parser.add_argument(
        "--handoff", type=Path, default=None,
        help="LOOKALIKE_SNAPSHOT_HANDOFF_DIR: a folder of each run's in this memory directory "
        "(e.g. /dev/shm), for the writer and the APIs",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--logs", type=Path, default=None, help="keep each run's process logs in this folder"
    )
    parser.add_argument(
        "--report", type=Path, nargs="+", default=None, help="print --json files' report"
    )


def handoff_dir(args: argparse.Namespace, base: Path) -> Path:
    """The run in folder base's hand-off directory (--handoff)."""
    return Path(args.handoff) / base.name


def run_each(
    make: Callable[[int, Path], Stack], variants: list[int], args: argparse.Namespace, name: str
) -> list[Any]:
    """make(variant, folder).measured(variant) for each variant, each in a temporary folder of
    its own (removed after); the results so far written to --json after each."""
    # A plain kill stops the stack too (SIGINT is ignored where the shell started us in the
    # background).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = []
    for variant in variants:
        base = Path(tempfile.mkdtemp(prefix=f"lookalike-{name}-{variant}-", dir=args.dir))
        try:
            results.append(make(variant, base).measured(variant))
        finally:
            if args.logs is not None:
                keep_logs(base, args.logs / base.name)
            shutil.rmtree(base, ignore_errors=True)
            if args.handoff is not None:
                shutil.rmtree(handoff_dir(args, base), ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


def keep_logs(base: Path, into: Path) -> None:
    """Copy the *.log files of a run's folder into `into`."""
    into.mkdir(parents=True, exist_ok=True)
    for log in base.glob("*.log"):
        shutil.copy2(log, into / log.name)


# Report cells.


def mib(value: float) -> str:
    return f"{value / 2**20:.0f}"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"
