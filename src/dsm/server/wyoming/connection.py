"""One Wyoming client connection: reads events, answers ``describe`` and ``ping``, runs its
transcriptions and syntheses one at a time on the server's shared slots.

Anything a stranger can send is checked here before it reaches a model: event framing and
sizes (:mod:`~dsm.server.wyoming.events`), field types, the audio format. A malformed event,
an oversized one, garbage bytes or an event out of order get an ``error`` event saying what was
wrong, then this connection closes; other connections and sessions are untouched. A client that
vanishes frees its slot at once. Unknown event types are ignored, as Wyoming servers do.

Slots: a request waits up to the module's ``queue_timeout_s`` for a free slot (as the OpenAI
routes), then gets ``error`` with code ``busy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from wyoming.event import Event
from wyoming.ping import Pong

from dsm.engine.slots import ModuleUnavailable
from dsm.server.slot_wait import wait_for_slot
from dsm.server.state import DsmServer
from dsm.server.wyoming.asr import AsrSession
from dsm.server.wyoming.audio import AudioFormatError, PcmInput
from dsm.server.wyoming.events import (
    EventLimits,
    WyomingProtocolError,
    error_event,
    read_event,
)
from dsm.server.wyoming.info import build_info
from dsm.server.wyoming.session import EventWriter
from dsm.server.wyoming.tts import TtsSession

__all__ = ["WyomingConnection"]

log = logging.getLogger("dsm.server")

NO_FREE_CHANNELS = "no free channels"
_LINGER_S = 1.0  # after an error: how long, and how much, of the client's input is discarded
_LINGER_BYTES = 4 * 1024 * 1024


class _Refused(Exception):
    """A request this connection can't serve (no such module, no free slot): error event."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _text_field(data: dict[str, Any], name: str, event: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise WyomingProtocolError(f'a {event} event needs a string "{name}"')
    return value


def _voice_name(data: dict[str, Any], event: str) -> str | None:
    voice = data.get("voice")
    if voice is None:
        return None
    if not isinstance(voice, dict):
        raise WyomingProtocolError(f'a {event} event\'s "voice" must be an object')
    name = voice.get("name")
    if name is not None and not isinstance(name, str):
        raise WyomingProtocolError(f'a {event} event\'s "voice.name" must be a string')
    return name or None


