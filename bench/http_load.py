"""HTTP: GET /api/v1/products/{id}/similar under load, through real gunicorn processes, with wrk.

One command: it starts a redis-server (cli.redis_server.RedisServer, no append-only file), writes
--items synthetic 2048-d vectors into the index journal as embed workers do (an upsert entry
through shared.journal.append and the product marked indexed, pipelined), then starts one API
process exactly as `lookalike up` does (cli.processes.api_server: gunicorn, 1 worker, 8 threads;
its own LOOKALIKE_DATA_DIR, LOOKALIKE_REDIS_URL set) and waits until its replica holds every item
(`lookalike_index_items` on /metrics); no writer runs: replicas follow the journal. wrk then
drives /similar at each --connections over random product ids (a Lua script picks one per
request from a file), twice: plain requests, and conditional ones (If-None-Match with the ETag
that id's answer carries, fetched once beforehand: 304s), over the same ids. Then a second API
process starts, catches up, and the same runs go to both at once: wrk's threads are split
between the two processes (thread i connects to process i mod 2, its connections with it), so a
run with one connection (one thread) reaches the first process only.

Vectors are clustered and non-negative like ReLU CNN features ("lowrank" of bench/index.py: 100
clusters, within-cluster variation mostly in a 32-d subspace). RSS is each API worker's (the
gunicorn worker holding the replica), read from /proc after its runs. wrk is Debian's package:
installed with apt-get when missing and running as root; otherwise the bench says so and exits.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/http_load.py`, this file's folder heads sys.path, and the file would stand in
# for the standard library's http package (requests needs it): move that folder to the end.
sys.path.sort(key=lambda entry: Path(entry or ".").resolve() == Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import redis
import requests

from cli import processes
from cli.redis_server import RedisServer, free_port
from shared import keys
from shared.journal import append, upsert_entry
from shared.records import ProductStore

ROOT = Path(__file__).resolve().parent.parent
MODEL = "synthetic-lowrank-2048"
DIM = 2048
CLUSTERS, LATENT, NOISE = 100, 32, 1.0  # bench/index.py's "lowrank"
CHUNK = 2_000  # vectors generated and pipelined at a time
WRK_THREADS = 2
READY_TIMEOUT = 3600.0
GENDERS = ("Men", "Women", "Boys", "Girls", "Unisex")
COLOURS = ("Black", "White", "Blue", "Red", "Green", "Grey", "Navy", "Brown", "Pink", "Beige")
TYPES = ("Tshirts", "Shirts", "Dresses", "Trousers", "Casual Shoes", "Heels", "Handbags", "Watches")

# Per request a random line of BENCH_IDS ("id etag"); BENCH_CONDITIONAL=1 sends the etag in
# If-None-Match. Thread i connects to port i mod len(BENCH_PORTS). done() prints one JSON line.
LUA = r"""
local ports = {}
for port in string.gmatch(os.getenv("BENCH_PORTS"), "%d+") do ports[#ports + 1] = port end
local threads = {}

function setup(thread)
  local n = #threads + 1
  thread.addr = wrk.lookup("127.0.0.1", ports[(n - 1) % #ports + 1])[1]
  thread:set("seed", n)
  threads[n] = thread
end

local paths, tags = {}, {}
local conditional = os.getenv("BENCH_CONDITIONAL") == "1"
s200, s304, sother = 0, 0, 0

function init(args)
  math.randomseed(os.time() * 100 + seed)
  local k = os.getenv("BENCH_K")
  for line in io.lines(os.getenv("BENCH_IDS")) do
    local id, tag = line:match("^(%S+) (.+)$")
    paths[#paths + 1] = "/api/v1/products/" .. id .. "/similar?k=" .. k
    tags[#tags + 1] = tag
  end
end

function request()
  local i = math.random(#paths)
  if conditional then
    return wrk.format("GET", paths[i], {["If-None-Match"] = tags[i]})
  end
  return wrk.format("GET", paths[i])
end

function response(status, headers, body)
  if status == 200 then s200 = s200 + 1
  elseif status == 304 then s304 = s304 + 1
  else sother = sother + 1 end
end

function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, thread in ipairs(threads) do
    a = a + thread:get("s200"); b = b + thread:get("s304"); c = c + thread:get("sother")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %.0f, "p99_us": %.0f, ' ..
    '"s200": %d, "s304": %d, "other": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    a, b, c, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass
class Api:
    """One API process (gunicorn master; its worker holds the replica)."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_rss_mib(self) -> float:
        """RSS of the gunicorn worker (the master's child), MiB."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids = [int(child) for child in children] or [pid]
        return sum(rss_mib(child) for child in pids)


@dataclass
class Row:
    processes: int
    mode: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    expected: int
    errors: int
    rss: str


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="vectors in the index")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed seconds before each set")
    parser.add_argument("--sample", type=int, default=10_000, help="ids the requests draw from")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def ensure_wrk() -> str:
    """wrk's path; Debian's package installed with apt-get when missing and root, else exit."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing Debian's package wrk with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "wrk"]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            subprocess.run(install, env=env, check=False)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit(
        "wrk is not installed and this bench cannot install it (that needs root and apt-get): "
        "install the Debian package wrk (apt-get install wrk), then run it again"
    )


def product_id(n: int) -> str:
    return str(10_000 + n)


def metadata(n: int) -> dict[str, str]:
    return {
        "gender": GENDERS[n % len(GENDERS)],
        "articleType": TYPES[n % len(TYPES)],
        "baseColour": COLOURS[n % len(COLOURS)],
        "productDisplayName": f"Item {n}",
    }


def vectors(rng: np.random.Generator, n: int) -> Iterator[np.ndarray]:
    """Clustered non-negative float32 vectors, CHUNK rows at a time."""
    centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    basis = rng.standard_normal((LATENT, DIM), dtype=np.float32) / np.sqrt(LATENT)
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        block = centres[rng.integers(0, CLUSTERS, rows)]
        block += rng.standard_normal((rows, LATENT), dtype=np.float32) @ basis
        block += np.float32(NOISE) * rng.standard_normal((rows, DIM), dtype=np.float32)
        yield np.abs(block)


def inject(url: str, items: int, seed: int) -> float:
    """Journal every item as an embed worker publishes it (upsert entry + product indexed)."""
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    n = 0
    for block in vectors(np.random.default_rng(seed), items):
        pipe = client.pipeline(transaction=False)
        for vector in block:
            pid, meta = product_id(n), metadata(n)
            append(client, pipe, upsert_entry(pid, vector, MODEL, meta))
            digest = hashlib.sha256(pid.encode()).hexdigest()
            ProductStore.mark_indexed(pipe, pid, meta, digest)
            n += 1
        pipe.execute()
        if n % (10 * CHUNK) == 0:
            print(f"journalled {n}/{items}", flush=True)
    client.set(keys.INDEX_MODEL, MODEL)
    seconds = time.perf_counter() - started
    print(f"journalled {items} items in {seconds:.1f} s", flush=True)
    return seconds


def start_api(name: str, redis_url: str, root: Path) -> Api:
    port = free_port()
    data_dir = root / f"data-{name}"
    data_dir.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_REDIS_URL=redis_url, LOOKALIKE_DATA_DIR=str(data_dir))
    log = root / f"api-{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            processes.api_server(f"127.0.0.1:{port}"),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    return Api(name, port, process, log)


def stop_api(api: Api) -> None:
    if api.process.poll() is None:
        os.killpg(api.process.pid, signal.SIGTERM)
        try:
            api.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(api.process.pid, signal.SIGKILL)
            api.process.wait()


def index_items(api: Api) -> int | None:
    try:
        text = requests.get(f"{api.url}/metrics", timeout=5).text
    except requests.RequestException:
        return None
    found = re.search(r"^lookalike_index_items (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else None


def wait_caught_up(api: Api, items: int) -> float:
    """Seconds until the replica holds every item (it builds its HNSW index from the journal)."""
    started = time.monotonic()
    last_print = 0.0
    while True:
        if api.process.poll() is not None:
            tail = api.log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"API {api.name} exited ({api.process.returncode}):\n{tail}")
        held = index_items(api)
        elapsed = time.monotonic() - started
        if held == items:
            print(f"API {api.name}: replica holds {items} items after {elapsed:.0f} s")
            return elapsed
        if elapsed - last_print >= 15:
            print(f"API {api.name}: replica holds {held or 0}/{items} items", flush=True)
            last_print = elapsed
        if elapsed > READY_TIMEOUT:
            raise SystemExit(f"API {api.name} did not catch up in {READY_TIMEOUT:.0f} s")
        time.sleep(1.0)


def fetch_etags(api: Api, ids: list[str], k: int) -> list[str]:
    """Each id's current ETag, from a plain request (which must be a 200)."""

    def one(session_and_id: tuple[requests.Session, str]) -> str:
        session, pid = session_and_id
        answer = session.get(f"{api.url}/api/v1/products/{pid}/similar?k={k}", timeout=30)
        if answer.status_code != 200 or "ETag" not in answer.headers:
            raise SystemExit(f"/similar of {pid}: {answer.status_code} {answer.text[:200]}")
        return str(answer.headers["ETag"])

    sessions = [requests.Session() for _ in range(4)]
    jobs = [(sessions[n % 4], pid) for n, pid in enumerate(ids)]
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, jobs))


def run_wrk(
    wrk: str, script: Path, ids_file: Path, apis: list[Api], connections: int, seconds: int,
    k: int, conditional: bool,
) -> dict[str, float]:  # fmt: skip
    threads = min(connections, WRK_THREADS)
    env = {
        **os.environ,
        "BENCH_IDS": str(ids_file),
        "BENCH_K": str(k),
        "BENCH_CONDITIONAL": "1" if conditional else "0",
        "BENCH_PORTS": ",".join(str(api.port) for api in apis),
    }
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"]
    argv += ["--timeout", "10s", "-s", str(script), apis[0].url]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    found = re.search(r"^BENCH (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not found:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, float] = json.loads(found.group(1))
    return result


def measure(
    wrk: str, script: Path, ids_file: Path, apis: list[Api], args: argparse.Namespace
) -> list[Row]:
    """Warm up, then every connection count plain and conditional; RSS after the runs."""
    run_wrk(wrk, script, ids_file, apis, 16, args.warmup, args.k, conditional=False)
    runs = []
    for conditional in (False, True):
        for connections in args.connections:
            result = run_wrk(
                wrk, script, ids_file, apis, connections, args.duration, args.k, conditional
            )
            runs.append((conditional, connections, result))
    rss = "+".join(f"{api.worker_rss_mib():.0f}" for api in apis)
    rows = []
    for conditional, connections, r in runs:
        expected = r["s304"] if conditional else r["s200"]
        unexpected = r["s200"] + r["s304"] + r["other"] - expected
        socket_errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
        rows.append(
            Row(
                processes=len(apis),
                mode="If-None-Match: 304" if conditional else "plain: 200",
                connections=connections,
                rps=r["requests"] / (r["duration_us"] / 1e6),
                p50_ms=r["p50_us"] / 1000,
                p99_ms=r["p99_us"] / 1000,
                expected=int(expected),
                errors=int(unexpected + socket_errors),
                rss=rss,
            )
        )
        print(format_row(rows[-1]), flush=True)
    return rows


HEADER = (
    f"{'procs':>5}  {'requests':<18}  {'conns':>5}  {'req/s':>7}  {'p50 ms':>7}  "
    f"{'p99 ms':>7}  {'answers':>8}  {'errors':>6}  {'RSS MiB':>9}"
)


def format_row(row: Row) -> str:
    return (
        f"{row.processes:>5}  {row.mode:<18}  {row.connections:>5}  {row.rps:>7.0f}  "
        f"{row.p50_ms:>7.2f}  {row.p99_ms:>7.2f}  {row.expected:>8}  {row.errors:>6}  "
        f"{row.rss:>9}"
    )


def machine() -> str:
    """CPUs, memory and load average, as /proc says."""
    cpu = platform.processor() or "?"
    memory: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                memory[name] = int(value.split()[0]) / 2**20
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    sizes = ", ".join(f"{name} {gib:.1f} GiB" for name, gib in memory.items())
    return f"{os.cpu_count()} CPUs ({cpu}), {sizes}, load average {load}"


def bench(args: argparse.Namespace, wrk: str, root: Path) -> tuple[list[Row], list[str]]:
    """Redis with the journal, API A alone, then A and B: the rows, and notes for the end."""
    apis: list[Api] = []
    notes: list[str] = []
    with RedisServer(root / "redis", appendonly=False) as server:
        try:
            seconds = inject(server.url, args.items, args.seed)
            notes.append(f"journalled {args.items} items in {seconds:.1f} s")
            picked = random.Random(args.seed).sample(
                range(args.items), min(args.sample, args.items)
            )
            ids = [product_id(n) for n in picked]
            script, ids_file = root / "similar.lua", root / "ids.txt"
            script.write_text(LUA)
            rows: list[Row] = []
            for name in ("A", "B"):
                apis.append(start_api(name, server.url, root))
                seconds = wait_caught_up(apis[-1], args.items)
                notes.append(f"API {name}'s replica caught up with the journal in {seconds:.0f} s")
                if name == "A":  # the ETags of A serve for B too: same journal position
                    etags = fetch_etags(apis[0], ids, args.k)
                    lines = (f"{pid} {etag}" for pid, etag in zip(ids, etags, strict=True))
                    ids_file.write_text("\n".join(lines) + "\n")
                    print(f"fetched the ETags of {len(ids)} ids", flush=True)
                print(HEADER, flush=True)
                rows += measure(wrk, script, ids_file, apis, args)
            notes.append(f"redis-server RSS {rss_mib(server.pid or 0):.0f} MiB")
            return rows, notes
        finally:
            for api in apis:
                stop_api(api)


def main() -> None:
    args = parse_args()
    wrk = ensure_wrk()
    print(f"machine: {machine()}", flush=True)
    need = args.items * (DIM * 4 + 400) * 3 / 2**30  # Redis' journal + two replicas
    print(f"memory needed: about {need:.1f} GiB (the journal in Redis, and each replica)")
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        rows, notes = bench(args, wrk, Path(tmp))
    report(rows, args, notes)


def report(rows: list[Row], args: argparse.Namespace, notes: list[str]) -> None:
    print()
    print(
        f"GET /api/v1/products/{{id}}/similar?k={args.k}, {args.items} items of {DIM}-d, "
        f"random ids of {args.sample}, wrk {args.duration} s per row, {WRK_THREADS} wrk threads "
        "(1 for 1 connection); gunicorn 1 worker x 8 threads per process"
    )
    print(HEADER)
    print("-" * len(HEADER))
    for row in rows:
        print(format_row(row))
    print()
    plain = {(r.processes, r.connections): r for r in rows if r.mode.startswith("plain")}
    for row in rows:
        if row.mode.startswith("plain"):
            continue
        base = plain[(row.processes, row.connections)]
        print(
            f"{row.processes} process(es), {row.connections} connections: 304s at "
            f"{row.rps / base.rps:.2f}x the plain requests' rate, p50 "
            f"{row.p50_ms:.2f} ms against {base.p50_ms:.2f} ms"
        )
    for note in notes:
        print(note)
    print(f"machine at the end: {machine()}")


if __name__ == "__main__":
    main()
