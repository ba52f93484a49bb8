"""A live TTS session: push text as it arrives (any chunking), get audio and words at once.

::

    with tts.stream(voice=...) as session:
        for piece in llm_output:                  # words, pieces of words, sentences
            for event in session.push(piece):     # AudioChunk | Word, in production order
                play(event) if isinstance(event, AudioChunk) else show(event)
        for event in session.end():               # the rest of the audio
            ...

The session steps the model as far as the text received allows: a word can be started only
once the two words after it are known (the model's look-ahead stream) or the text has ended,
so the frames equal those of the whole text given at once. :meth:`TtsSession.push_iter` is the
lazy form of :meth:`TtsSession.push` (events are yielded as each step produces them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dsm.mimi import FRAME_SIZE, SAMPLE_RATE
from dsm.stt.words import Word
from dsm.tts.entries import ScriptSplitter

if TYPE_CHECKING:
    from dsm.tts.model import TextToSpeech, Voice

__all__ = ["AudioChunk", "TtsEvent", "TtsSession"]


@dataclass(frozen=True)
class AudioChunk:
    """80 ms of output audio: float32 ``pcm [1920]`` starting at ``start`` seconds."""

    pcm: np.ndarray
    start: float


TtsEvent = AudioChunk | Word


class TtsSession:
    """One utterance streamed through a one-slot engine (see the module docstring)."""

    def __init__(
        self,
        tts: TextToSpeech,
        *,
        voice: Voice | None = None,
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
    ) -> None:
        self.tts = tts
        prefix = tts.slot_prefix([voice])
        rows = tts.conditions([voice] if tts.multi_speaker else [], cfg)
        conditions = tts.batch_conditions([rows])
        self.engine = tts.make_engine(1, conditions, cfg=cfg, temperature=temperature, seed=seed)
        self.engine.start()
        self.engine.start_slot(0, prefix=prefix)
        self.maker = tts.entry_maker()
        self.maker.new_turn(0)
        self.splitter = ScriptSplitter()
        self.turn = 0
        self.frames = 0
        self.ended = False
        self.done = False

    def __enter__(self) -> TtsSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.close()

    def _add(self, events: list[tuple[str, str]]) -> None:
        entries = [
            self.maker.word(value) if kind == "word" else self.maker.pause(value)
            for kind, value in events
        ]
        if entries:
            self.engine.push(0, entries)

    def push_iter(self, text: str) -> Iterator[TtsEvent]:
        """Add ``text`` and run the steps it allows, yielding events as they come."""
        if self.ended:
            raise RuntimeError("the session has ended; open a new one")
        self._add(self.splitter.push(text))
        yield from self._run()

    def push(self, text: str) -> list[TtsEvent]:
        """Add ``text``; returns the events of the steps it allows."""
        return list(self.push_iter(text))

    def next_turn(self) -> list[TtsEvent]:
        """End the current speaker turn; following text is the other speaker's (dialogs)."""
        self._add(self.splitter.finish())
        self.turn += 1
        self.maker.new_turn(self.turn)
        return list(self._run())

    def end_iter(self) -> Iterator[TtsEvent]:
        """No more text: yield the remaining events until the audio is complete."""
        if not self.ended:
            self._add(self.splitter.finish())
            self.ended = True
            self.engine.finish(0)
        yield from self._run()

    def end(self) -> list[TtsEvent]:
        """No more text: the remaining events until the audio is complete."""
        return list(self.end_iter())

    def _run(self) -> Iterator[TtsEvent]:
        engine = self.engine
        while not self.done and engine.can_step(0):
            for out in engine.step():
                yield from out.words
                if out.pcm is not None:
                    yield AudioChunk(out.pcm, self.frames * FRAME_SIZE / SAMPLE_RATE)
                    self.frames += 1
                if out.done:
                    self.done = True
