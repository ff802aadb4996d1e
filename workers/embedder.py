"""The embedding engine: ResNet50 (no top) + global pooling, batched through one compiled call."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import WeightsUnavailable
from shared.images import Decoded, ImageDecoder
from shared.model_id import EMBEDDING_DIM, model_id
from shared.settings import Settings
from workers.weights import resolve_weights

log = logging.getLogger(__name__)

# preprocess_input of keras.applications.resnet50 ("caffe" mode): BGR means of ImageNet.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
KERAS_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def build_model(settings: Settings, weights: Path) -> Any:
    """ResNet50(include_top=False) with global pooling, in the configured precision."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(KERAS_POLICIES[settings.precision])
    try:
        return keras.applications.ResNet50(
            include_top=False,
            weights=str(weights),
            input_shape=(settings.image_size, settings.image_size, 3),
            pooling=settings.pooling,
        )
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not load weights from {weights}: not a Keras ResNet50 no-top file ({exc})"
        ) from exc
    finally:
        keras.mixed_precision.set_global_policy(previous)


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
        self.decoder = ImageDecoder(
            settings.image_size,
            settings.interpolation,
            settings.max_image_pixels,
            settings.decode_threads,
            thumbnail_side=settings.thumbnail_size,
        )
        if settings.model == "trivial":
            self.model_id = f"trivial-{settings.image_size}{settings.interpolation}"
            self._forward: Any = _trivial_forward
            return
        self._build(settings)

    def _build(self, settings: Settings) -> None:
        import tensorflow as tf

        weights = resolve_weights(settings)
        self.model_id = model_id(settings, weights.path, weights.random)
        started = time.perf_counter()
        self._model = build_model(settings, weights.path)
        side = settings.image_size
        mean = tf.constant(CAFFE_BGR_MEAN, dtype=tf.float32)
        model = self._model

        @tf.function(
            input_signature=[tf.TensorSpec([None, side, side, 3], tf.uint8)],
            jit_compile=settings.jit_compile,
        )
        def forward(images: Any) -> Any:
            bgr = tf.cast(images, tf.float32)[..., ::-1] - mean
            return tf.cast(model(bgr, training=False), tf.float32)

        self._forward = forward
        self._forward(np.zeros((1, side, side, 3), np.uint8))  # trace and warm up once
        self.forward_passes = 0
        log.info("model %s ready in %.1fs", self.model_id, time.perf_counter() - started)

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
        if self.settings.jit_compile and n < self.batch_size:
            # XLA compiles once per shape: pad to a power of two to bound recompilations.
            padded = min(self.batch_size, 1 << (n - 1).bit_length())
            batch = np.concatenate([batch, np.zeros((padded - n, *batch.shape[1:]), np.uint8)])
        self.forward_passes += 1
        return np.asarray(self._forward(batch))[:n]

    def embed_bytes(self, blobs: Sequence[bytes]) -> list[np.ndarray | Exception]:
        """Decode and embed; a bad image yields its error in place and never fails the others."""
        return self._embed_decoded(self.decoder.decode_many(blobs))

    def embed_with_thumbnails(self, blobs: Sequence[bytes]) -> list[Embedded | Exception]:
        """embed_bytes, each image's thumbnail made from the same decode as its model input."""
        decoded = self.decoder.decode_with_thumbnails(blobs)
        pixels = [item.pixels if isinstance(item, Decoded) else item for item in decoded]
        results: list[Embedded | Exception] = []
        for item, vector in zip(decoded, self._embed_decoded(pixels), strict=True):
            if isinstance(vector, Exception):  # the image's own decode failed
                results.append(vector)
            else:
                assert isinstance(item, Decoded) and item.thumbnail is not None
                results.append(Embedded(vector, item.thumbnail))
        return results

    def embed_stream(
        self, batches: Iterable[Sequence[bytes]]
    ) -> Iterator[list[np.ndarray | Exception]]:
        """embed_bytes over many batches, decoding the next batch while the model runs."""
        iterator = iter(batches)
        ahead = self.decoder.submit(next(iterator, ()))
        while ahead:
            current, ahead = ahead, self.decoder.submit(next(iterator, ()))
            yield self._embed_decoded([future.result() for future in current])

    def _embed_decoded(self, decoded: list[np.ndarray | Exception]) -> list[np.ndarray | Exception]:
        good = [i for i, item in enumerate(decoded) if isinstance(item, np.ndarray)]
        results: list[np.ndarray | Exception] = list(decoded)
        if good:
            vectors = self.embed_arrays(np.stack([decoded[i] for i in good]))  # type: ignore[misc]
            for i, vector in zip(good, vectors, strict=True):
                results[i] = vector
        return results


@lru_cache(maxsize=4)
def get_embedder(settings: Settings) -> Embedder:
    """The process's embedder for these settings, built on first use."""
    return Embedder(settings)


def _trivial_forward(images: np.ndarray) -> np.ndarray:
    """Benchmarks only (LOOKALIKE_MODEL=trivial): block means of the pixels, 2048 of them, so
    that the pipeline around the model can be measured without the model's cost."""
    n, side = len(images), images.shape[1]
    block = max(side // 28, 1)
    cells = images[:, : 28 * block, : 28 * block].reshape(n, 28, block, 28, block, 3)
    means = cells.mean(axis=(2, 4), dtype=np.float32).reshape(n, -1)
    return np.ascontiguousarray(means[:, :EMBEDDING_DIM] + 1.0)
