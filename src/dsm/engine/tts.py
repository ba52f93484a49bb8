"""The TTS module: one :class:`~dsm.tts.engine.TtsEngine` of ``batch_size`` slots on one thread.

A connection's :class:`TtsChannel` queues text (each ``Text`` message holds whole words, as
upstream splits every message on whitespace) and the end of the text; the model thread turns
the text into entries, steps every slot whose next step is decided by the text it has (a slot
waiting for words does not advance), and delivers the events of the slot's
:class:`~dsm.tts.stream.TtsStream` as they come: ``AudioChunk`` (exactly 1920 samples; the
server's ``Audio``) and ``Word`` (spans in seconds of the output audio; ``Text``). When a
slot's audio is complete the stream ends and the server closes the socket.

Text becomes entries on the connection's side (:meth:`TtsChannel.push_text`, with the
connection's own :class:`~dsm.tts.entries.TextEntries`): a text that can't be spoken (a
malformed break, a message or session over its size limit) fails that channel only, with a
message saying what to change, and the model thread never tokenizes. Characters the tokenizer
cannot spell (emoji...) are dropped with a warning in the server log, as users of a speech
server expect, instead of failing the session.

Voices: a channel names a voice of the module's :class:`~dsm.tts.voice_catalog.VoiceCatalog`
(enumerated at warm-up; never a path, never a download while serving) or None for the default
voice, or is given a custom speaker embedding (:meth:`TtsModule.custom_voice`, the ``Voice``
message) before its first text. An unknown name fails the channel with the one
:data:`~dsm.tts.voice_catalog.UNKNOWN_VOICE` text, or, for a channel opened with
``fallback=True`` (upstream's behaviour), speaks with the default voice, logged and counted in
``dsm_unknown_voices``.

Difference from upstream, on purpose: ``Text`` times are on the audio's timeline (upstream's run
ahead of the audio by the model delay).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dsm.checkpoint.sources import public_model_id
from dsm.engine.metrics import ServerMetrics
from dsm.engine.slots import END, Channel, ModelModule, Outbox
from dsm.errors import DsmError
from dsm.tts.entries import Entry, TextEntries, TextError
from dsm.tts.stream import TtsStream
from dsm.tts.voice_catalog import UnknownVoice, VoiceCatalog
from dsm.tts.voices import VoiceError

if TYPE_CHECKING:
    from dsm.tts.engine import SlotOutput, TtsEngine
    from dsm.tts.model import TextToSpeech, Voice

__all__ = ["TtsChannel", "TtsModule"]

log = logging.getLogger("dsm.engine")


class TtsChannel(Channel):
    """A connection's TTS state: queued text (event loop side) and the slot's progress."""

    def __init__(
        self,
        slot: int,
        loop: Any,
        voice: str | None,
        text: TextEntries,
        *,
        max_pending: int,
        max_text_chars: int,
        max_session_chars: int,
        fallback: bool = False,
    ) -> None:
        super().__init__(slot, loop, max_pending)
        self.voice = voice  # a name of the module's catalog, None: the default voice
        self.fallback = fallback  # an unknown name speaks with the default voice
        self.custom: torch.Tensor | None = None  # a Voice message's embedding
        # This session's sampling (None: the module's), set before the first text.
        self.temperature: float | None = None
        self.cfg: float | None = None
        self.voice_changed = False
        self.text = text
        self.max_text_chars = max_text_chars
        self.max_session_chars = max_session_chars
        self.text_chars = 0
        self._entries: list[Entry] = []
        self.eos = False
        self.words_received = 0
        self.first_text_at: float | None = None
        # Model-thread side.
        self.stream: TtsStream | None = None
        self.steps = 0
        self.done = False

    def push_text(self, text: str) -> None:
        """Queue the words of one ``Text`` message as entries.

        Tokenizes on the caller's thread (the event loop, or an executor for long texts), not
        under the lock; calls for one channel must not overlap. A text over the size limits or
        that can't be spoken fails this channel with a message saying what to change.
        """
        if self.eos or self.failed:
            return
        if len(text) > self.max_text_chars:
            self.fail(
                f"a Text message holds {len(text)} characters, over the limit of "
                f"{self.max_text_chars}: send the text in smaller messages",
                "client",
            )
            return
        self.text_chars += len(text)
        if self.text_chars > self.max_session_chars:
            self.fail(
                f"this session's text is over the limit of {self.max_session_chars} "
                "characters: split it over several sessions",
                "client",
            )
            return
        self._add(text + " ", eos=False)
        self.words_received += len(text.split())

    def set_custom_voice(self, embedding: torch.Tensor) -> None:
        """Condition on ``embedding`` (from :meth:`TtsModule.custom_voice`) instead of the named
        voice; only before the first text (raises ValueError after it)."""
        with self.lock:
            if self.first_text_at is not None or self.eos:
                raise ValueError("a Voice message must come before the first Text")
            self.custom = embedding
            self.voice_changed = True

    def take_custom_voice(self) -> torch.Tensor | None:
        """The custom embedding, marking the voice as applied (model thread, when binding)."""
        with self.lock:
            self.voice_changed = False
            return self.custom

    def end_text(self) -> None:
        """``Eos``: no more text."""
        if not self.eos and not self.failed:
            self._add("", eos=True)

    def _add(self, text: str, *, eos: bool) -> None:
        dropped = len(self.text.dropped)
        try:
            entries = self.text.finish() if eos else self.text.push(text)
        except TextError as exc:
            self.fail(str(exc), "client")
            return
        if len(self.text.dropped) > dropped:
            shown = " ".join(f"U+{ord(c):04X}" for c in sorted(self.text.dropped))
            log.warning("tts slot %d: dropped characters the tokenizer cannot spell: %s",
                        self.slot, shown)  # fmt: skip
        with self.lock:
            if self.first_text_at is None and not eos:
                self.first_text_at = time.monotonic()
            self._entries += entries
            self.eos = self.eos or eos

    def take(self) -> tuple[list[Entry], bool]:
        """Entries queued since the last call and whether the text is complete (model thread);
        nothing while a new voice waits to be applied (the slot restarts with it first)."""
        with self.lock:
            if self.voice_changed:
                return [], False
            entries, self._entries = self._entries, []
            return entries, self.eos


class TtsModule(ModelModule[TtsChannel]):
    """Batched streaming TTS served from one model thread."""

    name = "tts"
    kind = "py"

    def __init__(
        self,
        tts: TextToSpeech,
        batch_size: int,
        metrics: ServerMetrics,
        *,
        voice: str | None = None,
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
        path: str = "/api/tts_streaming",
        max_pending_messages: int = 20000,
        max_text_chars: int = 20000,
        max_session_chars: int = 200_000,
    ) -> None:
        super().__init__(batch_size)
        self.tts = tts
        self.metrics = metrics
        self.default_voice = voice  # as configured: a name, a path, hf://... (trusted)
        self._default: Voice | None = None  # the default voice loaded at warm-up
        self.cfg = cfg
        self.temperature = temperature
        self.seed = seed
        self.path = path
        self.max_pending_messages = max_pending_messages
        self.max_text_chars = max_text_chars
        self.max_session_chars = max_session_chars
        self.engine: TtsEngine | None = None
        self.catalog: VoiceCatalog | None = None  # built at warm-up
        self.voice_shape: tuple[int, int, int] | None = None  # every slot's embedding shape
        self._bound: list[TtsChannel | None] = [None] * batch_size
        self._outbox = Outbox()  # one wake-up of the event loop per step
        metrics.gauge("py_open_channels", "occupied TTS slots", lambda: self.used_slots)
        metrics.gauge("dsm_tts_free_slots", "free TTS slots", lambda: self.free_slots)
        self.on_release = self._released

    def new_channel(
        self, loop: Any, voice: str | None, *, fallback: bool = False
    ) -> TtsChannel | None:
        """Claim a slot (None: no free slot). ``voice``: a voice name of the module's catalog,
        None for the default voice; an unknown name fails the channel, or with ``fallback``
        speaks with the default voice (see the module docstring)."""
        return self.claim(
            lambda slot: TtsChannel(
                slot, loop, voice or None,
                TextEntries(self.tts.entry_maker(), drop_unspellable=True),
                max_pending=self.max_pending_messages, max_text_chars=self.max_text_chars,
                max_session_chars=self.max_session_chars, fallback=fallback,
            )
        )  # fmt: skip

    def custom_voice(self, values: np.ndarray) -> torch.Tensor:
        """A client's speaker embedding as a voice: ``[1, dim, T]`` or ``[dim, T]`` float values
        whose shape must be the checkpoint's speaker condition, :attr:`voice_shape` (raises
        :class:`~dsm.tts.voices.VoiceError` saying which shape is expected)."""
        expected = self.voice_shape
        if expected is None:
            raise VoiceError(
                "this server's TTS checkpoint takes no speaker embeddings (its voices are audio "
                "prefixes): use the voice= parameter"
                if self.tts.uses_prefix
                else "the TTS model is not ready yet: try again in a moment"
            )
        array = np.asarray(values, dtype=np.float32)
        if array.ndim == 2:
            array = array[None]
        if tuple(array.shape) != expected:
            raise VoiceError(
                f"a Voice embedding for this checkpoint must have shape {list(expected)} "
                f"([1, dim, frames], or [dim, frames]), got {list(values.shape)}"
            )
        if not np.isfinite(array).all():
            raise VoiceError("a Voice embedding must hold finite numbers only")
        return torch.from_numpy(np.ascontiguousarray(array))

    def _released(self, channel: TtsChannel) -> None:
        self.metrics.py_connection_steps.observe(channel.steps)

    def warmup(self) -> None:
        self._bound = [None] * self.batch_size
        self.catalog = VoiceCatalog.for_tts(self.tts)
        if self.default_voice is not None:  # loaded once: sessions never read or fetch it
            tts, voice = self.tts, self.default_voice
            self._default = (
                tts.voice_prefix(voice) if tts.uses_prefix else tts.voice_embedding(voice)
            )
        self.voice_shape = self.tts.speaker_shape(self._default)
        rows = self.tts.slot_conditions(self._default, self.cfg)
        template = None
        if rows is not None:
            template = self.tts.batch_conditions([rows] * self.batch_size)
        self.engine = self.tts.make_engine(
            self.batch_size, template, cfg=self.cfg, temperature=self.temperature, seed=self.seed
        )
        self.engine.start()

    def _engine(self) -> TtsEngine:
        if self.engine is None:
            raise RuntimeError("the TTS module's engine is not started (warmup runs first)")
        return self.engine

    def shutdown_model(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def _voice(self, channel: TtsChannel) -> Voice | None:
        """What the channel conditions on (raises :class:`UnknownVoice`)."""
        custom = channel.take_custom_voice()
        if custom is not None:
            return custom
        if channel.voice is None:
            return self._default
        assert self.catalog is not None
        path = self.catalog.find(channel.voice)
        if path is not None:
            return path
        if not channel.fallback:
            raise UnknownVoice()
        log.warning("tts: unknown voice %r: speaking with the default voice", channel.voice[:200])
        self.metrics.inc("dsm_unknown_voices")
        channel.voice = None
        return self._default

    def _bind(self, channel: TtsChannel) -> None:
        """(Re)start the channel's slot with its voice (an unknown voice fails the channel)."""
        self._bound[channel.slot] = channel
        try:
            cfg = self.cfg if channel.cfg is None else channel.cfg
            stream = TtsStream(self.tts, voice=self._voice(channel), cfg=cfg)
            temperature = self.temperature if channel.temperature is None else channel.temperature
            # Always set: a slot keeps the sampling of the session it served before.
            stream.start(self._engine(), channel.slot, temperature=temperature)
        except UnknownVoice as exc:
            channel.done = True
            channel.fail(str(exc), cause="client")
            return
        except (DsmError, ValueError, OSError) as exc:  # the operator's file: no path to clients
            log.error("tts: the voice of slot %d could not be loaded: %s", channel.slot, exc)
            channel.done = True
            channel.fail("the voice could not be loaded (see the server log)")
            return
        channel.stream = stream
        channel.started = True

    def _feed(self, channel: TtsChannel) -> None:
        stream = channel.stream
        assert stream is not None
        entries, eos = channel.take()
        if entries:
            stream.push_entries(entries)
        if eos and not stream.ended:
            if channel.words_received == 0:  # Eos before any text: nothing to say (upstream)
                stream.ended = True
                self._engine().release(channel.slot)
                channel.done = True
                channel.deliver(END)
                return
            stream.finish()

    def _drop(self, channel: TtsChannel, exc: Exception) -> None:
        """The channel's own work raised: fail it and free its engine slot; others go on."""
        self.fail_channel(channel, exc)
        channel.done = True
        if self._bound[channel.slot] is channel:
            self._engine().release(channel.slot)
            self._bound[channel.slot] = None

    def _route(self, channel: TtsChannel, out: SlotOutput) -> None:
        """Deliver one step's output of the channel's slot."""
        channel.steps += 1
        assert channel.stream is not None
        first_audio = channel.stream.frames == 0 and out.pcm is not None
        if first_audio and channel.first_text_at is not None:
            self.metrics.tts_first_audio.observe(time.monotonic() - channel.first_text_at)
        self._outbox.add(channel, list(channel.stream.events(out)))
        if out.done:
            channel.done = True
            self._bound[out.slot] = None
            self._outbox.add(channel, END)

    def iterate(self) -> bool:
        with self.lock:
            channels = list(self.slots)
        for slot, bound in enumerate(self._bound):
            current = channels[slot]
            if bound is not None and (bound is not current or bound.failed):
                if not bound.done:
                    self._engine().release(slot)
                self._bound[slot] = None
        for channel in channels:
            if channel is None or channel.closed or channel.done or channel.failed:
                continue
            try:
                if not channel.started or channel.voice_changed:
                    self._bind(channel)
                    if not channel.started:
                        continue
                self._feed(channel)
            except Exception as exc:
                self._drop(channel, exc)
        if not self._engine().busy:
            return False
        start = time.perf_counter()
        outputs = self._engine().step()
        if not outputs:
            return False
        self.metrics.py_step.observe(time.perf_counter() - start)
        self.metrics.inc("py_total_steps")
        self.metrics.inc("py_active_steps")
        self.steps += 1
        for out in outputs:
            channel = self._bound[out.slot]
            if channel is None or channel.closed:
                continue
            try:
                self._route(channel, out)
            except Exception as exc:
                self._drop(channel, exc)
        self._outbox.flush()
        return True

    @property
    def model_id(self) -> str:
        return public_model_id(str(getattr(self.tts, "name", "")) or self.name)
