"""A timed word: the unit the STT layer hands to subtitles, JSON output and the server."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Word"]


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
