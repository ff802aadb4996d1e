"""GPU benchmark: the embedding engine's parts on one GPU host, in one command of under 8 min.

Needs only what a GPU host with JAX has (jax with CUDA, numpy, Pillow), the keras, namex and
optree wheels, and, for GPU decoding and index insertion, nvidia-nvimgcodec-cu13 with
nvidia-nvjpeg and an hnswlib wheel (sections that lack theirs say so and are skipped). The
photos are made on the spot (bench/gpu/photos.py); the model is the project's Keras ResNet50
(no top, global max pooling) with seeded random weights, through the engine's own forward
(workers/embedder.py: uint8 in, caffe preprocessing on the device, float32 out).

    KERAS_BACKEND=jax python3 bench/gpu/run.py --out DIR     (--quick: a small run, any machine)

Measures: the model's rate per precision and batch, and its parity with the same model on the
host CPU; decoding rate per mode (exact, reduced: CPU processes; gpu: nvImageCodec, batched,
resize on the device); hnswlib insertion against threads; a whole worker end to end (JPEG
bytes -> vectors -> index). Writes DIR/gpu.json and DIR/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "gpu"))

import numpy as np
from photos import enlarge, jpeg, product_drawings  # bench/gpu/photos.py

from shared.images import ImageDecoder, decode_to_array
from workers.embedder import available_cores, compile_forward, resnet50

SIDE = 224
# Decoding processes start from a fork server made before JAX starts its threads: a fork of a
# process with JAX's threads running can deadlock.
POOLS = multiprocessing.get_context("forkserver")
results: dict[str, Any] = {}
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def padded(forward: Any, images: Any, batch: int) -> np.ndarray:
    """forward on images padded to batch rows (a shape it is compiled for), unpadded after."""
    import jax.numpy as jnp

    xp = np if isinstance(images, np.ndarray) else jnp
    filler = xp.zeros((batch - len(images), *images.shape[1:]), images.dtype)
    return np.asarray(forward(xp.concatenate([images, filler])))[: len(images)]


def rate(run: Callable[[], object], count: int, seconds: float) -> float:
    """Items per second of run (count items a call), repeated for at least seconds."""
    run()  # warm: compilation and caches are not part of the rate
    calls, started = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - started < seconds:
        run()
        calls += 1
    return count * calls / (time.perf_counter() - started)


def _photo(args: tuple[Any, int, int, int]) -> bytes:
    drawing, width, height, seed = args
    return jpeg(enlarge(drawing, width, height, seed))


def make_photos(count: int, width: int, height: int, pool: Any) -> list[bytes]:
    drawings = product_drawings(count, seed=width)
    return pool.map(_photo, [(d, width, height, i) for i, d in enumerate(drawings)])


# Decoding in processes: the blobs are handed to each process once, at its start.
_BLOBS: list[bytes] = []


def _keep(blobs: list[bytes]) -> None:
    global _BLOBS
    _BLOBS = blobs


def _decode_chunk(args: tuple[int, int, str]) -> np.ndarray:
    start, stop, mode = args
    count = len(_BLOBS)
    return np.stack([decode_to_array(_BLOBS[i % count], mode=mode) for i in range(start, stop)])


def _decode_all(blobs: list[bytes], mode: str) -> list[np.ndarray]:
    return [decode_to_array(b, mode=mode) for b in blobs]


def _call(forward: Any, x: Any) -> np.ndarray:
    return np.asarray(forward(x))


def _stacked(gpu: Any, blobs: list[bytes]) -> Any:
    import jax.numpy as jnp

    return jnp.stack(gpu.decode_many(blobs)).block_until_ready()


def _decoded_alone(gpu: Any, blobs: list[bytes]) -> Any:
    from workers.gpu_decode import rgb_pixels

    return rgb_pixels(gpu.decode_jpegs(blobs)[-1]).block_until_ready()


def cpu_decode_rates(blobs: list[bytes], cores: int, seconds: float) -> dict[str, float]:
    out = {}
    for mode in ("exact", "reduced"):
        out[f"{mode}, 1 process"] = rate(partial(_decode_all, blobs[:16], mode), 16, seconds)
        with POOLS.Pool(cores, _keep, (blobs,)) as pool:
            chunks = [(i * 16, i * 16 + 16, mode) for i in range(cores * 4)]
            out[f"{mode}, {cores} processes"] = rate(
                partial(pool.map, _decode_chunk, chunks),
                16 * len(chunks),
                seconds,
            )
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def top5_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each item's 5 nearest (cosine, within the set) that both vectors agree on."""

    def top5(v: np.ndarray) -> np.ndarray:
        n = v / np.linalg.norm(v, axis=1, keepdims=True)
        scores = n @ n.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :5]

    ta, tb = top5(a), top5(b)
    return float(np.mean([len(set(x) & set(y)) / 5 for x, y in zip(ta, tb, strict=True)]))


