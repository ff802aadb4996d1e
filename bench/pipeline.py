"""The whole pipeline against the raw engine, on the same photos, in the same run.

"engine" is `lookalike embed`'s path in this process (decoding threads overlapped with the
compiled forward pass), timed after the model is built. "stack" is `lookalike import` of the same
images through the real processes (API under gunicorn, Redis, one Celery embed worker, the index
writer; the API's replica follows the journal), from the first upload until every task has
succeeded. The "trivial" rows replace ResNet50 by block means of the pixels
(LOOKALIKE_MODEL=trivial, benchmarks only): what the pipeline itself can move.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.client import ApiClient
from cli.importer import CatalogImporter
from shared.settings import Settings
from tests.support.images import make_jpegs
from tests.support.stack import Stack
from workers.embedder import Embedder
from workers.weights import write_random_weights

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
HEADER += "productDisplayName\n"
CORES = os.cpu_count() or 1


def write_catalog(directory: Path, blobs: list[bytes]) -> None:
    """The photos in the Fashion Product Images layout."""
    (directory / "images").mkdir(parents=True)
    rows = [HEADER]
    for n, blob in enumerate(blobs):
        product_id = str(10000 + n)
        (directory / "images" / f"{product_id}.jpg").write_bytes(blob)
        rows.append(f"{product_id},Men,Apparel,Topwear,Shirts,Blue,Fall,2012,Casual,Shirt {n}\n")
    (directory / "styles.csv").write_text("".join(rows))


def engine_rate(settings: Settings, blobs: list[bytes]) -> float:
    embedder = Embedder(settings)
    batches = [
        blobs[i : i + settings.batch_size] for i in range(0, len(blobs), settings.batch_size)
    ]
    list(embedder.embed_stream(batches[:1]))  # warm: first batch shapes, thread pool
    started = time.perf_counter()
    for results in embedder.embed_stream(batches):
        assert not any(isinstance(result, Exception) for result in results)
    return len(blobs) / (time.perf_counter() - started)


def stack_rate(root: Path, weights: Path, dataset: Path, settings: Settings) -> float:
    key = "bench-key"
    stack = Stack(
        root, weights, model=settings.model, api_key=key, batch_size=settings.batch_size,
        batch_wait=settings.batch_wait,
    )  # fmt: skip
    stack.start_redis()
    try:
        url = stack.ensure_up()
        stack.wait_ready(url, 300)
        report = CatalogImporter(ApiClient(url, key), concurrency=8).run(dataset, progress=False)
        assert not report.failed and report.imported, report.summary()
        return report.rate
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
            engine = engine_rate(settings, blobs)
            stack = stack_rate(Path(tempfile.mkdtemp(dir=tmp)), weights, dataset, settings)
            rows.append((model, engine, stack))
    print(f"{args.n} JPEGs of {args.size}, {CORES} cores, images/s")
    print(f"{'model':<10}{'engine':>10}{'stack':>10}{'stack/engine':>14}{'stack per core':>16}")
    for model, engine, stack in rows:
        print(
            f"{model:<10}{engine:>10.1f}{stack:>10.1f}{stack / engine:>14.2f}{stack / CORES:>16.1f}"
        )


if __name__ == "__main__":
    main()
