"""livekit-agents TTS for ``dsm serve``'s streaming route (``/api/tts_streaming``).

Each synthesis is one WebSocket session in ``PcmMessagePack`` format: the text goes out as one
``Text`` message per whole word, then ``Eos``; the server's ``Audio`` frames (1920 float32
samples at 24 kHz) come back as 24 kHz mono int16 audio, and its ``Text`` word times as aligned
transcripts (``TimedString``, on the audio's timeline). The server closes the session after the
last frame.

- :meth:`TTS.synthesize` sends the whole text at once (:class:`ChunkedStream`);
- :meth:`TTS.stream` (:class:`SynthesizeStream`) opens the session at the first text, sends
  each word as soon as it is complete (an LLM's tokens cut words anywhere) and ``Eos`` at
  ``flush()`` / ``end_input()``; audio plays while the text is still coming.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import numpy as np
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APITimeoutError,
    tts,
    utils,
)
from livekit.agents.types import TimedString

from dsm.errors import DsmError
from dsm.integrations.livekit._audio import float_to_int16
from dsm.integrations.livekit._connect import (
    DEFAULT_URL,
    close_error,
    connect,
    endpoint,
    resolve_api_key,
)
from dsm.mimi import SAMPLE_RATE
from dsm.server.client import pack, unpack_message
from dsm.tts.streamed_words import StreamedWords

__all__ = ["TTS", "ChunkedStream", "SynthesizeStream", "TTSOptions"]

TTS_PATH = "/api/tts_streaming"
_CLOSE_WAIT_S = 5.0
_SEND_ERRORS = (aiohttp.ClientError, ConnectionError, RuntimeError)


@dataclass
class TTSOptions:
    """Settings of :class:`TTS` (see its arguments)."""

    base_url: str = DEFAULT_URL
    api_key: str | None = None
    voice: str | None = None
    temperature: float | None = None
    cfg: float | None = None
    path: str = TTS_PATH

    def url(self) -> str:
        """The session URL, with its query."""
        query = {"format": "PcmMessagePack"}
        if self.voice:
            query["voice"] = self.voice
        if self.temperature is not None:
            query["temperature"] = repr(float(self.temperature))
        if self.cfg is not None:
            query["cfg"] = repr(float(self.cfg))
        return endpoint(self.base_url, self.path, query)


class TTS(tts.TTS):
    """Streaming text-to-speech from a ``dsm serve`` (or Kyutai ``moshi-server``) TTS route."""

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        voice: str | None = None,
        temperature: float | None = None,
        cfg: float | None = None,
        path: str = TTS_PATH,
        http_session: aiohttp.ClientSession | None = None,
    ) -> None:
        """
        Args:
            base_url: the server, ``ws://host:port`` (``http(s)://`` works too).
            api_key: sent as ``kyutai-api-key``; default ``$KYUTAI_API_KEY``, else
                ``public_token``.
            voice: a voice name the server lists (``GET /api/voices``); default the server's.
            temperature: sampling temperature of the session (0 = greedy; dsm's query
                parameter, which upstream's server ignores); default the server's.
            cfg: classifier-free guidance strength, one of the checkpoint's values (dsm's);
                default the server's.
            path: the server's TTS route.
            http_session: the aiohttp session to use; default livekit's
                (``livekit.agents.utils.http_context``).
        """
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
        )
        self._opts = TTSOptions(base_url, api_key, voice, temperature, cfg, path)
        self._session = http_session
        self._streams: weakref.WeakSet[SynthesizeStream] = weakref.WeakSet()

    @property
    def options(self) -> TTSOptions:
        """A copy of the settings."""
        return dataclasses.replace(self._opts)

    @property
    def model(self) -> str:
        return "dsm-tts"

    @property
    def provider(self) -> str:
        return "dsm"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = utils.http_context.http_session()
        return self._session

    async def _open(self, timeout: float) -> aiohttp.ClientWebSocketResponse[bool]:
        key = resolve_api_key(self._opts.api_key)
        return await connect(self._http(), self._opts.url(), key, timeout)

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        """Speak ``text`` (sent whole, then ``Eos``)."""
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        """A streaming synthesis: push text as it comes, iterate the audio."""
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        """Close every open stream."""
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()


class ChunkedStream(tts.ChunkedStream):
    """One synthesis of a whole text (made by :meth:`TTS.synthesize`)."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._dsm_tts = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
        )
        timeout = self._conn_options.timeout
        ws = await self._dsm_tts._open(timeout)
        receiver = asyncio.create_task(_receive(ws, output_emitter, timeout))
        try:
            await _send_words(ws, self._input_text.split(), receiver)
            await _send_eos(ws, receiver)
            await receiver
        finally:
            await _end(ws, receiver)
        # No flush: livekit ends the segment with the held-back tail as the final frame.


