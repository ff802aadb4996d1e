"""The Celery app of the embed workers: `celery -A workers.app worker -Q embed -P solo`.

A worker building another index generation (LOOKALIKE_GENERATION=NAME) consumes `embed.NAME`.
"""

from __future__ import annotations

from shared.keys import Generation
from shared.queue import make_celery
from shared.settings import get_settings

settings = get_settings()
if settings.redis_url is None:
    raise SystemExit("LOOKALIKE_REDIS_URL is not set: workers need the stack's Redis")

celery_app = make_celery(settings, settings.redis_url)
# celery-batches only flushes a full batch if the worker holds that many messages at once.
celery_app.conf.worker_prefetch_multiplier = settings.batch_size * settings.pipeline_depth
celery_app.conf.include = ["workers.embedding"]
celery_app.conf.task_default_queue = Generation.named(settings.generation).queue
app = celery_app
