"""One TTS utterance in one engine slot: voice, text in any chunking, outputs turned into events.

The one place for the per-slot rules that live sessions (:class:`~dsm.tts.session.TtsSession`)
and the server (:class:`~dsm.engine.tts.TtsChannel`) share: the voice becomes the slot's
condition rows and, for checkpoints conditioned on an audio prefix, its prefix codes; text is
split into words and pauses (:class:`~dsm.tts.entries.ScriptSplitter`) and turned into entries
of the current speaker turn; each step's :class:`~dsm.tts.engine.SlotOutput` becomes events:
the words whose span became known, then an :class:`AudioChunk` of 80 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dsm.mimi import FRAME_SIZE, SAMPLE_RATE
from dsm.stt.words import Word
from dsm.tts.entries import Entry, TextEntries
from dsm.tts.slot_model import TtsSlotModel, Voice

if TYPE_CHECKING:
    from dsm.tts.engine import SlotOutput, TtsEngine

__all__ = ["AudioChunk", "TtsEvent", "TtsStream"]


@dataclass(frozen=True)
class AudioChunk:
    """80 ms of output audio: float32 ``pcm [1920]`` starting at ``start`` seconds."""

    pcm: np.ndarray
    start: float


TtsEvent = AudioChunk | Word


class TtsStream:
    """The per-slot TTS logic (see the module docstring); one instance per utterance.

    Building it resolves the voice (raises :class:`~dsm.tts.voices.VoiceError` for an unknown
    one); :meth:`start` then claims ``slot`` of an engine.
    """

    def __init__(self, tts: TtsSlotModel, *, voice: Voice | None = None, cfg: float = 2.0) -> None:
        self.tts = tts
        self.conditions = tts.slot_conditions(voice, cfg)
        self.prefix = tts.slot_prefix([voice])
        self.engine: TtsEngine | None = None
        self.slot = 0
        self.text = TextEntries(tts.entry_maker())
        self.frames = 0  # audio chunks out
        self.ended = False  # no more text
        self.done = False  # the audio is complete

    def start(self, engine: TtsEngine, slot: int, *, temperature: float | None = None) -> None:
        """(Re)start ``slot`` of ``engine`` as this utterance (voice rows and prefix);
        ``temperature``: this utterance's sampling temperature (None: the slot's current one)."""
        engine.start_slot(slot, self.conditions, prefix=self.prefix, temperature=temperature)
        self.engine = engine
        self.slot = slot

    def _engine(self) -> TtsEngine:
        if self.engine is None:
            raise RuntimeError("start the stream on an engine slot first")
        return self.engine

    def push_entries(self, entries: list[Entry]) -> None:
        """Add entries made elsewhere (e.g. by a connection's own :class:`TextEntries`)."""
        if self.ended:
            raise RuntimeError("the stream has ended; open a new one")
        if entries:
            self._engine().push(self.slot, entries)

    def push(self, text: str) -> None:
        """Add text (any chunking: words are complete once whitespace follows them)."""
        self.push_entries(self.text.push(text))

    def next_turn(self) -> None:
        """End the current speaker turn; following text is the other speaker's (dialogs)."""
        self.push_entries(self.text.next_turn())

    def finish(self) -> None:
        """No more text: the slot runs until its audio is complete."""
        if not self.ended:
            self.push_entries(self.text.finish())
            self.ended = True
            self._engine().finish(self.slot)

    @property
    def can_step(self) -> bool:
        """The slot has what its next step needs (see ``TtsEngine.can_step``)."""
        return not self.done and self._engine().can_step(self.slot)

    def events(self, out: SlotOutput) -> list[TtsEvent]:
        """The events of this slot's output of one step: words, then the audio chunk."""
        events: list[TtsEvent] = list(out.words)
        if out.pcm is not None:
            events.append(AudioChunk(out.pcm, self.frames * FRAME_SIZE / SAMPLE_RATE))
            self.frames += 1
        if out.done:
            self.done = True
        return events
