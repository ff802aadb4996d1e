"""The real ResNet50 engine, on a seeded random weights file written by the tests."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import redis
import requests
from PIL import Image

from shared import keys
from shared.errors import NotAnImage, UndecodableImage, WeightsUnavailable
from shared.images import DECODE_MODES, decode, decode_count, open_image
from shared.model_id import is_random_model, model_id
from shared.settings import Settings
from tests.support.client import post_product, product_image, wait_task
from tests.support.images import encode, pattern, varied_images
from tests.support.stack import Stack
from workers.embedder import Embedded, Embedder, available_cores, get_embedder


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def reference_vectors(paths, weights_file) -> np.ndarray:
    """The seed notebook's pipeline, verbatim: load_img -> ... -> model.predict, image by image."""
    import keras
    from keras.applications.resnet50 import ResNet50, preprocess_input
    from keras.layers import GlobalMaxPooling2D
    from keras.utils import img_to_array, load_img

    base = ResNet50(weights=str(weights_file), include_top=False, input_shape=(224, 224, 3))
    base.trainable = False
    model = keras.Sequential([base, GlobalMaxPooling2D()])
    rows = []
    for path in paths:
        image = load_img(path, target_size=(224, 224))
        batch = preprocess_input(np.expand_dims(img_to_array(image), axis=0))
        rows.append(model.predict(batch, verbose=0).reshape(-1))
    return np.stack(rows)


@pytest.fixture(scope="module")
def settings(weights_file) -> Settings:
    return Settings(weights=str(weights_file), batch_size=8)


@pytest.fixture(scope="module")
def embedder(settings) -> Embedder:
    return get_embedder(settings)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for name, data in sorted(varied_images().items()):
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_vectors_match_the_reference_pipeline(embedder, image_files, weights_file):
    ours = embedder.embed_bytes([path.read_bytes() for path in image_files])
    assert all(isinstance(vector, np.ndarray) for vector in ours)
    ours_matrix = np.stack(ours)  # type: ignore[arg-type]
    reference = reference_vectors(image_files, weights_file)
    assert ours_matrix.shape == (len(image_files), 2048)
    assert ours_matrix.dtype == np.float32
    assert cosine_rows(ours_matrix, reference).min() >= 0.9999
    # The threshold tells images apart: two different pictures are further apart than that.
    names = [path.name for path in image_files]
    small, large = names.index("small.jpg"), names.index("large.jpg")
    assert cosine_rows(ours_matrix[[small]], reference[[large]])[0] < 0.999


def test_batches_give_the_same_vectors_as_single_images(embedder, image_files):
    blobs = [path.read_bytes() for path in image_files[:5]]
    together = np.stack(embedder.embed_bytes(blobs))  # type: ignore[arg-type]
    alone = np.stack([embedder.embed_bytes([blob])[0] for blob in blobs])  # type: ignore[arg-type]
    assert cosine_rows(together, alone).min() >= 0.99999


def test_n_images_take_ceil_n_over_batch_forward_passes(embedder):
    images = np.random.default_rng(0).integers(0, 255, (20, 224, 224, 3), dtype=np.uint8)
    before, busy = embedder.forward_passes, embedder.forward_seconds
    vectors = embedder.embed_arrays(images)
    assert vectors.shape == (20, 2048)
    assert embedder.forward_passes - before == 3  # batch size 8
    assert embedder.forward_seconds > busy


def test_bad_image_fails_alone(embedder, image_files):
    good = image_files[0].read_bytes()
    results = embedder.embed_bytes([good, b"not an image", good])
    assert isinstance(results[1], NotAnImage)
    assert np.allclose(results[0], results[2])


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_stays_within_cosine_0999(weights_file, embedder, image_files, precision):
    mixed = Embedder(Settings(weights=str(weights_file), batch_size=8, precision=precision))
    blobs = [path.read_bytes() for path in image_files]
    low = np.stack(mixed.embed_bytes(blobs))  # type: ignore[arg-type]
    full = np.stack(embedder.embed_bytes(blobs))  # type: ignore[arg-type]
    assert low.dtype == np.float32
    assert cosine_rows(low, full).min() >= 0.999
    assert mixed.model_id == embedder.model_id.replace("float32", precision)


