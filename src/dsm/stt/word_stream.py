"""Text tokens to timed words, one step at a time (host side, one instance per stream).

The STT model emits one text token per 80 ms step: mostly padding (``PAD``, id 3), a marker
``EOP`` (id 0, "end of padding") right before a word starts, and word pieces (ids above the
padding id). This module turns that stream into words with start and end times.

**Words** are the reference's: the tokenizer's decode of all the stream's pieces, split on
whitespace. A word therefore starts only at a piece with the tokenizer's word-start marker
(``▁``); a piece without one continues the word before it, even when padding or an ``EOP``
marker came in between (``mulesaica`` then, after padding, ``D`` is the word ``mulesaicaD``).

**Live emission.** Pieces are decoded at the first padding or marker after them, so a word is
emitted (:class:`WordStart`) as soon as its pieces so far are complete, without waiting for the
next word. A later piece that continues an emitted word gives :class:`WordContinued` with the
word's new text and the ``suffix`` that extends what was sent (the server sends it as a
``Word`` with ``continues`` set, see docs/server.md). Once the stream is finished,
:attr:`WordStream.words` equals the reference decode split on whitespace.

**Times** (model-spec §4.4, the reference's rule where it defines one):

* A *segment* runs from the step after an ``EOP`` marker to the next marker. The first word
  that starts in a segment starts at the segment's first step; a later one starts as many
  steps after that as the segment's earlier words have tokens (``len(encode(word))``), as the
  reference spreads several words of one segment, and never after its first piece.
* A word **ends** at the start of the next word or at the next marker, whichever comes first,
  if within ``max_end_frames`` (12.5 frames = 1 s, the reference's bound for the last word) of
  its start, and otherwise ``max_end_frames`` after its start; never before its last piece.
  A continuation that arrives after the word ended extends its end to cover the new piece.
* Times are ``step / frame_rate - offset_seconds`` clamped at 0, where ``offset_seconds``
  removes the silence prefix and the model's text delay so that times are relative to the
  input audio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dsm.checkpoint.config import END_OF_PADDING_ID, TEXT_PADDING_ID
from dsm.stt.words import Word

__all__ = [
    "END_OF_PADDING_ID",
    "PAD_ID",
    "WordContinued",
    "WordEnd",
    "WordEvent",
    "WordStart",
    "WordStream",
    "words_from_tokens",
]

PAD_ID = TEXT_PADDING_ID  # text padding; ids <= PAD_ID are never part of the text
DEFAULT_MAX_END_FRAMES = 12.5  # reference: the last word spans at most one second


@dataclass(frozen=True)
class WordStart:
    """A word whose pieces so far are complete; its end is not known yet."""

    index: int  # 0-based position of the word in the stream
    text: str
    start: float


@dataclass(frozen=True)
class WordContinued:
    """Pieces without a word-start marker extended the already emitted word ``index``.

    ``text`` is the word's whole text now; ``suffix`` is what to append to its previous text
    (equal to ``text[len(previous):]``; the whole ``text`` in the rare case where the new text
    does not extend the old one, e.g. a byte-fallback character completed); ``start`` is the
    word's start, as first emitted; ``ended``: the word's :class:`WordEnd` was already emitted,
    and a second :class:`WordEnd` with its new end (at least the step after the new piece)
    follows this event."""

    index: int
    text: str
    suffix: str
    start: float
    ended: bool


@dataclass(frozen=True)
class WordEnd:
    """The end time of the word ``index``."""

    index: int
    end: float


WordEvent = WordStart | WordContinued | WordEnd


@dataclass
class _Word:
    """A word of the stream while it may still change."""

    index: int
    text: str
    start_step: float
    last_step: int
    end_step: float | None = None  # set once its WordEnd is emitted


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
        self._pending: list[tuple[int, int]] = []  # (step, piece) not decoded yet
        # The pieces from the latest word-start piece on, and the words they decode to (the
        # only words a new piece can change; earlier words are final).
        self._tail: list[int] = []
        self._tail_words: list[_Word] = []
        self._open: list[_Word] = []  # emitted, no WordEnd yet
        self._segment_start: int | None = None  # first step of the current segment
        self._segment_tokens = 0  # tokens of the segment's earlier words (the reference's spans)
        self._part: list[int] = []  # the segment's pieces since its latest word start

    def time_of(self, step: float) -> float:
        """Seconds from the start of the input audio for a step (clamped at 0)."""
        return max(0.0, step / self.frame_rate - self.offset_seconds)

    def push(self, step: int, token: int) -> list[WordEvent]:
        """Feed the token emitted at ``step``; returns the events it completes, in order."""
        idle = not (self._pending or self._open)
        if idle and token <= self.padding_id and token != self.end_of_padding_id:
            return []  # padding with nothing to flush or expire: most steps of a live stream
        events: list[WordEvent] = []
        if token > self.padding_id:
            if self._segment_start is None:
                # Pieces before any marker (the stream started mid-word): start a segment here.
                self._start_segment(step)
            self._pending.append((step, token))
        else:
            events += self._flush()
            if token == self.end_of_padding_id:
                events += self._end_open(float(step))
                self._start_segment(step + 1)
        events += self._expire(step)
        return events

    def finish(self, step: int) -> list[WordEvent]:
        """End of stream after ``step``: emit pending pieces and close every open word."""
        events = self._flush()
        for word in list(self._open):
            end = min(word.start_step + self.max_end_frames, float(step + 1))
            events += self._close(word, end)
        return events

    def _start_segment(self, step: int) -> None:
        self._segment_start = step
        self._segment_tokens = 0
        self._part = []

    def _flush(self) -> list[WordEvent]:
        """Decode the pending pieces: new words and continuations of the tail's words."""
        if not self._pending:
            return []
        before = [(w, w.text, w.end_step is not None) for w in self._tail_words]
        ordered: list[WordEvent | _Word] = []  # a _Word stands for its WordStart
        for step, piece in self._pending:
            ordered += self._add_piece(step, piece)
        self._pending = []
        events: list[WordEvent] = []
        for word, previous, ended in before:
            if word.text != previous:
                suffix = word.text[len(previous) :] if word.text.startswith(previous) else word.text
                start = self.time_of(word.start_step)
                events.append(WordContinued(word.index, word.text, suffix, start, ended))
                if ended:  # its end moved past the new piece: the new end, as a WordEnd again
                    events.append(WordEnd(word.index, self.words[word.index].end))
        for item in ordered:
            if isinstance(item, _Word):
                events.append(WordStart(item.index, item.text, self.time_of(item.start_step)))
            else:
                events.append(item)
        return events

    def _add_piece(self, step: int, piece: int) -> list[WordEvent | _Word]:
        old = [w.text for w in self._tail_words]
        texts = self.decode([*self._tail, piece]).split()
        if not old or (len(texts) > len(old) and texts[: len(old)] == old):
            # The piece begins a word: the tail's words are final, the piece is the new tail,
            # and the segment's words so far count their tokens (the reference's spans).
            done = self.decode(self._part).split()
            self._segment_tokens += sum(len(self.encode(text)) for text in done)
            self._part = []
            self._tail = [piece]
            self._tail_words = []
            texts = self.decode([piece]).split()
        else:
            self._tail.append(piece)
        self._part.append(piece)
        out: list[WordEvent | _Word] = []
        for i, text in enumerate(texts):
            if i < len(self._tail_words):
                word = self._tail_words[i]
                if word.text != text:
                    word.text = text
                    word.last_step = step
                    self._store(word)
                continue
            assert self._segment_start is not None
            if self._tail_words:
                # More than one word from one piece: each after the tokens of the one before.
                before = self._tail_words[-1]
                start = before.start_step + len(self.encode(before.text))
            else:
                start = float(self._segment_start + self._segment_tokens)
            start = min(start, float(step))  # never after the word's first piece
            out += self._end_open(start)
            word = _Word(len(self.words), text, start, step)
            self.words.append(Word(text, self.time_of(start), self.time_of(start)))
            self._tail_words.append(word)
            self._open.append(word)
            out.append(word)
        return out

    def _end_open(self, end_step: float) -> list[WordEvent]:
        events: list[WordEvent] = []
        for word in list(self._open):
            end = min(end_step, word.start_step + self.max_end_frames)
            events += self._close(word, end)
        return events

    def _expire(self, step: int) -> list[WordEvent]:
        events: list[WordEvent] = []
        for word in list(self._open):
            if step + 1 >= word.start_step + self.max_end_frames:
                events += self._close(word, word.start_step + self.max_end_frames)
        return events

    def _close(self, word: _Word, end_step: float) -> list[WordEvent]:
        word.end_step = end_step
        self._open.remove(word)
        self._store(word)
        return [WordEnd(word.index, self.words[word.index].end)]

    def _store(self, word: _Word) -> None:
        """Write the word into :attr:`words`; a closed word ends no earlier than the step
        after its last piece (so a late continuation extends its end)."""
        start = self.time_of(word.start_step)
        if word.end_step is None:
            self.words[word.index] = Word(word.text, start, start)
            return
        word.end_step = max(word.end_step, float(word.last_step + 1))
        self.words[word.index] = Word(word.text, start, max(start, self.time_of(word.end_step)))


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
