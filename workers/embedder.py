"""The embedding engine: ResNet50 (no top) + global pooling, batched through one compiled call.

The Keras backend is Keras' own choice (KERAS_BACKEND, read by Keras when it is first imported):
TensorFlow by default, or JAX. Either way one compiled function takes uint8 batches, does the
caffe preprocessing on the device and returns float32 vectors. This module imports neither
TensorFlow nor pydantic at import time, so that bench/gpu can use it where neither is installed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.errors import WeightsUnavailable
from shared.images import Decoded, ImageDecoder, available_cores
from shared.model_id import EMBEDDING_DIM, input_part, model_id
from workers.gpu_decode import GpuDecoder
from workers.weights import resolve_weights

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

# preprocess_input of keras.applications.resnet50 ("caffe" mode): BGR means of ImageNet.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
KERAS_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# The Keras backends the engine compiles a forward pass for.
BACKENDS = ("tensorflow", "jax")

Forward = Callable[[np.ndarray], Any]


def build_model(settings: Settings, weights: Path) -> Any:
    """ResNet50(include_top=False) with global pooling, in the configured precision."""
    return resnet50(weights, settings.image_size, settings.pooling, settings.precision)


def resnet50(weights: Path | None, side: int, pooling: str, precision: str) -> Any:
    """The Keras model on the active backend; weights=None leaves Keras' random initialisation."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(KERAS_POLICIES[precision])
    try:
        return keras.applications.ResNet50(
            include_top=False,
            weights=None if weights is None else str(weights),
            input_shape=(side, side, 3),
            pooling=pooling,
        )
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not load weights from {weights}: not a Keras ResNet50 no-top file ({exc})"
        ) from exc
    finally:
        keras.mixed_precision.set_global_policy(previous)


def keras_backend() -> str:
    """The backend Keras runs on (KERAS_BACKEND, or Keras' config file; TensorFlow by default)."""
    import keras

    return str(keras.backend.backend())


def compile_forward(model: Any, jit_compile: bool = False, device: Any = None) -> Forward:
    """One compiled call of the model on the active backend: (n, side, side, 3) uint8 RGB in,
    RGB -> BGR and the ImageNet mean subtracted on the device (preprocess_input's "caffe"
    mode), (n, dim) float32 out. jit_compile asks TensorFlow for XLA; JAX always compiles,
    on device (a jax.Device: the weights and each batch are placed there) or its default."""
    backend = keras_backend()
    if backend == "tensorflow":
        return _tensorflow_forward(model, jit_compile)
    if backend == "jax":
        return _jax_forward(model, device)
    raise WeightsUnavailable(
        f"the embedding engine runs on the Keras backends {' and '.join(BACKENDS)}, not "
        f"{backend!r}: set KERAS_BACKEND to one of them"
    )


def _tensorflow_forward(model: Any, jit_compile: bool) -> Forward:
    import tensorflow as tf

    side = model.input_shape[1]
    mean = tf.constant(CAFFE_BGR_MEAN, dtype=tf.float32)

    @tf.function(
        input_signature=[tf.TensorSpec([None, side, side, 3], tf.uint8)],
        jit_compile=jit_compile,
    )
    def forward(images: Any) -> Any:
        bgr = tf.cast(images, tf.float32)[..., ::-1] - mean
        return tf.cast(model(bgr, training=False), tf.float32)

    return forward


def _jax_forward(model: Any, device: Any = None) -> Forward:
    """jax.jit of the model's stateless_call: the weights are arguments of the compiled
    function (held on the device once), not constants folded into it; one compilation per
    batch shape (Embedder pads partial batches to powers of two)."""
    import jax
    import jax.numpy as jnp

    trainable = [variable.value for variable in model.trainable_variables]
    non_trainable = [variable.value for variable in model.non_trainable_variables]
    if device is not None:
        trainable, non_trainable = jax.device_put((trainable, non_trainable), device)
    mean = np.asarray(CAFFE_BGR_MEAN, np.float32)

    @jax.jit
    def forward(trainable: Any, non_trainable: Any, images: Any) -> Any:
        bgr = images.astype(jnp.float32)[..., ::-1] - mean
        vectors, _ = model.stateless_call(trainable, non_trainable, bgr, training=False)
        return vectors.astype(jnp.float32)

    if device is None:
        return lambda images: forward(trainable, non_trainable, images)
    return lambda images: forward(trainable, non_trainable, jax.device_put(images, device))


@dataclass(frozen=True)
class Embedded:
    """An image's vector and its thumbnail, both from one decode."""

    vector: np.ndarray
    thumbnail: bytes


