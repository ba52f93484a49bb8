"""A Wyoming transcription on one STT slot: ``audio-start``, ``audio-chunk``s, ``audio-stop``.

The session answers ``transcript-start`` once it has a slot, one ``transcript-chunk`` per piece
of text as the model decodes it (a new word with a space before it, a continuation piece of the
word before without one: the chunks concatenate to the transcript), then ``transcript`` with the
stream's whole text, which is what ``dsm transcribe`` gives for the same audio (same padding,
same resampling), and ``transcript-stop``. A connection that sends no audio for the server's
STT ``idle_timeout_s`` loses its slot; when the slot's queue is over ``max_buffered_seconds``
the connection stops reading until the model catches up (TCP pushes back on the client).
"""

from __future__ import annotations

import asyncio
from typing import Any

from wyoming.asr import Transcript, TranscriptChunk, TranscriptStart, TranscriptStop

from dsm.engine.events import ChannelError, StreamDone
from dsm.engine.stt import SttChannel, SttModule
from dsm.server.state import DsmServer
from dsm.server.ws_io import IdleDeadline
from dsm.server.wyoming.audio import PcmInput
from dsm.server.wyoming.session import EventWriter, SlotSession
from dsm.stt.word_stream import WordContinued, WordStart

__all__ = ["AsrSession"]

_FULL_POLL_S = 0.01


class AsrSession(SlotSession):
    """One transcription (create with a claimed channel, then :meth:`start`)."""

    def __init__(
        self,
        server: DsmServer,
        module: SttModule,
        channel: SttChannel,
        pcm: PcmInput,
        out: EventWriter,
        language: str | None,
    ) -> None:
        super().__init__(module, channel, out)
        self.module: SttModule = module
        self.channel: SttChannel = channel
        self.server = server
        self.pcm = pcm
        self.language = language

    async def start(self) -> None:
        """``transcript-start``, then the sender runs beside the connection's reads."""
        idle = self.server.config.stt.idle_timeout_s

        def expire() -> None:
            self.server.metrics.inc("dsm_timeouts")
            self.channel.fail(f"no audio received for {idle:g} s: closing the connection", "idle")

        self._deadline = IdleDeadline(idle, expire)
        await self.out.send(TranscriptStart(language=self.language).event())
        self._sender = asyncio.create_task(self._send_loop())

    async def push(self, data: bytes, fmt: dict[str, Any]) -> None:
        """One ``audio-chunk``'s payload (raises AudioFormatError on a bad format)."""
        pcm = self.pcm.push(data, fmt.get("rate"), fmt.get("width"), fmt.get("channels"))
        await self._queue(pcm)
        if data and self._deadline is not None:
            self._deadline.touch()

    async def _queue(self, pcm: Any) -> None:
        if self.channel.full and self._deadline is not None:
            self._deadline.pause()  # waiting for the model is not the client's idleness
            while self.channel.full and not self.channel.failed:
                await asyncio.sleep(_FULL_POLL_S)
            self._deadline.touch()
        if pcm.size and not self.channel.failed:
            self.channel.push_audio(pcm)
            self._wake()

    async def stop(self) -> None:
        """``audio-stop``: the resampler's tail, the end of the input, then wait until the
        transcript has been sent."""
        if self._deadline is not None:
            self._deadline.pause()
        if not self.channel.failed:
            await self._queue(self.pcm.flush())
            self.channel.finish_input()
            self._wake()
        if self._sender is not None:
            await asyncio.wait({self._sender})

    def _wake(self) -> None:
        if not self.module.wake.is_set():
            self.module.wake.set()

    async def _send_loop(self) -> None:
        first = True
        try:
            while True:
                batch = await self.channel.get()
                if batch is None:
                    await self._fail(ChannelError("the STT model stopped", "shutdown"))
                    return
                for event in batch:
                    if isinstance(event, ChannelError):
                        await self._fail(event)
                        return
                    if isinstance(event, WordStart):
                        text = event.text if first else " " + event.text
                        first = False
                        await self.out.send(TranscriptChunk(text=text).event())
                    elif isinstance(event, WordContinued):
                        await self.out.send(TranscriptChunk(text=event.suffix).event())
                    elif isinstance(event, StreamDone):
                        final = Transcript(text=event.text, language=self.language)
                        await self.out.send(final.event())
                        await self.out.send(TranscriptStop().event())
                        return
                if self.channel.overflow:
                    self.server.metrics.inc("dsm_slow_clients")
                    await self._fail(
                        ChannelError("too many unread results: the client is not reading", "client")
                    )
                    return
        except (ConnectionError, RuntimeError):
            self.failed = True
