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

``speed`` (other than 1), ``instructions`` and a ``model`` other than the served one are
accepted and not applied (the models have no speaking-rate or style control): the response
names them in a ``Warning`` header (:mod:`dsm.server.openai_common`). Errors have OpenAI's JSON
shape (:mod:`dsm.server.http_errors`).
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
from dsm.server.http_errors import ApiError, read_guard
from dsm.server.openai_common import model_note, tts_model_id, warn_ignored
from dsm.server.protocol import message_of
from dsm.server.slot_wait import wait_for_slot
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


async def _claim(server: DsmServer, voice: str | None) -> TtsChannel | None:
    module = server.tts
    assert module is not None
    loop = asyncio.get_running_loop()
    return await wait_for_slot(
        lambda: module.new_channel(loop, voice), server.config.tts.queue_timeout_s
    )


async def _speech(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    server.check_key(request)
    module = server.tts
    if module is None:
        raise ApiError(404, "this server has no text-to-speech model")
    with read_guard("expected a JSON object"):
        body: Any = json.loads(await request.read())
    if not isinstance(body, dict) or not isinstance(body.get("input"), str):
        raise ApiError(400, "'input' (the text to speak) is required")
    text = body["input"].strip()
    if not text:
        raise ApiError(400, "'input' is empty")
    fmt = body.get("response_format")
    if fmt is None or fmt == "":
        fmt = _default_format()
    if not isinstance(fmt, str) or fmt not in speech_formats():
        supported = ", ".join(speech_formats())
        raise ApiError(400, f"response_format {fmt!r} is not supported; use one of: {supported}")
    voice = body.get("voice")
    if voice is not None and not isinstance(voice, str):
        raise ApiError(400, "'voice' must be a string")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise ApiError(400, "'model' must be a string (an id of GET /v1/models)")
    if voice in OPENAI_VOICES:
        voice = None
    notes = _notes(body, tts_model_id(server))
    started = time.monotonic()
    channel = await _claim(server, voice)
    if channel is None:
        raise ApiError(503, "no free channels: every TTS slot is busy; retry later")
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
                        raise ApiError(400, message["message"])
                    raise ConnectionResetError(message["message"])
                if message["type"] != "Audio":
                    continue
                if response is None:
                    response = await _start(request, encoder, notes)
                data = encoder.encode(np.asarray(message["pcm"], dtype=np.float32))
                if data:
                    await response.write(data)
        if response is None:  # no audio at all (e.g. only a pause)
            response = await _start(request, encoder, notes)
        tail = encoder.finish()
        if tail:
            await response.write(tail)
        await response.write_eof()
        server.metrics.http_duration.labels("speech").observe(time.monotonic() - started)
        return response
    finally:
        encoder.close()
        module.release(channel)


def _notes(body: dict[str, Any], served: str) -> list[str]:
    """What the request asks for and will not get (checked before a slot is claimed)."""
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
        raise ApiError(400, f"speed must be a number from 0.25 to 4.0, got {speed!r}")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ApiError(400, "'instructions' must be a string")
    notes = model_note(body.get("model"), served)
    if speed != 1.0:
        notes.append("speed ignored: the model speaks at its own rate")
    if instructions:
        notes.append("instructions ignored: the model has no style control")
    return notes


async def _start(
    request: web.Request, encoder: AudioEncoder, notes: list[str]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": encoder.content_type})
    warn_ignored(response, notes)
    await response.prepare(request)
    header = encoder.header()
    if header:
        await response.write(header)
    return response


def add_routes(app: web.Application, server: DsmServer) -> None:
    """Register ``POST /v1/audio/speech``."""
    app.router.add_post("/v1/audio/speech", _speech)
