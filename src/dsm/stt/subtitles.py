"""Timed words to subtitle cues, written as SRT, WebVTT or JSON.

Cueing rules (defaults in :class:`SubtitleOptions`, close to common broadcast guidelines):

* a cue holds at most ``max_lines`` lines of at most ``max_chars_per_line`` characters (a single
  word longer than a line gets a line of its own) and lasts at most ``max_cue_seconds``;
* a new cue starts after sentence-ending punctuation and after a pause longer than
  ``pause_seconds``; when a cue is cut for length, the cut moves back to the last clause
  punctuation (``, ; :``) in its second half, if any;
* lines are balanced (the shortest possible longest line), preferring breaks after punctuation;
* cues never overlap, last at least ``min_cue_seconds`` when the next cue leaves room, and end at
  most ``max_word_seconds`` after their last word starts. That cap matters for DSM models, whose
  word end time is the next word's start marker (spec §4.4): without it the word before a long
  pause would keep its cue on screen through the whole pause, and pauses could not be seen.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

from dsm.stt.words import Word

__all__ = [
    "Cue",
    "SubtitleOptions",
    "build_cues",
    "format_timestamp",
    "to_json",
    "to_srt",
    "to_vtt",
    "write_subtitles",
]

_SENTENCE_END = re.compile(r"[.?!…。？！][\"'”’»)\]]*$")
_CLAUSE_END = re.compile(r"[,;:，；：–—][\"'”’»)\]]*$")
# Words ending in "." that rarely end a sentence.
_ABBREVIATIONS = frozenset(
    {
        "mr.",
        "mrs.",
        "ms.",
        "dr.",
        "prof.",
        "st.",
        "jr.",
        "sr.",
        "vs.",
        "e.g.",
        "i.e.",
        "etc.",
        "no.",
    }
)


@dataclass(frozen=True)
class SubtitleOptions:
    """Limits used by :func:`build_cues` (characters are Python ``str`` characters)."""

    max_chars_per_line: int = 42
    max_lines: int = 2
    max_cue_seconds: float = 6.0
    min_cue_seconds: float = 0.8
    pause_seconds: float = 0.8
    max_word_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.max_chars_per_line < 1 or self.max_lines < 1:
            raise ValueError("max_chars_per_line and max_lines must be at least 1")
        if min(self.max_cue_seconds, self.pause_seconds, self.max_word_seconds) <= 0:
            raise ValueError("max_cue_seconds, pause_seconds and max_word_seconds must be > 0")
        if self.min_cue_seconds < 0:
            raise ValueError("min_cue_seconds must be >= 0")


@dataclass(frozen=True)
class Cue:
    """One subtitle: shown from ``start`` to ``end`` seconds, one string per displayed line."""

    start: float
    end: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The lines joined with newlines."""
        return "\n".join(self.lines)


def _clean(words: Iterable[Word]) -> list[Word]:
    cleaned = []
    for w in words:
        text = " ".join(str(w.text).split())
        if not text:
            continue
        start = max(0.0, float(w.start))
        cleaned.append(Word(text, start, max(start, float(w.end))))
    cleaned.sort(key=lambda w: w.start)
    return cleaned


def _ends_sentence(text: str) -> bool:
    return bool(_SENTENCE_END.search(text)) and text.lower() not in _ABBREVIATIONS


def _greedy_lines(texts: Sequence[str], width: int) -> int:
    """Number of lines greedy wrapping needs (the minimum possible)."""
    lines, length = 1, -1
    for t in texts:
        if length >= 0 and length + 1 + len(t) > width:
            lines, length = lines + 1, len(t)
        else:
            length += 1 + len(t)
    return lines


def _balanced_lines(texts: tuple[str, ...], n_lines: int, width: int) -> tuple[str, ...]:
    """Split words into ``n_lines`` lines of at most ``width`` characters where possible.

    Among the splits that fit, prefer breaks after punctuation, then the shortest longest line.
    """

    def measure(i: int, j: int) -> tuple[int, int]:
        length = len(" ".join(texts[i:j]))
        return max(0, length - width), length

    @cache
    def best(i: int, k: int) -> tuple[tuple[int, int, int], tuple[int, ...]]:
        # texts[i:] in k lines: ((overflow, -punctuation breaks, longest line), break indices).
        if k == 1:
            over, length = measure(i, len(texts))
            return (over, 0, length), ()
        options = []
        for j in range(i + 1, len(texts) - k + 2):
            (rest_over, rest_bonus, rest_len), rest_breaks = best(j, k - 1)
            over, length = measure(i, j)
            bonus = -1 if _CLAUSE_END.search(texts[j - 1]) or _ends_sentence(texts[j - 1]) else 0
            cost = (over + rest_over, rest_bonus + bonus, max(length, rest_len))
            options.append((cost, (j, *rest_breaks)))
        return min(options)

    n_lines = min(n_lines, len(texts))
    _, breaks = best(0, n_lines)
    bounds = (0, *breaks, len(texts))
    return tuple(" ".join(texts[a:b]) for a, b in pairwise(bounds))


