"""Text to TTS entries: normalization, ``<break time="1.5s"/>`` pauses, words to tokens (§5.2).

An :class:`Entry` is one unit the text-stream state machine consumes: a word (its tokens, and
the padding forced after it) or a pause (no tokens, only padding). The rules follow the
reference's ``script_to_entries`` with ``padding_between = 1`` (what every reference script and
the server use):

* per turn, ``’`` becomes ``'``, ``:`` becomes a space, ``(`` and ``)`` are removed;
* the text is split on whitespace and on break tags; text glued to a tag is a separate word;
* the first word of a turn gets the speaker token (1 for even turns, 2 for odd ones) in front
  when the model is multi-speaker and the speaker changed;
* a word of ``n`` tokens forces ``n`` padding steps after it (``padding_between + n - 1``);
* a break of ``s`` seconds forces ``round(s * 12.5)`` padding steps.

:class:`ScriptSplitter` does the same incrementally, so text may arrive in any chunking (pieces
of words, half a break tag): a word is released only once what follows it is known.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dsm.checkpoint.config import END_OF_PADDING_ID, TEXT_PADDING_ID
from dsm.errors import DsmError

__all__ = [
    "MAIN_SPEAKER_TOKEN",
    "NEW_WORD_TOKEN",
    "OTHER_SPEAKER_TOKEN",
    "PAD_TOKEN",
    "Entry",
    "EntryMaker",
    "ScriptSplitter",
    "TextEntries",
    "TextError",
    "normalize_text",
    "script_to_entries",
    "spellable",
]

NEW_WORD_TOKEN = END_OF_PADDING_ID  # the model samples it to ask for the next word (unk id)
PAD_TOKEN = TEXT_PADDING_ID  # text padding id
MAIN_SPEAKER_TOKEN = 1  # put before the first word of an even turn (the main speaker)
OTHER_SPEAKER_TOKEN = 2  # put before the first word of an odd turn (the other speaker)
UNKNOWN_TOKEN = 0  # SentencePiece's unk id in Kyutai tokenizers; it collides with NEW_WORD_TOKEN
MAX_BREAK_SECONDS = 600.0  # longest accepted <break time="..."/> (ten minutes of silence)

# A break tag or a whitespace run; group 1 is the break duration in seconds. The unescaped "."
# is the reference's (it accepts any one character there).
_EVENT = re.compile(r"(?:<break\s+time=\"([0-9]+(?:.[0-9]*)?)s\"\s*/?>)|(?:\s+)")


def _prefix_pattern(atoms: list[str]) -> str:
    """A regex matching any prefix (at least the first atom) of the atoms' concatenation."""
    pattern = ""
    for atom in reversed(atoms[1:]):
        pattern = f"(?:{atom}{pattern})?"
    return atoms[0] + pattern


# Text that may still grow into a break tag (a prefix of one, up to the end of the buffer).
_BREAK_PREFIX = re.compile(
    _prefix_pattern(
        [*"<break", r"\s+", *"time=", '"', "[0-9]+", r"(?:.[0-9]*)?", "s", '"', r"\s*", "/?"]
    )
)
_REPLACEMENTS = (("’", "'"), (":", " "), ("(", ""), (")", ""))


class TextError(DsmError, ValueError):
    """The text cannot be spoken (empty, unsupported characters, malformed break)."""


def normalize_text(text: str) -> str:
    """The reference's per-turn character replacements (each maps characters independently,
    so normalizing chunks one by one equals normalizing their concatenation)."""
    for old, new in _REPLACEMENTS:
        text = text.replace(old, new)
    return text


@dataclass
class Entry:
    """One word (``tokens`` non-empty) or pause (``tokens`` empty) for the state machine.

    ``padding``: steps during which the model may not start a new word after this entry.
    """

    tokens: list[int]
    text: str
    padding: int = 0


def _break_frames(seconds_text: str, frame_rate: float) -> int:
    try:
        seconds = float(seconds_text)
    except ValueError:
        seconds = math.nan
    if not 0.0 <= seconds <= MAX_BREAK_SECONDS:  # also refuses nan and inf ("1e400")
        raise TextError(
            f'malformed break duration "{seconds_text}s": write it like <break time="1.5s"/>, '
            f"at most {MAX_BREAK_SECONDS:g} s"
        )
    return round(seconds * frame_rate)


@dataclass
class EntryMaker:
    """Turns words of one script into entries (speaker tokens, padding, supported characters).

    Args:
        encode: the tokenizer's ``encode`` (text -> ids, no BOS/EOS).
        multi_speaker: put speaker tokens before the first word of a turn.
        padding_between: minimum padding after a word (the reference default of its scripts: 1).
        frame_rate: frames per second, to turn break durations into steps.
    """

    encode: Callable[[str], list[int]]
    multi_speaker: bool
    padding_between: int = 1
    frame_rate: float = 12.5
    last_speaker: int | None = None
    _first_content: bool = field(default=True, repr=False)
    _turn: int = field(default=0, repr=False)

    def new_turn(self, index: int) -> None:
        """Start turn ``index`` (0 = main speaker, 1 = other, 2 = main, ...)."""
        self._turn = index
        self._first_content = True

    def word(self, word: str) -> Entry:
        tokens = list(self.encode(word))
        if UNKNOWN_TOKEN in tokens:
            raise TextError(_unsupported_message(word, self.encode))
        if not tokens:
            raise TextError(f"the word {word!r} has no tokens; remove it from the text")
        if self._first_content:
            speaker = self._turn % 2
            if self.multi_speaker and self.last_speaker != speaker:
                self.last_speaker = speaker
                tokens.insert(0, (MAIN_SPEAKER_TOKEN, OTHER_SPEAKER_TOKEN)[speaker])
            self._first_content = False
        padding = 0
        if self.padding_between > 0:
            padding = max(0, self.padding_between + len(tokens) - 1)
        return Entry(tokens=tokens, text=word, padding=padding)

    def pause(self, seconds_text: str) -> Entry:
        return Entry(tokens=[], text="", padding=_break_frames(seconds_text, self.frame_rate))


