"""Results of speech-to-text: text, timed words, pause probabilities, failures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsm.stt.words import Word

__all__ = ["Transcript", "TranscriptionFailure"]


@dataclass
class Transcript:
    """The transcript of one input.

    ``text`` is ``words`` joined by spaces (:func:`~dsm.stt.words.join_words`). ``words``
    carry ``start`` and ``end`` in seconds from the start of the input (see
    :mod:`dsm.stt.word_stream` for the end-time rule; :func:`~dsm.stt.words.fit_words` keeps
    them within the input and each end at or before the next start). ``pause`` (checkpoints
    with VAD heads) is ``[T, 4]``: per 80 ms step, the probability of a pause at 0.5, 1, 2 and
    3 s, at times ``pause_times`` ``[T]`` (seconds of input audio heard when the probabilities
    were computed). ``end_of_turns`` are the times the
    end-of-turn detector fired.
    """

    text: str
    words: list[Word]
    duration: float
    source: str | None = None
    pause: np.ndarray | None = None
    pause_times: np.ndarray | None = None
    end_of_turns: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self, vad: bool = False) -> dict[str, Any]:
        """JSON-ready dict: ``{"text", "words": [{"text", "start", "end"}]}`` (+ VAD data)."""
        out: dict[str, Any] = {
            "text": self.text,
            "words": [
                {"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
                for w in self.words
            ],
        }
        if vad and self.pause is not None and self.pause_times is not None:
            out["vad"] = {
                "horizons_seconds": [0.5, 1.0, 2.0, 3.0][: self.pause.shape[1]],
                "times": [round(float(t), 3) for t in self.pause_times],
                "pause_probabilities": [[round(float(p), 4) for p in row] for row in self.pause],
                "end_of_turns": [round(t, 3) for t in self.end_of_turns],
            }
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


@dataclass(frozen=True)
class TranscriptionFailure:
    """An input that could not be transcribed (the others in its batch are not affected)."""

    source: str
    message: str
    error: BaseException | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"
