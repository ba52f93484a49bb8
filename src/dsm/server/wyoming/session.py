"""What the Wyoming sessions share: the connection's serialized writer and error codes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from wyoming.event import Event

from dsm.engine.events import ChannelError, FailureCause
from dsm.server.ws_io import IdleDeadline
from dsm.server.wyoming.events import error_event, write_event

__all__ = ["CODES", "EventWriter", "SlotSession", "failure_event"]

# Wyoming ``error`` codes by why a channel ended.
CODES: dict[FailureCause, str] = {
    "client": "invalid-input",
    "idle": "timeout",
    "server": "internal",
    "shutdown": "shutdown",
}


class EventWriter:
    """The only writer to one connection's socket: events from the read loop and from a
    session's sender go out whole and in order."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._lock = asyncio.Lock()

    async def send(self, event: Event) -> None:
        """Write one event (raises ConnectionError once the client has gone)."""
        async with self._lock:
            if self.writer.is_closing():
                raise ConnectionResetError("the Wyoming client has gone")
            await write_event(self.writer, event)


def failure_event(failure: ChannelError) -> Event:
    """The ``error`` event for a failed channel."""
    return error_event(failure.message, CODES[failure.cause])


class SlotSession:
    """What a transcription and a synthesis share: one claimed channel of ``module``, the task
    that sends its results, an idle deadline, and how it reports a failure and frees the slot."""

    def __init__(self, module: Any, channel: Any, out: EventWriter) -> None:
        self.module = module
        self.channel = channel
        self.out = out
        self.failed = False
        self._sender: asyncio.Task[None] | None = None
        self._deadline: IdleDeadline | None = None

    @property
    def ended(self) -> bool:
        """The channel failed, or the sender is done."""
        return self.channel.failed or (self._sender is not None and self._sender.done())

    async def _fail(self, failure: ChannelError) -> None:
        self.failed = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.out.send(failure_event(failure))

    async def close(self) -> None:
        """Free the slot (the connection ended, or the session's results were sent)."""
        if self._deadline is not None:
            self._deadline.cancel()
        self.module.release(self.channel)
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
