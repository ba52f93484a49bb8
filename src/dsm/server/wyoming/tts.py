"""Wyoming speech synthesis on one TTS slot: ``synthesize`` (the whole text at once) or the
streaming ``synthesize-start``, ``synthesize-chunk``s, ``synthesize-stop``.

Either way the answer is ``audio-start`` (24 kHz, 16-bit, mono), one ``audio-chunk`` per 80 ms
frame as soon as the model has produced it, and ``audio-stop``; a streaming request then gets
``synthesize-stopped``. Streaming text may split a word across chunks: text is queued up to its
last whitespace, the rest waits for the next chunk or the stop, so the model speaks while text
still arrives and never hears half a word. A voice name the catalog lacks speaks with the
default voice (the Kyutai route's ``unknown_voice`` policy, ``"default"`` unless configured);
a streaming request that sends no text for the TTS ``idle_timeout_s`` loses its slot.
"""

from __future__ import annotations

import asyncio

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.tts import SynthesizeStopped

from dsm.engine.events import ChannelError
from dsm.engine.tts import TtsChannel, TtsModule
from dsm.mimi import SAMPLE_RATE
from dsm.server.state import DsmServer
from dsm.server.ws_io import IdleDeadline, off_loop
from dsm.server.wyoming.audio import OUT_CHANNELS, OUT_WIDTH, to_int16_bytes
from dsm.server.wyoming.session import EventWriter, SlotSession
from dsm.tts.stream import AudioChunk as ModelAudio
from dsm.tts.streamed_words import StreamedWords

__all__ = ["TtsSession"]


class TtsSession(SlotSession):
    """One synthesis (create with a claimed channel, then :meth:`start`)."""

    def __init__(
        self,
        server: DsmServer,
        module: TtsModule,
        channel: TtsChannel,
        out: EventWriter,
        *,
        streaming: bool,
    ) -> None:
        super().__init__(module, channel, out)
        self.module: TtsModule = module
        self.channel: TtsChannel = channel
        self.server = server
        self.streaming = streaming
        self._words = StreamedWords()  # streaming text held after its last whitespace

    def start(self) -> None:
        """Start sending audio as it is produced (beside the connection's reads)."""
        if self.streaming:
            idle = self.server.config.tts.idle_timeout_s

            def expire() -> None:
                self.server.metrics.inc("dsm_timeouts")
                self.channel.fail(
                    f"no text received for {idle:g} s: closing the connection", "idle"
                )

            self._deadline = IdleDeadline(idle, expire)
        self._sender = asyncio.create_task(self._send_loop())

    async def push(self, text: str) -> None:
        """A ``synthesize-chunk``: queue the whole words it completes."""
        await self._text(" ".join(self._words.push(text)))

    async def _text(self, text: str) -> None:
        if text.strip():
            if self._deadline is not None:
                self._deadline.touch()
            await off_loop(len(text), self.channel.push_text, text)
            self.module.wake.set()

    async def finish(self, text: str = "") -> None:
        """The end of the text (``synthesize``'s whole text, or ``synthesize-stop``), then
        wait until the last audio has been sent."""
        if self._deadline is not None:
            self._deadline.cancel()
        await self._text(" ".join(self._words.push(text, complete=True)))
        self.channel.end_text()
        self.module.wake.set()
        if self._sender is not None:
            await asyncio.wait({self._sender})

    async def _send_loop(self) -> None:
        started = False
        try:
            while True:
                batch = await self.channel.get()
                if batch is None:
                    break
                for event in batch:
                    if isinstance(event, ChannelError):
                        await self._fail(event)
                        return
                    if isinstance(event, ModelAudio):
                        if not started:
                            await self.out.send(_audio_start())
                            started = True
                        await self.out.send(_chunk(event))
                if self.channel.overflow:
                    await self._fail(ChannelError("too many unread messages: closing", "client"))
                    return
            if not started:
                await self.out.send(_audio_start())
            await self.out.send(AudioStop().event())
            if self.streaming:
                await self.out.send(SynthesizeStopped().event())
        except (ConnectionError, RuntimeError):
            self.failed = True


def _audio_start() -> Event:
    return AudioStart(rate=SAMPLE_RATE, width=OUT_WIDTH, channels=OUT_CHANNELS).event()


def _chunk(audio: ModelAudio) -> Event:
    return AudioChunk(
        rate=SAMPLE_RATE, width=OUT_WIDTH, channels=OUT_CHANNELS,
        audio=to_int16_bytes(audio.pcm), timestamp=round(audio.start * 1000),
    ).event()  # fmt: skip
