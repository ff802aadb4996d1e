"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import generate_latest

from api.services import current_services

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> Any:
    return jsonify(status="ok")


@health.get("/readyz")
def readyz() -> Any:
    checks = current_services().readiness()
    ready = not any(isinstance(value, str) for value in checks.values())  # failures are reasons
    body = {"ready": ready, "checks": checks, **current_services().index_model()}
    if not isinstance(checks["redis"], str):
        body["lag"] = current_services().lags()
    if isinstance(checks["redis"], str):  # the one error shape as well, for clients that read it
        body["error"] = {"code": "redis_unavailable", "message": f"Redis is {checks['redis']}"}
    return jsonify(body), 200 if ready else 503


@health.get("/metrics")
def metrics() -> Any:
    body = generate_latest(current_app.extensions["metrics"].registry)
    return Response(body, mimetype="text/plain; version=0.0.4")
