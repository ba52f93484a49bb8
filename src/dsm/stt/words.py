"""A timed word: the unit the STT layer hands to subtitles, JSON output and the server."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Word"]


@dataclass(frozen=True, slots=True)
class Word:
    """One transcribed word with its time span in seconds from the start of the audio.

    With DSM models ``end`` is the time of the next word-start marker (spec §4.4), so it is the
    start of the next word rather than the acoustic end of this one.
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
