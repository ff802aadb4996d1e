"""The identity of a vector: which model, weights and preprocessing produced it (no TensorFlow)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from shared.settings import Settings

ARCHITECTURE = "resnet50"
EMBEDDING_DIM = 2048
PREPROCESSING = "caffe"  # keras.applications.resnet50.preprocess_input: RGB->BGR, mean subtracted
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RANDOM_WEIGHTS = "wrandom-"
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


def model_id(settings: Settings, weights_file: Path, random: bool = False) -> str:
    """e.g. resnet50-max-w3f2a...-224nearest-caffe-float32; changes when any part changes."""
    weights = (RANDOM_WEIGHTS if random else "w") + weights_digest(weights_file)
    return "-".join(
        [
            ARCHITECTURE,
            settings.pooling,
            weights,
            f"{settings.image_size}{settings.interpolation}",
            PREPROCESSING,
            settings.precision,
        ]
    )


def is_random_model(model: str | None) -> bool:
    """Whether vectors of this model id come from the demo's random weights."""
    return model is not None and f"-{RANDOM_WEIGHTS}" in model
