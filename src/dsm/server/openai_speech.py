"""OpenAI-compatible ``POST /v1/audio/speech``: text in, audio streamed out as it is generated.

Body (JSON): ``input`` (required), ``voice``, ``model`` (ignored), ``response_format``: ``mp3``
(the default, as OpenAI's), ``opus`` (Ogg Opus), ``aac`` (ADTS), ``flac``, ``wav``, ``pcm`` (raw
16-bit little-endian mono at 24 kHz, as OpenAI's ``pcm``); see :mod:`dsm.audio.encode`. Every
format streams: each 80 ms frame is encoded and sent as soon as the model makes it (``wav`` and
``flac`` carry "unknown length" headers for that). A format this installation's FFmpeg can't
write, or an unknown one, gets 400 with the list of supported ones. OpenAI's built-in voice
names (``alloy``, ``nova``...) select the server's default voice; any other name must be a
voice of the checkpoint, else 400 (never a silent fallback). Requests share the TTS slots with
the WebSocket sessions and wait up to ``queue_timeout_s`` for one.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
from aiohttp import web

from dsm.audio.encode import AudioEncoder, available_formats, make_encoder, wav_header
from dsm.engine.tts import TtsChannel
from dsm.server.protocol import message_of
from dsm.server.state import SERVER_KEY, DsmServer

__all__ = ["OPENAI_VOICES", "add_routes", "speech_formats", "wav_header"]

OPENAI_VOICES = frozenset(
    ["alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"]
)


def speech_formats() -> tuple[str, ...]:
    """The ``response_format`` values this server accepts."""
    return available_formats()


def _default_format() -> str:
    formats = speech_formats()
    return "mp3" if "mp3" in formats else "wav"


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error"}}
    return web.json_response(body, status=status)


async def _claim(server: DsmServer, voice: str | None) -> TtsChannel | None:
    module = server.tts
    assert module is not None
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + server.config.tts.queue_timeout_s
    while True:
        channel = module.new_channel(loop, voice)
        if channel is not None or time.monotonic() >= deadline:
            return channel
        await asyncio.sleep(0.05)


async def _speech(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    server.check_key(request)
    module = server.tts
    if module is None:
        return _error(404, "this server has no text-to-speech model")
    try:
        body: Any = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the body must be JSON")
    if not isinstance(body, dict) or not isinstance(body.get("input"), str):
        return _error(400, "'input' (the text to speak) is required")
    text = body["input"].strip()
    if not text:
        return _error(400, "'input' is empty")
    fmt = body.get("response_format") or _default_format()
    if fmt not in speech_formats():
        supported = ", ".join(speech_formats())
        return _error(400, f"response_format {fmt!r} is not supported; use one of: {supported}")
    voice = body.get("voice")
    if voice is not None and not isinstance(voice, str):
        return _error(400, "'voice' must be a string")
    if voice in OPENAI_VOICES:
        voice = None
    started = time.monotonic()
    channel = await _claim(server, voice)
    if channel is None:
        return web.json_response(
            {"error": {"message": "no free channels", "type": "server_error"}}, status=503
        )
    encoder = make_encoder(fmt)
    response: web.StreamResponse | None = None
    try:
        channel.push_text(text)
        channel.end_text()
        module.wake.set()
        while True:
            batch = await channel.get()
            if batch is None:
                break
            for message in map(message_of, batch):
                if message["type"] == "Error":
                    if response is None:
                        return _error(400, message["message"])
                    raise ConnectionResetError(message["message"])
                if message["type"] != "Audio":
                    continue
                if response is None:
                    response = await _start(request, encoder)
                data = encoder.encode(np.asarray(message["pcm"], dtype=np.float32))
                if data:
                    await response.write(data)
        if response is None:  # no audio at all (e.g. only a pause)
            response = await _start(request, encoder)
        tail = encoder.finish()
        if tail:
            await response.write(tail)
        await response.write_eof()
        server.metrics.http_duration.labels("speech").observe(time.monotonic() - started)
        return response
    finally:
        encoder.close()
        module.release(channel)


async def _start(request: web.Request, encoder: AudioEncoder) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": encoder.content_type})
    await response.prepare(request)
    header = encoder.header()
    if header:
        await response.write(header)
    return response


def add_routes(app: web.Application, server: DsmServer) -> None:
    """Register ``POST /v1/audio/speech``."""
    app.router.add_post("/v1/audio/speech", _speech)
