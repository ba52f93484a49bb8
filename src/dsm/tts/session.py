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

from dsm.tts.slot_model import TtsSlotModel, Voice
from dsm.tts.stream import AudioChunk, TtsEvent, TtsStream

__all__ = ["AudioChunk", "TtsEvent", "TtsSession"]


class TtsSession:
    """One utterance streamed through a one-slot engine (see the module docstring)."""

    def __init__(
        self,
        tts: TtsSlotModel,
        *,
        voice: Voice | None = None,
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
    ) -> None:
        self.tts = tts
        self.stream = TtsStream(tts, voice=voice, cfg=cfg)
        rows = self.stream.conditions
        template = tts.batch_conditions([rows]) if rows is not None else None
        self.engine = tts.make_engine(1, template, cfg=cfg, temperature=temperature, seed=seed)
        self.engine.start()
        self.stream.start(self.engine, 0)

    def __enter__(self) -> TtsSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.close()

    @property
    def done(self) -> bool:
        """The audio is complete."""
        return self.stream.done

    def push_iter(self, text: str) -> Iterator[TtsEvent]:
        """Add ``text`` and run the steps it allows, yielding events as they come."""
        if self.stream.ended:
            raise RuntimeError("the session has ended; open a new one")
        self.stream.push(text)
        yield from self._run()

    def push(self, text: str) -> list[TtsEvent]:
        """Add ``text``; returns the events of the steps it allows."""
        return list(self.push_iter(text))

    def next_turn(self) -> list[TtsEvent]:
        """End the current speaker turn; following text is the other speaker's (dialogs)."""
        self.stream.next_turn()
        return list(self._run())

    def end_iter(self) -> Iterator[TtsEvent]:
        """No more text: yield the remaining events until the audio is complete."""
        self.stream.finish()
        yield from self._run()

    def end(self) -> list[TtsEvent]:
        """No more text: the remaining events until the audio is complete."""
        return list(self.end_iter())

    def _run(self) -> Iterator[TtsEvent]:
        while self.stream.can_step:
            for out in self.engine.step():
                yield from self.stream.events(out)
