"""The one settings object, read from LOOKALIKE_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Precision = Literal["float32", "bfloat16", "float16"]
Pooling = Literal["max", "avg"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]


class Settings(BaseSettings):
    """Every tunable of the service; each field is LOOKALIKE_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("data"), description="Where snapshots and embedded Redis live.")

    # The embedding model.
    weights: str = Field(
        "imagenet", description="'imagenet' (Keras download/cache) or a path to a weights file."
    )
    pooling: Pooling = Field("max", description="Global pooling after ResNet50: max or avg.")
    precision: Precision = Field("float32", description="Compute precision; output is float32.")
    batch_size: int = Field(32, ge=1, le=1024, description="Images per forward pass.")
    jit_compile: bool = Field(False, description="Compile the forward pass with XLA.")
    image_size: int = Field(224, ge=32, le=1024, description="Square model input side.")
    interpolation: Interpolation = Field(
        "nearest", description="Resize filter; 'nearest' is what keras load_img uses."
    )
    decode_threads: int = Field(2, ge=1, le=64, description="Threads decoding images.")

    # Input limits.
    max_image_pixels: int = Field(40_000_000, ge=1, description="Larger images are refused.")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Larger uploads refused.")

    # The HNSW index.
    hnsw_m: int = Field(16, ge=2, le=128, description="HNSW graph degree M.")
    hnsw_ef_construction: int = Field(200, ge=8, description="HNSW build beam width.")
    hnsw_ef_search: int = Field(64, ge=1, description="HNSW query beam width (at least k).")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
