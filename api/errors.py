"""The API's errors and the one JSON error shape: {"error": {"code", "message"}}."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from shared.errors import LookalikeError, RedisUnavailable

log = logging.getLogger(__name__)

# Seconds a client is told to wait after any 503 (Redis away, index loading, overloaded).
RETRY_AFTER = "5"
INDEX_LOADING = "the index is loading; try again shortly"
REDIS_DOWN = "Redis is unavailable; try again shortly"
REDIS_FULL = "Redis is out of memory (its maxmemory); try again later"


class BadRequest(LookalikeError):
    code = "bad_request"
    http_status = 400


class Unauthorized(LookalikeError):
    code = "unauthorized"
    http_status = 401


class NotFound(LookalikeError):
    code = "not_found"
    http_status = 404


class NotIndexed(LookalikeError):
    code = "not_indexed"
    http_status = 409


class Unavailable(LookalikeError):
    code = "unavailable"
    http_status = 503


class IndexLoading(Unavailable):
    code = "index_loading"


class Overloaded(Unavailable):
    code = "overloaded"


def domain_error(exc: Exception) -> LookalikeError | None:
    """The domain error an exception stands for: a failure of Redis is a 503 (full: overloaded)."""
    if isinstance(exc, LookalikeError):
        return exc
    if isinstance(exc, redis.exceptions.OutOfMemoryError):  # a write past maxmemory
        return Overloaded(REDIS_FULL)
    if isinstance(exc, redis.RedisError):
        log.warning("Redis is unavailable: %s: %s", type(exc).__name__, exc)
        return RedisUnavailable(REDIS_DOWN)
    return None


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify(error={"code": code, "message": message}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Exception)
    def handle(exc: Exception) -> tuple[Response, int]:
        error = domain_error(exc)
        if error is not None:
            return error_response(error.http_status, error.code, error.message)
        if isinstance(exc, HTTPException):
            code = (exc.name or "error").lower().replace(" ", "_")
            return error_response(exc.code or 500, code, exc.description or exc.name)
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log")

    @app.after_request
    def retry_after(response: Response) -> Response:
        """Every 503, whichever view or handler made it, says when to try again."""
        if response.status_code == 503:
            response.headers.setdefault("Retry-After", RETRY_AFTER)
        return response
