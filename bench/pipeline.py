"""The whole pipeline against the raw engine, on the same photos, in the same run.

"engine" is `lookalike embed`'s path in this process (decoding threads overlapped with the
compiled forward pass), timed after the model is built. "stack" is `lookalike import` of the same
images through the real processes (API under gunicorn, Redis, one Celery embed worker, the index
writer; the API's replica follows the journal), from the first upload until every task has
succeeded. The "trivial" rows replace ResNet50 by block means of the pixels
(LOOKALIKE_MODEL=trivial, benchmarks only): what the pipeline itself can move.

Then, for each stack run, where the time went: CPU milliseconds per image of each process
(utime + stime from /proc over the import; the importer is this process) and the share of the
import's wall time the worker's model spent computing (the `model_seconds` counter).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.client import ApiClient
from cli.importer import CatalogImporter
from shared import keys
from shared.records import connect
from shared.settings import Settings
from tests.support.images import make_jpegs
from tests.support.procs import cpu_seconds
from tests.support.stack import Stack
from workers.embedder import Embedder
from workers.weights import write_random_weights

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
HEADER += "productDisplayName\n"
CORES = os.cpu_count() or 1
PROCESSES = ("embed", "api", "writer")  # the stack's processes measured, besides Redis


@dataclass
class StackRun:
    rate: float
    cpu_ms: dict[str, float]  # process -> CPU milliseconds per image
    model_busy: float  # share of the import's wall time the model was computing


def write_catalog(directory: Path, blobs: list[bytes]) -> None:
    """The photos in the Fashion Product Images layout."""
    (directory / "images").mkdir(parents=True)
    rows = [HEADER]
    for n, blob in enumerate(blobs):
        product_id = str(10000 + n)
        (directory / "images" / f"{product_id}.jpg").write_bytes(blob)
        rows.append(f"{product_id},Men,Apparel,Topwear,Shirts,Blue,Fall,2012,Casual,Shirt {n}\n")
    (directory / "styles.csv").write_text("".join(rows))


def engine_rate(settings: Settings, blobs: list[bytes]) -> tuple[float, float]:
    """Images/s, and CPU milliseconds per image (this process's, all its threads)."""
    embedder = Embedder(settings)
    batches = [
        blobs[i : i + settings.batch_size] for i in range(0, len(blobs), settings.batch_size)
    ]
    list(embedder.embed_stream(batches[:1]))  # warm: first batch shapes, thread pool
    cpu, started = process_cpu(), time.perf_counter()
    for results in embedder.embed_stream(batches):
        assert not any(isinstance(result, Exception) for result in results)
    took = time.perf_counter() - started
    return len(blobs) / took, 1000 * (process_cpu() - cpu) / len(blobs)


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stack_rate(root: Path, weights: Path, dataset: Path, settings: Settings) -> StackRun:
    key = "bench-key"
    stack = Stack(
        root, weights, model=settings.model, api_key=key, batch_size=settings.batch_size,
        batch_wait=settings.batch_wait, visibility_timeout=settings.visibility_timeout,
    )  # fmt: skip  # the defaults, not the tests' short timeouts
    stack.start_redis()
    try:
        url = stack.ensure_up()
        stack.wait_ready(url, 300)
        pids: dict[str, int | None] = {name: stack.processes[name].pid for name in PROCESSES}
        pids["redis"] = stack.redis.pid
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        own = process_cpu()
        report = CatalogImporter(ApiClient(url, key), concurrency=8).run(dataset, progress=False)
        assert not report.failed and report.imported, report.summary()
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        cpu["importer"] = process_cpu() - own
        stats = connect(stack.redis.url).hgetall(keys.STATS)
        model_seconds = float(stats.get(b"model_seconds", 0.0))
        return StackRun(
            report.rate,
            {name: 1000 * seconds / report.imported for name, seconds in cpu.items()},
            model_seconds / report.elapsed,
        )
    finally:
        stack.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=512, help="photos (default 512)")
    parser.add_argument("--size", default="600x800", help="photo size WxH (default 600x800)")
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.split("x"))
    blobs = make_jpegs(args.n, width, height)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_random_weights(Path(tmp) / "weights.h5", seed=1234)
        dataset = Path(tmp) / "catalog"
        write_catalog(dataset, blobs)
        for model in ("resnet50", "trivial"):
            settings = Settings(weights=str(weights), model=model)
            engine, engine_cpu = engine_rate(settings, blobs)
            run = stack_rate(Path(tempfile.mkdtemp(dir=tmp)), weights, dataset, settings)
            rows.append((model, engine, run, engine_cpu))
    print(f"{args.n} JPEGs of {args.size}, {CORES} cores, images/s")
    print(f"{'model':<10}{'engine':>10}{'stack':>10}{'stack/engine':>14}{'stack per core':>16}")
    for model, engine, run, _ in rows:
        print(
            f"{model:<10}{engine:>10.1f}{run.rate:>10.1f}{run.rate / engine:>14.2f}"
            f"{run.rate / CORES:>16.1f}"
        )
    names = [*PROCESSES, "redis", "importer"]
    print("\nwhere the time went: CPU ms per image of each process of the stack; the stack's")
    print("total against the engine's (a perfect packing's stack/engine); the model's busy share")
    header = "".join(f"{name:>10}" for name in names)
    print(f"{'model':<10}{header}{'total':>9}{'engine':>9}{'ceiling':>9}{'model busy':>12}")
    for model, _, run, engine_cpu in rows:
        total = sum(run.cpu_ms.values())
        cells = "".join(f"{run.cpu_ms[name]:>10.1f}" for name in names)
        print(
            f"{model:<10}{cells}{total:>9.1f}{engine_cpu:>9.1f}{engine_cpu / total:>9.2f}"
            f"{run.model_busy:>12.2f}"
        )


if __name__ == "__main__":
    main()
