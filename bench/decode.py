"""Decoding modes (LOOKALIKE_DECODE): what `reduced` saves per core, and what it costs.

1. Speed, per core: one thread decodes JPEG bytes to the model's 224x224 input, in `exact` and
   `reduced` mode, at 600x800, 1080x1440 and 1800x2400, for two kinds of photo-like pictures
   (bench/gpu/photos.py): "studio" (smooth, as retouched product shots on white are) and
   "grainy" (sensor grain, sigma 3: more bits per pixel). Images per CPU-second of the decoding
   thread (so another process on the machine slows it little), best of several rounds, the two
   modes measured in turns in the same run; "+thumb" is the worker's path, which also makes the
   256-px thumbnail from the same decode.
2. Cost, on our evaluation: a catalog of photo-like 1800x2400 originals and, for each, a
   near-duplicate query (a resized, recompressed copy) are embedded with the tests' seeded random
   ResNet50 in each mode; near-duplicate top-1 is how many queries find their original first,
   the score shift is how far each query's score to its original moves from `exact` to
   `reduced`, and "same image" is the cosine between an image's two vectors.

One command: .venv/bin/python bench/decode.py   (--quick: a small run to check it works)
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "gpu"))

import numpy as np
from photos import jpeg, photo_jpegs  # bench/gpu/photos.py
from PIL import Image

from shared.images import decode, decode_to_array

SIZES = ((600, 800), (1080, 1440), (1800, 2400))
FAMILIES = {"studio": 0.0, "grainy": 3.0}  # grain sigma, in levels


def cpu_rate(run: Callable[[], object], count: int) -> float:
    """Images per CPU-second of this thread for one run over count images."""
    started = time.thread_time()
    run()
    return count / max(time.thread_time() - started, 1e-9)


def speed(blobs: list[bytes], rounds: int) -> dict[str, float]:
    """Best-of-rounds images/s per core of each mode, with and without the thumbnail."""
    runs: dict[str, Callable[[], object]] = {
        "exact": lambda: [decode_to_array(b, mode="exact") for b in blobs],
        "reduced": lambda: [decode_to_array(b, mode="reduced") for b in blobs],
        "exact+thumb": lambda: [decode(b, thumbnail_side=256, mode="exact") for b in blobs],
        "reduced+thumb": lambda: [decode(b, thumbnail_side=256, mode="reduced") for b in blobs],
    }
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):  # the modes in turns, so that both see the same machine
        for name, run in runs.items():
            best[name] = max(best[name], cpu_rate(run, len(blobs)))
    return best


def pixel_difference(blobs: list[bytes]) -> float:
    """Mean absolute difference of the two modes' 224x224 model inputs, in levels."""
    diffs = [
        np.abs(
            decode_to_array(b, mode="exact").astype(np.int16)
            - decode_to_array(b, mode="reduced").astype(np.int16)
        ).mean()
        for b in blobs
    ]
    return float(np.mean(diffs))


def speed_table(count: int, rounds: int) -> None:
    header = (
        f"{'photos':<8}{'size':>10}{'KB':>6}{'bpp':>6}{'exact':>8}{'reduced':>9}{'ratio':>7}"
        f"{'exact+thumb':>13}{'reduced+thumb':>15}{'ratio':>7}{'|dpx|':>7}"
    )
    print(
        f"\n1. Decode to the 224x224 model input, one thread, images per CPU-second "
        f"(best of {rounds}), {count} JPEGs each"
    )
    print(header)
    print("-" * len(header))
    for family, sigma in FAMILIES.items():
        for width, height in SIZES:
            blobs = photo_jpegs(count, width, height, 1, sigma)
            kb = float(np.mean([len(b) for b in blobs])) / 1000
            bpp = kb * 8000 / (width * height)
            rates = speed(blobs, rounds)
            print(
                f"{family:<8}{f'{width}x{height}':>10}{kb:>6.0f}{bpp:>6.2f}"
                f"{rates['exact']:>8.0f}{rates['reduced']:>9.0f}"
                f"{rates['reduced'] / rates['exact']:>6.1f}x"
                f"{rates['exact+thumb']:>13.0f}{rates['reduced+thumb']:>15.0f}"
                f"{rates['reduced+thumb'] / rates['exact+thumb']:>6.1f}x"
                f"{pixel_difference(blobs):>7.2f}",
                flush=True,
            )


