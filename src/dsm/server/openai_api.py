"""OpenAI-compatible HTTP: ``POST /v1/audio/transcriptions`` and ``GET /v1/models``.

Transcriptions take a multipart ``file`` (any format the decoder reads, any sample rate) and
``response_format`` ``json`` (default), ``text``, ``srt``, ``vtt`` or ``verbose_json`` (with
``timestamp_granularities[]=word`` for word times). ``stream=true`` answers with server-sent
events: ``transcript.text.delta`` per word as the model emits it, then ``transcript.text.done``.
Requests share the STT slots with the WebSocket sessions: a request waits up to
``queue_timeout_s`` for a free slot, then gets 503. The text equals ``dsm transcribe`` on the
same audio (same padding, same frames, same final step). ``model``, ``language``, ``prompt`` and
``temperature`` are accepted and ignored (decoding is greedy, the language is the model's).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import BodyPartReader, web

from dsm.engine.stt import SttChannel
from dsm.mimi import SAMPLE_RATE
from dsm.server.protocol import message_of
from dsm.server.state import SERVER_KEY, DsmServer
from dsm.stt.subtitles import build_cues, to_srt, to_vtt
from dsm.stt.words import Word

__all__ = ["FORMATS", "TranscriptionResult", "add_routes", "render", "transcribe_on_server"]

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_PUSH_BLOCK = SAMPLE_RATE * 10


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


class TranscriptionResult:
    """Text, timed words and duration of one transcription through the server."""

    def __init__(self) -> None:
        self.text = ""
        self.words: list[Word] = []
        self.duration = 0.0
        self._open: tuple[str, float] | None = None

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "Word":
            self._close(None)
            self._open = (message["text"], message["start_time"])
        elif kind == "EndWord":
            self._close(message["stop_time"])
        elif kind == "_Done":
            self._close(None)
            self.text = message["text"]
            self.duration = message["duration"]

    def _close(self, end: float | None) -> None:
        if self._open is not None:
            text, start = self._open
            self.words.append(Word(text, start, start if end is None else end))
            self._open = None


async def _claim(server: DsmServer, timeout: float) -> SttChannel:
    module = server.stt_module_or_fail()
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        channel = module.new_channel(loop)
        if channel is not None:
            return channel
        if time.monotonic() >= deadline:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": {"message": "no free channels", "type": "server_error"}}),
                content_type="application/json",
            )
        await asyncio.sleep(0.05)


async def transcribe_on_server(
    server: DsmServer,
    audio: np.ndarray,
    on_message: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> TranscriptionResult:
    """Transcribe 24 kHz mono ``audio`` in one of the server's STT slots."""
    module = server.stt_module_or_fail()
    channel = await _claim(server, server.config.stt.queue_timeout_s)
    result = TranscriptionResult()
    try:
        for i in range(0, audio.shape[0], _PUSH_BLOCK):
            channel.push_audio(audio[i : i + _PUSH_BLOCK])
        channel.finish_input()
        module.wake.set()
        while True:
            batch = await channel.get()
            if batch is None:
                raise web.HTTPServiceUnavailable(text="the STT model stopped")
            for message in map(message_of, batch):
                if message["type"] == "Error":
                    raise web.HTTPServiceUnavailable(text=message["message"])
                result.on_message(message)
                if on_message is not None:
                    await on_message(message)
                if message["type"] == "_Done":
                    return result
    finally:
        module.release(channel)


async def _decode(data: bytes) -> np.ndarray:
    from dsm.audio import load_audio

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, load_audio, data)


