"""The words of one utterance, built from the STT messages of Kyutai's protocol (the one rule
of dsm's clients: ``dsm client``, the Pipecat service).

``Word`` starts a word, ``EndWord`` gives the end of the word before it, and a ``Word`` with
``"continues": true`` is a later piece of the word before it, appended without a space
(docs/server.md, "Continued words"). The text is the words joined by single spaces, the rule of
:func:`dsm.stt.words.join_words`, so that it equals ``dsm transcribe``'s for the same audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dsm.stt.words import Word, join_words

__all__ = ["WireWords"]


@dataclass
class _OpenWord:
    text: str
    start: float
    end: float | None = None


class WireWords:
    """Words heard since the last :meth:`take`: feed it ``Word`` and ``EndWord`` messages."""

    def __init__(self) -> None:
        self._words: list[_OpenWord] = []

    def word(self, message: dict[str, Any]) -> bool:
        """Take a ``Word`` message; True when it starts a new (non-empty) word, False when it
        continues the last one or is empty (Kyutai's server may send an empty first word)."""
        text = str(message.get("text", ""))
        if message.get("continues") and self._words:
            self._words[-1].text += text
            return False
        if not text:
            return False
        self._words.append(_OpenWord(text, float(message.get("start_time", 0.0))))
        return True

    def end_word(self, message: dict[str, Any]) -> None:
        """Take an ``EndWord`` message: the end time of the last word."""
        if self._words:
            last = self._words[-1]
            last.end = max(last.start, float(message.get("stop_time", last.start)))

    @property
    def text(self) -> str:
        """The words so far, joined by single spaces."""
        return join_words(self.words)

    @property
    def words(self) -> list[Word]:
        """The words so far, timed in seconds of the session's audio (a word whose end has
        not come yet ends where it starts)."""
        return [Word(w.text, w.start, w.start if w.end is None else w.end) for w in self._words]

    @property
    def last(self) -> Word | None:
        """The latest word as it stands (its end is its start until ``EndWord`` comes)."""
        if not self._words:
            return None
        w = self._words[-1]
        return Word(w.text, w.start, w.start if w.end is None else w.end)

    def __bool__(self) -> bool:
        return bool(self._words)

    def take(self) -> list[Word]:
        """The words so far; the next utterance starts empty."""
        words = self.words
        self._words = []
        return words
