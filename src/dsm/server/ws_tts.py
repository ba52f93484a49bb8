"""``GET /api/tts_streaming``: Kyutai's streaming TTS WebSocket (server-protocol.md §3).

Query: ``format``, ``voice``, ``auth_id``; anything else (``cfg_alpha``...) is ignored, as
upstream. Client messages: ``Text`` (whole words), ``Eos``, the legacy text frame and ``b"\\0"``;
``Voice`` (custom embeddings) is answered with an ``Error``. The server sends each 80 ms frame
as soon as it is generated, then closes the socket. Formats, as upstream's ``StreamingOutput``:

``OggOpus`` (the default, as upstream)
    binary frames of raw Ogg Opus: first the header (``OpusHead`` and ``OpusTags`` pages), then
    one frame per 80 ms of audio holding its two 40 ms Opus packets, one page each. No
    ``Ready``, ``Text`` or ``Error``.
``OggOpusMessagePack``
    msgpack ``Ready``, then ``{"type": "OggOpus", "data": [...]}`` carrying the same Ogg bytes
    (the header first; ``data`` is an array of byte values, as upstream's serde ``Vec<u8>``),
    with ``Text`` and ``Error`` messages.
``PcmMessagePack``
    msgpack ``Ready``, ``Audio`` (``pcm``: 1920 float32 samples), ``Text``, ``Error``.
``Pcm``
    binary frames of 1920 little-endian float32 samples only.

Beyond upstream, compatible: the Ogg formats end with a last message holding the end-of-stream
page (codec delay flushed, exact length), so the concatenated stream is a complete file; and
the formats that can't carry an ``Error`` close the socket with a status code and the reason
(1013 "no free channels", 1011 otherwise) where upstream just drops the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from dsm.engine.slots import ModuleUnavailable
from dsm.engine.tts import TtsChannel, TtsModule
from dsm.server.protocol import ProtocolError, encode, error, message_of
from dsm.server.state import SERVER_KEY, DsmServer
from dsm.server.ws_io import off_loop, receive_before

if TYPE_CHECKING:
    from dsm.audio.opus import OggOpusEncoder

__all__ = ["DEFAULT_FORMAT", "FORMATS", "TtsWire", "add_routes", "handle_tts_websocket"]

log = logging.getLogger("dsm.server")

FORMATS = ("OggOpus", "OggOpusMessagePack", "PcmMessagePack", "Pcm")
DEFAULT_FORMAT = "OggOpus"  # upstream's default (main.rs default_format)
NO_FREE_CHANNELS = "no free channels"
_GRACE_S = 5.0
_MAX_REASON_BYTES = 120  # a close frame's reason must fit in 123 bytes


def _parse(data: bytes) -> tuple[str, str]:
    """One binary client frame: ``("text", words)`` or ``("eos", "")``."""
    if data == b"\0":
        return "eos", ""
    try:
        message = msgpack.unpackb(data, raw=False)
    except Exception:
        raise ProtocolError("message is not valid msgpack") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('a message must be a msgpack map with a string "type"')
    kind = message["type"]
    if kind == "Text":
        if not isinstance(message.get("text"), str):
            raise ProtocolError('a Text message needs a string "text"')
        return "text", message["text"]
    if kind == "Eos":
        return "eos", ""
    if kind == "Voice":
        raise ProtocolError("custom voice embeddings are not supported; use the voice= parameter")
    raise ProtocolError(f"unknown message type {kind!r}; expected Text or Eos")


class TtsWire:
    """One connection's output format: turns module messages into WebSocket payloads.

    Holds the connection's Ogg Opus encoder for the Ogg formats; :meth:`start` gives the
    opening payloads, :meth:`message` one per module message (None: not sent in this format),
    :meth:`end` the last one (None when there is nothing to add).
    """

    def __init__(self, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r} is not supported; use one of {FORMATS}")
        self.format = fmt
        self.msgpack = fmt.endswith("MessagePack")
        self.opus: OggOpusEncoder | None = None
        if fmt.startswith("OggOpus"):
            from dsm.audio.opus import OggOpusEncoder

            self.opus = OggOpusEncoder()

    def _ogg(self, data: bytes) -> bytes:
        if self.msgpack:
            return encode({"type": "OggOpus", "data": list(data)})
        return data

    def start(self) -> list[bytes]:
        """``Ready`` (msgpack formats) then the Ogg header (Ogg formats)."""
        out = [encode({"type": "Ready"})] if self.msgpack else []
        if self.opus is not None:
            out.append(self._ogg(self.opus.header()))
        return out

    def message(self, message: dict[str, Any]) -> bytes | None:
        """The payload for one module message (``Audio``, ``Text``, ``Error``)."""
        if message["type"] == "Audio":
            pcm = np.asarray(message["pcm"], dtype=np.float32)
            if self.opus is not None:
                data = self.opus.encode(pcm)
                return self._ogg(data) if data else None
            if self.format == "Pcm":
                return pcm.astype("<f4").tobytes()
            return encode({"type": "Audio", "pcm": pcm.tolist()})
        return encode(message) if self.msgpack else None

    def end(self) -> bytes | None:
        """The end-of-stream Ogg page (Ogg formats), after the last audio."""
        if self.opus is None:
            return None
        return self._ogg(self.opus.finish())


async def _close(ws: web.WebSocketResponse, wire: TtsWire, failure: str | None) -> None:
    if ws.closed:
        return
    code, reason = WSCloseCode.OK, b""
    if failure is not None and not wire.msgpack:
        busy = failure == NO_FREE_CHANNELS
        code = WSCloseCode.TRY_AGAIN_LATER if busy else WSCloseCode.INTERNAL_ERROR
        reason = failure.encode()[:_MAX_REASON_BYTES]
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
        await asyncio.wait_for(ws.close(code=code, message=reason), _GRACE_S)


async def _send_loop(ws: web.WebSocketResponse, channel: TtsChannel, wire: TtsWire) -> None:
    failure: str | None = None
    try:
        while True:
            batch = await channel.get()
            if batch is None:
                break
            for message in map(message_of, batch):
                if message["type"] == "Error":
                    failure = str(message.get("message"))
                payload = wire.message(message)
                if payload is not None:
                    await ws.send_bytes(payload)
            if channel.overflow:
                failure = "too many unread messages: closing"
                if wire.msgpack:
                    await ws.send_bytes(error(failure))
                break
        if failure is None:
            tail = wire.end()
            if tail:
                await ws.send_bytes(tail)
    except (ConnectionError, RuntimeError, asyncio.CancelledError):
        pass
    except Exception as exc:  # an encoder failure must still close the socket
        log.exception("tts: sending to the client failed")
        failure = f"encoding the audio failed: {exc}"
    finally:
        await _close(ws, wire, failure)


async def _receive_loop(
    ws: web.WebSocketResponse, channel: TtsChannel, module: TtsModule, server: DsmServer
) -> None:
    idle = server.config.tts.idle_timeout_s
    loop = asyncio.get_running_loop()
    last_text = loop.time()
    while not ws.closed and not channel.closed and not channel.failed:
        try:
            # After Eos the client only waits for audio: no idle limit then.
            msg = await receive_before(ws, None if channel.eos else last_text + idle)
        except asyncio.TimeoutError:
            server.metrics.inc("dsm_timeouts")
            channel.fail(f"no text received for {idle:g} s: closing the connection")
            return
        if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
            try:
                kind, text = ("text", msg.data) if msg.type == WSMsgType.TEXT else _parse(msg.data)
            except ProtocolError as exc:
                server.metrics.inc("dsm_protocol_errors")
                channel.fail(str(exc))
                return
            if kind == "text":
                if text.strip():
                    last_text = loop.time()
                await off_loop(len(text), channel.push_text, text)
            else:
                channel.end_text()
            module.wake.set()
        else:
            return


async def handle_tts_websocket(request: web.Request) -> web.StreamResponse:
    """The TTS WebSocket endpoint."""
    server = request.app[SERVER_KEY]
    server.check_key(request, allow_query=True)
    fmt = request.query.get("format", DEFAULT_FORMAT)
    if fmt not in FORMATS:
        raise web.HTTPBadRequest(text=f"format {fmt!r} is not supported; use one of {FORMATS}")
    module = server.tts
    if module is None:
        raise web.HTTPNotFound(text="this server has no TTS model")
    wire = TtsWire(fmt)
    ws = web.WebSocketResponse(
        max_msg_size=server.config.tts.max_message_bytes,
        heartbeat=server.config.heartbeat_s if server.config.heartbeat_s > 0 else None,
    )
    await ws.prepare(request)
    server.metrics.inc("py_connect")
    try:
        channel = module.new_channel(asyncio.get_running_loop(), request.query.get("voice"))
    except ModuleUnavailable as exc:
        return await _reject(ws, wire, str(exc))
    if channel is None:
        server.metrics.inc("dsm_rejected_no_free_channels")
        return await _reject(ws, wire, NO_FREE_CHANNELS)
    sender: asyncio.Task[None] | None = None
    try:
        for payload in wire.start():
            await ws.send_bytes(payload)
        sender = asyncio.create_task(_send_loop(ws, channel, wire))
        await _receive_loop(ws, channel, module, server)
        if not ws.closed:
            await asyncio.wait({sender}, timeout=None if channel.eos else _GRACE_S)
    except (ConnectionError, RuntimeError):
        pass
    finally:
        module.release(channel)
        if sender is not None and not sender.done():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return ws


async def _reject(ws: web.WebSocketResponse, wire: TtsWire, message: str) -> web.WebSocketResponse:
    with contextlib.suppress(ConnectionError, RuntimeError):
        if wire.msgpack:
            await ws.send_bytes(error(message))
        await _close(ws, wire, message)
    return ws


def add_routes(app: web.Application, server: DsmServer) -> None:
    """Register the TTS WebSocket route (when the server has a TTS model)."""
    if server.tts is not None:
        app.router.add_get(server.config.tts.path, handle_tts_websocket)
