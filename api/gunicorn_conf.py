"""gunicorn's configuration for an API process (`gunicorn --config python:api.gunicorn_conf`).

The master imports the app's modules once, so that a worker it starts (a handover's, or one
replacing a worker that died) begins with them imported instead of spending a second of CPU on
that beside the worker that serves.
"""

from __future__ import annotations

import api.app  # noqa: F401  (imported for the workers to inherit)
from api.handover import post_fork, post_worker_init, worker_exit

__all__ = ["post_fork", "post_worker_init", "worker_exit"]
