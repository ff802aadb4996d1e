"""The identity of a vector: which model, weights and preprocessing produced it (no TensorFlow)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from shared.errors import WeightsUnavailable
from shared.settings import Settings

ARCHITECTURE = "resnet50"
EMBEDDING_DIM = 2048
PREPROCESSING = "caffe"  # keras.applications.resnet50.preprocess_input: RGB->BGR, mean subtracted

# Keras checks the downloaded ImageNet file against this digest, so it names those weights.
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_MD5 = "a268eb855778b3df3c7506639542a6af"


def weights_path(weights: str) -> Path | None:
    """The local weights file, or None for Keras' own ImageNet download."""
    if weights == "imagenet":
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(
            f"weights file not found: {path} (LOOKALIKE_WEIGHTS must be 'imagenet' "
            "or the path to a Keras ResNet50 no-top weights file)"
        )
    return path


@lru_cache(maxsize=8)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digest(weights: str) -> str:
    """A short digest naming the weights: of the file's bytes, or of Keras' ImageNet file."""
    path = weights_path(weights)
    if path is None:
        return f"imagenet-{IMAGENET_NOTOP_MD5[:12]}"
    stat = path.stat()
    return _file_digest(path.resolve(), stat.st_size, stat.st_mtime_ns)[:16]


def model_id(settings: Settings) -> str:
    """e.g. resnet50-max-w3f2a...-224nearest-caffe-float32; changes when any part changes."""
    return "-".join(
        [
            ARCHITECTURE,
            settings.pooling,
            "w" + weights_digest(settings.weights),
            f"{settings.image_size}{settings.interpolation}",
            PREPROCESSING,
            settings.precision,
        ]
    )
