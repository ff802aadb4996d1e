import io

import numpy as np
import pytest
from PIL import Image

from shared.errors import (
    ImageTooLarge,
    NotAnImage,
    TruncatedImage,
    UndecodableImage,
    UnsupportedImageFormat,
)
from shared.images import (
    DECODE_MODES,
    INTERPOLATIONS,
    Decoded,
    ImageDecoder,
    check_header,
    decode,
    decode_cost,
    decode_count,
    decode_to_array,
    model_input,
    open_image,
    reduced_size,
    thumbnail,
    to_8bit,
    to_rgb,
)
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


@pytest.mark.parametrize(("fmt", "cut"), [("JPEG", 30), ("PNG", 20), ("BMP", 20)])
def test_truncated_header_is_refused(fmt, cut):
    data = encode(pattern(300, 300, seed=2), fmt)
    with pytest.raises(TruncatedImage) as error:
        check_header(data[:cut], 40_000_000)
    assert error.value.message == "truncated image: Truncated File Read"
    assert error.value.code == "truncated_image"


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("JPEG", r"image file is truncated \(\d+ bytes not processed\)"),
        ("PNG", r"image file is truncated"),
        ("GIF", r"image file is truncated \(\d+ bytes not processed\)"),
        ("TIFF", r"image file is truncated \(\d+ bytes not processed\)"),
        ("BMP", r"image file is truncated \(\d+ bytes not processed\)"),
    ],
)
def test_broken_data_behind_a_sound_header_is_undecodable(fmt, message):
    data = encode(pattern(300, 300, seed=2), fmt)
    cut = data[: len(data) * 2 // 3]
    assert check_header(cut, 40_000_000).size == (300, 300)  # the header alone passes
    with pytest.raises(UndecodableImage, match=rf"^cannot decode the {fmt} image: {message}$"):
        decode_to_array(cut)
    assert UndecodableImage.code == "undecodable_image"


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


def old_scaling(values: np.ndarray, mode: str) -> np.ndarray:
    """The float64 formula that 16- and 32-bit images were scaled by until now."""
    values = values.astype(np.float64)
    if mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    else:
        top = 65535.0 if values.max(initial=0.0) > 255 else 255.0
    return np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)


