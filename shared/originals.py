"""Each product's original image, kept so that the catalog can be embedded again with another
model (`lookalike reindex`): a directory, or an S3-compatible store, content-addressed by SHA-256
so that an image posted twice is kept once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shared.settings import Settings


class OriginalStore:
    """Originals in a local directory: `<root>/<first two hex digits>/<sha256>`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.where = str(self.root)

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, digest: str, data: bytes) -> None:
        """Keep data under its digest (written once, atomically)."""
        path = self._path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{digest}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)

    def get(self, digest: str) -> bytes | None:
        try:
            return self._path(digest).read_bytes()
        except FileNotFoundError:
            return None


class S3OriginalStore(OriginalStore):
    """Originals as objects `<prefix>/<sha256>` of a bucket (AWS_* variables as for AWS tools)."""

    def __init__(self, url: str, client: Any = None) -> None:
        parsed = urlparse(url)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.where = url
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.s3 = client

    def _key(self, digest: str) -> str:
        return f"{self.prefix}/{digest}" if self.prefix else digest

    def put(self, digest: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(digest), Body=data)

    def get(self, digest: str) -> bytes | None:
        try:
            return bytes(
                self.s3.get_object(Bucket=self.bucket, Key=self._key(digest))["Body"].read()
            )
        except self.s3.exceptions.NoSuchKey:
            return None


def open_originals(settings: Settings) -> OriginalStore | None:
    """The store LOOKALIKE_ORIGINALS_URL names (default data_dir/originals); None when the
    originals are not kept (LOOKALIKE_KEEP_ORIGINALS=false)."""
    if not settings.keep_originals:
        return None
    url = settings.originals_url
    if url is not None and url.startswith("s3://"):
        return S3OriginalStore(url)
    root = settings.data_dir / "originals" if url is None else Path(url.removeprefix("file://"))
    return OriginalStore(root.expanduser())
