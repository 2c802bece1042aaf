"""One error shape for every 4xx/5xx: ``{"error": {"message", "type", "code"}}``.

The FastAPI handlers installed by :func:`install_error_handlers` turn every failure (our own
:class:`ApiError`, FastAPI validation errors, Starlette 404/405, anything unexpected) into that
shape; a stack trace never reaches the client, it goes to the server log.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# The OpenAI-style ``type`` for each status we send.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
    500: "server_error",
}


class ApiError(Exception):
    """An error to send to the client as the JSON error shape.

    Args:
        status: HTTP status code.
        message: what was wrong and what to do; never contains a stack trace.
        code: short machine-readable reason, e.g. ``"queue_full"``.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    """The JSON error body for ``status``."""
    err_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    # Messages may quote client input (field names); lone surrogates in it could not be encoded.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": err_type, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    """A :class:`JSONResponse` carrying ``err`` in the error shape."""
    return JSONResponse(error_body(err.status, err.message, err.code), status_code=err.status,
                        headers=err.headers)


def describe_validation_errors(errors: list[dict[str, Any]], limit: int = 5) -> tuple[int, str, str]:
    """Summarise pydantic errors as ``(status, message, code)`` without echoing the input.

    A body that is not JSON at all (or not UTF-8) is a 400; a JSON body of the wrong shape a 422.
    """
    if any(e.get("type") in ("json_invalid", "json_type") for e in errors):
        first = next(e for e in errors if e.get("type") in ("json_invalid", "json_type"))
        reason = (first.get("ctx") or {}).get("error") or first.get("msg", "malformed")
        loc = first.get("loc", ())
        at = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        return 400, f"request body is not valid JSON: {reason}{at}", "invalid_json"
    parts = []
    for e in errors[:limit]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return 422, "; ".join(parts) + more, "validation_error"


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so that every error leaves ``app`` in the JSON error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, code = describe_validation_errors(list(exc.errors()))
        return JSONResponse(error_body(status, message, code), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            message, code = "no such route; see GET /docs for the routes this server has", "not_found"
        elif status == 405:
            message, code = "method not allowed on this route", "method_not_allowed"
        elif status == 400:
            # FastAPI raises this when the body cannot be decoded (e.g. invalid UTF-8).
            message, code = "request body could not be parsed as JSON (is it UTF-8?)", "invalid_json"
        else:
            message, code = str(exc.detail), "http_error"
        return JSONResponse(error_body(status, message, code), status_code=status,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.exception("unexpected error %s on %s %s", incident, request.method, request.url.path)
        return JSONResponse(error_body(500, f"internal error (incident {incident}); see the server log",
                                       "internal_error"), status_code=500)