def tall(values: np.ndarray, width: int = 256) -> np.ndarray:
    """The values as rows of an image tall enough to take several strips."""
    rows = values.reshape(-1, width)
    return np.tile(rows, (-(-4500 // len(rows)), 1))


WIDE = {
    "I;16 every value": (tall(np.arange(65536, dtype=np.uint16)), "I;16"),
    "I;16 within 8 bits": (tall(np.arange(256, dtype=np.uint16).repeat(4)), "I;16"),
    "I;16B": (tall(np.arange(65536, dtype=">u2")), "I;16B"),
    "I with negatives": (tall(np.arange(-70000, 192144, dtype=np.int32)), "I"),
    "I within 8 bits": (tall(np.arange(-256, 256, dtype=np.int32).repeat(2)), "I"),
}


@pytest.mark.parametrize("name", sorted(WIDE))
def test_wide_samples_are_scaled_to_8_bits_exactly_as_before(name):
    values, mode = WIDE[name]
    image = Image.frombytes(mode, values.shape[::-1], values.tobytes())
    gray = to_8bit(image)
    assert gray.mode == "L"
    assert np.array_equal(np.asarray(gray), old_scaling(np.asarray(image), mode))


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_float_samples_are_scaled_exactly_as_before_without_float64_images(scale):
    values = np.random.default_rng(3).random((4500, 256), dtype=np.float32) * scale
    # Values whose product with 255 / top falls within a few float32 steps of a half.
    centre = ((np.arange(255) + 0.5) * scale / 255).astype(np.float32)
    below, above = centre, centre
    for row in range(1, 5):
        below = np.nextafter(below, np.float32(0))
        above = np.nextafter(above, np.float32(scale))
        values[2 * row - 1, :255], values[2 * row, :255] = below, above
    values[0, :2] = (-1.0, scale)
    image = Image.fromarray(values)
    assert np.array_equal(np.asarray(to_8bit(image)), old_scaling(values, "F"))


def pil_reference(image: Image.Image, interpolation: str) -> np.ndarray:
    """What load_img does: convert to RGB, then resize."""
    if image.mode in ("I;16", "I", "F"):
        image = Image.fromarray(old_scaling(np.asarray(image), image.mode))
    resized = image.convert("RGB").resize((224, 224), INTERPOLATIONS[interpolation])
    return np.asarray(resized)


def modes() -> dict[str, Image.Image]:
    base = pattern(301, 257, seed=11)
    rgba = base.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    transparent = base.convert("P")
    transparent.info["transparency"] = 3
    rng = np.random.default_rng(0)
    return {
        "1": base.convert("1"),
        "L": base.convert("L"),
        "P": base.convert("P"),
        "P with transparency": transparent,
        "LA": rgba.convert("LA"),
        "RGB": base,
        "RGBA": rgba,
        "CMYK": base.convert("CMYK"),
        "I;16": Image.fromarray(rng.integers(0, 65536, (257, 301), dtype=np.uint16)),
        "I": Image.fromarray(rng.integers(-9, 70000, (257, 301)).astype(np.int32)),
        "F": Image.fromarray(rng.random((257, 301), dtype=np.float32)),
    }


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
@pytest.mark.parametrize("mode", sorted(modes()))
def test_model_input_is_byte_identical_to_converting_first(mode, interpolation):
    image = modes()[mode]
    expected = pil_reference(image, interpolation)
    assert np.array_equal(model_input(image, 224, interpolation), expected)
    data = encode(image, "TIFF" if mode in ("I", "F", "CMYK") else "PNG")
    assert np.array_equal(decode(data, 224, interpolation).pixels, expected)


def jpeg_thumbnail(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image


@pytest.mark.parametrize(
    ("size", "expected"),
    [((3000, 1000), (256, 85)), ((1000, 3000), (85, 256)), ((100, 50), (100, 50))],
)
def test_thumbnail_keeps_the_aspect_ratio_within_its_side(size, expected):
    image = Image.new("RGB", size, (10, 200, 30))
    assert jpeg_thumbnail(thumbnail(image, 256)).size == expected


def test_thumbnail_is_turned_upright_by_the_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show it rotated 90 degrees clockwise
    data = encode(pattern(300, 200, seed=4), "JPEG", exif=exif)
    shown = jpeg_thumbnail(decode(data, thumbnail_side=150).thumbnail or b"")
    assert shown.size == (100, 150)


def pil_thumbnail(image: Image.Image, side: int) -> bytes:
    """What Image.thumbnail(reducing_gap=1.0) makes of the RGB image, saved as ours are."""
    image = to_rgb(image)
    image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=1.0)
    return encode(image, "JPEG", quality=85, optimize=True)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1", "CMYK", "I;16"])
def test_thumbnail_made_tile_by_tile_is_pil_thumbnail(mode):
    image = pattern(2304, 1728, seed=6)  # 4 million pixels, many tiles; 9x 256x192
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    else:
        image = image.convert(mode)
    assert thumbnail(image, 256) == pil_thumbnail(image, 256)


@pytest.mark.parametrize("size", [(600, 800), (2401, 1799), (5000, 300), (1111, 3333), (40000, 30)])
def test_thumbnail_of_any_shape_looks_as_pil_thumbnail(size):
    # Where the reduction does not divide the size, PIL's boxes differ slightly from ours.
    image = pattern(40, 30, seed=6).resize(size, Image.Resampling.BICUBIC)
    ours = jpeg_thumbnail(thumbnail(image, 256))
    expected = jpeg_thumbnail(pil_thumbnail(image, 256))
    assert ours.size == expected.size
    difference = np.abs(np.asarray(ours, dtype=int) - np.asarray(expected, dtype=int))
    assert difference.mean() < 2


def test_each_image_is_decoded_once_for_its_model_input_and_thumbnail():
    decoder = ImageDecoder(224, "nearest", 40_000_000, threads=2, thumbnail_side=64)
    blobs = [encode(pattern(300, 200, seed=n), fmt) for n, fmt in enumerate(["JPEG", "PNG"])]
    before = decode_count()
    results = decoder.decode_with_thumbnails([blobs[0], b"junk", blobs[1]])
    assert decode_count() - before == 2
    assert isinstance(results[1], NotAnImage)
    for blob, result in zip(blobs, [results[0], results[2]], strict=True):
        assert isinstance(result, Decoded)
        assert np.array_equal(result.pixels, decode_to_array(blob))
        assert jpeg_thumbnail(result.thumbnail or b"").size == (64, 43)


def test_decoding_without_thumbnails_makes_none():
    decoder = ImageDecoder(224, "nearest", 40_000_000, threads=1)
    (result,) = decoder.decode_with_thumbnails([encode(pattern(30, 20), "PNG")])
    assert isinstance(result, Decoded)
    assert result.thumbnail is None


def progressive(mode: str, **options: object) -> bytes:
    return encode(pattern(64, 48).convert(mode), "JPEG", progressive=True, **options)


@pytest.mark.parametrize(
    ("data", "cost"),
    [
        (encode(pattern(64, 48).convert("L"), "PNG"), 1),
        (encode(pattern(64, 48).convert("P"), "GIF"), 1),
        (encode(pattern(64, 48), "JPEG", subsampling=0), 4),
        (encode(pattern(64, 48).convert("RGBA"), "PNG"), 4),
        (encode(Image.new("I;16", (64, 48)), "PNG"), 3),
        (encode(Image.new("F", (64, 48)), "TIFF"), 5),
        (encode(pattern(64, 48), "WEBP"), 16),
        (progressive("L"), 3),
        (progressive("RGB"), 7),  # chroma at a quarter: 3 coefficients a pixel
        (progressive("RGB", subsampling=0), 10),
        (progressive("CMYK"), 12),
    ],
)
def test_decode_cost_counts_the_decoders_own_buffers(data, cost):
    assert decode_cost(Image.open(io.BytesIO(data))) == cost


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            encode(pattern(800, 700), "WEBP"),
            "image too large: 800x700 is 560000 pixels, the limit is 500000 "
            "for a WEBP image whose decoding takes 16 bytes a pixel",
        ),
        (
            encode(pattern(800, 900).convert("CMYK"), "JPEG", progressive=True),
            "image too large: 800x900 is 720000 pixels, the limit is 666666 "
            "for a JPEG image whose decoding takes 12 bytes a pixel",
        ),
    ],
)
def test_images_whose_decoder_needs_more_memory_get_fewer_pixels(data, message):
    with pytest.raises(ImageTooLarge) as error:
        check_header(data, 1_000_000)
    assert error.value.message == message


