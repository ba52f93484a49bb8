"""Reading from the streaming WebSockets: idle deadlines and work kept off the event loop.

``ws.receive(timeout=...)`` restarts its timeout whenever a control frame (a client ping, the
pong of the server's own heartbeat) arrives, so a client that only pings would hold its slot
forever. An :class:`IdleDeadline` runs beside the receive loop instead: the routes move it only
when the client sends what the session is for (audio for STT, text for TTS). Moving it is one
float store, so a live STT stream (12.5 messages a second) pays no timer per message, where
``asyncio.wait_for`` per message would create a task and a timer each time.

Parsing, tokenizing or decoding one message is cheap for the messages real clients send (one
80 ms frame, one word); beyond :data:`INLINE_LIMIT` bytes or characters the routes run that
work in the default executor so a large message never stalls the event loop (health checks,
every other connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["INLINE_LIMIT", "IdleDeadline", "off_loop"]

INLINE_LIMIT = 64 * 1024
T = TypeVar("T")


class IdleDeadline:
    """Calls ``on_expire`` once, on the event loop, when ``seconds`` pass without a
    :meth:`touch` (create it from a coroutine on that loop).

    The timer fires at the first deadline and re-arms itself at the moved one, so it costs one
    timer per ``seconds`` of activity. :meth:`pause` stops the clock (a connection waiting for
    the model, or done sending); the next :meth:`touch` restarts it.
    """

    def __init__(self, seconds: float, on_expire: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self.seconds = seconds
        self._on_expire = on_expire
        self.deadline = 0.0
        self.expired = False
        self._handle: asyncio.TimerHandle | None = None
        self.touch()

    def touch(self) -> None:
        """The client did what the session is for: the deadline is ``seconds`` from now."""
        self.deadline = self._loop.time() + self.seconds
        if self._handle is None and not self.expired:
            self._handle = self._loop.call_at(self.deadline, self._check)

    def pause(self) -> None:
        """No deadline until the next :meth:`touch`."""
        self.cancel()

    def cancel(self) -> None:
        """Stop the timer (the session is over)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        if self._loop.time() < self.deadline:
            self._handle = self._loop.call_at(self.deadline, self._check)
            return
        self._handle = None
        self.expired = True
        self._on_expire()


async def off_loop(size: int, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``: inline for inputs of ``size`` up to :data:`INLINE_LIMIT`, else in the
    default executor (calls for one connection are awaited in order, so they never overlap)."""
    if size <= INLINE_LIMIT:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
