"""One WebSocket session with ``dsm serve`` (or Kyutai's ``moshi-server``), failures as
livekit-agents' API errors.

The session is opened with :mod:`dsm.server.client`'s helpers, so the plugins speak exactly the
protocol ``dsm client`` speaks (API key in the ``kyutai-api-key`` header, ``Ready`` first). A
failure is raised as the error livekit-agents retries on: a refused upgrade is an
:class:`~livekit.agents.APIStatusError` with the HTTP status (401 and other 4xx are not
retried), a server that is down, full (``no free channels``) or too slow is an
:class:`~livekit.agents.APIConnectionError` / :class:`~livekit.agents.APITimeoutError`, and a
close frame with a failure code after ``Ready`` is an ``APIConnectionError`` with its reason.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError

from dsm.errors import DsmError
from dsm.server.client import DEFAULT_KEY, close_failure, expect_ready, handshake_error

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_URL",
    "close_error",
    "connect",
    "endpoint",
    "resolve_api_key",
]

DEFAULT_URL = "ws://127.0.0.1:8080"  # where ``dsm serve`` listens by default
API_KEY_ENV = "KYUTAI_API_KEY"  # the variable livekit-plugins-kyutai-lasuite reads too
_NOT_RETRIED_CLOSE = {1008}  # policy violation: an invalid message or unknown voice


def resolve_api_key(api_key: str | None) -> str:
    """``api_key``, else ``$KYUTAI_API_KEY``, else ``public_token`` (Kyutai's configs' key)."""
    return api_key or os.environ.get(API_KEY_ENV) or DEFAULT_KEY


def endpoint(base_url: str, path: str, query: Mapping[str, str] | None = None) -> str:
    """The WebSocket URL of ``path`` on the server at ``base_url``.

    ``base_url`` is ``ws://host:port`` (``http``/``https`` become ``ws``/``wss``); a URL that
    already ends with ``path`` is kept as it is.
    """
    parts = urlsplit(base_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    route = parts.path if parts.path.endswith(path) else parts.path + path
    return urlunsplit((scheme, parts.netloc, route, urlencode(dict(query or {})), ""))


async def connect(
    http: aiohttp.ClientSession, url: str, api_key: str, timeout: float
) -> aiohttp.ClientWebSocketResponse[bool]:
    """Open the session at ``url`` and wait for ``Ready`` (both within ``timeout`` seconds)."""
    try:
        ws = await asyncio.wait_for(
            http.ws_connect(url, headers={"kyutai-api-key": api_key}), timeout
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise APIStatusError(
            str(handshake_error(exc)), status_code=exc.status, body=exc.message
        ) from None
    except asyncio.TimeoutError:
        raise APITimeoutError(f"no answer from {_safe(url)} within {timeout} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise APIConnectionError(f"cannot connect to {_safe(url)}: {exc}") from exc
    try:
        await expect_ready(ws, timeout)
    except asyncio.TimeoutError:
        await ws.close()
        raise APITimeoutError(f"no Ready from {_safe(url)} within {timeout} s") from None
    except DsmError as exc:  # no free channels, or closed before Ready
        await ws.close()
        raise APIConnectionError(str(exc)) from None
    except BaseException:
        await ws.close()
        raise
    return ws


def close_error(msg: Any) -> APIError | None:
    """The error for a message that ends a session (a close frame with a failure code, an
    ``ERROR``); None for a normal close (1000, or 1005 from upstream's TTS)."""
    if msg.type == aiohttp.WSMsgType.ERROR:
        return APIConnectionError(f"the connection failed: {msg.data}")
    reason = close_failure(msg)
    if reason is None:
        return None
    return APIConnectionError(reason, retryable=msg.data not in _NOT_RETRIED_CLOSE)


def _safe(url: str) -> str:
    """``url`` without its query (which may hold an ``auth_id``)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