def test_images_within_the_budget_get_the_whole_pixel_limit():
    data = encode(pattern(1000, 1000), "JPEG", progressive=True)  # 7 bytes a pixel: within 8
    assert check_header(data, 1_000_000).size == (1000, 1000)


# LOOKALIKE_DECODE=reduced: JPEG reduce-on-decode (Image.draft), then the same resize.


def drafted(data: bytes, size: int = 224) -> Image.Image:
    """What reduce-on-decode is, written out with PIL: draft, load, RGB."""
    image = Image.open(io.BytesIO(data))
    image.draft(None, (size, size))
    return image.convert("RGB")


@pytest.mark.parametrize(
    ("width", "height", "decoded"),
    [
        (1800, 2400, (225, 300)),  # 1/8: 225 >= 224 on the short side
        (1792, 2400, (224, 300)),  # 1/8 exactly
        (1791, 2400, (448, 600)),  # 1/8 would give 223.9: 1/4
        (1080, 1440, (270, 360)),  # 1/4
        (600, 800, (300, 400)),  # 1/2
        (447, 2000, (447, 2000)),  # under twice the input on one side: whole
        (3000, 300, (3000, 300)),
    ],
)
def test_reduced_mode_decodes_a_jpeg_at_the_smallest_scale_still_covering_the_input(
    width, height, decoded
):
    data = encode(pattern(width, height, seed=2), "JPEG", quality=85)
    assert open_image(data, 40_000_000, reduce_to=224).size == decoded
    assert open_image(data, 40_000_000).size == (width, height)


