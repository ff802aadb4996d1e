"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from workers.weights import write_random_weights

CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "weights"


@pytest.fixture(scope="session")
def weights_file() -> Path:
    """A Keras ResNet50 no-top weights file from a seeded random model (as the ImageNet one)."""
    return write_random_weights(CACHE / "resnet50_seed1234_notop.h5", seed=1234)
