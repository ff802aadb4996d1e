"""gunicorn's configuration for an API process (`gunicorn --config python:api.gunicorn_conf`).

The master imports the app's modules once, so that a worker it starts (a handover's, or one
replacing a worker that died) begins with them imported instead of spending a second of CPU on
that beside the worker that serves.

A worker's heartbeat changes a file's timestamps in worker_tmp_dir each time round the loop that
accepts and dispatches requests. On a disk's journalled filesystem that change can wait for the
journal's commit, which waits for the data the writer's snapshot (the whole index) has just put
on the same disk: every request then waits. The heartbeat goes to a memory filesystem, where
there is one (gunicorn's --worker-tmp-dir still overrides it).
"""

from __future__ import annotations

import os
from pathlib import Path

import api.app  # noqa: F401  (imported for the workers to inherit)
from api.handover import post_fork, post_worker_init, worker_exit

__all__ = ["post_fork", "post_worker_init", "worker_exit", "worker_tmp_dir"]

MEMORY_TMP = Path("/dev/shm")


def heartbeat_dir(candidate: Path = MEMORY_TMP) -> str | None:
    """candidate if it is a directory this process can write to (None: gunicorn's default)."""
    return str(candidate) if candidate.is_dir() and os.access(candidate, os.W_OK) else None


worker_tmp_dir = heartbeat_dir()
