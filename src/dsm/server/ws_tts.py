"""``GET /api/tts_streaming``: Kyutai's streaming TTS WebSocket (server-protocol.md §3).

Query: ``format`` (``PcmMessagePack``, the default here, or ``Pcm``; the Ogg formats are
refused with 400), ``voice``, ``auth_id``; anything else (``cfg_alpha``...) is ignored, as
upstream. Client messages: ``Text`` (whole words), ``Eos``, the legacy text frame and ``b"\\0"``;
``Voice`` (custom embeddings) is answered with an ``Error``. Server messages: ``Ready`` at once,
then ``Audio`` (1920 samples) and ``Text`` as generated, then the socket is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
from aiohttp import WSMsgType, web

from dsm.server.module import ModuleUnavailable
from dsm.server.protocol import ProtocolError, encode, error
from dsm.server.tts_module import TtsChannel, TtsModule

if TYPE_CHECKING:
    from dsm.server.app import DsmServer

__all__ = ["FORMATS", "handle_tts_websocket"]

log = logging.getLogger("dsm.server")

FORMATS = ("PcmMessagePack", "Pcm")
_GRACE_S = 5.0


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


def _wire(message: dict[str, Any], fmt: str) -> bytes | None:
    if fmt == "Pcm":
        if message["type"] != "Audio":
            return None
        return np.asarray(message["pcm"], dtype="<f4").tobytes()
    if message["type"] == "Audio":
        return encode({"type": "Audio", "pcm": np.asarray(message["pcm"]).tolist()})
    return encode(message)


async def _send_loop(ws: web.WebSocketResponse, channel: TtsChannel, fmt: str) -> None:
    try:
        while True:
            batch = await channel.get()
            if batch is None:
                break
            for message in batch:
                payload = _wire(message, fmt)
                if payload is not None:
                    await ws.send_bytes(payload)
            if channel.overflow:
                if fmt != "Pcm":
                    await ws.send_bytes(error("too many unread messages: closing"))
                break
    except (ConnectionError, RuntimeError, asyncio.CancelledError):
        pass
    finally:
        if not ws.closed:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
                await asyncio.wait_for(ws.close(), _GRACE_S)


async def _receive_loop(
    ws: web.WebSocketResponse, channel: TtsChannel, module: TtsModule, server: DsmServer
) -> None:
    idle = server.config.tts.idle_timeout_s
    while not ws.closed and not channel.closed:
        try:
            # After Eos the client only waits for audio: no idle limit then.
            msg = await ws.receive(timeout=None if channel.eos else idle)
        except asyncio.TimeoutError:
            server.metrics.inc("dsm_timeouts")
            channel.fail(f"no message received for {idle:g} s: closing the connection")
            return
        if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
            try:
                kind, text = ("text", msg.data) if msg.type == WSMsgType.TEXT else _parse(msg.data)
            except ProtocolError as exc:
                server.metrics.inc("dsm_protocol_errors")
                channel.fail(str(exc))
                return
            if kind == "text":
                channel.push_text(text)
            else:
                channel.end_text()
            module.wake.set()
        else:
            return


async def handle_tts_websocket(request: web.Request) -> web.StreamResponse:
    """The TTS WebSocket endpoint."""
    from dsm.server.app import SERVER_KEY

    server = request.app[SERVER_KEY]
    server.check_key(request, allow_query=True)
    fmt = request.query.get("format", "PcmMessagePack")
    if fmt not in FORMATS:
        raise web.HTTPBadRequest(text=f"format {fmt!r} is not supported; use one of {FORMATS}")
    module = server.tts
    if module is None:
        raise web.HTTPNotFound(text="this server has no TTS model")
    ws = web.WebSocketResponse(
        max_msg_size=server.config.tts.max_message_bytes,
        heartbeat=server.config.heartbeat_s if server.config.heartbeat_s > 0 else None,
    )
    await ws.prepare(request)
    server.metrics.inc("py_connect")
    try:
        channel = module.new_channel(asyncio.get_running_loop(), request.query.get("voice"))
    except ModuleUnavailable as exc:
        if fmt != "Pcm":
            await ws.send_bytes(error(str(exc)))
        await ws.close()
        return ws
    if channel is None:
        server.metrics.inc("dsm_rejected_no_free_channels")
        if fmt != "Pcm":
            await ws.send_bytes(error("no free channels"))
        await ws.close()
        return ws
    sender: asyncio.Task[None] | None = None
    try:
        if fmt != "Pcm":
            await ws.send_bytes(encode({"type": "Ready"}))
        sender = asyncio.create_task(_send_loop(ws, channel, fmt))
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
