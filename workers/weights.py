"""Where the model's weights come from: Keras' ImageNet file, a local file, or a seeded random
model that lets the demo run where the ImageNet file cannot be had."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import WeightsUnavailable
from shared.model_id import IMAGENET_NOTOP_FILE

if TYPE_CHECKING:  # not at run time: bench/gpu imports this where pydantic is not installed
    from shared.settings import Settings

# Where keras.applications.ResNet50(weights="imagenet") downloads the file from, and its digest.
IMAGENET_ORIGIN = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_NOTOP_FILE
)
IMAGENET_NOTOP_HASH = "4d473c1dd8becc155b73f8504c6f6626"
DOWNLOAD_TIMEOUT = 30.0
RANDOM_SEED = 0


@dataclass(frozen=True)
class Weights:
    path: Path
    random: bool = False


def resolve_weights(settings: Settings) -> Weights:
    """The weights file the settings name; downloads (or writes) it first where needed."""
    if settings.weights == "imagenet":
        return Weights(fetch_imagenet())
    if settings.weights == "random":
        path = settings.data_dir / "weights" / f"resnet50-random-seed{RANDOM_SEED}-notop.h5"
        return Weights(write_random_weights(path, RANDOM_SEED), random=True)
    path = Path(settings.weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(
            f"weights file not found: {path} (LOOKALIKE_WEIGHTS must be 'imagenet', 'random' "
            "or the path to a Keras ResNet50 no-top weights file)"
        )
    return Weights(path)


def fetch_imagenet() -> Path:
    """Keras' cached ImageNet no-top file, downloaded first if it is not cached yet."""
    import keras

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # keras' download has no timeout of its own
    try:
        return Path(
            keras.utils.get_file(
                IMAGENET_NOTOP_FILE,
                IMAGENET_ORIGIN,
                cache_subdir="models",
                file_hash=IMAGENET_NOTOP_HASH,
            )
        )
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not load the ImageNet weights ({_first_line(exc)}). Without internet access, "
            f"copy {IMAGENET_NOTOP_FILE} (from the Keras applications release) to this machine "
            "and set LOOKALIKE_WEIGHTS to its path."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


def write_random_weights(path: Path, seed: int) -> Path:
    """A seeded random ResNet50 in the legacy HDF5 layout of the ImageNet file (written once)."""
    if path.exists():
        return path
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(seed)
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    with h5py.File(partial, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    try:
        os.link(partial, path)  # never replaces a file another process wrote meanwhile
    except FileExistsError:
        pass
    finally:
        partial.unlink()
    return path


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
