"""The API's errors and the one JSON error shape: {"error": {"code", "message"}}."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from shared.errors import LookalikeError

log = logging.getLogger(__name__)


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


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify(error={"code": code, "message": message}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Exception)
    def handle(exc: Exception) -> tuple[Response, int]:
        if isinstance(exc, LookalikeError):
            return error_response(exc.http_status, exc.code, exc.message)
        if isinstance(exc, HTTPException):
            code = (exc.name or "error").lower().replace(" ", "_")
            return error_response(exc.code or 500, code, exc.description or exc.name)
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log")
