"""Streaming text in: any chunking of the text gives the audio and words of the whole text.
Seeded sampling is reproducible."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dsm.stt.words import Word
from dsm.tts.session import AudioChunk
from tests.helpers.reference_tts import ReferenceTts

TEXT = 'Hello world, <break time="0.2s"/>the fox jumps.'


@pytest.fixture(scope="module")
def whole(ref_tts: ReferenceTts, tts):  # type: ignore[no-untyped-def]
    return tts.synthesize(TEXT, voice=str(ref_tts.voice_path()), temperature=0.0)


def _stream(tts, voice: str, chunks: list[str]) -> tuple[np.ndarray, list[Word]]:  # type: ignore[no-untyped-def]
    pcm: list[np.ndarray] = []
    words: list[Word] = []
    with tts.stream(voice=voice, temperature=0.0) as session:
        events = []
        for chunk in chunks:
            events += session.push(chunk)
        events += session.end()
    for event in events:
        if isinstance(event, AudioChunk):
            assert event.start == pytest.approx(len(pcm) * 0.08)
            pcm.append(event.pcm)
        else:
            words.append(event)
    return np.concatenate(pcm), words


def _odd(text: str) -> list[str]:
    cuts = [0, 3, 4, 9, 15, 16, 22, 30, 31, 40, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(cuts) if b > a]


@pytest.mark.parametrize(
    "chunking",
    [
        "words",
        "odd",
        "characters",
    ],
)
def test_any_chunking_equals_whole_text(ref_tts: ReferenceTts, tts, whole, chunking: str) -> None:  # type: ignore[no-untyped-def]
    if chunking == "words":
        parts = TEXT.split(" ")
        chunks = [p + " " for p in parts[:-1]] + [parts[-1]]
    elif chunking == "odd":
        chunks = _odd(TEXT)
    else:
        chunks = list(TEXT)
    assert "".join(chunks) == TEXT
    pcm, words = _stream(tts, str(ref_tts.voice_path()), chunks)
    np.testing.assert_array_equal(pcm, whole.pcm)
    assert words == whole.words


def test_session_waits_for_lookahead(ref_tts: ReferenceTts, tts) -> None:  # type: ignore[no-untyped-def]
    with tts.stream(voice=str(ref_tts.voice_path()), temperature=0.0) as session:
        # One word: only the forced initial padding can run (the word needs 2 words ahead).
        assert session.push("Hello ") == []
        assert session.engine._slots[0].offset == 2
        session.push("world, the ")
        assert session.engine._slots[0].offset > 2


def test_seeded_sampling_is_reproducible(ref_tts: ReferenceTts, tts) -> None:  # type: ignore[no-untyped-def]
    voice = str(ref_tts.voice_path())
    a = tts.synthesize("Hello.", voice=voice, temperature=0.8, seed=3)
    b = tts.synthesize("Hello.", voice=voice, temperature=0.8, seed=3)
    c = tts.synthesize("Hello.", voice=voice, temperature=0.8, seed=4)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.pcm, b.pcm)
    assert a.tokens.shape != c.tokens.shape or not np.array_equal(a.tokens, c.tokens)
