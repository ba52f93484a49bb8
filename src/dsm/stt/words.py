"""A timed word: the unit the STT layer hands to subtitles, JSON output and the server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Word", "fit_words", "join_words"]


@dataclass(frozen=True, slots=True)
class Word:
    """One transcribed word with its time span in seconds from the start of the audio.

    For STT, ``end`` is where the next word starts, capped at one second after this word's start
    (see :mod:`dsm.stt.word_stream`), so it is not the acoustic end of the word. For TTS it is
    the word's span in the generated audio.
    """

    text: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        """``end - start`` in seconds (never negative)."""
        return max(0.0, self.end - self.start)

    def to_dict(self) -> dict[str, str | float]:
        """``{"text", "start", "end"}``, times rounded to the millisecond (JSON-ready)."""
        return {"text": self.text, "start": round(self.start, 3), "end": round(self.end, 3)}


def fit_words(words: Sequence[Word], duration: float) -> list[Word]:
    """Word times that subtitles can use: every time within ``[0, duration]`` and a word ends
    no later than the next word starts (the end rule of :mod:`dsm.stt.word_stream`, held to
    even where a segment's split put a word's end past its successor's start)."""
    fitted: list[Word] = []
    limit = max(0.0, duration)
    for i, word in enumerate(words):
        start = min(max(0.0, word.start), limit)
        end = min(word.end, limit)
        if i + 1 < len(words):
            end = min(end, max(start, words[i + 1].start))
        fitted.append(Word(word.text, start, max(start, end)))
    return fitted


def join_words(words: Sequence[Word]) -> str:
    """The transcript text of ``words``: their texts joined by single spaces (so that a
    transcript's ``text`` and ``words`` always agree)."""
    return " ".join(word.text for word in words if word.text)
