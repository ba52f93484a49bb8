"""``DsmSTTService``: Pipecat speech to text with a running ``dsm serve`` (``/api/asr-streaming``).

One WebSocket session for the pipeline's lifetime. The pipeline's 16-bit audio is resampled to
24 kHz mono float (libsoxr, :class:`dsm.audio.StreamResampler`) and sent as ``Audio`` messages;
each ``Word`` (and a continued word, ``"continues": true``) updates an
``InterimTranscriptionFrame`` holding the utterance so far. An utterance ends with a *flush*:
a ``Marker`` and a burst of silence, so the model's delay runs out; when the marker comes back,
every word of the audio before it has arrived and a ``TranscriptionFrame`` carries them.

Who ends an utterance:

* by default, the pipeline: its VAD's ``VADUserStoppedSpeakingFrame`` flushes (and so does the
  end of the pipeline);
* with ``enable_turn_detection=True``, the server's semantic VAD (checkpoints with extra heads,
  e.g. ``kyutai/stt-1b-en_fr``; the server then sends a ``Step`` with pause probabilities per
  80 ms): the first word of a turn proposes its start
  (``ProposedUserStartedSpeakingFrame``), dsm's end-of-turn rule
  (:class:`dsm.stt.vad.EndOfTurnDetector` with ``vad``, by default one head's probability
  crossing 0.5 after a word) proposes its end (``ProposedUserStoppedSpeakingFrame``) and
  flushes, and the service recommends Pipecat's ``ExternalUserTurnStrategies``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    StartFrame,
    STTMetadataFrame,
    TranscriptionFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import STTService
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies
from pipecat.utils.time import time_now_iso8601

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
from dsm.mimi import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE
from dsm.server.client import pack
from dsm.server.wire_words import WireWords
from dsm.stt.vad import EndOfTurnDetector, VadOptions

__all__ = ["DsmSTTService"]

STT_PATH = "/api/asr-streaming"
_SILENCE = pack({"type": "Audio", "pcm": [0.0] * FRAME_SIZE})  # one 80 ms frame


class DsmSTTService(STTService):
    """Streaming speech to text with a ``dsm serve`` server (or Kyutai's ``moshi-server``).

    Example::

        stt = DsmSTTService(url="ws://127.0.0.1:8080")
        pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts, ...])

    Args:
        url: The server, ``ws://host:port`` (``wss://`` behind TLS).
        api_key: Sent as the ``kyutai-api-key`` header; None sends none (an open server).
        enable_turn_detection: End turns with the server's semantic VAD (see the module
            docstring); needs a checkpoint with VAD heads.
        vad: The end-of-turn rule for ``enable_turn_detection`` (head, threshold, smoothing);
            dsm's default (head 2, the 2 s pause horizon, threshold 0.5) when None.
        flush_seconds: Silence sent at once after a flush marker; the model's delay plus a
            frame or two (0.5 s for ``kyutai/stt-1b-en_fr``, 2.5 s for ``kyutai/stt-2.6b-en``).
            While no live audio comes (the end of the pipeline), more follows in real time
            until the marker is back.
        flush_timeout: Longest wait for a flush marker at the end of the pipeline, in seconds.
        connect_timeout: Longest wait for the WebSocket and ``Ready``, in seconds.
        reconnect_interval: After a lost session, the shortest time between reconnection
            attempts (made as audio comes), in seconds.
        sample_rate: The input audio's rate; the pipeline's when None.
        ttfs_p99_latency: Time from the end of speech to the final transcript (P99, seconds),
            for Pipecat's turn strategies.
        **kwargs: Passed to Pipecat's ``STTService`` (e.g. ``keepalive_timeout``: silence
            sent after that many idle seconds, before the server's idle timeout of 120 s).

    Event handlers, besides ``STTService``'s ``on_connected``, ``on_disconnected`` and
    ``on_connection_error``: ``on_turn_start(service)`` and ``on_turn_end(service)``, with
    ``enable_turn_detection``, when the server's VAD opens or closes a turn.
    """

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        api_key: str | None = DEFAULT_KEY,
        enable_turn_detection: bool = False,
        vad: VadOptions | None = None,
        flush_seconds: float = 0.72,
        flush_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 2.0,
        sample_rate: int | None = None,
        ttfs_p99_latency: float | None = 1.0,
        settings: STTSettings | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            sample_rate=sample_rate,
            ttfs_p99_latency=ttfs_p99_latency,
            settings=settings or STTSettings(model=None, language=None),
            **kwargs,
        )
        self._url = endpoint(url, STT_PATH)
        self._api_key = api_key
        self._turn_detection = enable_turn_detection
        self._vad = vad or VadOptions()
        self._flush_frames = max(1, math.ceil(flush_seconds * FRAME_RATE))
        self._flush_timeout = flush_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval

        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self._receive_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._last_connect = -math.inf
        self._resampler: StreamResampler | None = None
        self._utterance = WireWords()
        self._unflushed = False  # audio sent since the last flush marker
        self._marker_id = 0
        self._markers: dict[int, asyncio.Event] = {}
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._detector: EndOfTurnDetector | None = None
        self._steps = 0
        self._turn_open = False
        self._turn_ending = False
        self._warned_no_steps = False
        self._register_event_handler("on_turn_start")
        self._register_event_handler("on_turn_end")

    # Pipecat interface

    @property
    def supports_ttfs(self) -> bool:
        """False with server-side turn detection (the server defines the turn's end)."""
        return not self._turn_detection

    def can_generate_metrics(self) -> bool:
        """The service reports Pipecat's STT metrics."""
        return True

    def service_metadata_frame(self) -> STTMetadataFrame:
        """With ``enable_turn_detection``, recommend ``ExternalUserTurnStrategies``, which turn
        this service's proposals into the user's turns."""
        frame = super().service_metadata_frame()
        if self._turn_detection:
            frame.user_turn_strategies = ExternalUserTurnStrategies()
        return frame

    async def start(self, frame: StartFrame) -> None:
        """Open the session with the server."""
        await super().start(frame)
        self._resampler = StreamResampler(self.sample_rate, SAMPLE_RATE)
        await self._connect()

    async def stop(self, frame: EndFrame) -> None:
        """Flush (the last words come as a ``TranscriptionFrame``), then close the session."""
        if self._unflushed or self._utterance or self._markers:
            await self._flush(wait=True)  # markers come back in order: this one comes last
        await super().stop(frame)
        await self._disconnect()

    async def cancel(self, frame: CancelFrame) -> None:
        """Close the session at once."""
        await super().cancel(frame)
        await self._disconnect()

    async def cleanup(self) -> None:
        """Close the session and the HTTP client."""
        await super().cleanup()
        await self._disconnect()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Frames as Pipecat's ``STTService``; the VAD's end of speech flushes the utterance
        (unless the server's VAD detects turns)."""
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame) and not self._turn_detection:
            await self._flush(wait=False)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Send 16-bit mono ``audio`` (resampled to 24 kHz); the words come back on their own."""
        if self._ws is None and time.monotonic() - self._last_connect >= self._reconnect_interval:
            await self._connect()
        if self._ws is not None and self._resampler is not None:
            samples = np.frombuffer(audio[: len(audio) // 2 * 2], dtype="<i2")
            await self._send_pcm(self._resampler.push(samples))
        yield None

    async def _send_keepalive(self, silence: bytes) -> None:
        if self._ws is not None and self._resampler is not None:
            await self._send_pcm(self._resampler.push(np.frombuffer(silence, dtype="<i2")))

    def _is_keepalive_ready(self) -> bool:
        return self._ws is not None and not self._ws.closed

    # The session

    async def _connect(self) -> None:
        self._last_connect = time.monotonic()
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            ws = await connect(self._http, self._url, self._api_key, self._connect_timeout)
        except CONNECT_ERRORS as exc:
            message = f"{self}: no STT session with {self._url}: {exc or type(exc).__name__}"
            await self._call_event_handler("on_connection_error", message)
            await self.push_error(message, exception=exc)
            return
        self._ws = ws
        self._steps = 0
        self._detector = None
        if self._resampler is not None:
            self._resampler.reset()
        self._receive_task = self.create_task(self._receive(ws), "dsm_stt_receive")
        logger.debug(f"{self}: connected to {self._url}")
        await self._call_event_handler("on_connected")

    async def _disconnect(self) -> None:
        for task in list(self._flush_tasks):
            await self.cancel_task(task)
        self._flush_tasks.clear()
        if self._receive_task is not None:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        if self._ws is not None:
            ws, self._ws = self._ws, None
            await ws.close()
            await self._call_event_handler("on_disconnected")

    async def _send_pcm(self, pcm: np.ndarray) -> None:
        if pcm.shape[0]:
            await self._send(pack({"type": "Audio", "pcm": pcm.tolist()}))
            self._unflushed = True

    async def _send(self, payload: bytes) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        async with self._send_lock:
            try:
                await ws.send_bytes(payload)
            except (ConnectionError, RuntimeError) as exc:  # the receive task reports the end
                logger.debug(f"{self}: send failed: {exc}")

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        failure = "the server closed the session"
        try:
            async for message in messages(ws):
                await self._handle(message)
        except SessionFailed as exc:
            failure = str(exc)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            failure = f"connection error: {exc}"
        # The server ends an STT session only on a failure, an idle timeout or a shutdown.
        if self._ws is ws:
            self._ws = None
            self._receive_task = None
            await self._finalize()
            for event in self._markers.values():
                event.set()
            self._markers.clear()
            await self._call_event_handler("on_disconnected")
            await self.push_error(f"{self}: the STT session ended: {failure}")

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "Word":
            if self._utterance.word(message):
                await self._on_new_word()
            await self._push_interim()
        elif kind == "EndWord":
            self._utterance.end_word(message)
        elif kind == "Step":
            self._steps += 1
            await self._on_step(message.get("prs") or [])
        elif kind == "Marker":
            self.confirm_finalize()
            await self._finalize()
            event = self._markers.pop(int(message.get("id", -1)), None)
            if event is not None:
                event.set()
            self._turn_ending = False

    async def _push_interim(self) -> None:
        if self._utterance:
            await self.push_frame(
                InterimTranscriptionFrame(
                    self._utterance.text, self._user_id, time_now_iso8601(), None, result=None
                )
            )

    async def _finalize(self) -> None:
        """The utterance so far as a ``TranscriptionFrame`` (nothing when it is empty)."""
        if not self._utterance:
            return
        text = self._utterance.text
        words = self._utterance.take()
        await self.emit_stt_usage_metrics()
        frame = TranscriptionFrame(text, self._user_id, time_now_iso8601(), None, result=words)
        logger.debug(f"{self}: transcript [{text}]")
        await self.push_frame(frame)

    # Flushing: a marker, then silence until it comes back

    async def _flush(self, *, wait: bool) -> None:
        if self._ws is None or self._resampler is None:
            await self._finalize()
            return
        tail = self._resampler.flush()
        self._resampler.reset()
        await self._send_pcm(tail)
        self._marker_id += 1
        marker = asyncio.Event()
        self._markers[self._marker_id] = marker
        self.request_finalize()
        await self._send(pack({"type": "Marker", "id": self._marker_id}))
        self._unflushed = False
        if wait:
            try:
                await asyncio.wait_for(self._feed_silence(marker, live=False), self._flush_timeout)
            except asyncio.TimeoutError:
                logger.warning(f"{self}: no flush marker back within {self._flush_timeout} s")
                await self._finalize()
        else:
            task = self.create_task(self._feed_silence(marker, live=True), "dsm_stt_flush")
            self._flush_tasks.add(task)
            task.add_done_callback(self._flush_tasks.discard)

    async def _feed_silence(self, marker: asyncio.Event, *, live: bool) -> None:
        """The burst of silence, then (while no live audio comes) a frame per 80 ms."""
        for _ in range(self._flush_frames):
            await self._send(_SILENCE)
        while not marker.is_set() and self._ws is not None:
            try:
                await asyncio.wait_for(marker.wait(), 1.0 / FRAME_RATE)
            except asyncio.TimeoutError:
                if not live or time.monotonic() - self._last_audio_time > 2.0 / FRAME_RATE:
                    await self._send(_SILENCE)

    # Turn detection with the server's VAD

    async def _on_new_word(self) -> None:
        if not self._turn_detection or self._turn_ending:
            return
        if self._steps == 0 and not self._warned_no_steps:
            self._warned_no_steps = True
            logger.warning(
                f"{self}: the server sends no Step messages: its checkpoint has no VAD heads, "
                "so turns never end; use enable_turn_detection=False with this checkpoint"
            )
        if self._detector is not None:
            self._detector.on_word()
        if not self._turn_open:
            self._turn_open = True
            await self.broadcast_frame(ProposedUserStartedSpeakingFrame)
            await self._call_event_handler("on_turn_start")

    async def _on_step(self, pause: list[float]) -> None:
        if not self._turn_detection or not pause:
            return
        if self._detector is None:
            try:
                self._detector = EndOfTurnDetector(self._vad, len(pause))
            except ValueError as exc:
                logger.error(f"{self}: {exc}; turn detection is off")
                self._turn_detection = False
                return
            if self._turn_open:
                self._detector.on_word()
        if self._detector.update(pause) and self._turn_open and not self._turn_ending:
            self._turn_open = False
            self._turn_ending = True
            await self.broadcast_frame(ProposedUserStoppedSpeakingFrame)
            await self._call_event_handler("on_turn_end")
            await self._flush(wait=False)