class SynthesizeStream(tts.SynthesizeStream):
    """One streaming synthesis (made by :meth:`TTS.stream`); a session per segment."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._dsm_tts = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        splitter = StreamedWords()
        ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        receiver: asyncio.Task[None] | None = None
        try:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    if ws is not None and receiver is not None:
                        await _send_words(ws, splitter.flush(), receiver)
                        await _send_eos(ws, receiver)
                        await receiver
                        output_emitter.end_segment()
                        await _end(ws, receiver)
                        ws = receiver = None
                    splitter.flush()
                    continue
                if ws is None and data.strip():
                    ws = await self._dsm_tts._open(self._conn_options.timeout)
                    output_emitter.start_segment(segment_id=utils.shortuuid())
                    receiver = asyncio.create_task(_receive(ws, output_emitter, None))
                words = splitter.push(data)
                if ws is not None and receiver is not None and words:
                    self._mark_started()
                    await _send_words(ws, words, receiver)
            if ws is not None and receiver is not None:  # input closed without a flush
                await _send_words(ws, splitter.flush(), receiver)
                await _send_eos(ws, receiver)
                await receiver
                output_emitter.end_segment()
        finally:
            if ws is not None and receiver is not None:
                await _end(ws, receiver)


async def _send_words(
    ws: aiohttp.ClientWebSocketResponse[bool], words: Iterable[str], receiver: asyncio.Task[None]
) -> None:
    for word in words:
        await _send(ws, {"type": "Text", "text": word}, receiver)


async def _send_eos(
    ws: aiohttp.ClientWebSocketResponse[bool], receiver: asyncio.Task[None]
) -> None:
    await _send(ws, {"type": "Eos"}, receiver)


async def _send(
    ws: aiohttp.ClientWebSocketResponse[bool], message: dict[str, str], receiver: asyncio.Task[None]
) -> None:
    """Send one message; a session the server ended raises the receiver's error."""
    if receiver.done():
        await receiver  # its error, if it failed
        raise APIConnectionError("the server closed the TTS session before the end of the text")
    try:
        await ws.send_bytes(pack(message))
    except _SEND_ERRORS as exc:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiver), 1.0)
        raise APIConnectionError(f"cannot send to the TTS session: {exc}") from exc


async def _receive(
    ws: aiohttp.ClientWebSocketResponse[bool], emitter: tts.AudioEmitter, timeout: float | None
) -> None:
    """Push the session's audio and word times to ``emitter`` until the server closes."""
    while True:
        try:
            msg = await ws.receive(timeout=timeout)
        except asyncio.TimeoutError:
            raise APITimeoutError(f"no audio from the TTS server for {timeout} s") from None
        if msg.type == aiohttp.WSMsgType.BINARY:
            try:
                message = unpack_message(msg.data)
            except DsmError as exc:  # not Kyutai's protocol
                raise APIConnectionError(str(exc), retryable=False) from exc
            kind = message["type"]
            if kind == "Audio":
                pcm = np.asarray(message.get("pcm", []), dtype=np.float32)
                emitter.push(float_to_int16(pcm).tobytes())
            elif kind == "Text" and message.get("text"):
                emitter.push_timed_transcript(
                    TimedString(
                        f"{message['text']} ",
                        start_time=float(message.get("start_s", 0.0)),
                        end_time=float(message.get("stop_s", 0.0)),
                    )
                )
            elif kind == "Error":
                raise APIConnectionError(f"the TTS server failed: {message.get('message')}")
        elif msg.type == aiohttp.WSMsgType.TEXT:
            continue
        else:
            error: APIError | None = close_error(msg)
            if error is not None:
                raise error
            return


async def _end(ws: aiohttp.ClientWebSocketResponse[bool], receiver: asyncio.Task[None]) -> None:
    await utils.aio.cancel_and_wait(receiver)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), _CLOSE_WAIT_S)
