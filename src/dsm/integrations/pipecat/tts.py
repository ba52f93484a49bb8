"""``DsmTTSService``: Pipecat text to speech with a running ``dsm serve`` (``/api/tts_streaming``).

Kyutai's TTS protocol speaks one utterance per WebSocket session: ``Text`` messages (whole
words) as they come, ``Eos``, then the server sends the audio and closes. The service opens one
session per Pipecat audio context, which is one LLM turn (or one ``TTSSpeakFrame``): the turn's
text streams in as it is generated (sentences, or tokens with
``text_aggregation_mode=TextAggregationMode.TOKEN``, cut into whole words), and the end of the
turn sends ``Eos``. Text outside a turn is an utterance of its own.

Each ``Audio`` message (1920 float samples at 24 kHz) becomes a ``TTSAudioRawFrame`` at once,
resampled to the pipeline's output rate (libsoxr, :class:`dsm.audio.StreamResampler`), and each
``Text`` message times its word (``TTSTextFrame``\\ s follow the audio). An interruption closes
the sessions of the interrupted contexts, so the server stops generating and frees their slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from dsm.audio.encode import pcm16
from dsm.audio.resample import StreamResampler
from dsm.integrations.pipecat.connection import (
    CONNECT_ERRORS,
    DEFAULT_KEY,
    DEFAULT_URL,
    SessionFailed,
    connect,
    endpoint,
    messages,
)
from dsm.mimi import SAMPLE_RATE
from dsm.server.client import pack
from dsm.tts.streamed_words import StreamedWords

__all__ = ["DsmTTSService"]

TTS_PATH = "/api/tts_streaming"


@dataclass
class _Session:
    """One utterance: its socket, the task reading it, and what is left to send."""

    context_id: str
    ws: aiohttp.ClientWebSocketResponse[bool]
    resampler: StreamResampler
    words: StreamedWords = field(default_factory=StreamedWords)
    receiver: asyncio.Task[None] | None = None
    eos: bool = False


class DsmTTSService(TTSService):
    """Streaming text to speech with a ``dsm serve`` server (or Kyutai's ``moshi-server``).

    Example::

        tts = DsmTTSService(url="ws://127.0.0.1:8080", voice="expresso/ex03-ex01_happy_001")
        pipeline = Pipeline([..., llm, tts, transport.output(), assistant_aggregator])

    Args:
        url: The server, ``ws://host:port`` (``wss://`` behind TLS).
        api_key: Sent as the ``kyutai-api-key`` header; None sends none (an open server).
        voice: A voice the server lists (``GET /api/voices``); the server's default when None.
            Also settable with ``TTSUpdateSettingsFrame`` (applies from the next utterance).
        temperature: This service's sampling temperature (0 = greedy; dsm's query parameter,
            ignored by upstream); the server's when None.
        cfg: A classifier-free-guidance strength the checkpoint supports (dsm's query
            parameter); the server's when None.
        connect_timeout: Longest wait for the WebSocket and ``Ready``, in seconds.
        sample_rate: The output audio's rate; the pipeline's when None (24 kHz is the model's).
        **kwargs: Passed to Pipecat's ``TTSService`` (e.g. ``text_aggregation_mode``).
    """

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        api_key: str | None = DEFAULT_KEY,
        voice: str | None = None,
        temperature: float | None = None,
        cfg: float | None = None,
        connect_timeout: float = 10.0,
        sample_rate: int | None = None,
        settings: TTSSettings | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            sample_rate=sample_rate,
            settings=settings or TTSSettings(model=None, voice=voice, language=None),
            push_start_frame=True,  # the base opens each audio context with TTSStartedFrame
            push_text_frames=False,  # words come timed from the server's Text messages
            **kwargs,
        )
        self._url = endpoint(url, TTS_PATH)
        self._api_key = api_key
        self._sampling = {"temperature": temperature, "cfg": cfg}
        self._connect_timeout = connect_timeout
        self._http: aiohttp.ClientSession | None = None
        self._sessions: dict[str, _Session] = {}

    def can_generate_metrics(self) -> bool:
        """The service reports Pipecat's TTS metrics."""
        return True

    @property
    def supports_processing_metrics(self) -> bool:
        """False: ``run_tts`` sends text and returns; the audio comes on the session's task."""
        return False

    # Pipecat interface

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send ``text`` in the session of ``context_id`` (opened on its first text); text
        outside an LLM turn or speak frame is a whole utterance and ends its session."""
        session = self._sessions.get(context_id)
        if session is None or session.eos:
            session = await self._open(context_id)
            if session is None:  # the error is pushed; end the context the base opened
                await self._end_context(context_id)
                yield None
                return
        await self.start_tts_usage_metrics(text)
        words = session.words.push(text, complete=not self._is_streaming_tokens)
        await self._send_words(session, words)
        if context_id != self._turn_context_id:
            await self._end_text(context_id)
        yield None

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The end of the context's text: send what is left and ``Eos``."""
        await self._end_text(context_id or self.get_active_audio_context_id())

    async def on_turn_context_completed(self) -> None:
        """End the turn's text even when its audio context is gone (it went quiet for
        ``stop_frame_timeout_s`` while the LLM was slow)."""
        context_id = self._turn_context_id
        await super().on_turn_context_completed()
        await self._end_text(context_id)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Close the interrupted context's session: the server stops generating its audio."""
        await self._close(context_id)
        await super().on_audio_context_interrupted(context_id)

    async def stop(self, frame: EndFrame) -> None:
        """End every session's text, let their audio play out, then close what is left."""
        for context_id in list(self._sessions):
            await self._end_text(context_id)
        await super().stop(frame)
        await self._close_all()

    async def cancel(self, frame: CancelFrame) -> None:
        """Close every session at once."""
        await super().cancel(frame)
        await self._close_all()

    async def cleanup(self) -> None:
        """Close every session and the HTTP client."""
        await super().cleanup()
        await self._close_all()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # Sessions

    def _session_url(self) -> str:
        query: dict[str, str] = {"format": "PcmMessagePack"}
        voice = self._settings.voice
        if isinstance(voice, str) and voice:
            query["voice"] = voice
        for name, value in self._sampling.items():
            if value is not None:
                query[name] = f"{value:g}"
        return f"{self._url}?{urlencode(query)}"

    async def _open(self, context_id: str) -> _Session | None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = self._session_url()
        try:
            ws = await connect(self._http, url, self._api_key, self._connect_timeout)
        except CONNECT_ERRORS as exc:
            message = f"{self}: no TTS session with {self._url}: {exc or type(exc).__name__}"
            await self._call_event_handler("on_connection_error", message)
            await self.push_error(message, exception=exc)
            return None
        session = _Session(context_id, ws, StreamResampler(SAMPLE_RATE, self.sample_rate))
        self._sessions[context_id] = session
        session.receiver = self.create_task(self._receive(session), "dsm_tts_receive")
        logger.debug(f"{self}: TTS session for context {context_id}")
        return session

    async def _send(self, session: _Session, message: dict[str, Any]) -> None:
        if session.ws.closed:
            return
        try:
            await session.ws.send_bytes(pack(message))
        except (ConnectionError, RuntimeError) as exc:  # the receive task reports the end
            logger.debug(f"{self}: send failed: {exc}")

    async def _send_words(self, session: _Session, words: list[str]) -> None:
        for word in words:  # one word per message, as Kyutai's clients send
            await self._send(session, {"type": "Text", "text": word})

    async def _end_text(self, context_id: str | None) -> None:
        session = self._sessions.get(context_id) if context_id else None
        if session is None or session.eos:
            return
        session.eos = True
        await self._send_words(session, session.words.flush())
        await self._send(session, {"type": "Eos"})

    async def _receive(self, session: _Session) -> None:
        context_id = session.context_id
        failure: str | None = None
        try:
            async for message in messages(session.ws):
                kind = message["type"]
                if kind == "Audio":
                    pcm = np.asarray(message["pcm"], dtype=np.float32)
                    await self._push_audio(context_id, session.resampler.push(pcm))
                elif kind == "Text":
                    start = float(message.get("start_s", 0.0))
                    await self.add_word_timestamps([(str(message["text"]), start)], context_id)
        except SessionFailed as exc:
            failure = str(exc)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            failure = f"connection error: {exc}"
        await self._push_audio(context_id, session.resampler.flush())
        if not session.eos and failure is None:
            failure = "the server closed the session before the end of the text"
        if self._sessions.get(context_id) is session:
            del self._sessions[context_id]
        await session.ws.close()
        if failure is not None:
            await self.push_error(f"{self}: the TTS session ended: {failure}")
        await self._end_context(context_id)

    async def _end_context(self, context_id: str) -> None:
        """Close the context's audio with ``TTSStoppedFrame`` (when it is still playing)."""
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    async def _push_audio(self, context_id: str, pcm: np.ndarray) -> None:
        if pcm.shape[0]:
            frame = TTSAudioRawFrame(pcm16(pcm), self.sample_rate, 1, context_id=context_id)
            await self.append_to_audio_context(context_id, frame)

    async def _close(self, context_id: str) -> None:
        session = self._sessions.pop(context_id, None)
        if session is None:
            return
        if session.receiver is not None and session.receiver is not asyncio.current_task():
            await self.cancel_task(session.receiver)
        await session.ws.close()
        logger.debug(f"{self}: closed the TTS session of context {context_id}")

    async def _close_all(self) -> None:
        for context_id in list(self._sessions):
            await self._close(context_id)