def test_model_id_changes_with_weights_pooling_precision_and_preprocessing(weights_file, tmp_path):
    base = Settings(weights=str(weights_file))
    other_weights = tmp_path / "copy.h5"
    other_weights.write_bytes(weights_file.read_bytes() + b"\0")
    variants = [
        (base, weights_file),
        (base, other_weights),
        (Settings(weights=str(weights_file), pooling="avg"), weights_file),
        (Settings(weights=str(weights_file), precision="bfloat16"), weights_file),
        (Settings(weights=str(weights_file), interpolation="bilinear"), weights_file),
    ]
    ids = {model_id(settings, path) for settings, path in variants}
    assert len(ids) == len(variants)
    assert model_id(base, weights_file).startswith("resnet50-max-w")
    assert not is_random_model(model_id(base, weights_file))
    assert is_random_model(model_id(base, weights_file, random=True))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailable) as error:
        Embedder(Settings(weights=str(tmp_path / "nope.h5")))
    assert error.value.message == (
        f"weights file not found: {tmp_path / 'nope.h5'} (LOOKALIKE_WEIGHTS must be 'imagenet', "
        "'random' or the path to a Keras ResNet50 no-top weights file)"
    )


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"definitely not hdf5")
    with pytest.raises(WeightsUnavailable, match=rf"^could not load weights from {bogus}: not a"):
        Embedder(Settings(weights=str(bogus)))


def test_imagenet_offline_says_how_to_use_a_local_file(tmp_path, monkeypatch):
    # KERAS_HOME empty: Keras must download, and this machine (like CI) has no route out.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    code = (
        "from workers.weights import resolve_weights\n"
        "from shared.settings import Settings\n"
        "resolve_weights(Settings(weights='imagenet'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode == 0:
        pytest.skip("this machine can download the ImageNet weights")
    assert "WeightsUnavailable: could not load the ImageNet weights" in result.stderr
    assert "set LOOKALIKE_WEIGHTS to its path" in result.stderr


def test_cli_embed_writes_vectors_in_input_order(settings, embedder, image_files, tmp_path):
    out = tmp_path / "vectors.npy"
    chosen = [image_files[3], image_files[0], image_files[7]]
    env_code = "import sys; from cli.main import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", env_code, "embed", *map(str, chosen), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_env(settings),
    )
    assert result.returncode == 0, result.stderr
    vectors = np.load(out)
    assert vectors.shape == (3, 2048)
    expected = np.stack(embedder.embed_bytes([path.read_bytes() for path in chosen]))  # type: ignore[arg-type]
    assert cosine_rows(vectors, expected).min() >= 0.9999


def test_cli_embed_refuses_a_bad_image_and_writes_nothing(settings, image_files, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    out = tmp_path / "vectors.npy"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "embed",
            str(image_files[0]),
            str(bad),
            "--out",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_env(settings),
    )
    assert result.returncode == 1
    assert f"{bad}: not an image: the data is in no format we can read" in result.stderr
    assert not out.exists()


def _env(settings: Settings) -> dict[str, str]:
    import os

    return {**os.environ, "LOOKALIKE_WEIGHTS": settings.weights, "TF_CPP_MIN_LOG_LEVEL": "2"}


