"""LOOKALIKE_DECODE=gpu: the device-side steps, run on JAX's CPU device (nvJPEG needs a GPU:
bench/gpu runs the whole decoder on one)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shared.errors import WeightsUnavailable
from shared.images import _ORIENTATIONS, ImageDecoder, decode, thumbnail
from tests.support.images import encode, pattern
from workers.gpu_decode import (
    GpuDecoder,
    bucket,
    by_shape,
    device_shrink,
    encode_thumbnail,
    looks_whole,
    nearest_indices,
    resize_batch,
    resize_nearest,
    rgb_pixels,
    shrink_batch,
    upright,
)

jnp = pytest.importorskip("jax.numpy", reason="jax is part of the dev install")


def pil_nearest(pixels: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST))


@pytest.mark.parametrize(
    ("height", "width"),
    [(800, 600), (2400, 1800), (224, 224), (223, 225), (1, 1), (3, 5000), (1441, 1079)],
)
def test_device_resize_takes_the_pixels_pil_nearest_takes(height, width):
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)
    on_device = np.asarray(resize_nearest(jnp.asarray(pixels), 224))
    assert np.array_equal(on_device, pil_nearest(pixels, 224))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_a_batch_is_resized_as_pil_resizes_each_of_its_images(n):
    rng = np.random.default_rng(n)
    images = [rng.integers(0, 256, (80, 60, 3), np.uint8) for _ in range(n)]
    resized = resize_batch([jnp.asarray(image) for image in images], 32)
    assert len(resized) == n
    for image, ours in zip(images, resized, strict=True):
        assert np.array_equal(np.asarray(ours), pil_nearest(image, 32))


def test_a_batch_s_thumbnails_are_each_image_s_own():
    rng = np.random.default_rng(7)
    images = [jnp.asarray(rng.integers(0, 256, (90, 60, 3), np.uint8)) for _ in range(3)]
    batch = shrink_batch(images, 30)
    assert [small.shape for small in batch] == [(30, 20, 3)] * 3
    for image, small in zip(images, batch, strict=True):
        assert np.array_equal(np.asarray(small), device_shrink(image, 30))


@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
def test_device_thumbnails_are_turned_as_pil_turns_them(orientation):
    pixels = np.random.default_rng(5).integers(0, 256, (5, 7, 3), np.uint8)
    transpose = _ORIENTATIONS.get(orientation)
    expected = pixels if transpose is None else Image.fromarray(pixels).transpose(transpose)
    assert np.array_equal(np.asarray(upright(jnp.asarray(pixels), orientation)), expected)


@pytest.mark.parametrize(
    ("n", "padded"), [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (200, 256), (256, 256)]
)
def test_batches_are_padded_to_a_power_of_two(n, padded):
    assert bucket(n) == padded


def test_images_are_grouped_by_shape_in_order():
    shapes = {0: (800, 600, 3), 1: (2400, 1800, 3), 3: (800, 600, 3), 5: (800, 600, 1)}
    images = {i: np.empty(shape, np.uint8) for i, shape in shapes.items()}
    assert by_shape(images) == [[0, 3], [1], [5]]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 512))
def test_nearest_indices_match_pil_for_any_sizes(source, size):
    line = np.arange(source, dtype=np.int32).reshape(1, source)  # one row: its values are x
    picked = np.asarray(Image.fromarray(line, "I").resize((size, 1), Image.Resampling.NEAREST))
    assert np.array_equal(nearest_indices(source, size), picked[0])


def test_grey_images_become_three_equal_channels():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for shape in ((3, 4), (3, 4, 1)):
        pixels = np.asarray(rgb_pixels(grey.reshape(shape)))
        assert pixels.shape == (3, 4, 3)
        assert all(np.array_equal(pixels[..., c], grey) for c in range(3))


def jpeg_bytes() -> bytes:
    return encode(pattern(64, 48), "JPEG")


@pytest.mark.parametrize(
    ("mangle", "whole"),
    [
        (lambda data: data, True),
        (lambda data: data + b"\0" * 100, True),  # padded, as some cameras write
        (lambda data: data[:-1], False),
        (lambda data: data[:-2], False),
        (lambda data: data[: len(data) // 2], False),
        (lambda data: data + b"trailing bytes", False),  # the CPU decides, not nvJPEG
    ],
)
def test_only_jpegs_that_end_as_a_whole_one_go_to_the_gpu(mangle, whole):
    assert looks_whole(mangle(jpeg_bytes())) is whole


@pytest.mark.parametrize(("width", "height"), [(600, 800), (800, 600), (100, 80), (1800, 2400)])
def test_device_thumbnails_have_the_cpu_path_s_size(width, height):
    data = encode(pattern(width, height), "JPEG")
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    small = device_shrink(jnp.asarray(pixels), 256)
    ours = Image.open(io.BytesIO(encode_thumbnail(small, 256, None)))
    theirs = decode(data, thumbnail_side=256).thumbnail
    assert theirs is not None
    assert ours.size == Image.open(io.BytesIO(theirs)).size
    difference = np.abs(np.asarray(ours, np.int16) - np.asarray(Image.open(io.BytesIO(theirs))))
    assert difference.mean() < 12  # another filter (linear, antialiased) on the noisy pattern


def test_device_thumbnails_apply_the_exif_orientation():
    picture = pattern(60, 40)
    small = device_shrink(jnp.asarray(np.asarray(picture)), 256)
    turned = Image.open(io.BytesIO(encode_thumbnail(small, 256, 6)))  # 6: rotate 270
    expected = Image.open(io.BytesIO(thumbnail(picture, 256, 6)))
    assert turned.size == expected.size == (40, 60)


def test_gpu_decoding_without_nvimagecodec_says_what_to_install():
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("nvImageCodec is installed here")
    with pytest.raises(WeightsUnavailable) as caught:
        GpuDecoder(ImageDecoder(224, "nearest", 40_000_000))
    assert str(caught.value) == (
        "LOOKALIKE_DECODE=gpu needs nvImageCodec with nvJPEG on a GPU host: "
        "pip install 'lookalike[jax-cuda]' (or use LOOKALIKE_DECODE=exact|reduced)"
    )
