"""Embedding throughput: the seed notebook's image-by-image predict vs our batched engine.

Images/s from JPEG bytes to vectors ("decode incl.") and from decoded arrays ("model only"),
for each precision and batch size, plus the cosine of each precision's vectors to float32's.
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

import numpy as np

from shared.settings import Settings
from tests.support.images import make_jpegs
from workers.embedder import Embedder
from workers.weights import write_random_weights


def rate(count: int, seconds: float) -> float:
    return count / seconds


def seed_rates(weights: Path, blobs: list[bytes], repeats: int) -> tuple[float, float, np.ndarray]:
    """The reference notebook: load_img, img_to_array, preprocess_input, predict, one by one."""
    import keras
    from keras.applications.resnet50 import ResNet50, preprocess_input
    from keras.utils import img_to_array, load_img

    base = ResNet50(weights=str(weights), include_top=False, input_shape=(224, 224, 3))
    model = keras.Sequential([base, keras.layers.GlobalMaxPooling2D()])
    model.predict(np.zeros((1, 224, 224, 3)), verbose=0)

    def load(data: bytes) -> np.ndarray:
        image = load_img(io.BytesIO(data), target_size=(224, 224))
        return preprocess_input(np.expand_dims(img_to_array(image), axis=0))

    arrays = [load(data) for data in blobs]
    with_decode = best_rate(
        len(blobs), lambda: [model.predict(load(data), verbose=0) for data in blobs], repeats
    )
    model_only = best_rate(
        len(blobs), lambda: [model.predict(batch, verbose=0) for batch in arrays], repeats
    )
    vectors = [model.predict(batch, verbose=0)[0] for batch in arrays]
    return with_decode, model_only, np.stack(vectors)


def best_rate(count: int, run: Callable[[], object], repeats: int) -> float:
    """The best of several timed runs: the least disturbed by anything else on the machine."""
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = max(best, rate(count, time.perf_counter() - started))
    return best


def engine_rates(
    embedder: Embedder, blobs: list[bytes], arrays: np.ndarray, repeats: int
) -> tuple[float, float]:
    size = embedder.batch_size
    embedder.embed_arrays(arrays[:size])  # warm up this batch shape
    chunks = [blobs[i : i + size] for i in range(0, len(blobs), size)]
    # Alternate the two measurements so both see the same machine conditions.
    model_only = with_decode = 0.0
    for _ in range(repeats):
        model_only = max(
            model_only, best_rate(len(arrays), lambda: embedder.embed_arrays(arrays), 1)
        )
        with_decode = max(
            with_decode, best_rate(len(blobs), lambda: list(embedder.embed_stream(chunks)), 1)
        )
    return with_decode, model_only


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=128, help="images per measurement")
    parser.add_argument("--width", type=int, default=600)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--weights", type=Path, help="weights file (default: seeded random)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()

    weights = args.weights or write_random_weights(
        Path(".pytest_cache/weights/resnet50_seed1234_notop.h5"), seed=1234
    )
    blobs = make_jpegs(args.images, args.width, args.height)
    print(
        f"{args.images} JPEGs of {args.width}x{args.height}, {os.cpu_count()} CPUs, "
        f"images/s best of {args.repeats}"
    )
    seed_decode, seed_model, seed_vectors = seed_rates(weights, blobs, args.repeats)

    header = f"{'pipeline':<28}{'batch':>6}{'decode incl.':>14}{'model only':>12}"
    header += f"{'incl/only':>11}{'x seed':>8}{'cos min':>10}"
    print(header)
    print("-" * len(header))
    print(
        f"{'seed: predict per image':<28}{1:>6}{seed_decode:>14.1f}{seed_model:>12.1f}"
        f"{seed_decode / seed_model:>11.2f}{1.0:>8.2f}{1.0:>10.5f}"
    )
    for precision in args.precisions:
        for batch in args.batches:
            settings = Settings(weights=str(weights), precision=precision, batch_size=batch)
            embedder = Embedder(settings)
            arrays = np.stack(embedder.decoder.decode_many(blobs))  # type: ignore[arg-type]
            with_decode, model_only = engine_rates(embedder, blobs, arrays, args.repeats)
            vectors = embedder.embed_arrays(arrays)
            print(
                f"{'engine ' + precision:<28}{batch:>6}{with_decode:>14.1f}{model_only:>12.1f}"
                f"{with_decode / model_only:>11.2f}{with_decode / seed_decode:>8.2f}"
                f"{cosine(vectors, seed_vectors):>10.5f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
