"""OpenAI-compatible HTTP: ``POST /v1/audio/transcriptions`` and ``GET /v1/models``.

Transcriptions take a multipart ``file`` (any format the decoder reads, any sample rate) and
``response_format`` ``json`` (default), ``text``, ``srt``, ``vtt`` or ``verbose_json`` (with
``timestamp_granularities[]=word`` for word times). ``stream=true`` answers with server-sent
events: ``transcript.text.delta`` per word as the model emits it (a space before each word but
the first; a piece that continues the word before comes as its own delta without a space, so
the deltas concatenate to the final text), then ``transcript.text.done``.
Requests share the STT slots with the WebSocket sessions: a request waits up to
``queue_timeout_s`` for a free slot, then gets 503; a client that disconnects frees its slot
within :data:`DISCONNECT_POLL_S`. Uploads are limited to ``max_upload_bytes`` and
``max_upload_seconds`` (:mod:`dsm.server.uploads`). The text and word times equal
``dsm transcribe`` on the same audio: same padding, frames and final step, word ends fitted by
:func:`~dsm.stt.words.fit_words` (a word ends no later than the next starts, and within the
input), text the joined words. ``verbose_json`` has no ``language`` (the checkpoints detect
none; the en_fr ones transcribe both), and one segment per subtitle cue on one line.

``language``, ``prompt`` and a ``temperature`` other than 0 are accepted and not applied
(decoding is greedy; the models need no language hint; the server has no text prompts): the
response names them in a ``Warning`` header (:mod:`dsm.server.openai_common`). Errors have
OpenAI's JSON shape (:mod:`dsm.server.http_errors`).
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
from dsm.server.http_errors import ApiError, read_guard
from dsm.server.openai_common import model_note, stt_model_id, tts_model_id, warn_ignored
from dsm.server.protocol import message_of
from dsm.server.slot_wait import wait_for_slot
from dsm.server.state import SERVER_KEY, DsmServer
from dsm.server.uploads import decode_upload
from dsm.stt.subtitles import build_cues, to_srt, to_vtt
from dsm.stt.words import Word, fit_words

__all__ = [
    "DISCONNECT_POLL_S",
    "FORMATS",
    "GRANULARITIES",
    "ClientGone",
    "TranscriptionResult",
    "add_routes",
    "render",
    "transcribe_on_server",
]

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
# How often a transcription checks that its client is still connected.
DISCONNECT_POLL_S = 0.2
_PUSH_BLOCK = SAMPLE_RATE * 10


class ClientGone(Exception):
    """The HTTP client disconnected before its transcription finished."""


class TranscriptionResult:
    """Text, timed words and duration of one transcription through the server (the words'
    times fitted to the input once the stream is done, as ``dsm transcribe`` does)."""

    def __init__(self) -> None:
        self.text = ""
        self.words: list[Word] = []
        self.duration = 0.0

    def on_message(self, message: dict[str, Any]) -> None:
        """Take the stream's final message (``_Done``: text, duration, words); the live
        ``Word``/``EndWord`` messages before it carry nothing the result needs."""
        if message["type"] == "_Done":
            self.text = message["text"]
            self.duration = message["duration"]
            self.words = fit_words(list(message["words"]), self.duration)


async def _claim(server: DsmServer, timeout: float) -> SttChannel:
    module = server.stt_module_or_fail()
    loop = asyncio.get_running_loop()
    channel = await wait_for_slot(lambda: module.new_channel(loop), timeout)
    if channel is None:
        raise ApiError(503, "no free channels: every STT slot is busy; retry later")
    return channel


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _next_batch(channel: SttChannel, request: web.Request | None) -> list[Any] | None:
    """The channel's next batch; :class:`ClientGone` once ``request``'s client has left (checked
    on every batch, and every :data:`DISCONNECT_POLL_S` while none comes)."""
    while True:
        if request is not None and _gone(request):
            raise ClientGone
        try:
            return await channel.get(timeout=None if request is None else DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            continue


async def transcribe_on_server(
    server: DsmServer,
    audio: np.ndarray,
    on_message: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    request: web.Request | None = None,
) -> TranscriptionResult:
    """Transcribe 24 kHz mono ``audio`` in one of the server's STT slots.

    With ``request``, raises :class:`ClientGone` (and frees the slot) once that request's client
    has disconnected.
    """
    module = server.stt_module_or_fail()
    channel = await _claim(server, server.config.stt.queue_timeout_s)
    result = TranscriptionResult()
    try:
        for i in range(0, audio.shape[0], _PUSH_BLOCK):
            channel.push_audio(audio[i : i + _PUSH_BLOCK])
        channel.finish_input()
        module.wake.set()
        while True:
            batch = await _next_batch(channel, request)
            if batch is None:
                raise ApiError(503, "the STT model stopped")
            for message in map(message_of, batch):
                if message["type"] == "Error":
                    raise ApiError(503, message["message"])
                result.on_message(message)
                if on_message is not None:
                    await on_message(message)
                if message["type"] == "_Done":
                    return result
    finally:
        module.release(channel)


def _verbose(result: TranscriptionResult, words: bool) -> dict[str, Any]:
    segments = [
        {
            "id": i,
            "seek": 0,
            "start": round(c.start, 3),
            "end": round(c.end, 3),
            "text": " ".join(c.lines),
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


async def _read_form(request: web.Request) -> tuple[bytes, dict[str, list[str]]]:
    """The uploaded file and the other fields of a multipart transcription request."""
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "send multipart/form-data with a 'file' field")
    fields: dict[str, list[str]] = {}
    data = b""
    with read_guard("expected multipart/form-data with a 'file' field and UTF-8 text fields"):
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
        raise ApiError(400, "the 'file' field is missing or empty")
    return data, fields


class _Options:
    """The transcription fields of one request, checked."""

    def __init__(self, fields: dict[str, list[str]], served: str) -> None:
        def last(name: str, default: str = "") -> str:
            return fields.get(name, [default])[-1]

        self.format = last("response_format", "json")
        if self.format not in FORMATS:
            raise ApiError(
                400, f"response_format must be one of {', '.join(FORMATS)}, got {self.format!r}"
            )
        granularities = fields.get("timestamp_granularities[]", []) + fields.get(
            "timestamp_granularities", []
        )
        unknown = [g for g in granularities if g not in GRANULARITIES]
        if unknown:
            raise ApiError(
                400,
                f"timestamp_granularities must be among {', '.join(GRANULARITIES)}, "
                f"got {unknown[0]!r}",
            )
        self.word_times = "word" in granularities
        stream = last("stream", "false").lower()
        if stream not in ("true", "false", "1", "0"):
            raise ApiError(400, f"stream must be true or false, got {stream!r}")
        self.stream = stream in ("true", "1")
        temperature = last("temperature", "0")
        try:
            value = float(temperature)
        except ValueError:
            raise ApiError(400, f"temperature must be a number, got {temperature!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ApiError(400, f"temperature must be between 0 and 1, got {temperature}")
        self.notes = model_note(fields.get("model", [None])[-1], served)
        if last("language"):
            self.notes.append("language ignored: the model transcribes its own languages")
        if last("prompt"):
            self.notes.append("prompt ignored: the server has no text prompts")
        if value != 0.0:
            self.notes.append("temperature ignored: decoding is greedy")


async def _transcriptions(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    server.check_key(request)
    started = time.monotonic()
    if server.stt is None:
        raise ApiError(404, "this server has no speech-to-text model")
    data, fields = await _read_form(request)
    options = _Options(fields, stt_model_id(server))
    audio = await decode_upload(data, server.config.stt.max_upload_seconds)
    server.metrics.inc("dsm_http_transcriptions")
    try:
        if options.stream:
            return await _stream(request, server, audio, started, options.notes)
        result = await transcribe_on_server(server, audio, request=request)
    except ClientGone:
        return web.Response(status=499, text="client closed the request")
    server.metrics.http_duration.labels("transcriptions").observe(time.monotonic() - started)
    response = render(result, options.format, word_times=options.word_times)
    warn_ignored(response, options.notes)
    return response


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
    request: web.Request, server: DsmServer, audio: np.ndarray, started: float, notes: list[str]
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    warn_ignored(response, notes)
    await response.prepare(request)

    async def send(event: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())

    sent = False

    async def on_message(message: dict[str, Any]) -> None:
        # Deltas concatenate to the final text: a space before each word but the first, none
        # before a continuation (a piece that extends the word before).
        nonlocal sent
        if message["type"] == "Word" and message["text"]:
            space = " " if sent and not message.get("continues") else ""
            await send({"type": "transcript.text.delta", "delta": space + message["text"]})
            sent = True

    result = await transcribe_on_server(server, audio, on_message, request)
    await send({"type": "transcript.text.done", "text": result.text})
    await response.write_eof()
    server.metrics.http_duration.labels("transcriptions_stream").observe(time.monotonic() - started)
    return response


async def _upstream_post(request: web.Request) -> web.Response:
    """Upstream's one-shot ``POST /api/asr-streaming``: raw audio file body in, a JSON array of
    ``Word``/``EndWord`` messages out (server-protocol.md §2.8); the stream's own word times."""
    server = request.app[SERVER_KEY]
    server.check_key(request)
    with read_guard("expected an audio file as the request body"):
        data = await request.read()
    audio = await decode_upload(data, server.config.stt.max_upload_seconds)
    messages: list[dict[str, Any]] = []

    async def collect(message: dict[str, Any]) -> None:
        if message["type"] in ("Word", "EndWord"):
            messages.append(message)

    try:
        await transcribe_on_server(server, audio, collect, request)
    except ClientGone:
        return web.Response(status=499, text="client closed the request")
    return web.json_response(messages)


async def _models(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    server.check_key(request)
    created = int(server.started_at)
    ids = ([stt_model_id(server)] if server.stt else []) + (
        [tts_model_id(server)] if server.tts else []
    )
    models = [{"id": i, "object": "model", "created": created, "owned_by": "dsm"} for i in ids]
    return web.json_response({"object": "list", "data": models})


def add_routes(app: web.Application, server: DsmServer) -> None:
    """Register the OpenAI-compatible routes (and upstream's one-shot STT POST)."""
    app.router.add_post("/v1/audio/transcriptions", _transcriptions)
    app.router.add_get("/v1/models", _models)
    if server.stt is not None:
        app.router.add_post(server.config.stt.path, _upstream_post)
