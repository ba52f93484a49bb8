"""``GET /api/tts_streaming``: Kyutai's streaming TTS WebSocket (server-protocol.md §3).

Query: ``format``, ``voice`` (a name the server lists; an unknown one speaks with the default
voice, or fails the session with ``unknown_voice = "error"``), ``auth_id``; dsm's own
``temperature`` (0 = greedy; the name of upstream's legacy ``Tts`` module) and ``cfg`` (a
guidance strength the checkpoint supports, see ``/api/ui_config``) set this session's sampling
(a bad value is a 400); anything else (``cfg_alpha``, which Unmute sends) is ignored, as
upstream's ``Py`` module. Client messages: ``Text`` (whole words), ``Eos``,
the legacy text frame and ``b"\\0"``, and ``Voice`` (``embeddings`` and ``shape``, a speaker
embedding of the checkpoint's condition shape, before the first ``Text``: what Unmute sends for
its ``custom:`` voices). The server sends each 80 ms frame as soon as it is generated, then
closes the socket. Formats, as upstream's ``StreamingOutput``:

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
page (codec delay flushed, exact length), so the concatenated stream is a complete file; a
failed session ends with a close frame carrying a code and the reason (see
:mod:`dsm.server.closing`; no ``Error`` after ``Ready`` unless ``error_messages`` is set) where
upstream just drops the connection; the formats that can't carry an ``Error`` are refused with
close code 1013 "no free channels".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from dsm.engine.events import ChannelError, ChannelEvent
from dsm.engine.slots import ModuleUnavailable
from dsm.engine.tts import TtsChannel, TtsModule
from dsm.server.closing import end_session
from dsm.server.protocol import (
    ProtocolError,
    encode,
    encode_audio,
    error,
    float_array,
    message_of,
)
from dsm.server.state import SERVER_KEY, DsmServer
from dsm.server.ws_direct import DirectWebSocket, direct_sink
from dsm.server.ws_io import IdleDeadline, off_loop
from dsm.tts.voices import VoiceError

if TYPE_CHECKING:
    from dsm.audio.opus import OggOpusEncoder

__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "TtsWire",
    "add_routes",
    "handle_tts_websocket",
    "session_sampling",
]

log = logging.getLogger("dsm.server")

FORMATS = ("OggOpus", "OggOpusMessagePack", "PcmMessagePack", "Pcm")
DEFAULT_FORMAT = "OggOpus"  # upstream's default (main.rs default_format)
NO_FREE_CHANNELS = "no free channels"
_GRACE_S = 5.0
_MAX_VOICE_DIMS = 3
MAX_TEMPERATURE = 10.0


def session_sampling(query: Any, module: TtsModule) -> tuple[float | None, float | None]:
    """The ``temperature`` and ``cfg`` query parameters (None when absent), checked against
    the module's checkpoint (raises :class:`ProtocolError` saying what is accepted)."""
    values: list[float | None] = []
    for name in ("temperature", "cfg"):
        raw = query.get(name)
        if raw is None or raw == "":
            values.append(None)
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ProtocolError(f"{name} must be a number, got {raw[:40]!r}") from None
        if not np.isfinite(value):
            raise ProtocolError(f"{name} must be a finite number")
        values.append(value)
    temperature, cfg = values
    if temperature is not None and not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise ProtocolError(f"temperature must be in [0, {MAX_TEMPERATURE:g}] (0 = greedy)")
    if cfg is not None:
        supported = module.tts.cfg_values
        if supported and cfg not in supported:
            valid = ", ".join(f"{v:g}" for v in supported)
            raise ProtocolError(
                f"cfg {cfg:g} is not supported by this checkpoint; use one of {valid}"
            )
        if not supported and cfg != module.cfg:
            raise ProtocolError(
                f"this checkpoint's guidance strength is fixed by the server (cfg {module.cfg:g})"
            )
    return temperature, cfg


def _parse(data: bytes) -> tuple[str, Any]:
    """One binary client frame: ``("text", words)``, ``("eos", "")`` or ``("voice", array)``
    (the ``Voice`` embedding reshaped to its ``shape``)."""
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
        return "voice", _voice(message)
    raise ProtocolError(f"unknown message type {kind!r}; expected Text, Voice or Eos")


def _voice(message: dict[str, Any]) -> np.ndarray:
    """The ``embeddings`` of a ``Voice`` message in its ``shape`` (1 to 3 dimensions)."""
    values = float_array(message.get("embeddings"), "embeddings")
    shape = message.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= _MAX_VOICE_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise ProtocolError('a Voice message needs "shape": 1 to 3 positive integers')
    if int(np.prod(shape)) != values.size:
        raise ProtocolError(
            f"a Voice message's shape {shape} holds {int(np.prod(shape))} values, but "
            f'"embeddings" has {values.size}'
        )
    return values.reshape(shape)


