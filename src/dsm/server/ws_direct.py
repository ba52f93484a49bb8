"""The streaming routes' host path: client frames handled where they are parsed, results
written straight to the socket.

With aiohttp's own API a live STT stream costs the event loop a task wake-up for every
message received (``await ws.receive()``) and another for every batch of results sent (a
sender task woken through a queue), each followed by an awaited ``send_bytes`` per message.
At a thousand streams of 12.5 frames a second that, not the model, bounds a server. This module
removes both hops and keeps everything else of aiohttp (handshake, auth, ping/pong, close
handshake, heartbeat, limits):

* **receive**: :class:`DirectWebSocket` gives the connection's frame parser a queue whose
  binary messages go to a handler the route sets (:meth:`DirectWebSocket.set_binary_handler`),
  called synchronously as each frame is parsed. A handler that can't take a message now (too
  big to parse on the loop, Ogg Opus, a full channel) returns False: the message goes to the
  normal queue for ``ws.receive()``, and so does every binary message after it until the route
  has drained that queue (:meth:`DirectWebSocket.hold` / :meth:`DirectWebSocket.release`), so
  messages are always handled in the order they arrived. Control frames always go to the queue.
* **send**: :meth:`DirectWebSocket.write_messages` frames encoded messages (binary, unmasked,
  as a server writes them); what a connection queued during one pass of the event loop goes to
  its transport in one write after that pass (one system call, however many model steps were
  delivered in it). :attr:`DirectWebSocket.unsent` counts the messages written while the
  transport still held unsent bytes: a client that does not read its results shows up there.

Compression is not negotiated on these routes (upstream's server does not offer
``permessage-deflate`` either), so a frame on the wire is the message itself.

The direct receive needs aiohttp's parser classes (``aiohttp._websocket.reader``); when they
are not what this module expects it is not installed (:attr:`DirectWebSocket.direct` is False)
and every message goes through ``ws.receive()`` as before.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from dsm.engine.events import ChannelError, ChannelEvent
from dsm.engine.metrics import ServerMetrics
from dsm.engine.slots import Channel

__all__ = ["DirectWebSocket", "direct_sink", "frame"]

log = logging.getLogger("dsm.server")

BinaryHandler = Callable[[bytes], bool]

try:  # aiohttp's frame parser and its message queue (not public API: checked at start-up)
    from aiohttp._websocket import reader as _aiohttp_reader
except ImportError:  # pragma: no cover - an aiohttp without them: the plain path
    _aiohttp_reader = None  # type: ignore[assignment]
_Queue: Any = getattr(_aiohttp_reader, "WebSocketDataQueue", None)
_Reader: Any = getattr(_aiohttp_reader, "WebSocketReader", None)

_BINARY = WSMsgType.BINARY
_QUEUE_LIMIT = 2**16  # aiohttp's default: its queue pauses the socket over twice this


_SMALL_HEADS = [bytes((0x82, n)) for n in range(126)]  # the header of a payload under 126 bytes


def frame(payload: bytes) -> bytes:
    """One unmasked binary WebSocket frame (FIN set) holding ``payload``."""
    n = len(payload)
    if n < 126:
        return _SMALL_HEADS[n] + payload
    if n < 1 << 16:
        return b"\x82\x7e" + n.to_bytes(2, "big") + payload
    return b"\x82\x7f" + n.to_bytes(8, "big") + payload


if _Queue is not None:

    class _DirectQueue(_Queue):
        """aiohttp's message queue, with binary messages offered to a handler first."""

        def __init__(self, protocol: Any, limit: int, *, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__(protocol, limit, loop=loop)
            self.handler: BinaryHandler | None = None
            self.held = False

        def feed_data(self, data: Any, size: int) -> None:
            handler = self.handler
            if (
                handler is not None
                and not self.held
                and data.type is _BINARY
                and not self._buffer
                and handler(data.data)
            ):
                return
            # From the first message queued until the route has handled all of them, every
            # message queues (aiohttp may parse more frames while a message is being read).
            if handler is not None:
                self.held = True
            super().feed_data(data, size)


class DirectWebSocket(web.WebSocketResponse):
    """A server WebSocket with the direct receive and send of this module (no compression)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["compress"] = False
        super().__init__(**kwargs)
        self._direct_queue: Any = None
        self._transport: asyncio.Transport | None = None
        self._frames: list[bytes] = []  # frames queued for the next flush
        self._count = 0  # messages in them
        self._flusher: _Flusher | None = None
        self.unsent = 0

    @property
    def direct(self) -> bool:
        """The direct receive is installed (binary messages can reach the handler)."""
        return self._direct_queue is not None

    def _post_start(self, request: Any, protocol: Any, writer: Any) -> None:
        # aiohttp builds the connection's queue and parser here; build the same with the
        # direct queue instead, when this aiohttp's classes allow it.
        self._transport = request.transport
        if _Queue is None or _Reader is None or not self._install(request, protocol, writer):
            super()._post_start(request, protocol, writer)

    def _install(self, request: Any, protocol: Any, writer: Any) -> bool:
        try:
            self._ws_protocol = protocol
            self._writer = writer
            self._reset_heartbeat()
            loop = self._loop
            assert loop is not None  # set by _pre_start
            queue = _DirectQueue(request._protocol, _QUEUE_LIMIT, loop=loop)
            options: dict[str, Any] = {"compress": False}
            if hasattr(self, "_decode_text"):
                options["decode_text"] = self._decode_text
            parser = _Reader(queue, self._max_msg_size, **options)
            self._reader = queue
            self._parser = parser
            received = None if self._heartbeat is None else self._on_data_received
            request.protocol.set_parser(parser, data_received_cb=received)
            request.protocol.keep_alive(False)
        except (AttributeError, TypeError) as exc:  # another aiohttp: the plain path
            log.warning("direct WebSocket receive unavailable (%s); using ws.receive()", exc)
            return False
        self._direct_queue = queue
        return True

    def set_binary_handler(self, handler: BinaryHandler | None) -> None:
        """Offer each binary message to ``handler`` as it is parsed (None: stop); the handler
        returns False to leave the message (and those after it) to ``ws.receive()``."""
        if self._direct_queue is not None:
            self._direct_queue.handler = handler

    def hold(self) -> None:
        """The route is handling a message from ``ws.receive()``: later ones queue behind it."""
        if self._direct_queue is not None:
            self._direct_queue.held = True

    def release(self) -> None:
        """The route is done with that message: the handler takes new ones again once the
        queue holds none (until then they queue too)."""
        queue = self._direct_queue
        if queue is not None and not queue._buffer:
            queue.held = False

    @property
    def writable(self) -> bool:
        """Messages can still be written (no close frame sent, the transport is open)."""
        transport = self._transport
        return not (self.closed or transport is None or transport.is_closing())

    def write_messages(self, payloads: list[bytes]) -> None:
        """Queue encoded messages as binary frames, in order. Every connection's frames queued
        during one pass of the event loop go out in one transport write each, right after it
        (:class:`_Flusher`); a send or close through aiohttp writes them first. Dropped once
        the connection is closing: its close frame stays the last frame."""
        if not payloads:
            return
        if not self._frames:
            if self._flusher is None:
                self._flusher = _Flusher.of(self._loop)
            self._flusher.add(self)
        self._frames.extend([frame(p) for p in payloads])
        self._count += len(payloads)

    def flush(self) -> None:
        """Write the queued frames now (one transport write)."""
        frames, count = self._frames, self._count
        if not frames:
            return
        self._frames, self._count = [], 0
        transport = self._transport
        if transport is None or self.closed or transport.is_closing():
            return
        # Messages written while the transport still holds unsent bytes are waiting for the
        # client: a count that keeps growing is a client that does not read.
        self.unsent = self.unsent + count if transport.get_write_buffer_size() else 0
        transport.write(b"".join(frames))

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        """aiohttp's ``send_bytes``, after the queued frames."""
        self.flush()
        await super().send_bytes(data, compress)

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        """aiohttp's close, after the queued frames."""
        self.flush()
        return await super().close(code=code, message=message, drain=drain)


class _Flusher:
    """Writes the frames connections of one event loop queued, once per pass of that loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[DirectWebSocket] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop | None) -> _Flusher:
        """The flusher of ``loop`` (the running loop when None)."""
        loop = loop or asyncio.get_running_loop()
        flusher = _FLUSHERS.get(loop)
        if flusher is None:
            flusher = _FLUSHERS[loop] = cls(loop)
        return flusher

    def add(self, ws: DirectWebSocket) -> None:
        if not self.dirty:
            self.loop.call_soon(self.flush)
        self.dirty.append(ws)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for ws in dirty:
            ws.flush()


_FLUSHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)

SLOW_CLIENT = "too many unread results: the client is not reading; closing"


def direct_sink(
    ws: DirectWebSocket,
    channel: Channel,
    encode: Callable[[ChannelEvent], bytes | None],
    metrics: ServerMetrics,
) -> Callable[[list[ChannelEvent]], list[ChannelEvent] | None]:
    """A :attr:`~dsm.engine.slots.Channel.sink` that writes each batch of ``channel``'s events
    to ``ws`` as it arrives (``encode``: an event's message, None to send nothing).

    A :class:`~dsm.engine.events.ChannelError` and what follows it are left to the channel's
    queue (the route's sender ends the session with it); so is a ``ChannelError`` of its own
    when more than ``channel.max_pending`` messages wait unsent (the client does not read) or
    when ``encode`` fails. Nothing is written after that.
    """
    ended = False

    def sink(events: list[ChannelEvent]) -> list[ChannelEvent] | None:
        nonlocal ended
        if ended:
            return None
        payloads: list[bytes] = []
        rest: list[ChannelEvent] | None = None
        try:
            for i, event in enumerate(events):
                if type(event) is ChannelError:
                    rest = events[i:]
                    break
                payload = encode(event)
                if payload is not None:
                    payloads.append(payload)
        except Exception as exc:  # an encoder failure must still close the socket
            log.exception("%s: encoding a message failed", ws.__class__.__name__)
            rest = [ChannelError(f"encoding a message failed: {exc}")]
        ws.write_messages(payloads)
        if rest is None and ws.unsent > channel.max_pending:
            metrics.inc("dsm_slow_clients")
            rest = [ChannelError(SLOW_CLIENT, "client")]
        if rest is not None:
            ended = True
        return rest

    return sink
