"""Seeded random ResNet50 no-top weights, for tests and benchmarks where ImageNet is unreachable."""

from __future__ import annotations

import os
from pathlib import Path


def write_random_weights(path: Path, seed: int) -> Path:
    """The same legacy HDF5 layout as Keras' ImageNet notop file, so the real loader reads it."""
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
    partial.rename(path)
    return path