def build_cues(words: Iterable[Word], options: SubtitleOptions | None = None) -> list[Cue]:
    """Group timed words into non-overlapping, time-ordered subtitle cues."""
    opts = options or SubtitleOptions()
    items = _clean(words)

    def shown_end(w: Word) -> float:
        return min(w.end, w.start + opts.max_word_seconds)

    def fits(group: Sequence[Word]) -> bool:
        if len(group) == 1:
            return True
        texts = [w.text for w in group]
        return _greedy_lines(texts, opts.max_chars_per_line) <= opts.max_lines and (
            shown_end(group[-1]) - group[0].start <= opts.max_cue_seconds
        )

    groups: list[list[Word]] = []
    group: list[Word] = []
    for w in items:
        if not group:
            group = [w]
            continue
        prev = group[-1]
        if w.start - shown_end(prev) > opts.pause_seconds or _ends_sentence(prev.text):
            groups.append(group)
            group = [w]
        elif fits([*group, w]):
            group.append(w)
        else:
            # Full: cut after the last clause punctuation in the second half, if the rest fits.
            cut = next(
                (
                    i + 1
                    for i in range(len(group) - 2, len(group) // 2 - 1, -1)
                    if _CLAUSE_END.search(group[i].text)
                ),
                None,
            )
            if cut is not None and fits([*group[cut:], w]):
                groups.append(group[:cut])
                group = [*group[cut:], w]
            else:
                groups.append(group)
                group = [w]
    if group:
        groups.append(group)

    cues: list[Cue] = []
    for i, g in enumerate(groups):
        start = g[0].start if not cues else max(g[0].start, cues[-1].end)
        end = max(shown_end(g[-1]), start + opts.min_cue_seconds)
        if i + 1 < len(groups):
            end = min(end, groups[i + 1][0].start)
        end = max(end, start + 0.001)  # two cues starting together: keep a valid, tiny one
        texts = tuple(w.text for w in g)
        n_lines = min(opts.max_lines, _greedy_lines(texts, opts.max_chars_per_line))
        cues.append(Cue(start, end, _balanced_lines(texts, n_lines, opts.max_chars_per_line)))
    return cues


def format_timestamp(seconds: float, *, separator: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT; pass ``separator="."`` for WebVTT), rounded to the millisecond."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _as_cues(items: Sequence[Cue] | Sequence[Word], options: SubtitleOptions | None) -> list[Cue]:
    if all(isinstance(c, Cue) for c in items):
        return list(items)  # type: ignore[arg-type]
    return build_cues(items, options)  # type: ignore[arg-type]


def to_srt(items: Sequence[Cue] | Sequence[Word], options: SubtitleOptions | None = None) -> str:
    """SubRip text: 1-based index, ``start --> end``, the lines, a blank line between cues."""
    blocks = [
        f"{i}\n{format_timestamp(c.start)} --> {format_timestamp(c.end)}\n{c.text}\n"
        for i, c in enumerate(_as_cues(items, options), start=1)
    ]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(items: Sequence[Cue] | Sequence[Word], options: SubtitleOptions | None = None) -> str:
    """WebVTT text: ``WEBVTT`` header, then numbered cues with ``HH:MM:SS.mmm`` times."""
    blocks = ["WEBVTT\n"]
    for i, c in enumerate(_as_cues(items, options), start=1):
        start = format_timestamp(c.start, separator=".")
        end = format_timestamp(c.end, separator=".")
        lines = "\n".join(_vtt_escape(line) for line in c.lines)
        blocks.append(f"{i}\n{start} --> {end}\n{lines}\n")
    return "\n".join(blocks)


def to_json(words: Sequence[Word], *, text: str | None = None, indent: int | None = 2) -> str:
    """``{"text": ..., "words": [{"text", "start", "end"}, ...]}`` (times in seconds, ms precision).

    ``text`` defaults to the words joined with spaces.
    """
    payload = {
        "text": " ".join(w.text for w in words) if text is None else text,
        "words": [w.to_dict() for w in words],
    }
    return json.dumps(payload, ensure_ascii=False, indent=indent) + "\n"


_WRITERS = {"srt": to_srt, "vtt": to_vtt}


def write_subtitles(
    path: str | os.PathLike[str],
    words: Sequence[Word],
    *,
    fmt: str | None = None,
    options: SubtitleOptions | None = None,
) -> Path:
    """Write ``words`` to ``path`` as ``srt``, ``vtt`` or ``json`` (default: from the suffix)."""
    out = Path(path)
    kind = (fmt or out.suffix.lstrip(".")).lower()
    if kind == "json":
        content = to_json(words)
    elif kind in _WRITERS:
        content = _WRITERS[kind](words, options)
    else:
        raise ValueError(
            f"unknown subtitle format {kind!r} for {out}; use a .srt, .vtt or .json file "
            "name or pass fmt='srt' | 'vtt' | 'json'"
        )
    out.write_text(content, encoding="utf-8")
    return out
