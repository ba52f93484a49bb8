"""Segments and turns of one STT session, built from the server's messages (no livekit here).

``Word`` starts a word, ``EndWord`` gives the end of the word before it, and a ``Word`` with
``"continues": true`` is a later piece of the word before it, appended without a space
(docs/server.md, "Continued words"). The words heard since the last final form the current
segment; its text is the words joined by single spaces (:func:`dsm.stt.words.join_words`), so a
segment that spans the whole audio reads exactly as ``dsm transcribe``.

A segment becomes final, and the turn ends, when

- the semantic VAD says so: each ``Step`` carries the pause probabilities (``prs``) of the
  checkpoint's extra heads, and :class:`dsm.stt.vad.EndOfTurnDetector` (the rule of dsm's live
  sessions and of Unmute: one head, a threshold, re-armed by the next word) fires after a word;
- or the plugin's flush marker comes back (:meth:`TurnTracker.flush`): the client asked for
  everything heard so far, e.g. livekit's VAD saw the end of speech.

A continuation piece whose word is already final cannot be appended to it any more (livekit
joins final transcripts with a space); it starts the next segment, flagged ``continues``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from dsm.stt.vad import EndOfTurnDetector, VadOptions
from dsm.stt.words import Word, join_words

__all__ = ["Final", "Interim", "SpeechEnded", "SpeechStarted", "TurnTracker", "Update"]

log = logging.getLogger("dsm.integrations.livekit")


@dataclass(frozen=True)
class Segment:
    """Words heard since the last final, in the server's time (seconds)."""

    words: tuple[Word, ...]
    continues: bool = False  # the first word is the rest of the last final's last word

    @property
    def text(self) -> str:
        return join_words(self.words)


@dataclass(frozen=True)
class SpeechStarted:
    """The first word of a turn was heard (it starts at ``start``)."""

    start: float


@dataclass(frozen=True)
class Interim:
    """The current segment, grown by a word or a piece of one."""

    segment: Segment


@dataclass(frozen=True)
class Final:
    """The current segment, final (possibly empty: a flush always answers with one)."""

    segment: Segment


@dataclass(frozen=True)
class SpeechEnded:
    """The turn ended after its last final (by the VAD, or by a flush)."""

    by_vad: bool


Update = SpeechStarted | Interim | Final | SpeechEnded


@dataclass
class _OpenWord:
    text: str
    start: float
    end: float | None = None

    def done(self) -> Word:
        end = self.start if self.end is None else self.end
        return Word(self.text, self.start, max(self.start, end))


@dataclass
class TurnTracker:
    """Feed it the server's messages (:meth:`feed`) and the flush markers (:meth:`flush`)."""

    vad: VadOptions | None = None
    speaking: bool = False
    _words: list[_OpenWord] = field(default_factory=list)
    _continues: bool = False
    _detector: EndOfTurnDetector | None = None
    _vad_checked: bool = False

    def feed(self, message: dict[str, Any]) -> list[Update]:
        """The updates one server message makes (``Word``, ``EndWord``, ``Step``; others
        make none)."""
        kind = message.get("type")
        if kind == "Word":
            return self._word(message)
        if kind == "EndWord":
            self._end_word(message)
        elif kind == "Step":
            return self._step(message)
        return []

    def flush(self) -> list[Update]:
        """Everything heard so far is final: the segment (even empty), and the end of the turn
        when one was going on."""
        out: list[Update] = [Final(self._take())]
        if self.speaking:
            self.speaking = False
            out.append(SpeechEnded(by_vad=False))
        return out

    def _segment(self) -> Segment:
        return Segment(tuple(w.done() for w in self._words), self._continues)

    def _take(self) -> Segment:
        segment = self._segment()
        self._words = []
        self._continues = False
        return segment

    def _word(self, message: dict[str, Any]) -> list[Update]:
        text = str(message.get("text", ""))
        start = float(message.get("start_time", 0.0))
        if message.get("continues") and self._words:
            self._words[-1].text += text
        elif not text:
            return []  # Kyutai's server may send an empty first word
        else:
            if message.get("continues"):
                self._continues = True  # its word is in the last final already
            self._words.append(_OpenWord(text, start))
        out: list[Update] = []
        if not self.speaking:
            self.speaking = True
            out.append(SpeechStarted(self._words[0].start))
        if self._detector is not None:
            self._detector.on_word()
        out.append(Interim(self._segment()))
        return out

    def _end_word(self, message: dict[str, Any]) -> None:
        if self._words:
            word = self._words[-1]
            word.end = max(word.start, float(message.get("stop_time", word.start)))

    def _step(self, message: dict[str, Any]) -> list[Update]:
        prs = message.get("prs")
        if self.vad is None or not isinstance(prs, list | tuple):
            return []
        if not self._vad_checked:
            self._vad_checked = True
            if self.vad.head >= len(prs):
                log.warning(
                    "VAD head %d does not exist: the server's model has %d pause heads; "
                    "turns end only on flush",
                    self.vad.head,
                    len(prs),
                )
                return []
            self._detector = EndOfTurnDetector(self.vad, len(prs))
            if self._words:
                self._detector.on_word()
        if self._detector is None or len(prs) <= self.vad.head:
            return []
        if self._detector.update([float(p) for p in prs]) and self.speaking:
            out: list[Update] = [Final(self._take())]
            self.speaking = False
            out.append(SpeechEnded(by_vad=True))
            return out
        return []
