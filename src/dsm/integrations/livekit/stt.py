"""livekit-agents STT for ``dsm serve``'s streaming route (``/api/asr-streaming``).

A :class:`SpeechStream` is one WebSocket session. Audio frames (any rate and channel count:
livekit resamples to 24 kHz, channels are averaged) go out as ``Audio`` messages of at least one
80 ms frame. Events (see :mod:`dsm.integrations.livekit.turns` for the rules):

- ``START_OF_SPEECH`` at a turn's first word;
- ``INTERIM_TRANSCRIPT`` with the segment so far at each word, or piece of a word;
- ``FINAL_TRANSCRIPT`` with the segment, its words timed (``SpeechData.words``), when the
  semantic VAD ends the turn or a flush marker comes back, then ``END_OF_SPEECH`` and a
  ``RECOGNITION_USAGE`` with the input audio's duration.

``flush()`` (livekit calls it at the end of a user turn: the STT declares ``manual_flush``)
sends a ``Marker`` and ``flush_seconds`` of silence, so that the marker comes back without
waiting for more audio; word times leave that silence out. ``end_input()`` flushes, keeps
sending silence until the marker is back, and closes the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import weakref
from dataclasses import dataclass

import aiohttp
import numpy as np
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    LanguageCode,
    stt,
    utils,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr, TimedString
from livekit.agents.utils import AudioBuffer

from dsm.errors import DsmError
from dsm.integrations.livekit._audio import int16_to_float
from dsm.integrations.livekit._connect import (
    DEFAULT_URL,
    close_error,
    connect,
    endpoint,
    resolve_api_key,
)
from dsm.integrations.livekit.timeline import Timeline
from dsm.integrations.livekit.turns import (
    Final,
    Interim,
    Segment,
    SpeechEnded,
    SpeechStarted,
    TurnTracker,
    Update,
)
from dsm.mimi import FRAME_SIZE, SAMPLE_RATE
from dsm.server.client import pack, unpack_message
from dsm.stt.vad import VadOptions

__all__ = ["STT", "STTOptions", "SpeechStream"]

STT_PATH = "/api/asr-streaming"
_END_SILENCE_S = 0.5  # more silence per round while the last marker is not back
_END_WAIT_S = 0.1
_END_MAX_S = 60.0  # give the last marker up after this much silence
_CLOSE_WAIT_S = 5.0


@dataclass
class STTOptions:
    """Settings of :class:`STT` (see its arguments)."""

    base_url: str = DEFAULT_URL
    api_key: str | None = None
    path: str = STT_PATH
    vad: VadOptions | None = dataclasses.field(default_factory=VadOptions)
    flush_seconds: float = 0.8
    language: str = ""


class STT(stt.STT):
    """Streaming speech-to-text from a ``dsm serve`` (or Kyutai ``moshi-server``) STT route."""

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        vad: VadOptions | bool = True,
        flush_seconds: float = 0.8,
        language: str = "",
        path: str = STT_PATH,
        http_session: aiohttp.ClientSession | None = None,
    ) -> None:
        """
        Args:
            base_url: the server, ``ws://host:port`` (``http(s)://`` works too).
            api_key: sent as ``kyutai-api-key``; default ``$KYUTAI_API_KEY``, else
                ``public_token``.
            vad: end turns with the checkpoint's semantic VAD (``prs`` of ``Step``):
                ``True`` for dsm's default rule (:class:`~dsm.stt.vad.VadOptions`), options of
                your own, or ``False`` to end segments only when flushed. A checkpoint without
                VAD heads sends no ``Step``: segments end on flush only.
            flush_seconds: silence sent after a flush marker (after completing the last
                80 ms frame), for the final to come without waiting for more audio: at least
                the model's delay plus 0.16 s (the default fits ``kyutai/stt-1b-en_fr``'s 0.5 s
                delay; use 2.7 for ``kyutai/stt-2.6b-en``'s 2.5 s). Less only makes the final
                wait for that much more input audio; more costs the server that many steps.
            language: the language reported in the transcripts (the model detects its own).
            path: the server's STT route.
            http_session: the aiohttp session to use; default livekit's
                (``livekit.agents.utils.http_context``).
        """
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True,
                interim_results=True,
                aligned_transcript="word",
                offline_recognize=True,
                manual_flush=True,
            )
        )
        if flush_seconds < 0:
            raise ValueError(f"flush_seconds must be >= 0, got {flush_seconds}")
        options = VadOptions() if vad is True else (vad or None)
        self._opts = STTOptions(base_url, api_key, path, options, float(flush_seconds), language)
        self._session = http_session
        self._streams: weakref.WeakSet[SpeechStream] = weakref.WeakSet()

    @property
    def options(self) -> STTOptions:
        """A copy of the settings."""
        return dataclasses.replace(self._opts)

    @property
    def model(self) -> str:
        return "dsm-stt"

    @property
    def provider(self) -> str:
        return "dsm"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = utils.http_context.http_session()
        return self._session

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> SpeechStream:
        """A streaming session (one WebSocket): push frames, iterate the speech events."""
        opts = dataclasses.replace(self._opts)
        if utils.is_given(language):
            opts.language = language
        stream = SpeechStream(stt=self, opts=opts, conn_options=conn_options, http=self._http())
        self._streams.add(stream)
        return stream

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frames = buffer if isinstance(buffer, list) else [buffer]
        once = APIConnectOptions(max_retry=0, timeout=conn_options.timeout)
        words: list[TimedString] = []
        texts: list[str] = []
        span: list[float] = []  # start of the first word, end of the last
        async with self.stream(language=language, conn_options=once) as stream:
            for frame in frames:
                stream.push_frame(frame)
            stream.end_input()
            async for event in stream:
                if event.type != stt.SpeechEventType.FINAL_TRANSCRIPT:
                    continue
                data = event.alternatives[0]
                if data.text and texts and (data.metadata or {}).get("continues"):
                    texts[-1] += data.text
                elif data.text:
                    texts.append(data.text)
                if data.words:
                    words.extend(data.words)
                    span = [span[0] if span else data.start_time, data.end_time]
        data = stt.SpeechData(
            language=LanguageCode(language if utils.is_given(language) else self._opts.language),
            text=" ".join(texts),
            start_time=span[0] if span else 0.0,
            end_time=span[1] if span else 0.0,
            words=words,
        )
        return stt.SpeechEvent(type=stt.SpeechEventType.FINAL_TRANSCRIPT, alternatives=[data])

    async def aclose(self) -> None:
        """Close every open stream."""
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()


class SpeechStream(stt.RecognizeStream):
    """One streaming session with the server (made by :meth:`STT.stream`)."""

    def __init__(
        self,
        *,
        stt: STT,
        opts: STTOptions,
        conn_options: APIConnectOptions,
        http: aiohttp.ClientSession,
    ) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self._opts = opts
        self._http = http
        self._usage_from = 0  # input samples already reported as usage

    async def _run(self) -> None:
        url = endpoint(self._opts.base_url, self._opts.path)
        key = resolve_api_key(self._opts.api_key)
        ws = await connect(self._http, url, key, self._conn_options.timeout)
        session = _Session(request_id=utils.shortuuid(), tracker=TurnTracker(self._opts.vad))
        self._usage_from = 0
        sender = asyncio.create_task(self._send(ws, session), name="dsm-stt-send")
        receiver = asyncio.create_task(self._receive(ws, session), name="dsm-stt-receive")
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            try:
                if sender in done:
                    sender.result()
                else:
                    receiver.result()
                    raise APIConnectionError("the server closed the STT session")
            except (aiohttp.ClientError, ConnectionError) as exc:  # the socket broke
                raise APIConnectionError(f"the STT session failed: {exc}") from exc
            except DsmError as exc:  # not Kyutai's protocol
                raise APIConnectionError(str(exc), retryable=False) from exc
        finally:
            await utils.aio.cancel_and_wait(sender, receiver)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), _CLOSE_WAIT_S)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse[bool], session: _Session) -> None:
        """Forward the input, flush on each flush sentinel, then wait for the last marker."""
        pending: list[np.ndarray] = []
        pending_samples = 0
        unflushed = False  # audio sent since the last flush

        async def send_audio(pcm: np.ndarray, *, silence: bool = False) -> None:
            await ws.send_bytes(pack({"type": "Audio", "pcm": pcm.tolist()}))
            if silence:
                session.timeline.silence(pcm.shape[0])
            else:
                session.timeline.audio(pcm.shape[0])

        async def send_pending() -> None:
            nonlocal pending, pending_samples
            if pending:
                await send_audio(np.concatenate(pending))
                pending, pending_samples = [], 0

        async def flush() -> None:
            nonlocal unflushed
            await send_pending()
            session.markers_sent += 1
            await ws.send_bytes(pack({"type": "Marker", "id": session.markers_sent}))
            # Whole frames: the rest of the last partial one, then flush_seconds.
            samples = -session.timeline.sent % FRAME_SIZE
            samples += round(self._opts.flush_seconds * SAMPLE_RATE)
            if samples:
                await send_audio(np.zeros(samples, dtype=np.float32), silence=True)
            unflushed = False

        async for data in self._input_ch:
            if isinstance(data, rtc.AudioFrame):
                pcm = int16_to_float(data.data, data.num_channels)
                pending.append(pcm)
                pending_samples += pcm.shape[0]
                unflushed = True
                if pending_samples >= FRAME_SIZE:
                    await send_pending()
            elif isinstance(data, self._FlushSentinel):
                await flush()
        if unflushed or session.markers_sent == 0:
            await flush()  # closed without a flush (aclose), or no input at all
        # The last marker comes back once the model's delay of audio follows it.
        silence = np.zeros(round(_END_SILENCE_S * SAMPLE_RATE), dtype=np.float32)
        sent = self._opts.flush_seconds
        while session.markers_back < session.markers_sent and sent < _END_MAX_S:
            session.marker.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.marker.wait(), _END_WAIT_S)
            if session.markers_back < session.markers_sent:
                await send_audio(silence, silence=True)
                sent += _END_SILENCE_S
        if session.markers_back < session.markers_sent:
            self._emit(session, session.tracker.flush())  # the server never answered it

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse[bool], session: _Session) -> None:
        """Turn the server's messages into speech events until the socket closes."""
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                message = unpack_message(msg.data)
                kind = message["type"]
                if kind == "Marker":
                    marker = message.get("id")
                    if isinstance(marker, int) and marker > session.markers_back:
                        session.markers_back = marker
                        self._emit(session, session.tracker.flush())
                        session.marker.set()
                elif kind == "Error":
                    raise APIConnectionError(f"the server failed: {message.get('message')}")
                else:
                    self._emit(session, session.tracker.feed(message))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                continue
            else:
                error = close_error(msg)
                if error is not None:
                    raise error
                return

    def _emit(self, session: _Session, updates: list[Update]) -> None:
        for update in updates:
            if isinstance(update, SpeechStarted):
                self._send_event(session, stt.SpeechEventType.START_OF_SPEECH)
            elif isinstance(update, Interim):
                if update.segment.words:
                    self._send_event(
                        session,
                        stt.SpeechEventType.INTERIM_TRANSCRIPT,
                        self._speech_data(session, update.segment),
                    )
            elif isinstance(update, Final):
                self._send_event(
                    session,
                    stt.SpeechEventType.FINAL_TRANSCRIPT,
                    self._speech_data(session, update.segment),
                )
                self._report_usage(session)
            elif isinstance(update, SpeechEnded):
                self._send_event(session, stt.SpeechEventType.END_OF_SPEECH)

    def _send_event(
        self,
        session: _Session,
        kind: stt.SpeechEventType,
        data: stt.SpeechData | None = None,
    ) -> None:
        event = stt.SpeechEvent(
            type=kind, request_id=session.request_id, alternatives=[data] if data else []
        )
        self._event_ch.send_nowait(event)

    def _report_usage(self, session: _Session) -> None:
        samples = session.timeline.input - self._usage_from
        if samples <= 0:
            return
        self._usage_from = session.timeline.input
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=stt.SpeechEventType.RECOGNITION_USAGE,
                request_id=session.request_id,
                recognition_usage=stt.RecognitionUsage(audio_duration=samples / SAMPLE_RATE),
            )
        )

    def _speech_data(self, session: _Session, segment: Segment) -> stt.SpeechData:
        offset = self.start_time_offset
        to_input = session.timeline.to_input
        times = [(to_input(w.start) + offset, to_input(w.end) + offset) for w in segment.words]
        timed = [
            TimedString(word.text, start_time=start, end_time=end, start_time_offset=offset)
            for word, (start, end) in zip(segment.words, times, strict=True)
        ]
        return stt.SpeechData(
            language=LanguageCode(self._opts.language),
            text=segment.text,
            start_time=times[0][0] if times else offset,
            end_time=times[-1][1] if times else offset,
            words=timed,
            metadata={"continues": True} if segment.continues else None,
        )


@dataclass
class _Session:
    """State shared by a session's sender and receiver."""

    request_id: str
    tracker: TurnTracker
    timeline: Timeline = dataclasses.field(default_factory=Timeline)
    markers_sent: int = 0
    markers_back: int = 0
    marker: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