def test_reduced_mode_is_the_drafted_decode_resized_as_exact_resizes():
    data = encode(pattern(1800, 2400, seed=3), "JPEG", quality=90)
    expected = np.asarray(drafted(data).resize((224, 224), Image.Resampling.NEAREST))
    reduced = decode_to_array(data, mode="reduced")
    assert np.array_equal(reduced, expected)
    exact = decode_to_array(data, mode="exact")
    assert np.array_equal(exact, decode_to_array(data))  # exact is the default
    # Not exact's bytes: DCT scaling averages each block where exact picks one pixel.
    assert not np.array_equal(reduced, exact)


@pytest.mark.parametrize("name", sorted(varied_images()))
def test_reduced_mode_changes_only_jpegs_large_enough_to_reduce(name):
    data = varied_images()[name]
    same = np.array_equal(decode_to_array(data, mode="reduced"), decode_to_array(data))
    assert same == (name != "large.jpg")  # the only JPEG of at least 448x448


def test_reduced_mode_keeps_other_resize_filters_and_mpo_frames():
    data = encode(pattern(1000, 1200, seed=4), "JPEG")
    bilinear = decode_to_array(data, interpolation="bilinear", mode="reduced")
    expected = drafted(data).resize((224, 224), Image.Resampling.BILINEAR)
    assert np.array_equal(bilinear, np.asarray(expected))
    frames = [pattern(900, 900, seed=seed) for seed in (5, 6)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    first = encode(frames[0], "JPEG")
    assert open_image(buffer.getvalue(), 40_000_000, reduce_to=224).size == (225, 225)
    difference = decode_to_array(buffer.getvalue(), mode="reduced").astype(int)
    difference -= decode_to_array(first, mode="reduced")
    assert np.abs(difference).mean() < 2  # the first frame, as in exact mode


@pytest.mark.parametrize(
    ("size", "thumbnail_side", "expected"),
    [
        ((1800, 2400), None, (224, 224)),
        ((1800, 2400), 256, (224, 256)),  # still 1/8 (2400 / 256 > 8): the model decides
        ((2400, 1800), 256, (256, 224)),
        ((1800, 1800), 256, (256, 224)),  # 1/4: a 1/8 decode would leave a 225-px thumbnail
        ((1800, 2400), 128, (224, 224)),
    ],
)
def test_the_reduced_size_also_keeps_the_thumbnail_s_size(size, thumbnail_side, expected):
    assert reduced_size(*size, 224, thumbnail_side) == expected


@pytest.mark.parametrize("size", [(1800, 2400), (1800, 1800), (2400, 1000)])
def test_reduced_mode_thumbnails_have_the_exact_mode_s_size(size):
    data = encode(pattern(*size, seed=7), "JPEG", quality=85)
    exact = decode(data, thumbnail_side=256)
    reduced = decode(data, thumbnail_side=256, mode="reduced")
    assert (
        jpeg_thumbnail(reduced.thumbnail or b"").size == jpeg_thumbnail(exact.thumbnail or b"").size
    )
    # the model input is the same as without a thumbnail where the scale is the same
    if size != (1800, 1800):
        assert np.array_equal(reduced.pixels, decode_to_array(data, mode="reduced"))


def test_reduced_mode_checks_the_full_size_against_the_limits():
    data = encode(pattern(2000, 2000, seed=8), "JPEG")
    with pytest.raises(ImageTooLarge, match="2000x2000 is 4000000 pixels"):
        decode_to_array(data, max_pixels=3_000_000, mode="reduced")
    with pytest.raises(UndecodableImage):
        decode_to_array(data[: len(data) // 2], mode="reduced")


def test_the_decoder_pool_decodes_in_its_mode_and_refuses_unknown_modes():
    blobs = [encode(pattern(1200, 1600, seed=n), "JPEG") for n in range(3)]
    decoder = ImageDecoder(224, "nearest", 40_000_000, threads=2, mode="reduced")
    before = decode_count()
    arrays = decoder.decode_many(blobs)
    assert decode_count() - before == 3
    for blob, array in zip(blobs, arrays, strict=True):
        assert np.array_equal(array, decode_to_array(blob, mode="reduced"))
    assert DECODE_MODES == ("exact", "reduced")
    with pytest.raises(ValueError, match="unknown decode mode 'fast': use one of exact, reduced"):
        ImageDecoder(224, "nearest", 40_000_000, mode="fast")
    with pytest.raises(ValueError, match="unknown decode mode"):
        decode_to_array(blobs[0], mode="fast")
