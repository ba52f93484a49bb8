"""Text tokens to timed words, one step at a time (host side, one instance per stream).

The STT model emits one text token per 80 ms step: mostly padding (``PAD``, id 3), a marker
``EOP`` (id 0, "end of padding") right before a word starts, and word pieces (ids above the
padding id). This module turns that stream into words with start and end times.

Semantics (chosen to match the reference where it defines them, model-spec §4.4):

* A *segment* runs from the step after an ``EOP`` marker to the next marker. Its word pieces are
  decoded together and split on whitespace. With one word, the word starts at the first step of
  the segment; with several (words too close for a marker each), the first ``n - 1`` words take
  as many steps as they have tokens, consecutively from the segment start, as the reference
  does.
* A word is **emitted as soon as its pieces are complete**, i.e. at the first padding or marker
  that follows them, without waiting for the next word.
* A word **ends** at the start of the next word (the next marker) if that comes within
  ``max_end_frames`` (12.5 frames = 1 s, the reference's bound for the last word) of its start,
  and otherwise ``max_end_frames`` after its start; never before its last piece. So the last word
  of an utterance gets its end at most 1 s after it starts, without a next word.
* Times are ``step / frame_rate - offset_seconds`` clamped at 0, where ``offset_seconds``
  removes the silence prefix and the model's text delay so that times are relative to the
  input audio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dsm.checkpoint.config import END_OF_PADDING_ID, TEXT_PADDING_ID
from dsm.stt.words import Word

__all__ = ["END_OF_PADDING_ID", "PAD_ID", "PendingWord", "WordEnd", "WordStart", "WordStream"]

PAD_ID = TEXT_PADDING_ID  # text padding; ids <= PAD_ID are never part of the text
DEFAULT_MAX_END_FRAMES = 12.5  # reference: the last word spans at most one second


@dataclass(frozen=True)
class WordStart:
    """A word whose pieces are complete; its end is not known yet."""

    index: int  # 0-based position of the word in the stream
    text: str
    start: float


@dataclass(frozen=True)
class WordEnd:
    """The end time of the word ``index``."""

    index: int
    end: float


@dataclass
class PendingWord:
    """A word emitted without an end yet."""

    index: int
    text: str
    start_step: float
    last_step: int


class WordStream:
    """Assemble timed words from a stream of text tokens (steps numbered from 0)."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        encode: Callable[[str], list[int]],
        *,
        frame_rate: float = 12.5,
        offset_seconds: float = 0.0,
        padding_id: int = PAD_ID,
        end_of_padding_id: int = END_OF_PADDING_ID,
        max_end_frames: float = DEFAULT_MAX_END_FRAMES,
    ) -> None:
        self.decode = decode
        self.encode = encode
        self.frame_rate = frame_rate
        self.offset_seconds = offset_seconds
        self.padding_id = padding_id
        self.end_of_padding_id = end_of_padding_id
        self.max_end_frames = max_end_frames
        self.words: list[Word] = []
        self._segment_start: int | None = None  # first step of the current segment
        self._next_word_step: float | None = None  # where the next word of the segment starts
        self._pieces: list[int] = []
        self._pieces_last_step = -1
        self._open: list[PendingWord] = []
        self._count = 0

    def time_of(self, step: float) -> float:
        """Seconds from the start of the input audio for a step (clamped at 0)."""
        return max(0.0, step / self.frame_rate - self.offset_seconds)

    def push(self, step: int, token: int) -> list[WordStart | WordEnd]:
        """Feed the token emitted at ``step``; returns the events it completes, in order."""
        events: list[WordStart | WordEnd] = []
        if token > self.padding_id:
            if self._segment_start is None:
                # Pieces before any marker (the stream started mid-word): start a segment here.
                self._segment_start = step
                self._next_word_step = float(step)
            self._pieces.append(token)
            self._pieces_last_step = step
        else:
            events += self._flush_pieces()
            if token == self.end_of_padding_id:
                events += self._end_open(float(step))
                self._segment_start = step + 1
                self._next_word_step = float(step + 1)
        events += self._expire(step)
        return events

    def finish(self, step: int) -> list[WordStart | WordEnd]:
        """End of stream after ``step``: emit pending pieces and close every open word."""
        events = self._flush_pieces()
        for word in list(self._open):
            end = min(word.start_step + self.max_end_frames, float(step + 1))
            events += self._close(word, end)
        return events

    def _flush_pieces(self) -> list[WordStart | WordEnd]:
        if not self._pieces:
            return []
        assert self._next_word_step is not None
        texts = self.decode(self._pieces).split()
        pieces_last = self._pieces_last_step
        self._pieces = []
        events: list[WordStart | WordEnd] = []
        start = self._next_word_step
        for i, text in enumerate(texts):
            # An earlier word of this segment ends where this one starts.
            events += self._end_open(start)
            span = len(self.encode(text)) if i < len(texts) - 1 else 0
            last = int(start) + span - 1 if span else pieces_last
            word = PendingWord(self._count, text, start, last)
            self._count += 1
            self._open.append(word)
            events.append(WordStart(word.index, text, self.time_of(start)))
            start += span
        self._next_word_step = float(pieces_last + 1)
        return events

    def _end_open(self, end_step: float) -> list[WordStart | WordEnd]:
        events: list[WordStart | WordEnd] = []
        for word in list(self._open):
            end = min(end_step, word.start_step + self.max_end_frames)
            events += self._close(word, end)
        return events

    def _expire(self, step: int) -> list[WordStart | WordEnd]:
        events: list[WordStart | WordEnd] = []
        for word in list(self._open):
            if step + 1 >= word.start_step + self.max_end_frames:
                events += self._close(word, word.start_step + self.max_end_frames)
        return events

    def _close(self, word: PendingWord, end_step: float) -> list[WordStart | WordEnd]:
        end_step = max(end_step, float(word.last_step + 1))
        self._open.remove(word)
        start = self.time_of(word.start_step)
        end = max(start, self.time_of(end_step))
        self._store(word.index, Word(word.text, start, end))
        return [WordEnd(word.index, end)]

    def _store(self, index: int, word: Word) -> None:
        while len(self.words) <= index:
            self.words.append(Word("", 0.0, 0.0))
        self.words[index] = word


def words_from_tokens(
    tokens: Sequence[int],
    decode: Callable[[list[int]], str],
    encode: Callable[[str], list[int]],
    *,
    frame_rate: float = 12.5,
    offset_seconds: float = 0.0,
    first_step: int = 0,
) -> list[Word]:
    """All words of a finished token sequence (``tokens[i]`` emitted at step ``first_step + i``)."""
    stream = WordStream(decode, encode, frame_rate=frame_rate, offset_seconds=offset_seconds)
    step = first_step - 1
    for i, token in enumerate(tokens):
        step = first_step + i
        stream.push(step, int(token))
    stream.finish(step)
    return stream.words
