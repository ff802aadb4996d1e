"""The Flask app factory: `gunicorn 'api.app:create_app()'`."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from threadpoolctl import threadpool_limits

from api.errors import register_error_handlers
from api.gallery import gallery
from api.health import health
from api.metrics import install_metrics
from api.openapi import openapi_document
from api.views import v1
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    """The API; it follows the index journal in a background thread from the start."""
    from api.services import Services

    settings = settings or get_settings()
    # Requests are this process's parallelism: a BLAS call (the replica's exact tail, a filtered
    # search) on every core only contends with them and with a writer on the same host (a scan of
    # 1,024 rows, p99: 8.0 ms on two threads with the other core busy, 0.5 on one; p50 0.24 vs
    # 0.37 ms: bench/tail_scan.py, docs/benchmarks.md).
    threadpool_limits(1, user_api="blas")
    # The process id tells a gunicorn worker's lines from those of the one it hands over to.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [%(process)d] %(message)s"
    )
    app = Flask(__name__)
    # Room for the image and a form's other fields; the exact image limit is checked later.
    app.config["MAX_CONTENT_LENGTH"] = (
        settings.max_image_bytes + settings.max_metadata_bytes + 65536
    )
    services = Services(settings)
    app.extensions["lookalike"] = services
    app.extensions["metrics"] = install_metrics(app, services)
    register_error_handlers(app)
    app.register_blueprint(v1)
    app.register_blueprint(health)
    # A monitor's polls are not the queries that following must make way for.
    monitoring = frozenset(
        rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("health.")
    )
    app.wsgi_app = services.replica.traffic.middleware(app.wsgi_app, uncounted=monitoring)  # type: ignore[method-assign,assignment]
    app.register_blueprint(gallery)
    app.add_url_rule("/api/v1/openapi.json", "openapi", lambda: jsonify(openapi_document()))
    return app