def model_section(images: np.ndarray, batches: list[int], seconds: float) -> dict[str, Any]:
    """Rates of the engine's compiled forward per precision and batch, and their parity."""
    import jax
    import keras

    keras.utils.set_random_seed(0)
    models = {"float32": resnet50(None, SIDE, "max", "float32")}
    models["bfloat16"] = resnet50(None, SIDE, "max", "bfloat16")
    models["bfloat16"].set_weights(models["float32"].get_weights())
    forwards = {name: compile_forward(model) for name, model in models.items()}
    out: dict[str, Any] = {"rates": {}, "parity": {}}
    reference = np.asarray(forwards["float32"](images))
    for name, forward in forwards.items():
        vectors = reference if name == "float32" else np.asarray(forward(images))
        out["parity"][f"{name} vs float32"] = {
            "cosine_min": float(cosine(vectors, reference).min()),
            "top5_overlap": top5_overlap(vectors, reference),
        }
        for batch in batches:
            x = np.resize(images, (batch, *images.shape[1:]))
            out["rates"][f"{name}, batch {batch}"] = rate(
                partial(_call, forward, x), batch, seconds
            )
            log(f"model {name} batch {batch}: {out['rates'][f'{name}, batch {batch}']:.0f}/s")
    with jax.default_matmul_precision("highest"):
        highest = compile_forward(models["float32"])
        x = np.resize(images, (batches[0], *images.shape[1:]))
        out["rates"][f"float32 'highest', batch {batches[0]}"] = rate(
            lambda: np.asarray(highest(x)), batches[0], seconds
        )
        precise = np.asarray(highest(images))
    on_cpu = np.asarray(
        compile_forward(models["float32"], device=jax.devices("cpu")[0])(images[:16])
    )
    for name, vectors in (("default", reference[:16]), ("'highest'", precise[:16])):
        out["parity"][f"float32 {name} on {jax.devices()[0].platform} vs host CPU"] = {
            "cosine_min": float(cosine(vectors, on_cpu).min()),
            "top5_overlap": top5_overlap(vectors, on_cpu),
        }
    out["forwards"] = forwards
    return out


