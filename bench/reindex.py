"""Changing the model: what keeping originals costs, and how long a reindex of a catalog takes.

A real stack (redis-server, an embed worker, the writer, gunicorn, as tests/support/stack.py runs
them) imports the demo catalog (`lookalike demo-catalog`, N items); then a second generation's
worker (other weights) and writer start, and `lookalike reindex` embeds the catalog again from
the kept originals while the first generation serves. Reported: the originals' bytes per item
against the catalog's image files, the import's and the reindex's items/s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.client import ApiClient
from cli.demo_catalog import write_demo_catalog
from cli.importer import CatalogImporter
from tests.support.stack import Stack
from workers.weights import write_random_weights

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def size_of(directory: Path) -> tuple[int, int]:
    """Files and bytes under directory."""
    files = [path for path in directory.rglob("*") if path.is_file()]
    return len(files), sum(path.stat().st_size for path in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="demo catalog items (default 300)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first = write_random_weights(root / "first.h5", seed=1234)
        second = write_random_weights(root / "second.h5", seed=99)
        dataset = root / "catalog"
        write_demo_catalog(dataset, args.n)
        stack = Stack(root / "stack", first, api_key="bench")
        stack.start_redis()
        try:
            url = stack.ensure_up()
            stack.wait_ready(url, 300)
            imported = CatalogImporter(ApiClient(url, "bench")).run(dataset, progress=False)
            stack.start_worker("embed-g2", generation="g2", weights=second)
            stack.start_writer("writer-g2", generation="g2")
            started = time.perf_counter()
            result = subprocess.run(
                [LOOKALIKE, "reindex", "--generation", "g2", "-q"], env=stack.env,
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            reindex_s = time.perf_counter() - started
        finally:
            stack.stop_all()
        images, image_bytes = size_of(dataset / "images")
        originals, original_bytes = size_of(root / "stack" / "data" / "originals")
    print(result.stdout.strip())
    print(
        f"{'catalog':<26}{args.n} rows, {images} images, {image_bytes / images / 1024:.1f} KiB each"
    )
    per_original = original_bytes / originals / 1024
    share = original_bytes / image_bytes
    kept = f"{originals} files, {per_original:.1f} KiB each ({share:.2f} of the images)"
    print(f"{'originals kept':<26}{kept}")
    print(f"{'import':<26}{imported.rate:.1f} items/s")
    print(f"{'reindex':<26}{reindex_s:.1f}s, {imported.imported / reindex_s:.1f} items/s")


if __name__ == "__main__":
    main()
