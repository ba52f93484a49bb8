"""One WebSocket session with a ``dsm serve`` (or Kyutai ``moshi-server``) route, for the services.

Opening a session and reading its messages go through :mod:`dsm.server.client`'s helpers, so the
services speak exactly the protocol ``dsm client`` speaks: the API key in the
``kyutai-api-key`` header, ``Ready`` first, ``Error`` or a refused upgrade as a
:class:`~dsm.errors.DsmError`, msgpack messages, and a close frame with a failure code as the
end of a failed session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from dsm.errors import DsmError
from dsm.server.client import close_failure, open_session, unpack_message

__all__ = [
    "CONNECT_ERRORS",
    "DEFAULT_KEY",
    "DEFAULT_URL",
    "SessionFailed",
    "connect",
    "endpoint",
    "messages",
]

DEFAULT_URL = "ws://127.0.0.1:8080"  # where ``dsm serve`` listens by default
DEFAULT_KEY = "public_token"  # the key of Kyutai's configs and clients

# What opening a session raises when the server is down, refuses it, or is too slow.
CONNECT_ERRORS = (DsmError, aiohttp.ClientError, OSError, asyncio.TimeoutError)


class SessionFailed(DsmError):
    """The server ended the session with a failure (the close frame's reason, or ``Error``)."""


def endpoint(url: str, path: str) -> str:
    """The WebSocket URL of ``path`` on the server at ``url`` (``ws://host:port``)."""
    return f"{url.rstrip('/')}{path}"


async def connect(
    http: aiohttp.ClientSession, url: str, api_key: str | None, timeout: float
) -> aiohttp.ClientWebSocketResponse[bool]:
    """Open the session at ``url`` and wait for ``Ready`` (a DsmError if refused)."""
    headers = {"kyutai-api-key": api_key} if api_key else {}
    return await asyncio.wait_for(open_session(http, url, headers, timeout), timeout)


async def messages(ws: aiohttp.ClientWebSocketResponse[bool]) -> AsyncIterator[dict[str, Any]]:
    """The server's messages until the session ends; a failed end raises :class:`SessionFailed`.

    A plain close (1000 without a reason, or 1005 from upstream's TTS) or the socket closed by
    this side just ends the iteration; dsm's idle timeout (1000 with a reason) is a failure."""
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            message = unpack_message(msg.data)
            if message["type"] == "Error":
                raise SessionFailed(str(message.get("message")))
            yield message
        elif msg.type == aiohttp.WSMsgType.TEXT:
            continue
        elif msg.type == aiohttp.WSMsgType.ERROR:
            raise SessionFailed(f"connection error: {msg.data}")
        else:  # CLOSE, CLOSING, CLOSED
            failure = close_failure(msg)
            if failure is None and msg.type == aiohttp.WSMsgType.CLOSE and msg.extra:
                failure = str(msg.extra)  # a 1000 with a reason: dsm's idle timeout
            if failure is not None:
                raise SessionFailed(failure)
            return
