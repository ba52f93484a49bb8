"""``GET /api/asr-streaming``: Kyutai's streaming STT WebSocket (server-protocol.md §2).

One connection = one slot. Client frames are parsed into the channel as aiohttp's parser
finishes them, and the channel's results are written to the socket as the model thread hands
them over (:mod:`dsm.server.ws_direct`); the receive loop (this coroutine) takes what that path
leaves (control frames, Ogg Opus, large messages) and the sender task ends the session. Before
``Ready`` a refusal is an ``Error`` message then a close (``no free channels``, as upstream);
after it every failure (invalid message, timeout, failed model, slow client) ends the session
through :func:`dsm.server.closing.end_session`: a close frame with a code and the reason.

Flow control: when a connection has more than ``max_buffered_seconds`` of audio queued, the
handler stops reading from its socket until the model catches up; TCP pushes back on the
client, and no other connection is slowed. A client that does not read its results is dropped
once ``max_pending_messages`` are waiting. A connection that sends no audio for
``idle_timeout_s`` (pings and markers don't count), or stops answering pings, loses its slot.
Large messages are parsed, and Ogg Opus is decoded, off the event loop; an ``OggOpus``
message over ``max_ogg_message_bytes`` is refused.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from aiohttp import WSMsgType, web

from dsm.engine.events import ChannelError
from dsm.engine.slots import ModuleUnavailable
from dsm.engine.stt import SttChannel
from dsm.server.closing import end_session
from dsm.server.protocol import (
    AudioIn,
    MarkerIn,
    OggOpusIn,
    ProtocolError,
    SttInput,
    encode,
    encode_event,
    error,
    fast_audio,
    parse_stt_message,
)
from dsm.server.state import SERVER_KEY, DsmServer
from dsm.server.ws_direct import DirectWebSocket, direct_sink
from dsm.server.ws_io import INLINE_LIMIT, IdleDeadline, off_loop

__all__ = ["NO_FREE_CHANNELS", "add_routes", "handle_stt_websocket"]

log = logging.getLogger("dsm.server")

NO_FREE_CHANNELS = "no free channels"
_SENDER_GRACE_S = 5.0


async def _reject(ws: web.WebSocketResponse, message: str) -> web.WebSocketResponse:
    try:
        await ws.send_bytes(error(message))
        await ws.close()
    except (ConnectionError, RuntimeError):
        pass
    return ws


async def _send_loop(ws: web.WebSocketResponse, channel: SttChannel, server: DsmServer) -> None:
    """Ends the session: the channel's results are written by its sink as they arrive
    (:func:`~dsm.server.ws_direct.direct_sink`); its queue gets only the end of the stream or
    a failure."""
    failure: ChannelError | None = None
    try:
        while failure is None:
            batch = await channel.get()
            if batch is None:
                break
            for event in batch:
                if isinstance(event, ChannelError):
                    failure = event
                    break
                payload = encode_event(event)
                if payload is not None:
                    await ws.send_bytes(payload)
    except (ConnectionError, RuntimeError, asyncio.CancelledError):
        pass
    finally:
        await end_session(ws, failure, error_message=server.config.error_messages)


class _Input:
    """A connection's input side: parses client frames into its channel, on the event loop
    as each frame is parsed (:meth:`direct`) or from ``ws.receive()`` (:meth:`take`)."""

    def __init__(self, channel: SttChannel, server: DsmServer) -> None:
        self.channel = channel
        self.server = server
        self.parser = SttInput()  # keeps the connection's Ogg Opus decoder
        self.wake = server.stt_module_or_fail().wake  # the module's: one per server
        idle = server.config.stt.idle_timeout_s

        def expire() -> None:
            # The sender then closes the socket, which ends the ``ws.receive()`` loop.
            server.metrics.inc("dsm_timeouts")
            channel.fail(f"no audio received for {idle:g} s: closing the connection", "idle")

        self.deadline = IdleDeadline(idle, expire)

    def direct(self, data: bytes) -> bool:
        """A binary frame as it is parsed; False leaves it to :meth:`take` (a large message, Ogg
        Opus, or a channel over its bound: the socket is then read no further for a while)."""
        channel = self.channel
        if channel.failed or channel.closed:
            return True  # the session is ending: drop
        if len(data) > INLINE_LIMIT or channel.full:
            return False
        try:
            pcm = fast_audio(data)  # a live stream's frames: straight to the channel
            if pcm is not None:
                self.push(pcm)
                return True
            parsed = parse_stt_message(data)
        except ProtocolError as exc:
            self.refuse(exc)
            return True
        if isinstance(parsed, OggOpusIn):
            return False
        self.accept(parsed)
        return True

    async def take(self, data: bytes) -> bool:
        """A binary frame from ``ws.receive()``; False once the channel failed on it."""
        try:
            parsed = await _parse(self.parser, data, self.server)
        except ProtocolError as exc:
            self.refuse(exc)
            return False
        self.accept(parsed)
        return True

    def refuse(self, exc: ProtocolError) -> None:
        self.server.metrics.inc("dsm_protocol_errors")
        self.channel.fail(str(exc), "client")

    def accept(self, parsed: AudioIn | MarkerIn | None) -> None:
        if isinstance(parsed, AudioIn):
            self.push(parsed.pcm)
        elif isinstance(parsed, MarkerIn):
            self.channel.push_marker(parsed.id)
            self.wake_model()

    def push(self, pcm: np.ndarray) -> None:
        """Queue client samples (an empty array is ignored) and wake the model thread."""
        if pcm.size:
            self.channel.push_audio(pcm)
            self.deadline.touch()
            self.wake_model()

    def wake_model(self) -> None:
        """Wake the model thread for input just queued."""
        # The model thread clears ``wake`` before it reads the channels, so a set flag means
        # the input just queued will be seen; skipping the set saves a lock per message.
        if not self.wake.is_set():
            self.wake.set()


async def _receive_loop(ws: DirectWebSocket, channel: SttChannel, source: _Input) -> None:
    """What the direct path leaves: control frames, the close, and the binary frames it
    declined (in order: while one is handled here, later ones queue behind it)."""
    deadline = source.deadline
    try:
        while not ws.closed and not channel.closed and not channel.failed:
            if channel.full:
                deadline.pause()  # waiting for the model is not the client's idleness
                while channel.full and not ws.closed:
                    await asyncio.sleep(0.01)
                deadline.touch()
            msg = await ws.receive()
            if channel.failed:
                return
            if msg.type == WSMsgType.BINARY:
                ws.hold()
                try:
                    if not await source.take(msg.data):
                        return
                finally:
                    ws.release()
            elif msg.type == WSMsgType.TEXT:
                continue  # upstream ignores text frames on the STT socket
            else:  # CLOSE, CLOSING, CLOSED, ERROR (e.g. a message over max_msg_size)
                if msg.type == WSMsgType.ERROR:
                    server = source.server
                    server.metrics.inc("dsm_protocol_errors")
                return
    finally:
        ws.set_binary_handler(None)
        deadline.cancel()


async def _parse(parser: SttInput, data: bytes, server: DsmServer) -> AudioIn | MarkerIn | None:
    """One client frame; large ones are parsed, and Ogg Opus always decoded, off the loop."""
    parsed = await off_loop(len(data), parse_stt_message, data)
    if not isinstance(parsed, OggOpusIn):
        return parsed
    limit = server.config.stt.max_ogg_message_bytes
    if len(parsed.data) > limit:
        raise ProtocolError(
            f"an OggOpus message holds {len(parsed.data)} bytes, over the limit of {limit}: "
            "send the stream in smaller pieces (e.g. one Ogg page per message)"
        )
    return await asyncio.get_running_loop().run_in_executor(None, parser.decode, parsed)


async def handle_stt_websocket(request: web.Request) -> web.StreamResponse:
    """The STT WebSocket endpoint (auth, slot, Ready, then the two loops)."""
    server = request.app[SERVER_KEY]
    server.check_key(request, allow_query=True)
    config = server.config
    ws = DirectWebSocket(
        max_msg_size=config.stt.max_message_bytes,
        heartbeat=config.heartbeat_s if config.heartbeat_s > 0 else None,
        autoping=True,
    )
    await ws.prepare(request)
    server.metrics.inc("asr_connect")
    module = server.stt_module_or_fail()
    try:
        channel = module.new_channel(asyncio.get_running_loop())
    except ModuleUnavailable as exc:
        return await _reject(ws, str(exc))
    if channel is None:
        server.metrics.inc("dsm_rejected_no_free_channels")
        log.warning("stt: no free channels (%d slots busy)", module.batch_size)
        return await _reject(ws, NO_FREE_CHANNELS)
    log.info("stt connection on slot %d", channel.slot)
    sender: asyncio.Task[None] | None = None
    try:
        # Results go straight to the socket from here on; Ready is written first (an
        # uncompressed send writes before it yields to the loop).
        channel.sink = direct_sink(ws, channel, encode_event, server.metrics)
        await ws.send_bytes(encode({"type": "Ready"}))
        source = _Input(channel, server)
        ws.set_binary_handler(source.direct)
        sender = asyncio.create_task(_send_loop(ws, channel, server))
        await _receive_loop(ws, channel, source)
        if not ws.closed:
            # The receive loop failed the channel: let the sender close the socket.
            await asyncio.wait({sender}, timeout=_SENDER_GRACE_S)
    except (ConnectionError, RuntimeError):
        pass
    finally:
        module.release(channel)
        if sender is not None and not sender.done():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        log.info("stt connection on slot %d ended", channel.slot)
    return ws


def add_routes(app: web.Application, server: DsmServer) -> None:
    """Register the STT WebSocket route (when the server has an STT model)."""
    if server.stt is not None:
        app.router.add_get(server.config.stt.path, handle_stt_websocket)
