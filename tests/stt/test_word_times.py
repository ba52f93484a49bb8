"""Word times subtitles can use: a word ends no later than the next one starts, no time is
past the input's end, and joining the words gives the text (on long inputs)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import dsm
from dsm.stt.word_stream import words_from_tokens
from dsm.stt.words import Word, fit_words, join_words
from dsm.tokenizer import TextTokenizer
from tests.helpers.reference_mimi import speech_like
from tests.helpers.tiny_tokenizer import train_tiny_tokenizer


def _check(words: list[Word], duration: float) -> None:
    for word, following in itertools.pairwise(words):
        assert word.end <= following.start + 1e-9, (word, following)
    for word in words:
        assert 0.0 <= word.start <= word.end <= duration + 1e-9, word


def test_fit_words_holds_the_rules_and_keeps_good_times() -> None:
    words = [Word("a", 0.0, 0.5), Word("b", 0.4, 1.6), Word("c", 1.0, 1.2), Word("d", 6.0, 7.56)]
    fitted = fit_words(words, 6.52)
    _check(fitted, 6.52)
    assert fitted[0] == Word("a", 0.0, 0.4)  # ends where "b" starts
    assert fitted[1] == Word("b", 0.4, 1.0)
    assert fitted[2] == words[2]  # already fine: unchanged
    assert fitted[3] == Word("d", 6.0, 6.52)  # clamped to the input's end


def test_long_token_stream(tmp_path: Path) -> None:
    tokenizer = TextTokenizer(train_tiny_tokenizer(tmp_path))
    rng = np.random.default_rng(0)
    steps = 12_500  # 1000 s at 12.5 steps/s
    kinds = rng.choice(3, size=steps, p=[0.55, 0.1, 0.35])  # pad, word-start marker, piece
    pieces = rng.integers(4, tokenizer.vocab_size, size=steps)
    tokens = np.where(kinds == 0, 3, np.where(kinds == 1, 0, pieces))
    raw = words_from_tokens(tokens.tolist(), tokenizer.decode, tokenizer.encode, offset_seconds=0.5)
    assert len(raw) > 1000
    duration = steps / 12.5 - 2.0  # the stream's tail lies past the input (the model's delay)
    fitted = fit_words(raw, duration)
    _check(fitted, duration)
    assert [w.text for w in fitted] == [w.text for w in raw]
    assert join_words(fitted).split() == [w.text for w in raw]
    # The reference's transcript: the decode of every piece of the stream, split on whitespace.
    assert [w.text for w in raw] == tokenizer.decode([int(t) for t in tokens if t > 3]).split()


@pytest.mark.parametrize("seconds", [20.0])
def test_long_transcript_words_agree_with_text(stt_dir: Path, seconds: float) -> None:
    stt = dsm.load_stt(stt_dir, device="cpu")
    pcm = speech_like(seconds, seed=11)[0, 0].numpy().astype(np.float32)
    result = stt.transcribe(pcm, sample_rate=24000)
    assert result.words, "the tiny model said nothing: the test checks nothing"
    _check(result.words, result.duration)
    assert " ".join(w.text for w in result.words) == result.text
