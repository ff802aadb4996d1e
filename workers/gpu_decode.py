"""LOOKALIKE_DECODE=gpu: JPEGs decoded in batches on the GPU and resized there, for GPU workers.

A host's CPUs decode catalog originals far slower than one GPU embeds them (bench/gpu), so a
GPU worker can hand the JPEG bytes to nvImageCodec (NVIDIA's nvJPEG, with the hardware JPEG
decoder where the GPU has one) and get the pixels in GPU memory, shared with JAX through DLPack
without a copy. The resize to the model's input picks the same source pixels as PIL's nearest
resize (the reference's load_img), on the device; the thumbnail is reduced on the device too.
nvJPEG's IDCT and chroma upsampling differ from libjpeg's by a few levels, so the vectors are
not the reference's bytes: the mode is part of the model id. What the GPU path cannot take
(other formats, CMYK JPEGs, files that do not end as a whole JPEG does) is decoded on the CPU
exactly as in "exact" mode, where the same limits and errors apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any

import numpy as np
from PIL import Image

from shared.errors import WeightsUnavailable
from shared.images import (
    Decoded,
    ImageDecoder,
    check_header,
    exif_orientation,
    thumbnail,
)

GPU_FORMATS = frozenset({"JPEG", "MPO"})
GPU_MODES = frozenset({"RGB", "L"})  # what nvJPEG turns into RGB as libjpeg does (not CMYK)
_JPEG_END = b"\xff\xd9"


@lru_cache(maxsize=64)
def nearest_indices(source: int, size: int) -> np.ndarray:
    """The rows (or columns) PIL's nearest resize takes from source to make size of them.

    Pillow steps a double from scale / 2 by scale = source / size and truncates it, so its
    picks carry the sum's rounding: (i + 0.5) * scale, computed at once, differs at some sizes.
    """
    scale = source / size
    position = scale * 0.5
    picks = np.empty(size, np.int32)
    for i in range(size):
        picks[i] = min(int(position), source - 1)
        position += scale
    picks.flags.writeable = False  # cached: shared by every call
    return picks


@lru_cache(maxsize=1)
def _device_ops() -> tuple[Any, Any]:
    import jax
    import jax.numpy as jnp

    @jax.jit
    def gather(image: Any, rows: Any, cols: Any) -> Any:
        return jnp.take(jnp.take(image, rows, axis=0), cols, axis=1)

    @partial(jax.jit, static_argnums=1)
    def shrink(image: Any, shape: tuple[int, int, int]) -> Any:
        small = jax.image.resize(image.astype(jnp.float32), shape, "linear", antialias=True)
        return jnp.clip(jnp.round(small), 0, 255).astype(jnp.uint8)

    return gather, shrink


def resize_nearest(image: Any, size: int) -> Any:
    """(h, w, 3) uint8 on the device to (size, size, 3): PIL's nearest resize, on the device."""
    gather, _ = _device_ops()
    height, width = image.shape[:2]
    return gather(image, nearest_indices(height, size), nearest_indices(width, size))


def device_shrink(image: Any, max_side: int) -> Any:
    """A device image reduced (antialiased) to max_side at most, on the device."""
    _, shrink = _device_ops()
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(width, height))
    return shrink(image, (max(1, round(height * scale)), max(1, round(width * scale)), 3))


def encode_thumbnail(small: Any, max_side: int, orientation: int | None) -> bytes:
    """The JPEG of a reduced device image (copied here), as the CPU path encodes thumbnails."""
    return thumbnail(Image.fromarray(np.asarray(small), "RGB"), max_side, orientation)


def rgb_pixels(image: Any) -> Any:
    """A decoded image (anything with __dlpack__) as an (h, w, 3) uint8 JAX array, no copy."""
    import jax.numpy as jnp

    pixels = jnp.from_dlpack(image)
    if pixels.ndim == 2 or pixels.shape[-1] == 1:  # a grey JPEG: three equal channels
        pixels = jnp.repeat(pixels.reshape(*pixels.shape[:2], 1), 3, axis=-1)
    return pixels


