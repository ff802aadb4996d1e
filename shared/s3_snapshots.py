"""Snapshots in an S3-compatible object store (AWS S3, MinIO, Ceph, R2), through boto3.

Configured as AWS tools are: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and
AWS_ENDPOINT_URL for a store that is not AWS (botocore reads them). A snapshot is the objects
`<prefix>/<name>/hnsw.bin` and `<prefix>/<name>/manifest.json`, the manifest put last: a PUT is
atomic, so a reader sees a snapshot whole or not at all. Each process keeps its own copy of the
snapshots it loads under its data directory, checked against the manifest's size and SHA-256.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shared.errors import SnapshotError
from shared.hnsw_file import verify_file
from shared.index import INDEX_FILE, VectorIndex
from shared.journal import position_key
from shared.snapshots import (
    MANIFEST,
    PARTIAL,
    Loaded,
    PendingSnapshot,
    Snapshot,
    SnapshotStore,
    is_snapshot_name,
    position_of,
)


class S3SnapshotStore(SnapshotStore):
    """The snapshot store of several hosts: nothing shared between them but the bucket."""

    def __init__(self, url: str, cache: Path, keep: int = 2, client: Any = None) -> None:
        super().__init__(cache, keep)
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise SnapshotError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.s3 = client
        self._bucket_checked = False

    def _ensure_bucket(self) -> None:
        """Create the bucket on first publish if it does not exist (a new MinIO, say)."""
        if self._bucket_checked:
            return
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except Exception:  # botocore's ClientError (404) or NoSuchBucket: create it
            region = self.s3.meta.region_name
            where = {} if region in (None, "us-east-1") else {"LocationConstraint": region}
            options = {"CreateBucketConfiguration": where} if where else {}
            self.s3.create_bucket(Bucket=self.bucket, **options)
        self._bucket_checked = True

    def _key(self, name: str, file: str) -> str:
        return "/".join(part for part in (self.prefix, name, file) if part)

    def _pending_folder(self, name: str) -> Path:
        """This host's local copy: commit() uploads it, and keeps it as this host's."""
        return self.root / name

    def commit(self, pending: PendingSnapshot) -> Snapshot:
        """The index file first, the manifest last; the local copy is kept as this host's."""
        self._ensure_bucket()
        manifest = pending.save.finish()
        name = pending.name
        self.s3.upload_file(
            str(pending.folder / INDEX_FILE), self.bucket, self._key(name, INDEX_FILE)
        )
        body = json.dumps(manifest).encode()
        self.s3.put_object(Bucket=self.bucket, Key=self._key(name, MANIFEST), Body=body)
        (pending.folder / MANIFEST).write_bytes(body)
        return Snapshot(name, pending.folder, pending.position)

    def _objects(self) -> dict[str, set[str]]:
        """Snapshot name -> the files of it in the bucket."""
        found: dict[str, set[str]] = {}
        start = f"{self.prefix}/" if self.prefix else ""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    name, _, file = item["Key"][len(start) :].partition("/")
                    found.setdefault(name, set()).add(file)
        except self.s3.exceptions.NoSuchBucket:
            return {}  # not created yet: the writer creates it with its first snapshot
        return found

    def snapshots(self) -> list[Snapshot]:
        """Snapshots whose manifest is in the bucket, newest first."""
        found = [
            Snapshot(name, self.root / name, position_of(name))
            for name, files in self._objects().items()
            if MANIFEST in files and is_snapshot_name(name)
        ]
        return sorted(found, key=lambda snap: position_key(snap.position), reverse=True)

    def _open(
        self, snapshot: Snapshot, model_id: str | None, ef_search: int, short_reads: bool
    ) -> VectorIndex:
        reply = self.s3.get_object(Bucket=self.bucket, Key=self._key(snapshot.name, MANIFEST))
        manifest = json.loads(reply["Body"].read())
        self._fetch(snapshot, manifest)
        return VectorIndex.load(snapshot.folder, manifest, model_id, ef_search, short_reads)

    def _fetch(self, snapshot: Snapshot, manifest: dict[str, Any]) -> None:
        """This host's copy of the index file: kept if it matches the manifest, else fetched."""
        path = snapshot.folder / INDEX_FILE
        expected = (int(manifest["index_bytes"]), str(manifest["index_sha256"]))
        try:
            verify_file(path, *expected)
            return
        except SnapshotError:
            pass
        snapshot.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(INDEX_FILE + PARTIAL)
        key = self._key(snapshot.name, INDEX_FILE)
        try:
            self.s3.download_file(self.bucket, key, str(partial))
        except Exception as exc:  # botocore's errors: missing object, access, network
            raise SnapshotError(f"snapshot object s3://{self.bucket}/{key}: {exc}") from exc
        partial.replace(path)

    def prune(self, still_allowed: Any = lambda: True) -> list[str]:
        """Remove snapshots older than the newest `keep`, uploads that never got a manifest,
        and this host's copies of snapshots no longer in the bucket."""
        objects = self._objects()
        names = [snap.name for snap in self.snapshots()]
        oldest_kept = min(names[: self.keep], default="")
        doomed = names[self.keep :]
        doomed += [n for n, files in objects.items() if MANIFEST not in files and n < oldest_kept]
        if not doomed or not still_allowed():
            return []
        for name in doomed:
            self._delete_objects(name, objects.get(name, set()))
        return doomed

    def delete(self, name: str) -> None:
        """Remove one snapshot's objects from the bucket."""
        self._delete_objects(name, self._objects().get(name, set()))

    def _delete_objects(self, name: str, files: set[str]) -> None:
        if files:
            keys = [{"Key": self._key(name, file)} for file in files]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def load_newest(
        self, model_id: str | None = None, ef_search: int = 64, short_reads: bool = False
    ) -> Loaded:
        """As for a directory; then this host's copies of other snapshots are dropped."""
        loaded = super().load_newest(model_id, ef_search, short_reads)
        keep = {loaded.snapshot.name} if loaded.snapshot else set()
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if folder.is_dir() and folder.name not in keep:
                    shutil.rmtree(folder, ignore_errors=True)
        return loaded