class Embedder:
    """Turns images into 2048-d float32 vectors; build once per process (see get_embedder)."""

    dim = EMBEDDING_DIM

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.batch_size = settings.batch_size
        self.forward_passes = 0
        self.forward_seconds = 0.0  # wall time inside the model: its busy share of a run
        self.decoder = ImageDecoder(
            settings.image_size,
            settings.interpolation,
            settings.max_image_pixels,
            settings.decode_threads or available_cores(),
            thumbnail_side=settings.thumbnail_size,
            mode="exact" if settings.decode == "gpu" else settings.decode,  # gpu: its fallback
        )
        self.gpu: GpuDecoder | None = None
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")  # embed_pipelined
        # XLA compiles once per batch shape: with it, partial batches are padded (see _run).
        self._fixed_shapes = settings.jit_compile
        if settings.model == "trivial":
            self.backend = "numpy"
            self.model_id = f"trivial-{input_part(settings)}"
            self._forward: Forward = _trivial_forward
            return
        self._build(settings)

    def _build(self, settings: Settings) -> None:
        self.backend = keras_backend()
        if settings.decode == "gpu":  # checked first: fail before the model is loaded
            if self.backend != "jax":
                raise WeightsUnavailable(
                    "LOOKALIKE_DECODE=gpu runs on the JAX backend (the pixels stay in GPU memory, "
                    f"shared through DLPack): set KERAS_BACKEND=jax, not {self.backend!r}"
                )
            self.gpu = GpuDecoder(self.decoder)
        weights = resolve_weights(settings)
        self.model_id = model_id(settings, weights.path, weights.random, self.backend)
        started = time.perf_counter()
        self._model = build_model(settings, weights.path)
        self._forward = compile_forward(self._model, settings.jit_compile)
        self._fixed_shapes = settings.jit_compile or self.backend == "jax"
        side = settings.image_size
        warm = self.batch_size if self.backend == "jax" else 1  # the shape bulk work runs
        self._run(np.zeros((warm, side, side, 3), np.uint8))  # trace and warm up once
        self.forward_passes, self.forward_seconds = 0, 0.0
        log.info(
            "model %s ready on %s in %.1fs",
            self.model_id,
            self.backend,
            time.perf_counter() - started,
        )

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        """(n, side, side, 3) uint8 RGB -> (n, 2048) float32, in passes of batch_size."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = [
            self._run(images[start : start + self.batch_size])
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(parts)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if self._fixed_shapes and n < self.batch_size:
            # XLA compiles once per shape: pad to a power of two to bound recompilations.
            padded = min(self.batch_size, 1 << (n - 1).bit_length())
            xp = _array_module(batch)
            batch = xp.concatenate([batch, xp.zeros((padded - n, *batch.shape[1:]), np.uint8)])
        started = time.perf_counter()
        vectors = np.asarray(self._forward(batch))[:n]
        self.forward_passes += 1
        self.forward_seconds += time.perf_counter() - started
        return vectors

    def embed_bytes(self, blobs: Sequence[bytes]) -> list[np.ndarray | Exception]:
        """Decode and embed; a bad image yields its error in place and never fails the others."""
        return self._embed_decoded((self.gpu or self.decoder).decode_many(blobs))

    def embed_with_thumbnails(self, blobs: Sequence[bytes]) -> list[Embedded | Exception]:
        """embed_bytes, each image's thumbnail made from the same decode as its model input."""
        return self._embed_with_thumbnails((self.gpu or self.decoder).decode_with_thumbnails(blobs))

    def _embed_with_thumbnails(
        self, decoded: Sequence[Decoded | Exception]
    ) -> list[Embedded | Exception]:
        pixels = [item.pixels if isinstance(item, Decoded) else item for item in decoded]
        results: list[Embedded | Exception] = []
        for item, vector in zip(decoded, self._embed_decoded(pixels), strict=True):
            if isinstance(vector, Exception):  # the image's own decode failed
                results.append(vector)
            else:
                assert isinstance(item, Decoded) and item.thumbnail is not None
                results.append(Embedded(vector, item.thumbnail))
        return results

    def embed_pipelined(
        self, batches: Iterable[Sequence[bytes]]
    ) -> Iterator[list[Embedded | Exception]]:
        """embed_with_thumbnails over many batches, overlapped: the next batch is decoded while
        the model runs this one (in a thread of its own), and each batch's results are yielded
        while the model runs the next, so that the caller publishes them meanwhile."""
        running: Future[list[Embedded | Exception]] | None = None
        for blobs in batches:
            decoded = (self.gpu or self.decoder).decode_with_thumbnails(blobs) if blobs else []
            started = self._model_thread.submit(self._embed_with_thumbnails, decoded)
            if running is not None:
                yield running.result()
            running = started
        if running is not None:
            yield running.result()

    def embed_stream(
        self, batches: Iterable[Sequence[bytes]]
    ) -> Iterator[list[np.ndarray | Exception]]:
        """embed_bytes over many batches, decoding the next batch while the model runs."""
        if self.gpu:  # the GPU decodes a whole batch in one call: nothing to overlap here
            yield from map(self.embed_bytes, batches)
            return
        iterator = iter(batches)
        ahead = self.decoder.submit(next(iterator, ()))
        while ahead:
            current, ahead = ahead, self.decoder.submit(next(iterator, ()))
            yield self._embed_decoded([future.result() for future in current])

    def _embed_decoded(self, decoded: Sequence[Any]) -> list[np.ndarray | Exception]:
        """Each decoded image (host or device array) to its vector; exceptions stay in place."""
        good = [i for i, item in enumerate(decoded) if not isinstance(item, Exception)]
        results: list[np.ndarray | Exception] = list(decoded)
        if good:
            images = [decoded[i] for i in good]
            vectors = self.embed_arrays(_array_module(images[0]).stack(images))
            for i, vector in zip(good, vectors, strict=True):
                results[i] = vector
        return results


def _array_module(array: Any) -> Any:
    """numpy for host arrays, jax.numpy for arrays in device memory (LOOKALIKE_DECODE=gpu)."""
    if isinstance(array, np.ndarray):
        return np
    import jax.numpy as jnp

    return jnp


@lru_cache(maxsize=4)
def get_embedder(settings: Settings) -> Embedder:
    """The process's embedder for these settings, built on first use."""
    return Embedder(settings)


def _trivial_forward(images: np.ndarray) -> Any:
    """Benchmarks only (LOOKALIKE_MODEL=trivial): block means of the pixels, 2048 of them, so
    that the pipeline around the model can be measured without the model's cost."""
    n, side = len(images), images.shape[1]
    block = max(side // 28, 1)
    cells = images[:, : 28 * block, : 28 * block].reshape(n, 28, block, 28, block, 3)
    means = cells.mean(axis=(2, 4), dtype=np.float32).reshape(n, -1)
    return np.ascontiguousarray(means[:, :EMBEDDING_DIM] + 1.0)
