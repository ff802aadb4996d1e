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

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any

import numpy as np
from PIL import Image

from shared.errors import WeightsUnavailable
from shared.images import (
    THUMBNAIL_QUALITY,
    Decoded,
    ImageDecoder,
    check_header,
    exif_orientation,
    thumbnail,
)

log = logging.getLogger(__name__)
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


def bucket(n: int) -> int:
    """Batches are padded to a power of two: one compiled program per image shape and bucket."""
    return 1 << max(0, (n - 1).bit_length())


@lru_cache(maxsize=64)
def _device_indices(source: int, size: int) -> Any:
    import jax

    return jax.device_put(nearest_indices(source, size))


@lru_cache(maxsize=1)
def _device_ops() -> tuple[Any, Any]:
    import jax
    import jax.numpy as jnp

    @jax.jit
    def gather(batch: Any, rows: Any, cols: Any) -> Any:
        return jnp.take(jnp.take(batch, rows, axis=1), cols, axis=2)

    @partial(jax.jit, static_argnums=1)
    def shrink(batch: Any, shape: tuple[int, int, int]) -> Any:
        def one(image: Any) -> Any:
            return jax.image.resize(image.astype(jnp.float32), shape, "linear", antialias=True)

        return jnp.clip(jnp.round(jax.vmap(one)(batch)), 0, 255).astype(jnp.uint8)

    return gather, shrink


def _stacked(images: Sequence[Any]) -> Any:
    """Same-shape device images as one (bucket, h, w, 3) array, padded with the first."""
    import jax.numpy as jnp

    return jnp.stack([*images, *[images[0]] * (bucket(len(images)) - len(images))])


def resize_batch(images: Sequence[Any], size: int) -> list[Any]:
    """Same-shape (h, w, 3) uint8 device images to (size, size, 3) each, PIL's nearest picks,
    in one call on the device."""
    gather, _ = _device_ops()
    height, width = images[0].shape[:2]
    batch = gather(_stacked(images), _device_indices(height, size), _device_indices(width, size))
    return list(batch[: len(images)])


def shrink_batch(images: Sequence[Any], max_side: int) -> list[Any]:
    """Same-shape device images reduced (antialiased) to max_side at most, on the device."""
    _, shrink = _device_ops()
    height, width = images[0].shape[:2]
    scale = min(1.0, max_side / max(width, height))
    shape = (max(1, round(height * scale)), max(1, round(width * scale)), 3)
    return list(shrink(_stacked(images), shape)[: len(images)])


def upright(image: Any, orientation: int | None) -> Any:
    """A (h, w, 3) array turned as EXIF orientation says (PIL's transposes), numpy or JAX."""
    if orientation in (5, 6, 7, 8):
        image = image.swapaxes(0, 1)  # 5: transpose; the others are it and a flip
    flips = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation or 1, ())
    for axis in flips:
        image = image[::-1] if axis == 0 else image[:, ::-1]
    return image


def resize_nearest(image: Any, size: int) -> Any:
    """(h, w, 3) uint8 on the device to (size, size, 3): PIL's nearest resize, on the device."""
    return resize_batch([image], size)[0]


def device_shrink(image: Any, max_side: int) -> np.ndarray:
    """A device image reduced (antialiased) to max_side at most, as a host array."""
    return np.asarray(shrink_batch([image], max_side)[0])


def encode_thumbnail(small: np.ndarray, max_side: int, orientation: int | None) -> bytes:
    """The JPEG of a reduced image, as the CPU path encodes thumbnails."""
    return thumbnail(Image.fromarray(np.asarray(small), "RGB"), max_side, orientation)


def jax_ready(arrays: Sequence[Any]) -> Sequence[Any]:
    """The arrays once computed (JAX runs ahead of Python; other libraries read the memory)."""
    import jax

    return jax.block_until_ready(arrays)


def _jpeg_encoder(nvimgcodec: Any) -> tuple[Any, Any]:
    """nvImageCodec's JPEG encoder at our thumbnails' quality (85), or (None, None) where this
    version has no such parameters (thumbnails are then encoded on the CPU)."""
    try:
        quality = nvimgcodec.QualityType.QUALITY
        params = nvimgcodec.EncodeParams(quality_type=quality, quality_value=THUMBNAIL_QUALITY)
        return nvimgcodec.Encoder(), params
    except (AttributeError, TypeError):
        return None, None


def by_shape(images: dict[int, Any]) -> list[list[int]]:
    """The keys of images grouped by their images' shape, each group in key order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in sorted(images.items()):
        groups.setdefault(tuple(image.shape), []).append(i)
    return list(groups.values())


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
        self._encoder, self._encode_params = _jpeg_encoder(nvimgcodec)

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
        pixels = {
            i: rgb_pixels(image)
            for i, image in zip(on_gpu, images, strict=True)
            if image is not None
        }
        side = self.cpu.thumbnail_side if thumbnails else None
        for group in by_shape(pixels):  # a catalog's photos share a few sizes: a call each
            members = [pixels[i] for i in group]
            for i, resized in zip(group, resize_batch(members, self.cpu.size), strict=True):
                results[i] = resized
            if side:
                smalls = zip(group, shrink_batch(members, side), strict=True)
                turned = [upright(small, orientations[i]) for i, small in smalls]
                for i, data in zip(group, self.encode_thumbnails(turned, side), strict=True):
                    results[i] = Decoded(results[i], data)
        for i in pixels:
            if not isinstance(results[i], Decoded):
                results[i] = Decoded(results[i], None)
        return self._on_cpu(blobs, results, thumbnails)

    def encode_thumbnails(self, smalls: Sequence[Any], side: int) -> list[bytes]:
        """Upright reduced device images as JPEGs: nvJPEG's encoder on the device, batched; what
        it does not encode is copied here and encoded as the CPU path does (in threads)."""
        encoded: list[bytes | None] = [None] * len(smalls)
        if self._encoder is not None:
            try:
                streams = self._encoder.encode(
                    list(jax_ready(smalls)), "jpeg", params=self._encode_params
                )
                encoded = [None if stream is None else bytes(stream) for stream in streams]
            except Exception as exc:  # the CPU does it; say so once
                log.warning("nvImageCodec could not encode thumbnails (%s): the CPU does", exc)
                self._encoder = None
        rest = {
            i: self._encoders.submit(encode_thumbnail, np.asarray(smalls[i]), side, None)
            for i, data in enumerate(encoded)
            if data is None
        }
        return [rest[i].result() if data is None else data for i, data in enumerate(encoded)]

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
