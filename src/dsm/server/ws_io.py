"""Reading from the streaming WebSockets: idle deadlines and work kept off the event loop.

``ws.receive(timeout=...)`` restarts its timeout whenever a control frame (a client ping, the
pong of the server's own heartbeat) arrives, so a client that only pings would hold its slot
forever. :func:`receive_before` waits against a fixed deadline instead: the routes move it only
when the client sends what the session is for (audio for STT, text for TTS).

Parsing, tokenizing or decoding one message is cheap for the messages real clients send (one
80 ms frame, one word); beyond :data:`INLINE_LIMIT` bytes or characters the routes run that
work in the default executor so a large message never stalls the event loop (health checks,
every other connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from aiohttp import WSMessage, web

__all__ = ["INLINE_LIMIT", "off_loop", "receive_before"]

INLINE_LIMIT = 64 * 1024
T = TypeVar("T")


async def receive_before(ws: web.WebSocketResponse, deadline: float | None) -> WSMessage:
    """The next message, or :class:`asyncio.TimeoutError` at loop time ``deadline``.

    None: no deadline. Control frames answered while waiting do not move the deadline.
    """
    if deadline is None:
        return await ws.receive()
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise asyncio.TimeoutError
    return await asyncio.wait_for(ws.receive(), remaining)


async def off_loop(size: int, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``: inline for inputs of ``size`` up to :data:`INLINE_LIMIT`, else in the
    default executor (calls for one connection are awaited in order, so they never overlap)."""
    if size <= INLINE_LIMIT:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