def _verbose(result: TranscriptionResult, words: bool) -> dict[str, Any]:
    segments = [
        {
            "id": i,
            "seek": 0,
            "start": round(c.start, 3),
            "end": round(c.end, 3),
            "text": c.text,
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": 0.0,
            "compression_ratio": 0.0,
            "no_speech_prob": 0.0,
        }
        for i, c in enumerate(build_cues(result.words))
    ]
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": "english",
        "duration": round(result.duration, 3),
        "text": result.text,
        "segments": segments,
    }
    if words:
        body["words"] = [
            {"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
            for w in result.words
        ]
    return body


async def _transcriptions(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    server.check_key(request)
    started = time.monotonic()
    if server.stt is None:
        return _error(404, "this server has no speech-to-text model")
    if not request.content_type.startswith("multipart/"):
        return _error(400, "send multipart/form-data with a 'file' field")
    fields: dict[str, list[str]] = {}
    data: bytes | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue  # nested multipart: not part of the API
        name = part.name or ""
        if name == "file":
            data = bytes(await part.read())
        else:
            fields.setdefault(name, []).append(await part.text())
    if not data:
        return _error(400, "the 'file' field is missing or empty")
    fmt = fields.get("response_format", ["json"])[-1]
    if fmt not in FORMATS:
        return _error(400, f"response_format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    granularities = fields.get("timestamp_granularities[]", []) + fields.get(
        "timestamp_granularities", []
    )
    stream = fields.get("stream", ["false"])[-1].lower() in ("true", "1")
    try:
        audio = await _decode(data)
    except Exception as exc:
        return _error(400, f"could not decode the audio file: {exc}")
    server.metrics.inc("dsm_http_transcriptions")
    if stream:
        return await _stream(request, server, audio, started)
    result = await transcribe_on_server(server, audio)
    server.metrics.http_duration.labels("transcriptions").observe(time.monotonic() - started)
    return render(result, fmt, word_times="word" in granularities)


def render(result: TranscriptionResult, fmt: str, *, word_times: bool = False) -> web.Response:
    """The response body for ``response_format`` ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "text":
        return web.Response(text=result.text + "\n", content_type="text/plain")
    if fmt == "srt":
        return web.Response(text=to_srt(result.words), content_type="application/x-subrip")
    if fmt == "vtt":
        return web.Response(text=to_vtt(result.words), content_type="text/vtt")
    if fmt == "verbose_json":
        return web.json_response(_verbose(result, word_times))
    return web.json_response({"text": result.text})


async def _stream(
    request: web.Request, server: DsmServer, audio: np.ndarray, started: float
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    async def send(event: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())

    async def on_message(message: dict[str, Any]) -> None:
        if message["type"] == "Word":
            await send({"type": "transcript.text.delta", "delta": message["text"] + " "})

    result = await transcribe_on_server(server, audio, on_message)
    await send({"type": "transcript.text.done", "text": result.text})
    await response.write_eof()
    server.metrics.http_duration.labels("transcriptions_stream").observe(time.monotonic() - started)
    return response


async def _upstream_post(request: web.Request) -> web.Response:
    """Upstream's one-shot ``POST /api/asr-streaming``: raw audio file body in, a JSON array of
    ``Word``/``EndWord`` messages out (server-protocol.md §2.8)."""
    server = request.app[SERVER_KEY]
    server.check_key(request)
    data = await request.read()
    if not data:
        return web.Response(status=400, text="the request body must be an audio file")
    try:
        audio = await _decode(data)
    except Exception as exc:
        return web.Response(status=400, text=f"could not decode the audio file: {exc}")
    messages: list[dict[str, Any]] = []

    async def collect(message: dict[str, Any]) -> None:
        if message["type"] in ("Word", "EndWord"):
            messages.append(message)

    await transcribe_on_server(server, audio, collect)
    return web.json_response(messages)


async def _models(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    server.check_key(request)
    created = int(server.started_at)
    models = []
    for module in server.modules:
        name = module.model_id
        models.append({"id": name, "object": "model", "created": created, "owned_by": "dsm"})
    return web.json_response({"object": "list", "data": models})


def add_routes(app: web.Application, server: DsmServer) -> None:
    """Register the OpenAI-compatible routes (and upstream's one-shot STT POST)."""
    app.router.add_post("/v1/audio/transcriptions", _transcriptions)
    app.router.add_get("/v1/models", _models)
    if server.stt is not None:
        app.router.add_post(server.config.stt.path, _upstream_post)
