"""One STT stream in one engine slot: the slot's per-step outputs turned into events.

The one place for the per-stream rules that files (:class:`~dsm.stt.jobs.TranscriptionJob`),
live sessions (:class:`~dsm.stt.session.SttSession`) and the server
(:class:`~dsm.engine.stt.SttChannel`) share:

* the text token of a slot's step 0 is dropped (the model has heard no audio yet);
* forced prompt tokens, and the tokens of an audio prompt, are not part of the transcript;
* text tokens become timed words (:class:`~dsm.stt.word_stream.WordStream`);
* pause probabilities become :class:`PauseUpdate` events, and the end-of-turn detector fires
  :class:`EndOfTurn` once per turn;
* the transcript text is the words joined by spaces (:func:`~dsm.stt.words.join_words`).

Events, in the order the model produces them: :class:`~dsm.stt.word_stream.WordStart`,
:class:`~dsm.stt.word_stream.WordContinued` (a later piece without a word-start marker extended
an emitted word), :class:`~dsm.stt.word_stream.WordEnd`, :class:`PauseUpdate`,
:class:`EndOfTurn`. Times are
seconds of the stream's input audio (silence prefix, prompt and model delay removed).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from dsm.mimi import FRAME_RATE
from dsm.stt.framing import FeedPlan
from dsm.stt.vad import EndOfTurnDetector, VadOptions
from dsm.stt.word_stream import WordContinued, WordEnd, WordStart, WordStream
from dsm.stt.words import join_words
from dsm.tokenizer import TextTokenizer

__all__ = ["EndOfTurn", "PauseUpdate", "SttEvent", "SttStream"]


@dataclass(frozen=True)
class PauseUpdate:
    """Pause probabilities at horizons 0.5, 1, 2, 3 s after ``time`` seconds of audio."""

    time: float
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class EndOfTurn:
    """The end-of-turn detector fired after ``time`` seconds of audio."""

    time: float


SttEvent = WordStart | WordContinued | WordEnd | PauseUpdate | EndOfTurn


class SttStream:
    """The per-slot STT logic (see the module docstring); one instance per stream.

    ``cut_tokens``: text tokens (counted from step 1) left out of the transcript, e.g. those of
    an audio prompt; ``keep_forced``: forced prompt tokens stay in the transcript; ``vad``:
    end-of-turn settings (needs ``vad_heads > 0``).
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        plan: FeedPlan,
        *,
        padding_id: int,
        vad: VadOptions | None = None,
        vad_heads: int = 0,
        cut_tokens: int = 0,
        keep_forced: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.plan = plan
        self.padding_id = padding_id
        self.cut_tokens = cut_tokens
        self.keep_forced = keep_forced
        self.step = 0  # the slot's next step
        # Compact: an hour of audio is 45,000 steps. -1 marks a token left out.
        self.tokens = array("i")
        self.words = WordStream(
            tokenizer.decode,
            tokenizer.encode,
            frame_rate=FRAME_RATE,
            offset_seconds=plan.word_offset_seconds,
            padding_id=padding_id,
        )
        self.detector: EndOfTurnDetector | None = None
        if vad is not None and vad_heads > 0:
            self.detector = EndOfTurnDetector(vad, vad_heads)

    def time_of(self, step: int) -> float:
        """Seconds of input audio heard once the model has run ``step`` (clamped at 0)."""
        return max(0.0, step / FRAME_RATE - self.plan.input_offset_seconds)

    def push(
        self, token: int, pause: Sequence[float] | None = None, forced: bool = False
    ) -> list[SttEvent]:
        """Take the slot's output of one step: its text token, its pause probabilities (VAD
        heads) and whether the token was a forced prompt token; returns the new events."""
        step = self.step
        self.step += 1
        if step == 0:
            return []
        keep = (self.keep_forced or not forced) and len(self.tokens) >= self.cut_tokens
        self.tokens.append(token if keep else -1)
        events: list[SttEvent] = []
        for event in self.words.push(step, token if keep else self.padding_id):
            events.append(event)
            if self.detector is not None and isinstance(event, WordStart):
                self.detector.on_word()
        if pause is not None:
            time = self.time_of(step)
            probabilities = tuple(float(p) for p in pause)
            events.append(PauseUpdate(time, probabilities))
            if self.detector is not None and self.detector.update(probabilities):
                events.append(EndOfTurn(time))
        return events

    def finish(self) -> list[SttEvent]:
        """End of stream: emit pending words and close every open one."""
        return list(self.words.finish(self.step - 1))

    @property
    def text(self) -> str:
        """The transcript so far: the words joined by spaces (one rule for text and words)."""
        return join_words(self.words.words)
