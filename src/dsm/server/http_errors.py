"""JSON error bodies for every HTTP route, in OpenAI's shape.

Every 4xx/5xx the server answers over HTTP has the body
``{"error": {"message": ..., "type": ..., "code": ...}}`` (what OpenAI's API sends, so its
official client shows ``message``). Handlers raise :class:`ApiError` (or any aiohttp
``HTTPException``); :func:`errors_middleware` turns the exceptions into that body.

Malformed request bodies (a multipart without boundary or cut short, an unknown charset, a
field that is not UTF-8, a bad gzip, JSON nested past Python's recursion limit) are client
errors: :data:`MALFORMED_BODY` lists the exceptions that reading them raises, and
:func:`read_guard` turns them into 400.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from dsm.engine.slots import ModuleUnavailable

__all__ = [
    "MALFORMED_BODY",
    "ApiError",
    "error_body",
    "errors_middleware",
    "json_error",
    "read_guard",
]

_log = logging.getLogger(__name__)

# OpenAI's ``type`` and ``code`` for each status this server uses.
_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}

_DEFAULT_MESSAGES = {
    401: "missing or invalid API key: send it as 'Authorization: Bearer KEY' or the "
    "'kyutai-api-key' header",
    404: "no such route; GET /openapi.json lists this server's HTTP routes",
    413: "the request body is too large",
}

# What reading a malformed body raises: bad multipart framing (ValueError, AssertionError in
# aiohttp's reader), unknown charset (LookupError), non-UTF-8 text (UnicodeDecodeError, a
# ValueError), deep JSON (RecursionError), a body cut short or a bad gzip (payload errors).
MALFORMED_BODY: tuple[type[BaseException], ...] = (
    ValueError,
    LookupError,
    RecursionError,
    AssertionError,
    ClientPayloadError,
    HttpProcessingError,
    RequestPayloadError,
)


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for ``status`` with ``message`` (``code`` overrides the default)."""
    kind, default_code = _KINDS.get(
        status, ("invalid_request_error" if status < 500 else "server_error", None)
    )
    return {"error": {"message": message, "type": kind, "code": code or default_code}}


def json_error(status: int, message: str, code: str | None = None) -> web.Response:
    """A JSON error response (for handlers that return rather than raise)."""
    return web.json_response(error_body(status, message, code), status=status)


class ApiError(Exception):
    """An HTTP error to ``raise`` from a handler; :func:`errors_middleware` answers it."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@contextmanager
def read_guard(what: str) -> Iterator[None]:
    """Turn the exceptions of reading a malformed body into 400 naming ``what`` was expected."""
    try:
        yield
    except web.HTTPException:
        raise
    except MALFORMED_BODY as exc:
        detail = str(exc) or type(exc).__name__
        raise ApiError(400, f"malformed request body: {what} ({detail})") from None


def _message_of(exc: web.HTTPException) -> str:
    text = exc.text or ""
    prefix = f"{exc.status}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    if not text or text == exc.reason:
        return _DEFAULT_MESSAGES.get(exc.status, text or HTTPStatus(exc.status).phrase)
    return text


def _close_broken_body(request: web.Request, response: web.StreamResponse) -> None:
    """After a body that failed to parse (e.g. bad gzip), close the connection: aiohttp would
    otherwise drain the rest of the body, hit the same error and drop the connection before the
    error response is sent."""
    if request.content.exception() is not None:
        request.content.feed_eof()
        response.force_close()


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answer every HTTP error with :func:`error_body`'s JSON (responses already started are
    left alone: their status and headers are on the wire)."""
    try:
        return await handler(request)
    except ConnectionResetError:
        raise  # the client left: nobody to answer
    except Exception as exc:
        response = None if request.writer.output_size > 0 else _response_for(request, exc)
        if response is None:
            raise
    _close_broken_body(request, response)
    return response


def _response_for(request: web.Request, exc: Exception) -> web.Response | None:
    """The JSON answer to ``exc`` (None: let aiohttp handle it, e.g. a redirect)."""
    if isinstance(exc, ApiError):
        return json_error(exc.status, exc.message, exc.code)
    if isinstance(exc, ModuleUnavailable):
        return json_error(503, str(exc))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or exc.content_type == "application/json":
            return None
        response = json_error(exc.status, _message_of(exc))
        for name, value in exc.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                response.headers.setdefault(name, value)
        return response
    _log.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
    return json_error(500, "internal server error (logged on the server)")
