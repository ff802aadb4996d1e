"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from api.metrics import render_metrics

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> Any:
    return jsonify(status="ok")


@health.get("/readyz")
def readyz() -> Any:
    checks = current_app.extensions["lookalike"].readiness()
    ready = all(
        value is True or (isinstance(value, int) and value > 0) for value in checks.values()
    )
    return jsonify(ready=ready, checks=checks), 200 if ready else 503


@health.get("/metrics")
def metrics() -> Any:
    body = render_metrics(current_app.extensions["lookalike"], current_app.extensions["metrics"])
    return Response(body, mimetype="text/plain; version=0.0.4")
