"""The identity of a vector: which model, weights and preprocessing produced it (no TensorFlow)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not at run time: bench/gpu imports this where pydantic is not installed
    from shared.settings import Settings


ARCHITECTURE = "resnet50"
EMBEDDING_DIM = 2048
PREPROCESSING = "caffe"  # keras.applications.resnet50.preprocess_input: RGB->BGR, mean subtracted
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RANDOM_WEIGHTS = "wrandom-"
# The Keras backend (KERAS_BACKEND) is named in the id only in the precisions where it changes
# the vectors: float32 on JAX gives TensorFlow's vectors to cosine >= 0.99999 (measured:
# tests/integration/test_embedder.py, README "Preprocessing and parity"), mixed precision not.
DEFAULT_BACKEND = "tensorflow"
BACKEND_IN_ID = frozenset({"bfloat16", "float16"})
RANDOM_MODEL_NOTICE = (
    "demo model: seeded random weights, not ImageNet, so neighbours show how the service works, "
    "not visual similarity. For real recommendations set LOOKALIKE_WEIGHTS to "
    f"{IMAGENET_NOTOP_FILE} (see the README, Model weights) and use a new data directory."
)


@lru_cache(maxsize=8)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digest(path: Path) -> str:
    """A short digest of the weights file's bytes: the same file anywhere, the same name."""
    stat = path.stat()
    return _file_digest(path.resolve(), stat.st_size, stat.st_mtime_ns)[:16]


def model_id(
    settings: Settings, weights_file: Path, random: bool = False, backend: str = DEFAULT_BACKEND
) -> str:
    """e.g. resnet50-max-w3f2a...-224nearest-caffe-float32; changes when any part changes.

    Parts that are left out at their default, so that ids made before they existed still
    match: the decode mode ("-reduced" after the input size: LOOKALIKE_DECODE=reduced) and the
    Keras backend, which is named only where it changes the vectors (BACKEND_IN_ID).
    """
    weights = (RANDOM_WEIGHTS if random else "w") + weights_digest(weights_file)
    parts = [ARCHITECTURE, settings.pooling, weights, input_part(settings)]
    parts += [PREPROCESSING, settings.precision]
    if backend != DEFAULT_BACKEND and settings.precision in BACKEND_IN_ID:
        parts.append(backend)
    return "-".join(parts)


def input_part(settings: Settings) -> str:
    """How the model's input is made: e.g. 224nearest, or 224nearest-reduced in another mode."""
    size = f"{settings.image_size}{settings.interpolation}"
    return size if settings.decode == "exact" else f"{size}-{settings.decode}"


def is_random_model(model: str | None) -> bool:
    """Whether vectors of this model id come from the demo's random weights."""
    return model is not None and f"-{RANDOM_WEIGHTS}" in model
