import io

import numpy as np
import pytest
from PIL import Image

from shared.errors import ImageTooLarge, NotAnImage, TruncatedImage, UnsupportedImageFormat
from shared.images import ImageDecoder, decode_to_array, open_image, to_rgb
from tests.support.images import encode, pattern, varied_images


@pytest.mark.parametrize("name", sorted(varied_images()))
def test_every_format_and_mode_decodes_to_rgb_224(name):
    array = decode_to_array(varied_images()[name])
    assert array.shape == (224, 224, 3)
    assert array.dtype == np.uint8
    assert array.std() > 0


def test_resize_matches_pil_nearest_without_aspect_ratio():
    image = pattern(300, 120, seed=1)
    expected = np.asarray(image.resize((224, 224), Image.Resampling.NEAREST))
    assert np.array_equal(decode_to_array(encode(image, "PNG")), expected)


def test_gif_uses_first_frame():
    from tests.support.images import animated_gif

    data = animated_gif(64, 64)
    first = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.NEAREST)
    assert np.array_equal(decode_to_array(data), np.asarray(first))


def test_sixteen_bit_gray_is_scaled_not_clipped():
    ramp = (np.arange(256, dtype=np.uint32).repeat(4).reshape(32, 32) * 257).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (32, 32, 3)
    assert np.array_equal(rgb[..., 0], (ramp // 257).astype(np.uint8))


def test_empty_bytes_are_not_an_image():
    with pytest.raises(NotAnImage, match=r"^empty file: expected an image$"):
        decode_to_array(b"")


def test_text_is_not_an_image():
    with pytest.raises(NotAnImage) as error:
        decode_to_array(b"name,price\nshirt,10\n")
    assert error.value.message == "not an image: the data is in no format we can read"
    assert error.value.code == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_refused(fmt):
    data = encode(pattern(300, 300, seed=2), fmt)
    with pytest.raises(TruncatedImage, match=r"^truncated image: image file is truncated"):
        decode_to_array(data[: len(data) // 2])


def test_image_over_pixel_limit_is_refused_before_decoding():
    data = encode(pattern(200, 300), "PNG")
    with pytest.raises(ImageTooLarge) as error:
        decode_to_array(data, max_pixels=50_000)
    assert error.value.message == ("image too large: 200x300 is 60000 pixels, the limit is 50000")
    assert error.value.http_status == 413


def test_decompression_bomb_header_is_refused_cheaply():
    # A 20000x20000 PNG of one colour compresses to a few hundred KB; we must not decode it.
    bomb = encode(Image.new("L", (20000, 20000)), "PNG")
    with pytest.raises(ImageTooLarge, match=r"^image too large: 20000x20000 is 400000000 pixels"):
        open_image(bomb, max_pixels=40_000_000)


def test_unsupported_format_is_refused():
    with pytest.raises(UnsupportedImageFormat) as error:
        decode_to_array(encode(pattern(32, 32), "ICO"))
    assert error.value.message == (
        "unsupported image format ICO: use one of BMP, GIF, JPEG, PNG, TIFF, WEBP"
    )


def test_decode_many_keeps_order_and_isolates_bad_items():
    decoder = ImageDecoder(224, "nearest", 40_000_000, threads=2)
    good = encode(pattern(100, 100, seed=1), "JPEG")
    results = decoder.decode_many([good, b"junk", good])
    assert isinstance(results[0], np.ndarray)
    assert isinstance(results[1], NotAnImage)
    assert np.array_equal(results[0], results[2])