def _optional_str(data: dict[str, Any], name: str, event: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise WyomingProtocolError(f'a {event} event\'s "{name}" must be a string')
    return value


class WyomingConnection:
    """Serve one client until it leaves, breaks the protocol or the server stops."""

    def __init__(
        self, server: DsmServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.out = EventWriter(writer)
        self.limits = EventLimits.of(server.config.wyoming)
        self.language: str | None = None  # from ``transcribe``, for the next transcription
        self.asr: AsrSession | None = None
        self.tts: TtsSession | None = None

    async def run(self) -> None:
        """The read loop; always frees the connection's slots and closes the socket."""
        self.server.metrics.inc("dsm_wyoming_connections")
        try:
            while not self.server.shutting_down:
                event = await read_event(self.reader, self.limits)
                if event is None or not await self._handle(event):
                    break
        except WyomingProtocolError as exc:
            self.server.metrics.inc("dsm_protocol_errors")
            await self._error(str(exc), "invalid-event")
        except AudioFormatError as exc:
            self.server.metrics.inc("dsm_protocol_errors")
            await self._error(str(exc), "invalid-audio")
        except _Refused as exc:
            await self._error(str(exc), exc.code)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self._end_sessions()
            self.out.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.out.writer.wait_closed()

    async def _error(self, text: str, code: str) -> None:
        """Send ``error``, then close gently: end our side and discard what the client still
        sends for a moment, so the kernel does not reset the connection (which would drop the
        error before the client reads it)."""
        with contextlib.suppress(ConnectionError, RuntimeError, OSError, asyncio.TimeoutError):
            await self.out.send(error_event(text, code))
            if self.out.writer.can_write_eof():
                self.out.writer.write_eof()
            await asyncio.wait_for(self._discard(), _LINGER_S)

    async def _discard(self) -> None:
        left = _LINGER_BYTES
        while left > 0:
            data = await self.reader.read(min(left, 65536))
            if not data:
                return
            left -= len(data)

    async def _end_sessions(self) -> None:
        for session in (self.asr, self.tts):
            if session is not None:
                await session.close()
        self.asr = self.tts = None

    async def _handle(self, event: Event) -> bool:
        """One event; False ends the connection."""
        kind, data = event.type, event.data
        if kind == "describe":
            await self.out.send(build_info(self.server).event())
        elif kind == "ping":
            await self.out.send(Pong(text=_optional_str(data, "text", kind)).event())
        elif kind == "transcribe":
            self.language = _optional_str(data, "language", kind)
        elif kind in ("audio-start", "audio-chunk"):
            return await self._audio(kind, data, event.payload or b"")
        elif kind == "audio-stop":
            return await self._audio_stop()
        elif kind == "synthesize":
            return await self._synthesize(data)
        elif kind == "synthesize-start":
            if self.tts is not None:
                raise WyomingProtocolError("synthesize-start while a synthesis is running")
            self.tts = await self._tts_session(_voice_name(data, kind), streaming=True)
        elif kind == "synthesize-chunk":
            if self.tts is None or not self.tts.streaming:
                raise WyomingProtocolError("synthesize-chunk without synthesize-start")
            await self.tts.push(_text_field(data, "text", kind))
            return not self.tts.ended
        elif kind == "synthesize-stop":
            if self.tts is None or not self.tts.streaming:
                raise WyomingProtocolError("synthesize-stop without synthesize-start")
            return await self._finish_tts()
        return True  # other event types are not for this server: ignored

    # -- speech to text ----------------------------------------------------------------------

    async def _audio(self, kind: str, data: dict[str, Any], payload: bytes) -> bool:
        if self.tts is not None:
            raise WyomingProtocolError(f"{kind} during a synthesis")
        if self.asr is None:
            self.asr = await self._asr_session(data)
        elif kind == "audio-start":
            raise WyomingProtocolError("audio-start while a transcription is running")
        if kind == "audio-chunk":
            await self.asr.push(payload, data)
        return not self.asr.ended

    async def _asr_session(self, fmt: dict[str, Any]) -> AsrSession:
        module = self.server.stt
        if module is None:
            raise _Refused("this server has no speech-to-text model", "no-model")
        pcm = PcmInput(fmt.get("rate"), fmt.get("width"), fmt.get("channels"))
        loop = asyncio.get_running_loop()
        channel = await self._claim(lambda: module.new_channel(loop), "stt")
        session = AsrSession(self.server, module, channel, pcm, self.out, self.language)
        try:
            await session.start()
        except BaseException:
            await session.close()
            raise
        return session

    async def _audio_stop(self) -> bool:
        if self.asr is None:
            raise WyomingProtocolError("audio-stop without audio-start")
        session, self.asr = self.asr, None
        try:
            await session.stop()
        finally:
            await session.close()
        self.language = None
        return not session.failed

    # -- text to speech ----------------------------------------------------------------------

    async def _synthesize(self, data: dict[str, Any]) -> bool:
        text = _text_field(data, "text", "synthesize")
        if self.tts is not None:
            # Home Assistant sends the whole text in a synthesize event during a streaming
            # request, for servers that can't stream: the stream already speaks it.
            return True
        if self.asr is not None:
            raise WyomingProtocolError("synthesize during a transcription")
        self.tts = await self._tts_session(_voice_name(data, "synthesize"), streaming=False)
        return await self._finish_tts(text)

    async def _tts_session(self, voice: str | None, *, streaming: bool) -> TtsSession:
        module = self.server.tts
        if module is None:
            raise _Refused("this server has no text-to-speech model", "no-model")
        fallback = self.server.config.tts.unknown_voice == "default"
        loop = asyncio.get_running_loop()
        channel = await self._claim(
            lambda: module.new_channel(loop, voice, fallback=fallback), "tts"
        )
        session = TtsSession(self.server, module, channel, self.out, streaming=streaming)
        session.start()
        return session

    async def _finish_tts(self, text: str = "") -> bool:
        assert self.tts is not None
        session, self.tts = self.tts, None
        try:
            await session.finish(text)
        finally:
            await session.close()
        return not session.failed

    # -- slots -------------------------------------------------------------------------------

    async def _claim(self, claim: Any, name: str) -> Any:
        config = self.server.config.stt if name == "stt" else self.server.config.tts
        try:
            channel = await wait_for_slot(claim, config.queue_timeout_s)
        except ModuleUnavailable as exc:
            raise _Refused(str(exc), "unavailable") from None
        if channel is None:
            self.server.metrics.inc("dsm_rejected_no_free_channels")
            log.warning("wyoming %s: no free channels", name)
            raise _Refused(f"{NO_FREE_CHANNELS}: every {name.upper()} slot is busy", "busy")
        return channel
