"""OpenAI-compatible ``POST /v1/audio/speech``: text in, audio streamed out as it is generated.

Body (JSON): ``input`` (required), ``voice``, ``model`` (ignored), ``response_format`` ``wav``
(default here) or ``pcm`` (raw 16-bit little-endian mono at 24 kHz, as OpenAI's ``pcm``).
``wav`` is streamed with unknown sizes in its header (as upstream's POST route does); the
compressed formats (mp3, opus, aac, flac) are not served yet and get 400. OpenAI's built-in
voice names (``alloy``, ``nova``...) select the server's default voice; any other name must be
a voice of the checkpoint, else 400 (never a silent fallback). Requests share the TTS slots
with the WebSocket sessions and wait up to ``queue_timeout_s`` for one.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from dsm.server.tts_module import TtsChannel

if TYPE_CHECKING:
    from dsm.server.app import DsmServer

__all__ = ["OPENAI_VOICES", "add_speech_route", "wav_header"]

OPENAI_VOICES = frozenset(
    ["alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"]
)
FORMATS = ("wav", "pcm")


def wav_header(sample_rate: int = 24000) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF): for streaming."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data" + struct.pack("<I", unknown)
    )  # fmt: skip


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
    from dsm.server.app import SERVER_KEY

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
    fmt = body.get("response_format", "wav")
    if fmt not in FORMATS:
        return _error(400, f"response_format {fmt!r} is not supported; use one of {FORMATS}")
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
    response: web.StreamResponse | None = None
    try:
        channel.push_text(text)
        channel.end_text()
        module.wake.set()
        while True:
            batch = await channel.get()
            if batch is None:
                break
            for message in batch:
                if message["type"] == "Error":
                    if response is None:
                        return _error(400, message["message"])
                    raise ConnectionResetError(message["message"])
                if message["type"] != "Audio":
                    continue
                if response is None:
                    kind = "audio/wav" if fmt == "wav" else "audio/pcm"
                    response = web.StreamResponse(headers={"Content-Type": kind})
                    await response.prepare(request)
                    if fmt == "wav":
                        await response.write(wav_header())
                pcm = np.clip(np.asarray(message["pcm"]), -1.0, 1.0)
                await response.write((pcm * 32767).astype("<i2").tobytes())
        if response is None:  # no audio at all (e.g. only a pause)
            response = web.StreamResponse(headers={"Content-Type": f"audio/{fmt}"})
            await response.prepare(request)
            if fmt == "wav":
                await response.write(wav_header())
        await response.write_eof()
        server.metrics.http_duration.labels("speech").observe(time.monotonic() - started)
        return response
    finally:
        module.release(channel)


def add_speech_route(app: web.Application) -> None:
    """Register ``POST /v1/audio/speech``."""
    app.router.add_post("/v1/audio/speech", _speech)
