"""What the Wyoming sessions share: the connection's serialized writer and error codes."""

from __future__ import annotations

import asyncio

from wyoming.event import Event

from dsm.engine.events import ChannelError, FailureCause
from dsm.server.wyoming.events import error_event, write_event

__all__ = ["CODES", "EventWriter", "failure_event"]

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
