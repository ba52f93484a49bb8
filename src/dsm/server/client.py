"""Async clients for Kyutai's WebSocket protocol (this server or upstream ``moshi-server``).

:func:`stt_session` streams audio to ``/api/asr-streaming`` at a chosen real-time factor and
collects timed words; :func:`tts_session` sends text to ``/api/tts_streaming`` and collects
the audio in any of the server's formats (1920-sample pcm frames, or the Ogg Opus stream as
sent). Both speak only the documented protocol, so they work against upstream's server too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgpack
import numpy as np

from dsm.errors import DsmError
from dsm.mimi import FRAME_SIZE, SAMPLE_RATE
from dsm.server.wire_words import WireWords
from dsm.stt.words import Word

__all__ = [
    "TTS_FORMATS",
    "SttClientResult",
    "TtsClientResult",
    "pack",
    "stt_session",
    "tts_session",
]

DEFAULT_KEY = "public_token"
TTS_FORMATS = ("PcmMessagePack", "OggOpusMessagePack", "OggOpus", "Pcm")  # ``format=`` values
FLUSH_SECONDS = 40  # upstream's file client sends 5 + 35 s of silence around its marker


def pack(message: dict[str, Any]) -> bytes:
    """A client message as msgpack (float32 pcm, as Kyutai's clients send)."""
    return msgpack.packb(message, use_bin_type=True, use_single_float=True)


def unpack_message(data: bytes) -> dict[str, Any]:
    """A server message (msgpack map with a string ``type``); anything else is a DsmError."""
    message = msgpack.unpackb(data, raw=False)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise DsmError(f"the server sent an unexpected message: {message!r:.80}")
    return message


def close_failure(msg: Any) -> str | None:
    """The reason of ``msg`` (an aiohttp WebSocket message) when it is a close frame that reports
    a failure, the server's way after ``Ready``; None for anything else."""
    if msg.type != aiohttp.WSMsgType.CLOSE or msg.data in (aiohttp.WSCloseCode.OK, 1005):
        return None
    return str(msg.extra) if msg.extra else f"the server closed the session (code {msg.data})"


def handshake_error(exc: aiohttp.WSServerHandshakeError) -> DsmError:
    """The refused WebSocket upgrade as a DsmError (a 401 names the API key)."""
    hints = {
        401: " (wrong or missing API key)",
        503: " (no free slot: every replica is full or down; retry later)",
    }
    hint = hints.get(exc.status, "")
    return DsmError(f"the server refused the WebSocket with HTTP {exc.status}{hint}")


async def expect_ready(ws: aiohttp.ClientWebSocketResponse[bool], timeout: float) -> None:
    """Wait for ``Ready``; an ``Error`` (e.g. no free channels) or a close is a DsmError."""
    for _ in range(10):  # Unmute tolerates a few stray messages before Ready
        msg = await ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise DsmError(f"the server closed the connection before Ready ({msg.type.name})")
        message = unpack_message(msg.data)
        if message["type"] == "Ready":
            return
        if message["type"] == "Error":
            raise DsmError(f"the server refused the session: {message.get('message')}")
    raise DsmError("no Ready message from the server")


async def open_session(
    http: aiohttp.ClientSession,
    endpoint: str,
    headers: dict[str, str],
    ready_timeout: float | None,
) -> aiohttp.ClientWebSocketResponse[bool]:
    """Open a session WebSocket at ``endpoint``; with ``ready_timeout``, also wait for ``Ready``.

    A refused upgrade or a refused session is a DsmError, and the socket is closed on failure."""
    try:
        ws = await http.ws_connect(endpoint, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        raise handshake_error(exc) from None
    if ready_timeout is not None:
        try:
            await expect_ready(ws, ready_timeout)
        except BaseException:
            await ws.close()
            raise
    return ws


@dataclass
class SttClientResult:
    """Words received, plus timing measurements of the session."""

    words: list[Word] = field(default_factory=list)
    steps: int = 0
    errors: list[str] = field(default_factory=list)
    step_latencies: list[float] = field(default_factory=list)  # Step arrival - frame send
    word_latencies: list[float] = field(default_factory=list)  # Word arrival - audio sent
    marker_seen: bool = False

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


async def stt_session(
    url: str,
    chunks: Iterable[np.ndarray] | AsyncIterator[np.ndarray],
    *,
    api_key: str | None = DEFAULT_KEY,
    rtf: float | None = 1.0,
    flush: bool = True,
    on_word: Callable[[Word], None] | None = None,
    connect_timeout: float = 10.0,
    session: aiohttp.ClientSession | None = None,
) -> SttClientResult:
    """Stream 24 kHz mono chunks to ``url`` (``ws://host:port``); returns the words.

    ``rtf`` paces the audio (1.0 = real time, None = as fast as possible). With ``flush``, a
    marker and silence follow the audio and the session ends when the marker comes back.
    ``on_word(word)`` is called with each new word, and again with the same start and the
    longer text when a ``Word`` with ``continues`` extends it (docs/server.md).
    """
    headers = {"kyutai-api-key": api_key} if api_key else {}
    own = session is None
    http = session or aiohttp.ClientSession()
    result = SttClientResult()
    sent_at: list[float] = []  # send time of each frame's end
    marker = asyncio.Event()
    try:
        endpoint = f"{url.rstrip('/')}/api/asr-streaming"
        ws = await open_session(http, endpoint, headers, connect_timeout)
        async with ws:
            receiver = asyncio.create_task(_stt_receive(ws, result, sent_at, marker, on_word))
            try:
                await _stt_send(ws, chunks, rtf, flush, sent_at, marker, receiver)
                if flush:
                    await asyncio.wait({receiver}, timeout=60)
                else:
                    await asyncio.sleep(0.5)
            finally:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
    finally:
        if own:
            await http.close()
    return result


async def _aiter(chunks: Iterable[np.ndarray] | AsyncIterator[np.ndarray]) -> AsyncIterator[Any]:
    if isinstance(chunks, AsyncIterator):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


async def _stt_send(
    ws: aiohttp.ClientWebSocketResponse[bool],
    chunks: Iterable[np.ndarray] | AsyncIterator[np.ndarray],
    rtf: float | None,
    flush: bool,
    sent_at: list[float],
    marker: asyncio.Event,
    receiver: asyncio.Task[None],
) -> None:
    start = time.monotonic()
    samples = 0
    pending = 0  # samples sent but not yet a whole frame
    async for chunk in _aiter(chunks):
        if receiver.done():
            return
        pcm = np.asarray(chunk, dtype=np.float32).reshape(-1)
        await ws.send_bytes(pack({"type": "Audio", "pcm": pcm.tolist()}))
        samples += pcm.shape[0]
        now = time.monotonic()
        pending += pcm.shape[0]
        while pending >= FRAME_SIZE:
            sent_at.append(now)
            pending -= FRAME_SIZE
        if rtf:
            delay = start + samples / SAMPLE_RATE / rtf - time.monotonic()
            await asyncio.sleep(max(delay, 0.001))
    if not flush:
        return
    await ws.send_bytes(pack({"type": "Marker", "id": 0}))
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32).tolist()
    for _ in range(FLUSH_SECONDS):
        if marker.is_set() or receiver.done():
            return
        await ws.send_bytes(pack({"type": "Audio", "pcm": silence}))
        await asyncio.sleep(0.1)


async def _stt_receive(
    ws: aiohttp.ClientWebSocketResponse[bool],
    result: SttClientResult,
    sent_at: list[float],
    marker: asyncio.Event,
    on_word: Callable[[Word], None] | None,
) -> None:
    words = WireWords()
    try:
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    continue
                failure = close_failure(msg)
                if failure is not None:
                    result.errors.append(failure)
                break
            message = unpack_message(msg.data)
            now = time.monotonic()
            kind = message["type"]
            if kind == "Step":
                if result.steps < len(sent_at):
                    result.step_latencies.append(now - sent_at[result.steps])
                result.steps += 1
            elif kind == "Word":
                # A ``continues`` piece extends the word before (docs/server.md), not a new one.
                if words.word(message):
                    frame = int(float(message["start_time"]) * SAMPLE_RATE) // FRAME_SIZE
                    if frame < len(sent_at):
                        result.word_latencies.append(now - sent_at[frame])
                last = words.last
                if on_word is not None and last is not None and message.get("text"):
                    on_word(Word(last.text, last.start, last.start))
            elif kind == "EndWord":
                words.end_word(message)
            elif kind == "Marker":
                result.marker_seen = True
                marker.set()
                break
            elif kind == "Error":
                result.errors.append(str(message.get("message")))
                break
    finally:  # the words so far, also when the caller gives up waiting
        result.words.extend(words.words)


@dataclass
class TtsClientResult:
    """Audio and word timings received from a TTS session.

    ``frames`` holds the pcm frames of the Pcm formats; ``ogg`` the Ogg Opus stream of the Ogg
    formats, exactly as received (header first), ready to be saved as a ``.ogg`` file.
    """

    frames: list[np.ndarray] = field(default_factory=list)
    words: list[tuple[str, float, float]] = field(default_factory=list)
    first_audio_seconds: float | None = None
    errors: list[str] = field(default_factory=list)
    ogg: bytes = b""

    @property
    def pcm(self) -> np.ndarray:
        """The audio as 24 kHz float32 ``[S]`` (the Ogg stream decoded when there is one)."""
        if self.frames:
            return np.concatenate(self.frames)
        if self.ogg:
            from dsm.audio import load_audio

            return load_audio(self.ogg)
        return np.zeros(0, dtype=np.float32)


async def tts_session(
    url: str,
    text: str,
    *,
    voice: str | None = None,
    api_key: str | None = DEFAULT_KEY,
    fmt: str = "PcmMessagePack",
    connect_timeout: float = 10.0,
    session: aiohttp.ClientSession | None = None,
) -> TtsClientResult:
    """Send ``text`` word by word to ``/api/tts_streaming`` in format ``fmt``; collect audio.

    ``fmt`` is one of :data:`TTS_FORMATS`. The binary formats (``Pcm``, ``OggOpus``) carry no
    ``Ready``, ``Text`` or ``Error`` messages: a failure shows as the close frame's reason.
    """
    if fmt not in TTS_FORMATS:
        raise DsmError(f"unknown TTS format {fmt!r}; use one of {', '.join(TTS_FORMATS)}")
    query = {"format": fmt}
    if voice:
        query["voice"] = voice
    headers = {"kyutai-api-key": api_key} if api_key else {}
    own = session is None
    http = session or aiohttp.ClientSession()
    result = TtsClientResult()
    try:
        endpoint = f"{url.rstrip('/')}/api/tts_streaming?{urlencode(query)}"
        ready = connect_timeout if fmt.endswith("MessagePack") else None  # Ogg: no Ready
        ws = await open_session(http, endpoint, headers, ready)
        async with ws:
            start = time.monotonic()
            for word in text.split():
                await ws.send_bytes(pack({"type": "Text", "text": word}))
            await ws.send_bytes(pack({"type": "Eos"}))
            await _tts_receive(ws, fmt, result, start)
    finally:
        if own:
            await http.close()
    return result


async def _tts_receive(
    ws: aiohttp.ClientWebSocketResponse[bool], fmt: str, result: TtsClientResult, start: float
) -> None:
    ogg = bytearray()
    ogg_messages = 0
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.CLOSE:
            failure = close_failure(msg)
            if failure is not None:
                result.errors.append(failure)
            break
        if msg.type != aiohttp.WSMsgType.BINARY:
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                break
            if msg.type == aiohttp.WSMsgType.ERROR:
                result.errors.append(f"connection error: {msg.data}")
                break
            continue
        if fmt == "Pcm":
            message: dict[str, Any] = {"type": "Audio", "pcm": np.frombuffer(msg.data, "<f4")}
        elif fmt == "OggOpus":
            message = {"type": "OggOpus", "data": msg.data}
        else:
            message = unpack_message(msg.data)
        kind = message["type"]
        if kind == "OggOpus":
            ogg += bytes(message["data"])
            ogg_messages += 1
            # The first Ogg message is the header; the next one holds the first audio.
            if ogg_messages == 2 and result.first_audio_seconds is None:
                result.first_audio_seconds = time.monotonic() - start
        elif kind == "Audio":
            if result.first_audio_seconds is None:
                result.first_audio_seconds = time.monotonic() - start
            result.frames.append(np.asarray(message["pcm"], dtype=np.float32))
        elif kind == "Text":
            result.words.append(
                (message["text"], float(message["start_s"]), float(message["stop_s"]))
            )
        elif kind == "Error":
            result.errors.append(str(message.get("message")))
    result.ogg = bytes(ogg)