def _unsupported_message(word: str, encode: Callable[[str], list[int]]) -> str:
    bad = sorted(set(spellable(word, encode)[1]))
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in bad) or repr(word)
    return (
        f"unsupported characters in {word!r}: {shown}; the model's tokenizer cannot spell them. "
        "Remove or replace them (e.g. spell out symbols and emoji)"
    )


def spellable(word: str, encode: Callable[[str], list[int]]) -> tuple[str, str]:
    """``word`` without the characters the tokenizer cannot spell, and those characters."""
    if UNKNOWN_TOKEN not in encode(word):
        return word, ""
    kept = "".join(c for c in word if UNKNOWN_TOKEN not in encode(c))
    return kept, "".join(c for c in word if c not in kept)


class ScriptSplitter:
    """Incremental splitter of one turn's text into words and breaks (any chunking).

    :meth:`push` returns the events that are complete: ``("word", text)`` or
    ``("break", seconds_text)``; :meth:`finish` releases what is left at the end of the turn.
    The events equal those of splitting the whole turn at once.
    """

    def __init__(self) -> None:
        self._buffer = ""

    def push(self, text: str) -> list[tuple[str, str]]:
        self._buffer += normalize_text(text)
        return self._drain(final=False)

    def finish(self) -> list[tuple[str, str]]:
        events = self._drain(final=True)
        if self._buffer:
            events.append(("word", self._buffer))
        self._buffer = ""
        return events

    def _settled_length(self) -> int:
        """Length of the buffer prefix whose split can no longer change."""
        start = 0
        while True:
            p = self._buffer.find("<", start)
            if p < 0:
                return len(self._buffer)
            if _BREAK_PREFIX.fullmatch(self._buffer, p):
                return p
            start = p + 1

    def _drain(self, final: bool) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        limit = len(self._buffer) if final else self._settled_length()
        pos = 0
        while True:
            match = _EVENT.search(self._buffer, pos, limit)
            if match is None:
                break
            word = self._buffer[pos : match.start()]
            if word:
                events.append(("word", word))
            if match.group(1):
                events.append(("break", match.group(1)))
            pos = match.end()
        self._buffer = self._buffer[pos:]
        return events


class TextEntries:
    """One utterance's text, in any chunking, to entries: a :class:`ScriptSplitter` feeding an
    :class:`EntryMaker`. It needs no engine, so a server turns text into entries on the
    connection's side and the model thread only receives entries.

    With ``drop_unspellable``, characters the tokenizer cannot spell (emoji, symbols outside
    its vocabulary) are removed from the words instead of raising :class:`TextError`; the
    removed ones accumulate in :attr:`dropped`.
    """

    def __init__(self, maker: EntryMaker, *, drop_unspellable: bool = False) -> None:
        self.maker = maker
        self.splitter = ScriptSplitter()
        self.drop_unspellable = drop_unspellable
        self.dropped: set[str] = set()
        self.turn = 0
        maker.new_turn(0)

    def _entries(self, events: list[tuple[str, str]]) -> list[Entry]:
        entries = []
        for kind, value in events:
            if kind != "word":
                entries.append(self.maker.pause(value))
                continue
            if self.drop_unspellable:
                value, dropped = spellable(value, self.maker.encode)
                self.dropped.update(dropped)
                if not value:
                    continue
            entries.append(self.maker.word(value))
        return entries

    def push(self, text: str) -> list[Entry]:
        """Entries complete once ``text`` is added (words end where whitespace follows)."""
        return self._entries(self.splitter.push(text))

    def next_turn(self) -> list[Entry]:
        """End the current speaker turn (its last entries); following text is the other's."""
        entries = self._entries(self.splitter.finish())
        self.turn += 1
        self.maker.new_turn(self.turn)
        return entries

    def finish(self) -> list[Entry]:
        """The entries left at the end of the text."""
        return self._entries(self.splitter.finish())


def script_to_entries(
    turns: Sequence[str],
    encode: Callable[[str], list[int]],
    *,
    multi_speaker: bool,
    padding_between: int = 1,
    frame_rate: float = 12.5,
) -> list[Entry]:
    """Entries of a whole script: ``turns[0]`` is the main speaker, then they alternate."""
    maker = EntryMaker(encode, multi_speaker, padding_between, frame_rate)
    entries: list[Entry] = []
    for index, turn in enumerate(turns):
        maker.new_turn(index)
        splitter = ScriptSplitter()
        events = splitter.push(turn) + splitter.finish()
        for kind, value in events:
            entries.append(maker.word(value) if kind == "word" else maker.pause(value))
    return entries