def near_duplicate(original: bytes, i: int) -> bytes:
    """A copy as a shop or a user would post it: smaller (2/3 or 1/3) and recompressed."""
    image = Image.open(io.BytesIO(original))
    factor, quality = ((2, 3), 80) if i % 2 == 0 else ((1, 3), 75)
    size = (image.width * factor[0] // factor[1], image.height * factor[0] // factor[1])
    return jpeg(image.convert("RGB").resize(size, Image.Resampling.LANCZOS), quality)


def normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def quality_table(items: int, weights: Path) -> None:
    from shared.images import ImageDecoder
    from shared.settings import Settings
    from workers.embedder import Embedder

    embedder = Embedder(Settings(weights=str(weights), batch_size=32))
    print(
        f"\n2. Near duplicates: {items} photo-like 1800x2400 originals, each queried by a "
        "copy at 2/3 (q80) or 1/3 (q75) size;\n   tests' seeded random ResNet50 "
        f"({embedder.model_id}), cosine; top-1 = the copy finds its original first"
    )
    header = (
        f"{'photos':<8}{'mode':<9}{'top-1':>9}{'score':>9}{'next':>9}"
        f"{'shift mean':>12}{'shift max':>11}{'same img min':>14}"
    )
    print(header)
    print("-" * len(header))
    for family, sigma in FAMILIES.items():
        originals = photo_jpegs(items, 1800, 2400, 2, sigma)
        queries = [near_duplicate(blob, i) for i, blob in enumerate(originals)]
        vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for mode in ("exact", "reduced"):
            decoder = ImageDecoder(224, "nearest", 40_000_000, threads=2, mode=mode)
            catalog = embedder.embed_arrays(np.stack(decoder.decode_many(originals)))  # type: ignore[arg-type]
            asked = embedder.embed_arrays(np.stack(decoder.decode_many(queries)))  # type: ignore[arg-type]
            vectors[mode] = normalized(catalog), normalized(asked)
        exact_scores = (vectors["exact"][0] * vectors["exact"][1]).sum(axis=1)
        rows = [*vectors.items(), ("mixed", (vectors["exact"][0], vectors["reduced"][1]))]
        for mode, (catalog, asked) in rows:
            scores = asked @ catalog.T
            true = np.diag(scores)
            others = np.where(np.eye(len(scores), dtype=bool), -np.inf, scores).max(axis=1)
            hits = int((scores.argmax(axis=1) == np.arange(len(scores))).sum())
            shift = true - exact_scores
            same = (vectors["exact"][0] * catalog).sum(axis=1).min()
            print(
                f"{family:<8}{mode:<9}{f'{hits}/{len(scores)}':>9}{true.mean():>9.5f}"
                f"{others.mean():>9.5f}{shift.mean():>+12.6f}{np.abs(shift).max():>11.6f}"
                f"{same:>14.6f}",
                flush=True,
            )
    print(
        "   mixed: reduced queries against an exact catalog (what the model id prevents); "
        "next: the best other item's score;\n   shift: query-to-original score minus exact's; "
        "same img min: lowest cosine of a catalog image's vector to its exact one"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=8, help="JPEGs per size for the speed")
    parser.add_argument("--rounds", type=int, default=5, help="speed: best of this many")
    parser.add_argument("--items", type=int, default=120, help="catalog items for the cost")
    parser.add_argument("--quick", action="store_true", help="a small run: 2 JPEGs, 16 items")
    parser.add_argument("--weights", type=Path, help="weights file (default: seeded random)")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds, args.items = 2, 2, 16
    from workers.weights import write_random_weights

    weights = args.weights or write_random_weights(
        Path(__file__).resolve().parent.parent
        / ".pytest_cache"
        / "weights"
        / "resnet50_seed1234_notop.h5",
        seed=1234,
    )
    started = time.perf_counter()
    print(f"bench/decode.py: {os.cpu_count()} CPUs, Pillow {Image.__version__}")
    speed_table(args.count, args.rounds)
    quality_table(args.items, weights)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
