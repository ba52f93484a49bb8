"""The STT training target decodes back to its words with dsm's inference decoding: same words,
start times within one frame (80 ms) before the given ones, for several delays and prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsm.frames import SAMPLE_RATE
from dsm.stt.word_stream import words_from_tokens
from dsm.stt.words import Word
from dsm.tokenizer import TextTokenizer
from dsm.train.stt_target import SttLayout, text_target, text_weights
from tests.helpers.tiny_tokenizer import train_tiny_tokenizer

PAD, EOP = 3, 0
FRAME_SECONDS = 0.08


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    return TextTokenizer(train_tiny_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=64))


WORDS = [
    Word("the", 0.0, 0.2),
    Word("fox", 0.31, 0.6),
    Word("forest", 0.97, 1.3),
    Word("river", 1.35, 1.6),  # starts while "forest" is still being emitted
    Word("morning", 2.04, 2.5),
    Word("one", 3.999, 4.2),
]


@pytest.mark.parametrize(
    ("prefix", "delay"), [(0.0, 0.5), (1.0, 2.5), (0.3, 0.5), (0.0, 0.0)]
)  # fmt: skip
def test_target_decodes_to_its_words(tokenizer: TextTokenizer, prefix: float, delay: float) -> None:
    layout = SttLayout(prefix, delay, PAD, EOP)
    num_samples = int(4.5 * SAMPLE_RATE)
    T = layout.num_frames(num_samples)
    target = text_target(WORDS, tokenizer.encode, T, layout)
    assert target.shape == (T,)
    # Inference drops the token of step 0 and times a step as step / 12.5 - prefix - delay.
    tokens = target.tolist()
    words = words_from_tokens(
        tokens[1:], tokenizer.decode, tokenizer.encode,
        offset_seconds=layout.plan.word_offset_seconds, first_step=1,
    )  # fmt: skip
    assert [w.text for w in words] == [w.text for w in WORDS]
    errors = [given.start - got.start for given, got in zip(WORDS, words, strict=True)]
    if delay + prefix > 0:  # with neither, a word at 0 s can only start at step 1 (0.08 s)
        assert all(0.0 <= e < FRAME_SECONDS + 1e-9 for e in errors), errors
    print(f"prefix {prefix} delay {delay}: start errors {[round(e, 3) for e in errors]} s")


def test_marker_padding_and_queue(tokenizer: TextTokenizer) -> None:
    layout = SttLayout(0.0, 0.0, PAD, EOP)
    words = [Word("forest", 0.16, 0.3), Word("river", 0.24, 0.4)]  # frames 2 and 3
    target = text_target(words, tokenizer.encode, 12, layout).tolist()
    forest, river = tokenizer.encode("forest"), tokenizer.encode("river")
    # The marker goes right before the first piece; "river" waits for "forest" without a marker.
    assert target == [PAD, EOP, *forest, *river, *[PAD] * (12 - 2 - len(forest) - len(river))]


def test_weights(tokenizer: TextTokenizer) -> None:
    layout = SttLayout(0.0, 0.5, PAD, EOP)
    target = text_target([Word("fox", 0.1, 0.3)], tokenizer.encode, 20, layout)
    weights = text_weights(target, 15, layout, pad_weight=0.5)
    assert weights[0] == 0.0  # step 0 is never decoded
    assert (weights[15:] == 0).all()  # batch padding
    assert set(weights[1:15].tolist()) == {0.5, 1.0}
    assert ((weights[1:15] == 1.0) == (target[1:15] != PAD)).all()


def test_unknown_pieces_never_become_markers(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    from dsm.train.stt_task import _pieces

    pieces = _pieces(tokenizer.encode, PAD)("fox Ω")
    assert pieces and min(pieces) > PAD
