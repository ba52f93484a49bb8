"""Forced alignment (``SpeechToText.align``): the model's own transcript is timed as the model
timed it; another transcript is still placed word by word, in order, inside the audio; bad input
gets a clear error before the model runs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import dsm
from dsm.errors import DsmError
from dsm.stt.align import AlignConstraint, AlignTarget, align_target
from dsm.stt.framing import plan_feed
from dsm.stt.model import SpeechToText
from dsm.stt.transcript import Transcript
from tests.helpers.reference_mimi import speech_like

FRAME_SECONDS = 0.08
PAD, MARKER = 3, 0


class _WordPiecesOnly(torch.nn.Module):
    """The text head, with every id but padding, the marker and whole-word pieces ruled out.

    A random model writes pieces in any order ("h" after a marker), which no tokenizer writes
    for a word; a real checkpoint writes each word as its tokenizer does. With whole-word pieces
    only, the tiny model's greedy transcript is written the way the tokenizer writes its words,
    as a real model's is."""

    def __init__(self, inner: torch.nn.Module, allowed: list[int], cardinality: int) -> None:
        super().__init__()
        self.inner = inner
        bias = torch.full((cardinality,), -1e4)
        bias[allowed] = 0.0
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.bias


@dataclass
class Case:
    stt: SpeechToText
    pcm: np.ndarray
    greedy: Transcript
    aligned: Transcript


@pytest.fixture(scope="module")
def case(stt_dir: Path) -> Case:
    stt = dsm.load_stt(stt_dir, device="cpu")
    tok = stt.tokenizer
    whole = [
        i
        for i in range(stt.padding_id + 1, tok.vocab_size)
        if tok.id_to_piece(i).startswith("▁") and tok.encode(tok.decode([i])) == [i]
    ]
    assert len(whole) >= 5, whole
    head = stt.lm.text_linear
    cardinality = int(head.weight.shape[0])
    stt.lm.text_linear = _WordPiecesOnly(head, [PAD, MARKER, *whole], cardinality)  # type: ignore[assignment]
    pcm = speech_like(2.5, seed=2)[0, 0].numpy().astype(np.float32)
    greedy = stt.transcribe(pcm, sample_rate=24000)
    aligned = stt.align(pcm, greedy.text, sample_rate=24000)
    return Case(stt, pcm, greedy, aligned)


def _check_placed(result: Transcript, words: list[str]) -> None:
    assert [w.text for w in result.words] == words
    for word in result.words:
        assert 0.0 <= word.start <= word.end <= result.duration + 1e-9, word
    for word, following in itertools.pairwise(result.words):
        assert word.start <= following.start, (word, following)
        assert word.end <= following.start + 1e-9, (word, following)


def test_align_recovers_the_models_own_word_times(case: Case) -> None:
    greedy, aligned = case.greedy, case.aligned
    assert len(greedy.words) >= 5, f"the tiny model said too little: {greedy.text!r}"
    assert aligned.text == greedy.text
    assert [w.text for w in aligned.words] == [w.text for w in greedy.words]
    starts = [abs(a.start - g.start) for a, g in zip(aligned.words, greedy.words, strict=True)]
    ends = [abs(a.end - g.end) for a, g in zip(aligned.words, greedy.words, strict=True)]
    print(f"{len(starts)} words: start error max {max(starts):.3f} s, end error {max(ends):.3f} s")
    assert max(starts) <= FRAME_SECONDS + 1e-6
    assert aligned.duration == greedy.duration


def test_align_another_transcript_places_every_word(case: Case) -> None:
    words = case.greedy.text.split()
    other = ["the", "to", *reversed(words[: len(words) // 2]), "an", "the"]
    result = case.stt.align(case.pcm, " ".join(other), sample_rate=24000)
    _check_placed(result, other)
    assert result.text == " ".join(other)


def test_align_many_batches_like_one_by_one(case: Case, tmp_path: Path) -> None:
    short = case.pcm[:24000]
    results = case.stt.align_many(
        [(case.pcm, case.greedy.text), (short, "the the"), (tmp_path / "missing.wav", "a")],
        sample_rate=24000,
        batch_size=2,
    )
    first = results[0]
    assert isinstance(first, Transcript)  # slot 0 beside another input: as when alone
    assert (first.text, first.words) == (case.aligned.text, case.aligned.words)
    assert isinstance(results[1], Transcript)
    _check_placed(results[1], ["the", "the"])
    failure = results[2]
    assert not isinstance(failure, Transcript) and "missing.wav" in str(failure)


def test_bad_input_is_refused_before_the_model_runs(case: Case, tmp_path: Path) -> None:
    stt, pcm = case.stt, case.pcm
    with pytest.raises(DsmError, match="transcript is empty"):
        stt.align(pcm, "  \n ", sample_rate=24000)
    with pytest.raises(DsmError, match="does not exist"):
        stt.align(tmp_path / "nothing.wav", "the")
    with pytest.raises(DsmError, match="cannot be written by this model's tokenizer"):
        stt.align(pcm, "the 漢字", sample_rate=24000)
    with pytest.raises(DsmError, match="leaves room for"):
        stt.align(pcm[:4800], " ".join(["the"] * 200), sample_rate=24000)


def test_targets_tokenise_word_by_word(case: Case) -> None:
    tok = case.stt.tokenizer
    plan = plan_feed(0.0, 0.5)
    target = align_target(tok, " the  forest\n", plan, 24000, padding_id=PAD)
    assert target.words == ("the", "forest")
    assert list(target.tokens) == tok.encode("the") + tok.encode("forest")
    assert target.first.count(True) == 2 and target.first[0]
    # 1 s of input + 0.5 s delay + 1 s flush: frames 0..30 are heard at steps 1..31.
    assert target.deadline == (24000 + int(1.5 * 24000)) // 1920


def test_constraint_masks_what_the_rule_says() -> None:
    """At a word boundary: padding, marker or the word's first piece; inside a word: only its
    next piece; when the remaining tokens need every step left: only the next token; after the
    last token: only padding; step 0 and slots without a target: free."""
    N = 10
    con = AlignConstraint(3, 4, padding_id=PAD, marker_id=MARKER, device=torch.device("cpu"))
    con.set(0, AlignTarget(("a", "bc"), (5, 6, 7), (True, True, False), deadline=20))
    con.set(1, AlignTarget(("a",), (8,), (True,), deadline=3))
    con.set(2, None)

    def allowed(offsets: list[int]) -> list[set[int]]:
        logits = torch.zeros(3, N)
        con.on_logits(logits, torch.tensor(offsets))
        return [set(torch.isfinite(row).nonzero()[:, 0].tolist()) for row in logits]

    def emit(tokens: list[int], offsets: list[int]) -> list[set[int]]:
        sets = allowed(offsets)
        con.on_token(torch.tensor(tokens), torch.ones(3, dtype=torch.bool))
        return sets

    free = set(range(N))
    assert emit([5, 8, 4], [0, 0, 0]) == [free, free, free]  # step 0: free, nothing advances
    assert emit([5, PAD, 4], [1, 1, 1]) == [{PAD, MARKER, 5}, {PAD, MARKER, 8}, free]
    assert emit([6, PAD, 4], [2, 2, 2]) == [{PAD, MARKER, 6}, {PAD, MARKER, 8}, free]
    # Slot 0 is inside "bc"; slot 1 has one token left and one step before its deadline.
    assert emit([7, 8, 4], [3, 3, 3]) == [{7}, {8}, free]
    assert allowed([4, 4, 4]) == [{PAD}, {PAD}, free]
    assert con.complete.tolist() == [True, True, True]