def gpu_decode_section(
    sets: dict[str, list[bytes]], forward: Any, seconds: float
) -> dict[str, Any] | str:
    try:
        from workers.gpu_decode import GpuDecoder

        gpu = GpuDecoder(ImageDecoder(SIDE, "nearest", 40_000_000, available_cores()))
        thumbs = GpuDecoder(
            ImageDecoder(SIDE, "nearest", 40_000_000, available_cores(), thumbnail_side=256)
        )
    except Exception as exc:
        return f"skipped: {exc}"
    import jax.numpy as jnp

    out: dict[str, Any] = {}
    for name, blobs in sets.items():
        batch = blobs * max(1, 256 // len(blobs))
        out[f"{name}, batch {len(batch)}"] = rate(
            partial(_stacked, gpu, batch), len(batch), seconds
        )
        out[f"{name}, nvImageCodec's decode alone, batch {len(batch)}"] = rate(
            partial(_decoded_alone, gpu, batch), len(batch), seconds
        )
        out[f"{name} +thumbnail, batch {len(batch)}"] = rate(
            partial(thumbs.decode_with_thumbnails, batch), len(batch), seconds
        )
        on_gpu = np.asarray(jnp.stack(gpu.decode_many(blobs)))
        exact = np.stack([decode_to_array(b) for b in blobs])
        out[f"{name}: mean |pixel difference| to exact"] = float(
            np.abs(on_gpu.astype(np.int16) - exact).mean()
        )
        vectors = padded(forward, on_gpu, 256), padded(forward, exact, 256)
        out[f"{name}: vector cosine to exact, min"] = float(cosine(*vectors).min())
    return out


def insertion_section(vectors: np.ndarray, cores: int, count: int) -> dict[str, Any] | str:
    try:
        import hnswlib
    except ImportError as exc:
        return f"skipped: {exc}"
    rng = np.random.default_rng(0)
    base = np.resize(vectors, (count, vectors.shape[1]))
    data = (base + rng.normal(0, 0.05 * base.std(), base.shape)).astype(np.float32)
    out = {}
    for threads in sorted({1, 4, cores}):
        n = count if threads > 1 else count // 4
        index = hnswlib.Index(space="cosine", dim=data.shape[1])
        index.init_index(max_elements=n, M=16, ef_construction=200)
        started = time.perf_counter()
        index.add_items(data[:n], np.arange(n), num_threads=threads)
        out[f"{threads} threads"] = n / (time.perf_counter() - started)
        log(f"insertion {threads} threads: {out[f'{threads} threads']:.0f}/s")
    return out


def worker_section(
    blobs: list[bytes], forward: Any, cores: int, count: int, decode: str, overlap: bool = False
) -> dict[str, float] | str:
    """A whole worker: JPEG bytes -> decode -> forward (batches of 256) -> hnswlib (insertion
    overlapped); with overlap (gpu decode), batch k+1 is decoded while batch k's forward runs."""
    try:
        import hnswlib
    except ImportError as exc:
        return f"skipped: {exc}"
    index = hnswlib.Index(space="cosine", dim=2048)
    index.init_index(max_elements=count, M=16, ef_construction=200)
    done: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue(maxsize=4)

    def insert() -> None:
        while (item := done.get()) is not None:
            start, vectors = item
            index.add_items(vectors, np.arange(start, start + len(vectors)), num_threads=cores)

    inserter = threading.Thread(target=insert)
    batch = 256
    chunks = [(s, min(s + batch, count)) for s in range(0, count, batch)]
    started = time.perf_counter()
    inserter.start()
    if decode == "gpu":
        import jax.numpy as jnp

        from workers.gpu_decode import GpuDecoder

        gpu = GpuDecoder(ImageDecoder(SIDE, "nearest", 40_000_000, cores))
        running: tuple[int, Any] | None = None  # a batch whose forward was started
        for start, stop in chunks:
            on_device = jnp.stack(
                gpu.decode_many([blobs[i % len(blobs)] for i in range(start, stop)])
            )
            # JAX's call returns at once and np.asarray waits for the GPU: overlapped, this
            # batch was decoded while the previous one's forward ran.
            if running is not None:
                done.put((running[0], np.asarray(running[1])))
            running = (start, forward(on_device))
            if not overlap:
                done.put((start, np.asarray(running[1])))
                running = None
        if running is not None:
            done.put((running[0], np.asarray(running[1])))
    else:
        processes = max(1, cores - 1)
        with POOLS.Pool(processes, _keep, (blobs,)) as pool:
            for (start, _), pixels in zip(
                chunks, pool.imap(_decode_chunk, [(a, b, decode) for a, b in chunks]), strict=True
            ):
                done.put((start, np.asarray(forward(pixels))))
    done.put(None)
    inserter.join()
    elapsed = time.perf_counter() - started
    return {"images/s": count / elapsed, "indexed": float(index.get_current_count())}


def table(data: dict[str, Any], indent: str = "") -> list[str]:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{indent}- **{key}**")
            lines += table(value, indent + "  ")
        elif isinstance(value, float):
            lines.append(f"{indent}- {key}: {value:,.{6 if abs(value) < 1.5 else 0}f}")
        else:
            lines.append(f"{indent}- {key}: {value}")
    return lines


def section(name: str, out: Path, budget: float, run: Callable[[], Any]) -> Any:
    """Run one part, record its result (or why it did not run), and save what is known so far."""
    if time.perf_counter() - STARTED > budget:
        results[name] = f"skipped: the run's {budget:.0f} s budget was spent"
    else:
        try:
            results[name] = run()
        except Exception as exc:  # one part failing must not lose the others' figures
            results[name] = f"failed: {type(exc).__name__}: {exc}"
            log(f"{name} failed: {exc!r}")
    log(f"{name}: done")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=2, default=str))
    return results[name]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--quick", action="store_true", help="a small run, to check it works")
    parser.add_argument("--budget", type=float, default=400, help="seconds; later parts skip")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 512])
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["cpu-decode", "insertion", "cpu-worker"]
    )
    args = parser.parse_args()
    cores = available_cores()
    small, large = (32, 8) if args.quick else (256, 64)
    with multiprocessing.get_context("fork").Pool(cores) as pool:  # JAX has not started yet
        sets = {
            "600x800": make_photos(small, 600, 800, pool),
            "1800x2400": make_photos(large, 1800, 2400, pool),
        }
    POOLS.set_forkserver_preload(["numpy", "PIL.Image", "shared.images"])
    POOLS.Pool(1).close()  # start the fork server now, before JAX
    import jax
    import keras

    seconds = 0.3 if args.quick else 3.0
    results["machine"] = {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.devices()[0].platform,
        "cores": cores,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "keras": keras.__version__,
        "keras backend": keras.backend.backend(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    log(f"machine: {results['machine']}")
    images = np.stack([decode_to_array(b) for b in sets["600x800"]])
    batches = [32] if args.quick else args.batches
    model = section("model", args.out, args.budget, lambda: model_section(images, batches, seconds))
    forwards = model.pop("forwards")
    section(
        "decode on the CPU, images/s" + (" (skipped)" if "cpu-decode" in args.skip else ""),
        args.out,
        args.budget,
        lambda: (
            "skipped"
            if "cpu-decode" in args.skip
            else {name: cpu_decode_rates(blobs, cores, seconds) for name, blobs in sets.items()}
        ),
    )
    section(
        "decode on the GPU (nvImageCodec, resize on the device), images/s",
        args.out,
        args.budget,
        lambda: gpu_decode_section(sets, forwards["float32"], seconds),
    )
    vectors = padded(forwards["float32"], images, batches[0])
    count = 512 if args.quick else 16384
    section(
        "index insertion (hnswlib, M=16, ef_construction=200), items/s",
        args.out,
        args.budget,
        lambda: "skipped" if "insertion" in args.skip else insertion_section(vectors, cores, count),
    )
    count = 512 if args.quick else 8192
    workers = [
        ("gpu", "bfloat16", False),
        ("gpu", "bfloat16", True),
        ("reduced", "bfloat16", False),
    ]
    for decode, precision, overlap in [
        *workers,
        ("gpu", "float32", False),
        ("gpu", "float32", True),
    ]:
        if decode != "gpu" and "cpu-worker" in args.skip:
            continue
        section(
            f"whole worker, 600x800 JPEG -> index, {decode} decode, {precision}"
            + (", decode overlapping the forward" if overlap else ""),
            args.out,
            args.budget,
            partial(
                worker_section, sets["600x800"], forwards[precision], cores, count, decode, overlap
            ),
        )
    section("seconds", args.out, float("inf"), lambda: time.perf_counter() - STARTED)
    markdown = "\n".join(["# bench/gpu", "", *table(results)]) + "\n"
    (args.out / "gpu.md").write_text(markdown)
    print(markdown, flush=True)
    os._exit(0)  # nvImageCodec's and the fork server's threads can hold an orderly exit


if __name__ == "__main__":
    sys.exit(main())