def broken_jpeg() -> bytes:
    """A JPEG whose header is sound but whose pixel data stops halfway."""
    data = encode(pattern(240, 320, seed=5), "JPEG", quality=90)
    return data[: len(data) // 2]


def what_pil_says(data: bytes) -> str:
    with pytest.raises(UndecodableImage) as error:
        open_image(data, 40_000_000)
    return error.value.message


def test_each_image_is_decoded_once_for_its_vector_and_thumbnail(embedder, image_files):
    blobs = [path.read_bytes() for path in image_files]
    decodes = decode_count()
    results = embedder.embed_with_thumbnails([*blobs, broken_jpeg()])
    assert decode_count() - decodes == len(blobs)  # the broken one fails in its one decode
    vectors = embedder.embed_bytes(blobs)
    for blob, result, vector in zip(blobs, results[:-1], vectors, strict=True):
        assert isinstance(result, Embedded) and isinstance(vector, np.ndarray)
        assert np.array_equal(result.vector, vector)  # the same model input, byte for byte
        assert result.thumbnail == decode(blob, thumbnail_side=256).thumbnail
        assert max(Image.open(io.BytesIO(result.thumbnail)).size) <= 256
    assert isinstance(results[-1], UndecodableImage)
    assert results[-1].code == "undecodable_image"


def test_pipelined_batches_give_each_batch_its_own_results_in_order(embedder, image_files):
    blobs = [path.read_bytes() for path in image_files]
    batches = [blobs[:2], [broken_jpeg(), *blobs[2:3]], [], blobs[3:]]
    piped = list(embedder.embed_pipelined(batches))
    assert [len(results) for results in piped] == [len(batch) for batch in batches]
    for batch, results in zip(batches, piped, strict=True):
        for alone, result in zip(embedder.embed_with_thumbnails(batch), results, strict=True):
            if isinstance(alone, Embedded):
                assert isinstance(result, Embedded)
                assert np.array_equal(result.vector, alone.vector)
                assert result.thumbnail == alone.thumbnail
            else:
                assert type(result) is type(alone) and str(result) == str(alone)


@pytest.fixture(scope="module")
def slow_batches(tmp_path_factory, weights_file) -> Iterator[tuple[Stack, str]]:
    """A stack whose worker waits 3 s to fill a batch: uploads posted together share one."""
    stack = Stack(tmp_path_factory.mktemp("stack"), weights_file, batch_wait=3)
    stack.start_redis()
    stack.start_worker()
    stack.start_writer()
    url = stack.start_api()
    stack.wait_ready(url)
    yield stack, url
    stack.stop_all()


def test_broken_pixel_data_fails_its_own_task_and_not_its_batch(slow_batches):
    stack, url = slow_batches
    stats = redis.Redis.from_url(stack.redis.url)
    before = {k.decode(): float(v) for k, v in stats.hgetall(keys.STATS).items()}
    good = post_product(url, "good", product_image(1))
    broken = post_product(url, "bad", broken_jpeg())
    assert (good.status_code, broken.status_code) == (202, 202)
    assert wait_task(url, good.json()["task_id"])["state"] == "succeeded"
    failed = wait_task(url, broken.json()["task_id"])
    assert failed["state"] == "failed"
    assert failed["error"] == {"code": "undecodable_image", "message": what_pil_says(broken_jpeg())}
    assert re.fullmatch(
        r"cannot decode the JPEG image: image file is truncated \(\d+ bytes not processed\)",
        failed["error"]["message"],
    )
    after = {k.decode(): float(v) for k, v in stats.hgetall(keys.STATS).items()}
    assert after["images_embedded"] - before.get("images_embedded", 0) == 2
    assert after["forward_passes"] - before.get("forward_passes", 0) == 1  # one batch
    assert after["model_seconds"] > before.get("model_seconds", 0)


def test_the_product_thumbnail_comes_from_the_worker_s_one_decode(slow_batches):
    _, url = slow_batches
    image = product_image(2)
    response = post_product(url, "thumbnailed", image)
    assert wait_task(url, response.json()["task_id"])["state"] == "succeeded"
    served = requests.get(f"{url}/api/v1/products/thumbnailed/image", timeout=10)
    assert served.content == decode(image, thumbnail_side=256).thumbnail


def test_the_gallery_shows_the_search_thumbnail_the_worker_kept(slow_batches):
    stack, url = slow_batches
    image = product_image(3)
    files = {"image": ("query.jpg", image, "image/jpeg")}
    page = requests.post(f"{url}/", files=files, data={"k": 3}, timeout=60)
    assert page.status_code == 200, page.text[:300]
    shown = re.search(r'<img src="data:image/jpeg;base64,([^"]+)" alt="query image">', page.text)
    assert shown, page.text[:500]
    assert base64.b64decode(shown.group(1)) == decode(image, thumbnail_side=256).thumbnail
    client = redis.Redis.from_url(stack.redis.url)
    (key,) = client.keys(keys.query_thumbnail("*"))
    (vector,) = client.keys(keys.query_vector("*"))
    assert abs(client.ttl(key) - client.ttl(vector)) <= 1  # kept as long as the query vector


# Engine backends (KERAS_BACKEND) and decode modes (LOOKALIKE_DECODE).

# Runs in a subprocess with KERAS_BACKEND=jax (Keras takes one backend per process): the float32
# vectors through `lookalike embed`, then a bfloat16 engine on the same images.
JAX_SIDE = """
import json, sys
import numpy as np
from cli.main import main
out, mixed_out, *paths = sys.argv[1:]
if main(["embed", *paths, "--out", out, "-q"]) != 0:
    sys.exit("lookalike embed failed")
from shared.settings import Settings
from workers.embedder import Embedder
mixed = Embedder(Settings(precision="bfloat16"))
np.save(mixed_out, np.stack(mixed.embed_bytes([open(p, "rb").read() for p in paths])))
print(json.dumps({"backend": mixed.backend, "mixed_id": mixed.model_id,
                  "tensorflow": any(m.split(".")[0] == "tensorflow" for m in sys.modules)}))
"""


def test_jax_backend_gives_the_default_backend_s_vectors(settings, embedder, image_files, tmp_path):
    if importlib.util.find_spec("jax") is None:
        pytest.skip(
            "jax is not installed (pip install -e '.[jax]' or '.[dev]'): the JAX "
            "backend's parity with TensorFlow cannot be checked here"
        )
    out, mixed_out = tmp_path / "jax.npy", tmp_path / "jax-bfloat16.npy"
    result = subprocess.run(
        [sys.executable, "-c", JAX_SIDE, str(out), str(mixed_out), *map(str, image_files)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**_env(settings), "KERAS_BACKEND": "jax", "LOOKALIKE_BATCH_SIZE": "8"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["backend"] == "jax"
    assert not report["tensorflow"]  # the JAX engine never loads TensorFlow
    # float32: the same vectors, so the same model id (the backend is not part of it)
    assert lines[0].endswith(f"({embedder.model_id})")
    ours = np.stack(embedder.embed_bytes([path.read_bytes() for path in image_files]))  # type: ignore[arg-type]
    jax_vectors = np.load(out)
    assert jax_vectors.dtype == np.float32 and jax_vectors.shape == ours.shape
    assert cosine_rows(jax_vectors, ours).min() >= 0.99999
    # mixed precision differs by backend (measured: bfloat16 JAX vs TensorFlow ~0.99998), so
    # its id names the backend; it stays within mixed precision's tolerance of float32
    assert report["mixed_id"] == embedder.model_id.replace("float32", "bfloat16") + "-jax"
    assert cosine_rows(np.load(mixed_out), ours).min() >= 0.999


def test_model_id_names_the_decode_mode_and_the_backend_only_where_vectors_change(weights_file):
    exact = Settings(weights=str(weights_file))
    reduced = Settings(weights=str(weights_file), decode="reduced")
    mixed = Settings(weights=str(weights_file), precision="bfloat16")
    base = model_id(exact, weights_file)
    assert base == model_id(exact, weights_file, backend="tensorflow")  # ids made before
    assert model_id(reduced, weights_file) == base.replace("224nearest", "224nearest-reduced")
    assert model_id(exact, weights_file, backend="jax") == base
    for precision in ("bfloat16", "float16"):
        other = Settings(weights=str(weights_file), precision=precision)
        assert model_id(other, weights_file, backend="jax") == (
            model_id(other, weights_file) + "-jax"
        )
    assert model_id(mixed, weights_file, backend="jax") != model_id(mixed, weights_file)


@pytest.mark.parametrize(
    ("decode", "expected"),
    [("exact", "trivial-224nearest"), ("reduced", "trivial-224nearest-reduced")],
)
def test_the_trivial_model_s_id_names_the_decode_mode_as_resnet_s_does(decode, expected):
    assert Embedder(Settings(model="trivial", decode=decode)).model_id == expected


def test_reduced_decoding_changes_only_large_jpegs_and_the_model_id(
    weights_file, embedder, image_files
):
    reduced = Embedder(Settings(weights=str(weights_file), batch_size=8, decode="reduced"))
    assert reduced.model_id == embedder.model_id.replace("-224nearest-", "-224nearest-reduced-")
    blobs = [path.read_bytes() for path in image_files]
    ours = np.stack(reduced.embed_bytes(blobs))  # type: ignore[arg-type]
    exact = np.stack(embedder.embed_bytes(blobs))  # type: ignore[arg-type]
    names = [path.name for path in image_files]
    large = names.index("large.jpg")  # the only JPEG of at least twice the input size
    others = [i for i in range(len(names)) if i != large]
    assert np.array_equal(ours[others], exact[others])
    assert cosine_rows(ours[[large]], exact[[large]])[0] < 1.0  # its vector moved...
    # ...because its model input did: the same picture, its pixel noise averaged by the reduced
    # decode where nearest picks single pixels (random weights' cosines say little here: distinct
    # photos score 0.99 on them; bench/decode.py measures near-duplicate search)
    inputs = [decode(blobs[large], mode=mode).pixels.ravel() for mode in DECODE_MODES]
    assert not np.array_equal(*inputs)
    assert np.corrcoef(*inputs)[0, 1] > 0.9


def test_decode_threads_default_to_one_per_core(embedder):
    assert embedder.settings.decode_threads == 0
    assert embedder.decoder.threads == available_cores()


def test_the_engine_imports_without_pydantic_or_tensorflow():
    # bench/gpu builds the engine's forward where only JAX, numpy and Pillow are installed.
    code = (
        "import sys\n"
        "for name in ('pydantic', 'pydantic_settings', 'tensorflow'): sys.modules[name] = None\n"
        "import workers.embedder, workers.weights, shared.images, shared.model_id\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_gpu_decoding_on_tensorflow_is_refused_before_the_model_loads(weights_file):
    with pytest.raises(WeightsUnavailable) as caught:
        Embedder(Settings(weights=str(weights_file), decode="gpu"))
    assert str(caught.value) == (
        "LOOKALIKE_DECODE=gpu runs on the JAX backend (the pixels stay in GPU memory, shared "
        "through DLPack): set KERAS_BACKEND=jax, not 'tensorflow'"
    )