async def _apply(kind: str, value: Any, channel: TtsChannel, module: TtsModule) -> None:
    """Queue one parsed client message on the channel (raises ProtocolError); long texts are
    tokenized off the event loop."""
    if kind == "text":
        await off_loop(len(value), channel.push_text, value)
    elif kind == "eos":
        channel.end_text()
    else:
        try:
            channel.set_custom_voice(module.custom_voice(value))
        except (VoiceError, ValueError) as exc:
            raise ProtocolError(str(exc)) from None
    module.wake.set()


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
            return encode_audio(pcm)
        return encode(message) if self.msgpack else None

    def event(self, event: ChannelEvent) -> bytes | None:
        """:meth:`message` of a module event."""
        return self.message(message_of(event))

    def end(self) -> bytes | None:
        """The end-of-stream Ogg page (Ogg formats), after the last audio."""
        if self.opus is None:
            return None
        return self._ogg(self.opus.finish())


async def _send_loop(
    ws: web.WebSocketResponse, channel: TtsChannel, wire: TtsWire, error_messages: bool
) -> None:
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
                payload = wire.event(event)
                if payload is not None:
                    await ws.send_bytes(payload)
            if failure is None and channel.overflow:
                failure = ChannelError("too many unread messages: closing", "client")
        if failure is None:
            tail = wire.end()
            if tail:
                await ws.send_bytes(tail)
    except (ConnectionError, RuntimeError, asyncio.CancelledError):
        pass
    except Exception as exc:  # an encoder failure must still close the socket
        log.exception("tts: sending to the client failed")
        failure = ChannelError(f"encoding the audio failed: {exc}")
    finally:
        await end_session(ws, failure, error_message=error_messages and wire.msgpack)


async def _receive_loop(
    ws: web.WebSocketResponse, channel: TtsChannel, module: TtsModule, server: DsmServer
) -> None:
    idle = server.config.tts.idle_timeout_s

    def expire() -> None:
        # The sender then closes the socket, which ends the ``ws.receive()`` below.
        server.metrics.inc("dsm_timeouts")
        channel.fail(f"no text received for {idle:g} s: closing the connection", "idle")

    deadline = IdleDeadline(idle, expire)
    try:
        while not ws.closed and not channel.closed and not channel.failed:
            msg = await ws.receive()
            if channel.failed:
                return
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                try:
                    kind, value = (
                        ("text", msg.data) if msg.type == WSMsgType.TEXT else _parse(msg.data)
                    )
                    if kind == "text" and value.strip():
                        deadline.touch()
                    await _apply(kind, value, channel, module)
                except ProtocolError as exc:
                    server.metrics.inc("dsm_protocol_errors")
                    channel.fail(str(exc), "client")
                    return
                if channel.eos:
                    deadline.pause()  # after Eos the client only waits for audio
            else:
                return
    finally:
        deadline.cancel()


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
    try:
        temperature, cfg = session_sampling(request.query, module)
    except ProtocolError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    wire = TtsWire(fmt)
    ws = DirectWebSocket(
        max_msg_size=server.config.tts.max_message_bytes,
        heartbeat=server.config.heartbeat_s if server.config.heartbeat_s > 0 else None,
    )
    await ws.prepare(request)
    server.metrics.inc("py_connect")
    try:
        channel = module.new_channel(
            asyncio.get_running_loop(),
            request.query.get("voice"),
            fallback=server.config.tts.unknown_voice == "default",
        )
    except ModuleUnavailable as exc:
        return await _reject(ws, wire, str(exc))
    if channel is None:
        server.metrics.inc("dsm_rejected_no_free_channels")
        return await _reject(ws, wire, NO_FREE_CHANNELS)
    channel.temperature, channel.cfg = temperature, cfg
    sender: asyncio.Task[None] | None = None
    try:
        for payload in wire.start():
            await ws.send_bytes(payload)
        # Results go straight to the socket as the model thread hands them over; the sender
        # only ends the session (the last Ogg page, or the failure).
        channel.sink = direct_sink(ws, channel, wire.event, server.metrics)
        sender = asyncio.create_task(_send_loop(ws, channel, wire, server.config.error_messages))
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
    """Refuse before ``Ready``: an ``Error`` then a close (msgpack formats, as upstream), or a
    close frame with the reason (1013 when busy)."""
    if wire.msgpack:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(error(message))
        await end_session(ws, None)
    else:
        busy = WSCloseCode.TRY_AGAIN_LATER if message == NO_FREE_CHANNELS else None
        await end_session(ws, ChannelError(message), code=busy)
    return ws


def add_routes(app: web.Application, server: DsmServer) -> None:
    """Register the TTS WebSocket route (when the server has a TTS model)."""
    if server.tts is not None:
        app.router.add_get(server.config.tts.path, handle_tts_websocket)
