"""WER/CER with the Whisper English normalizer, per utterance and pooled."""

from __future__ import annotations

import pytest

pytest.importorskip("jiwer")
pytest.importorskip("whisper_normalizer")

from dsm.eval.metrics import (
    IGNORE_SEGMENT,
    aggregate,
    get_normalizer,
    is_scorable,
    score_utterance,
)


def test_normalizer_makes_formatting_free() -> None:
    s = score_utterance("Hello, Mr. Smith! It's 25 dollars.", "hello mister smith it is $25")
    assert s.wer == 0.0 and s.cer == 0.0
    assert s.ref_norm == "hello mister smith it is $25"


def test_counts_and_rates() -> None:
    s = score_utterance("the cat sat on the mat", "the cat sit the mat today")
    assert (s.substitutions, s.deletions, s.insertions, s.hits) == (1, 1, 1, 4)
    assert s.wer == pytest.approx(3 / 6)
    jiwer = pytest.importorskip("jiwer")
    assert s.wer == pytest.approx(jiwer.wer(s.ref_norm, s.hyp_norm))
    assert s.cer == pytest.approx(jiwer.cer(s.ref_norm, s.hyp_norm))


def test_empty_hypothesis_and_reference() -> None:
    s = score_utterance("red green blue", "")
    assert s.wer == 1.0 and s.cer == 1.0 and s.deletions == 3
    with pytest.raises(ValueError, match="is_scorable"):
        score_utterance("[noise]", "anything")


def test_is_scorable() -> None:
    assert is_scorable("Hello")
    assert not is_scorable("  ")
    assert not is_scorable("<unk>")  # the normalizer drops bracketed tokens
    assert not is_scorable(IGNORE_SEGMENT.upper())


def test_corpus_wer_pools_counts() -> None:
    a = score_utterance("a b c d", "a b c d")  # 0 errors / 4 words
    b = score_utterance("hello", "goodbye")  # 1 error / 1 word
    corpus = aggregate([a, b])
    assert corpus.mean_wer == pytest.approx(0.5)
    assert corpus.corpus_wer == pytest.approx(1 / 5)
    assert corpus.n_utterances == 2
    empty = aggregate([])
    assert empty.n_utterances == 0 and empty.corpus_wer != empty.corpus_wer  # NaN


def test_other_normalizers() -> None:
    assert get_normalizer("none")("  A  b ") == "A b"
    assert get_normalizer("basic")("Bonjour, le Monde!").split() == ["bonjour", "le", "monde"]
    with pytest.raises(ValueError, match="english"):
        get_normalizer("klingon")
