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
from shared.images import ImageDecoder, decode, thumbnail
from tests.support.images import encode, pattern
from workers.gpu_decode import (
    GpuDecoder,
    device_shrink,
    encode_thumbnail,
    looks_whole,
    nearest_indices,
    resize_nearest,
    rgb_pixels,
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
