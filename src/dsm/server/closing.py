"""How a WebSocket session ends after ``Ready``: the one place every mid-stream failure goes.

Upstream sends an ``Error`` message only for ``no free channels`` (before ``Ready``) and
otherwise just closes; Unmute's STT loop raises on any other message type, so an ``Error``
after ``Ready`` kills its STT task. dsm therefore ends a failed session with a close frame
whose code and reason say why, and sends no ``Error`` after ``Ready`` unless the server setting
``error_messages`` asks for one (before the close):

=============  ======  =======================================================================
cause          code    examples
=============  ======  =======================================================================
``client``     1008    invalid message, unknown voice, a client that doesn't read
``idle``       1000    no input for ``idle_timeout_s`` (a normal closure: the ``websockets``
                       client Unmute uses ends its loop cleanly only on 1000/1001)
``server``     1011    model failure, encoder failure
``shutdown``   1001    the server is stopping
=============  ======  =======================================================================

A normal end is a plain close (1000). The reason text is cut to fit a close frame.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSCloseCode, web

from dsm.engine.events import ChannelError, FailureCause
from dsm.server.protocol import error

__all__ = ["CLOSE_CODES", "close_reason", "end_session"]

CLOSE_CODES: dict[FailureCause, int] = {
    "client": WSCloseCode.POLICY_VIOLATION,
    "idle": WSCloseCode.OK,
    "server": WSCloseCode.INTERNAL_ERROR,
    "shutdown": WSCloseCode.GOING_AWAY,
}
_MAX_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, 2 of them the code
_CLOSE_GRACE_S = 5.0


def close_reason(message: str) -> bytes:
    """``message`` as a close-frame reason: UTF-8, cut at a character boundary to fit."""
    data = message.encode()
    if len(data) <= _MAX_REASON_BYTES:
        return data
    return data[:_MAX_REASON_BYTES].decode(errors="ignore").encode()


async def end_session(
    ws: web.WebSocketResponse,
    failure: ChannelError | None,
    *,
    error_message: bool = False,
    code: int | None = None,
) -> None:
    """Close ``ws``: plainly, or for ``failure`` with its code and reason (preceded by an
    ``Error`` message when ``error_message``). ``code`` overrides the cause's code. Never
    raises: a client that is gone is simply gone."""
    if ws.closed:
        return
    close_code, reason = int(WSCloseCode.OK), b""
    if failure is not None:
        close_code = CLOSE_CODES[failure.cause] if code is None else code
        reason = close_reason(failure.message)
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
        if failure is not None and error_message:
            await ws.send_bytes(error(failure.message))
        await asyncio.wait_for(ws.close(code=close_code, message=reason), _CLOSE_GRACE_S)
