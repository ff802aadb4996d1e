"""The one settings object, read from LOOKALIKE_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Precision = Literal["float32", "bfloat16", "float16"]
Pooling = Literal["max", "avg"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]


class Settings(BaseSettings):
    """Every tunable of the service; each field is LOOKALIKE_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("data"), description="Where snapshots and embedded Redis live.")
    api_url: str = Field(
        "http://127.0.0.1:8000", description="The API the CLI's client commands talk to."
    )
    api_key: SecretStr | None = Field(
        None,
        description="When set, every POST and DELETE needs one of its comma-separated keys "
        "in X-API-Key (several: key rotation). Never logged.",
    )
    redis_url: str | None = Field(
        None, description="Redis for broker, results and data; unset: `up` starts its own."
    )

    # The embedding model.
    weights: str = Field(
        "imagenet",
        description="'imagenet' (Keras download/cache), a weights file's path, or 'random' "
        "(a seeded random model for demos, written once under data_dir/weights).",
    )
    pooling: Pooling = Field("max", description="Global pooling after ResNet50: max or avg.")
    model: Literal["resnet50", "trivial"] = Field(
        "resnet50",
        description="Benchmarks only: 'trivial' replaces ResNet50 by block means of the pixels.",
    )
    precision: Precision = Field("float32", description="Compute precision; output is float32.")
    batch_size: int = Field(32, ge=1, le=1024, description="Images per forward pass.")
    pipeline_depth: int = Field(
        2,
        ge=1,
        le=16,
        description="Forward passes an embed worker takes from the queue at once; it publishes "
        "one pass's results while the model computes the next.",
    )
    jit_compile: bool = Field(False, description="Compile the forward pass with XLA.")
    image_size: int = Field(224, ge=32, le=1024, description="Square model input side.")
    interpolation: Interpolation = Field(
        "nearest", description="Resize filter; 'nearest' is what keras load_img uses."
    )

    # Engine and decoding.
    decode_threads: int = Field(
        0, ge=0, le=256, description="Threads decoding images; 0: one per core."
    )
    decode: Literal["exact", "reduced", "gpu"] = Field(
        "exact",
        description="'exact' decodes every pixel, as the reference does; 'reduced' lets libjpeg "
        "scale a JPEG down while decoding (to no less than image_size); 'gpu' decodes JPEGs in "
        "batches on the GPU with nvImageCodec (KERAS_BACKEND=jax). Part of the model id.",
    )

    # Input limits.
    max_image_pixels: int = Field(40_000_000, ge=1, description="Larger images are refused.")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Larger uploads refused.")

    # The HNSW index.
    hnsw_m: int = Field(16, ge=2, le=128, description="HNSW graph degree M.")
    hnsw_ef_construction: int = Field(200, ge=8, description="HNSW build beam width.")
    hnsw_ef_search: int = Field(128, ge=1, description="HNSW query beam width (at least k).")
    follow_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Most of a core an API process spends following the journal while it "
        "serves requests (1: no limit); idle, it follows at full speed.",
    )
    replica_load_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Most of the time an API process spends loading the writer's snapshots while "
        "it serves requests (each load stalls its requests; 1: no limit, the default); idle, it "
        "loads each newer snapshot that is worth it at once. Lower only on a host of its own.",
    )
    replica_handover: bool = Field(
        True,
        description="While it serves requests, a gunicorn API process of one worker moves onto a "
        "newer snapshot by starting a new worker that loads it and takes over, instead of "
        "loading it itself (a load holds Python's lock, stalling every request meanwhile).",
    )
    replica_idle_after: float = Field(
        60.0,
        ge=0,
        description="Seconds without a request after which an API process run by gunicorn "
        "follows the journal and loads snapshots at the idle scheduling priority, back at the "
        "normal one as soon as a request comes, so that a replica nobody asks does not slow the "
        "queried ones on its cores; 0: never. Needs the right to restore a thread's priority.",
    )
    replica_exact_items: int = Field(
        1024,
        ge=0,
        le=65536,
        description="Newest items an API process searches exactly instead of inserting them into "
        "a graph of its own (a copy each; every query scans them).",
    )
    replica_snapshot_wait: float = Field(
        30.0,
        ge=0,
        description="Seconds an API process whose exact items are full waits for the writer's "
        "next snapshot during a bulk import before it builds a small graph of what follows.",
    )

    # The pipeline.
    batch_wait: float = Field(
        0.05,
        gt=0,
        description="Seconds of quiet after which an embed worker runs a partial batch "
        "(at most 20x this from its first message).",
    )
    visibility_timeout: int = Field(
        30, ge=5, description="Seconds before an unacknowledged task is redelivered."
    )
    task_time_limit: int = Field(300, ge=1, description="Hard time limit of one task, seconds.")
    task_ttl: int = Field(7 * 24 * 3600, ge=60, description="Seconds task records are kept.")
    upload_ttl: int = Field(24 * 3600, ge=60, description="Seconds an upload waits for a worker.")
    snapshot_every: int = Field(
        1000, ge=1, description="Fewest journal entries that make a snapshot due by size."
    )
    snapshot_fraction: float = Field(
        0.1, gt=0, le=1, description="Share of the index that makes a snapshot due by size."
    )
    snapshot_interval: float = Field(
        60.0, gt=0, description="Seconds after which any change makes a snapshot due."
    )
    writer_priority: Literal["nice", "idle"] = Field(
        "nice",
        description="How the writer's graph building and snapshots yield to other processes on "
        "its host: 'nice' runs them 5 nicer, 'idle' only when a core has nothing else to do "
        "(SCHED_IDLE; the lock's renewal stays at 'nice').",
    )
    snapshot_fork: bool = Field(
        True,
        description="Write snapshots from a forked copy of the writer (applying goes on; the "
        "pages it changes meanwhile are copied): false saves in the writer, which pauses.",
    )
    search_wait: float = Field(10.0, ge=0, description="Seconds a search waits for its vector.")
    max_metadata_bytes: int = Field(16384, ge=2, description="Largest metadata JSON accepted.")
    thumbnail_size: int = Field(256, ge=16, le=1024, description="Longest side of thumbnails.")

    snapshot_url: str | None = Field(
        None,
        description="Where index snapshots are published and fetched: a directory (default "
        "data_dir/index) or s3://bucket/prefix (AWS_* variables as for AWS tools).",
    )

    # Generations of the index (`lookalike reindex`, `promote`, `rollback`).
    generation: str | None = Field(
        None,
        description="The index generation this worker or writer builds (unset: the first).",
        pattern=r"^([a-z0-9][a-z0-9-]{0,15})?$",
    )
    keep_originals: bool = Field(True, description="Keep each product's original image.")
    originals_url: str | None = Field(
        None,
        description="Where originals are kept: a directory (default data_dir/originals) or "
        "s3://bucket/prefix.",
    )

    # Durability and backpressure.
    snapshot_handoff_dir: Path | None = Field(
        None,
        description="A directory on a memory filesystem (e.g. /dev/shm/lookalike) where the "
        "writer publishes every snapshot for the API processes of its host (set it for them "
        "too); the snapshot store gets one only every snapshot_durable_every seconds.",
    )
    snapshot_durable_every: float = Field(
        60.0,
        gt=0,
        description="With snapshot_handoff_dir: seconds between the snapshots also copied to "
        "the snapshot store (the journal is kept back to the oldest kept there).",
    )
    snapshots_kept: int = Field(
        2,
        ge=2,
        description="Verified index snapshots kept; the journal is kept back to the oldest.",
    )
    appendfsync: Literal["everysec", "always"] = Field(
        "everysec",
        description="The embedded Redis' fsync policy: 'always' loses no accepted write.",
    )
    redis_maxmemory: int = Field(
        1024 * 1024 * 1024, ge=64 * 1024 * 1024, description="The embedded Redis' memory limit."
    )
    max_queued: int = Field(
        10_000, ge=1, description="Uploads waiting for a worker before new ones get 503."
    )
    max_redis_memory_fraction: float = Field(
        0.8, gt=0, le=1, description="Share of Redis' maxmemory in use above which uploads get 503."
    )
    max_waiting_searches: int = Field(
        4, ge=0, description="Searches an API process lets wait for their vector at once."
    )
    search_ttl: int = Field(
        3600, ge=60, description="Seconds a search task's vector and results are kept."
    )

    # Reduced memory.
    index_dims: int = Field(
        0,
        ge=0,
        le=2047,
        description="0: vectors are indexed as they are (2048-d float32). N: a new index is "
        "projected to N dims by a PCA fitted on its first index_fit_items items.",
    )
    index_fit_items: int = Field(
        20_000, ge=2, description="Items the reduced-memory projection is fitted on."
    )

    # Hygiene.
    near_duplicate_threshold: float = Field(
        0.98,
        gt=0,
        le=1,
        description="Cosine from which two products are near duplicates: in a finished index "
        "task's result and `lookalike evaluate --hygiene`.",
    )

    @model_validator(mode="after")
    def _handoff_apart_from_the_store(self) -> Settings:
        """The hand-off directory and a local snapshot store would publish the same snapshot
        twice into one folder (or hide one inside the other)."""
        store = self.local_snapshot_dir
        handoff = self.snapshot_handoff_dir
        if handoff is None or store is None:
            return self
        a, b = handoff.expanduser().resolve(), store.resolve()
        if a == b or a in b.parents or b in a.parents:
            raise ValueError(
                f"LOOKALIKE_SNAPSHOT_HANDOFF_DIR ({handoff}) must lie apart from the snapshot "
                f"store's directory ({store})"
            )
        return self

    @property
    def local_snapshot_dir(self) -> Path | None:
        """The snapshot store's directory, unless it is an S3 bucket."""
        url = self.snapshot_url
        if url is None:
            return self.data_dir / "index"
        if url.startswith("s3://"):
            return None
        return Path(url.removeprefix("file://")).expanduser()

    @property
    def api_keys(self) -> tuple[str, ...]:
        """The accepted API keys (empty: writes are open)."""
        if self.api_key is None:
            return ()
        return tuple(
            key.strip() for key in self.api_key.get_secret_value().split(",") if key.strip()
        )

    @property
    def client_api_key(self) -> str | None:
        """The key the CLI's client commands send: the first one."""
        return self.api_keys[0] if self.api_keys else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