def looks_whole(data: bytes) -> bool:
    """A JPEG ends with its EOI marker; one that does not is left to the CPU, which refuses
    it if it is cut short (nvJPEG would fill the missing part in grey)."""
    return data[-4096:].rstrip(b"\0").endswith(_JPEG_END)  # the tail only: no copy of it all


class GpuDecoder:
    """Batches of image bytes to model inputs (and thumbnails) in GPU memory."""

    def __init__(self, cpu: ImageDecoder) -> None:
        try:
            from nvidia import nvimgcodec
        except ImportError as exc:
            raise WeightsUnavailable(
                "LOOKALIKE_DECODE=gpu needs nvImageCodec with nvJPEG on a GPU host: "
                "pip install 'lookalike[jax-cuda]' (or use LOOKALIKE_DECODE=exact|reduced)"
            ) from exc
        self.cpu = cpu  # the same size, limits and thumbnail side; "exact" mode
        # Thumbnails are reduced on the device; their copy back and JPEG encoding run here.
        self._encoders = ThreadPoolExecutor(cpu.threads, thread_name_prefix="thumbnail")
        self._decoder = nvimgcodec.Decoder()
        rgb = getattr(nvimgcodec.ColorSpec, "SRGB", None) or nvimgcodec.ColorSpec.RGB  # by version
        self._params = nvimgcodec.DecodeParams(color_spec=rgb, apply_exif_orientation=False)

    def decode_many(self, blobs: Sequence[bytes]) -> list[Any]:
        """Each blob's (size, size, 3) uint8 device array, or its exception in place."""
        return [item.pixels if isinstance(item, Decoded) else item for item in self._decode(blobs)]

    def decode_with_thumbnails(self, blobs: Sequence[bytes]) -> list[Decoded | Exception]:
        return self._decode(blobs, thumbnails=True)

    def _decode(self, blobs: Sequence[bytes], thumbnails: bool = False) -> list[Any]:
        results: list[Any] = [None] * len(blobs)
        on_gpu: list[int] = []
        orientations: dict[int, int | None] = {}
        for i, data in enumerate(blobs):
            try:
                header = check_header(data, self.cpu.max_pixels)
            except Exception as exc:  # refused from the header, as on the CPU path
                results[i] = exc
                continue
            if header.format in GPU_FORMATS and header.mode in GPU_MODES and looks_whole(data):
                on_gpu.append(i)
                orientations[i] = exif_orientation(header) if thumbnails else None
        images = self.decode_jpegs([blobs[i] for i in on_gpu])
        side = self.cpu.thumbnail_side if thumbnails else None
        small: dict[int, Future[bytes]] = {}
        for i, image in zip(on_gpu, images, strict=True):
            if image is None:
                continue
            pixels = rgb_pixels(image)
            results[i] = resize_nearest(pixels, self.cpu.size)
            if side:
                reduced = device_shrink(pixels, side)
                small[i] = self._encoders.submit(encode_thumbnail, reduced, side, orientations[i])
        for i, image in zip(on_gpu, images, strict=True):
            if image is not None:
                results[i] = Decoded(results[i], small[i].result() if i in small else None)
        return self._on_cpu(blobs, results, thumbnails)

    def decode_jpegs(self, blobs: Sequence[bytes]) -> list[Any]:
        """nvImageCodec's batched decode: an RGB image in GPU memory for each, or None."""
        if not blobs:
            return []
        return list(self._decoder.decode(list(blobs), params=self._params))

    def _on_cpu(self, blobs: Sequence[bytes], results: list[Any], thumbnails: bool) -> list[Any]:
        """What the GPU did not decode is decoded on the CPU: its pixels, or its exact error."""
        import jax

        rest = [i for i, item in enumerate(results) if item is None]
        if thumbnails:
            decoded = self.cpu.decode_with_thumbnails(blobs[i] for i in rest)
        else:
            decoded = [
                item if isinstance(item, Exception) else Decoded(item, None)
                for item in self.cpu.decode_many(blobs[i] for i in rest)
            ]
        for i, item in zip(rest, decoded, strict=True):
            if isinstance(item, Decoded):
                item = Decoded(jax.device_put(item.pixels), item.thumbnail)
            results[i] = item
        return results
