"""Subtitle cues from timed words, checked by parsing with the srt and webvtt-py packages."""

from __future__ import annotations

import html
import itertools
import json
from pathlib import Path

import pytest

from dsm.stt.subtitles import (
    Cue,
    SubtitleOptions,
    build_cues,
    format_timestamp,
    to_json,
    to_srt,
    to_vtt,
    write_subtitles,
)
from dsm.stt.words import Word

STORY = (
    "In the heart of an ancient forest, where the trees whispered secrets of the past, there "
    "lived a peculiar rabbit named Luna. She was unlike any other rabbit, for she had the ability "
    "to speak with the stars. Every night, she would climb to the top of the tallest hill and "
    "converse with them about everything and nothing at all, until the sun came up again"
)


def dsm_words(text: str, *, pause_after_sentence: float = 1.5, t0: float = 0.3) -> list[Word]:
    """Words timed like the DSM models: each word ends where the next one starts."""
    starts, t = [], t0
    for token in text.split():
        starts.append((token, t))
        t += 0.12 + 0.05 * len(token) + (pause_after_sentence if token.endswith(".") else 0.0)
    ends = [s for _, s in starts[1:]] + [t]
    return [Word(tok, s, e) for (tok, s), e in zip(starts, ends, strict=True)]


def check_cues(cues: list[Cue], words: list[Word], opts: SubtitleOptions) -> None:
    assert " ".join(" ".join(c.lines) for c in cues) == " ".join(w.text for w in words)
    for a, b in itertools.pairwise(cues):
        assert a.end <= b.start, "overlapping cues"
    for c in cues:
        assert c.start < c.end
        assert 1 <= len(c.lines) <= opts.max_lines
        assert all(len(line) <= opts.max_chars_per_line or " " not in line for line in c.lines)
        assert c.end - c.start <= opts.max_cue_seconds + opts.max_word_seconds


def test_story_cues_respect_limits() -> None:
    words = dsm_words(STORY)
    opts = SubtitleOptions()
    cues = build_cues(words, opts)
    check_cues(cues, words, opts)
    # A sentence end always ends a cue.
    assert all(not any(w.endswith(".") for w in c.text.split()[:-1]) for c in cues)
    assert cues[1].text == "there lived a peculiar rabbit named Luna."
    # After "Luna." comes a 1.5 s pause: the cue ends at most max_word_seconds after its start.
    luna = next(w for w in words if w.text == "Luna.")
    assert cues[1].end == pytest.approx(luna.start + opts.max_word_seconds)


def test_srt_parses_with_srt_package() -> None:
    srt = pytest.importorskip("srt")
    words = dsm_words(STORY)
    cues = build_cues(words)
    text = to_srt(cues)
    parsed = list(srt.parse(text))
    assert [s.index for s in parsed] == list(range(1, len(cues) + 1))
    for sub, cue in zip(parsed, cues, strict=True):
        assert sub.start.total_seconds() == pytest.approx(cue.start, abs=1e-3)
        assert sub.end.total_seconds() == pytest.approx(cue.end, abs=1e-3)
        assert sub.content == cue.text
        assert all(len(line) <= 42 for line in sub.content.split("\n"))
    assert all(a.end <= b.start for a, b in itertools.pairwise(parsed))
    assert "\n\n\n" not in text and text.endswith("\n")
    assert to_srt(words) == text  # words are cued with the default options


def test_vtt_parses_with_webvtt() -> None:
    webvtt = pytest.importorskip("webvtt")
    words = [*dsm_words(STORY), Word("<b>&", 60.0, 60.4)]
    cues = build_cues(words)
    text = to_vtt(cues)
    assert text.startswith("WEBVTT\n\n")
    parsed = webvtt.from_string(text)
    assert len(parsed.captions) == len(cues)
    for cap, cue in zip(parsed.captions, cues, strict=True):
        assert cap.start == format_timestamp(cue.start, separator=".")
        assert cap.end == format_timestamp(cue.end, separator=".")
        assert html.unescape(cap.text) == cue.text
    assert parsed.captions[-1].raw_text == "&lt;b&gt;&amp;"
    assert "00:00:00.300 --> " in text


def test_pause_breaks_and_min_duration() -> None:
    words = [Word("hello", 0.0, 0.3), Word("there", 0.35, 0.6), Word("again", 2.0, 2.2)]
    cues = build_cues(words, SubtitleOptions(min_cue_seconds=1.0))
    assert [c.text for c in cues] == ["hello there", "again"]
    assert cues[0].end == pytest.approx(1.0)  # extended to the minimum duration
    assert cues[1].end == pytest.approx(3.0)
    tight = build_cues(words, SubtitleOptions(min_cue_seconds=5.0))
    assert tight[0].end == pytest.approx(2.0)  # never into the next cue


def test_max_duration_and_long_words() -> None:
    slow = [Word(f"w{i}", i * 0.9, i * 0.9 + 0.9) for i in range(20)]
    opts = SubtitleOptions(max_cue_seconds=3.0)
    cues = build_cues(slow, opts)
    assert all(c.end - c.start <= 3.0 + 1e-9 for c in cues)
    check_cues(cues, slow, opts)
    giant = "x" * 60
    cues = build_cues([Word("a", 0, 0.2), Word(giant, 0.2, 0.5), Word("b", 0.5, 0.7)])
    assert giant in [line for c in cues for line in c.lines]


def test_clause_break_preferred_when_full() -> None:
    text = "one two three four five six seven eight nine ten, eleven twelve thirteen fourteen"
    words = [Word(t, i * 0.2, i * 0.2 + 0.2) for i, t in enumerate(text.split())]
    cues = build_cues(words, SubtitleOptions(max_chars_per_line=30, max_lines=2))
    assert cues[0].text.replace("\n", " ").endswith("ten,")


def test_messy_input() -> None:
    words = [Word(" b \n", 0.5, 0.4), Word("", 0.2, 0.3), Word("a", -1.0, 0.1)]
    cues = build_cues(words)
    assert [c.text for c in cues] == ["a b"] and cues[0].start == 0.0
    assert build_cues([]) == [] and to_srt([]) == "" and to_vtt([]) == "WEBVTT\n"
    same = build_cues([Word("x.", 1.0, 1.0), Word("y", 1.0, 1.0)])
    assert same[0].end <= same[1].start and all(c.start < c.end for c in same)


def test_timestamps() -> None:
    assert format_timestamp(0) == "00:00:00,000"
    assert format_timestamp(3723.4567) == "01:02:03,457"
    assert format_timestamp(59.9996, separator=".") == "00:01:00.000"
    assert format_timestamp(-0.2) == "00:00:00,000"
    assert format_timestamp(360000.0) == "100:00:00,000"


def test_json_and_write(tmp_path: Path) -> None:
    words = dsm_words("Hello there. General Kenobi.")
    data = json.loads(to_json(words))
    assert data["text"] == "Hello there. General Kenobi."
    assert data["words"][0] == {"text": "Hello", "start": 0.3, "end": pytest.approx(0.67)}
    for suffix in ("srt", "vtt", "json"):
        out = write_subtitles(tmp_path / f"out.{suffix}", words)
        assert out.read_text(encoding="utf-8")
    assert (tmp_path / "out.vtt").read_text().startswith("WEBVTT")
    with pytest.raises(ValueError, match=r"\.srt, \.vtt or \.json"):
        write_subtitles(tmp_path / "out.txt", words)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_lines"):
        SubtitleOptions(max_lines=0)
    with pytest.raises(ValueError, match="pause_seconds"):
        SubtitleOptions(pause_seconds=0)
