"""dsm's TTS against the reference ``TTSModel`` on a tiny checkpoint built by the reference.

Greedy decoding (temperature 0): the generated frames (the multiplexed text stream and every
audio codebook) are equal token for token, and the audio decoded and cut like the reference's
``simple_generate`` is within 1e-4 relative error (measured: 0, both decode the same codes with
the same float32 Mimi). A batch of texts equals each text alone.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dsm.tts.engine import CLICK_FRAMES
from tests.helpers.reference_tts import ReferenceTts, reference_synthesize

TEXTS = [
    "Hello world, a test.",
    'The fox <break time="0.3s"/> jumps.',
    "In an ancient forest.",
]


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def reference(ref_tts: ReferenceTts):  # type: ignore[no-untyped-def]
    voice = ref_tts.voice_path()
    return reference_synthesize(ref_tts, [[t] for t in TEXTS], [[voice]] * len(TEXTS))


@pytest.fixture(scope="module")
def batch(ref_tts: ReferenceTts, tts):  # type: ignore[no-untyped-def]
    return tts.synthesize(TEXTS, voice=str(ref_tts.voice_path()), temperature=0.0)


def test_texts_exercise_the_state_machine(tts, reference) -> None:  # type: ignore[no-untyped-def]
    entries = [tts.entries([t]) for t in TEXTS]
    assert any(len(e.tokens) > 2 for es in entries for e in es)  # multi-token words
    assert any(not e.tokens for es in entries for e in es)  # a break
    assert all(end is not None for end in reference.end_steps)
    # The model's own NEW_WORD choices, not only max_padding, start words.
    steps = [s for tr in reference.transcripts for _, s in tr]
    gaps = {b - a for tr in reference.transcripts for (_, a), (_, b) in itertools.pairwise(tr)}
    assert len(steps) >= 8 and len(gaps) > 2


def test_frames_match_reference(batch, reference) -> None:  # type: ignore[no-untyped-def]
    for speech, frames, end in zip(batch, reference.frames, reference.end_steps, strict=True):
        T = speech.tokens.shape[1]
        assert end + 16 + 4 - 2 == T  # frames up to the reference's own stop (final_padding 4)
        np.testing.assert_array_equal(speech.tokens, frames[:, :T].numpy())


def test_audio_matches_reference(batch, reference) -> None:  # type: ignore[no-untyped-def]
    for speech, pcm in zip(batch, reference.pcm, strict=True):
        assert speech.pcm.dtype == np.float32 and speech.sample_rate == 24000
        assert speech.pcm.shape == pcm.shape
        assert _rel_err(speech.pcm, pcm) < 1e-4


def test_word_timings(batch, reference) -> None:  # type: ignore[no-untyped-def]
    for speech, transcript, end in zip(
        batch, reference.transcripts, reference.end_steps, strict=True
    ):
        assert [w.text for w in speech.words] == [word for word, _ in transcript]
        starts = [(step - CLICK_FRAMES) / 12.5 for _, step in transcript]
        assert [w.start for w in speech.words] == pytest.approx(starts)
        assert speech.words[-1].end == pytest.approx((end - CLICK_FRAMES) / 12.5)
        assert all(
            a.end <= b.start + 1e-9 for a, b in zip(speech.words, speech.words[1:], strict=False)
        )
        assert speech.words[-1].end <= speech.duration + 1e-9


def test_batch_equals_each_alone(ref_tts: ReferenceTts, tts, batch) -> None:  # type: ignore[no-untyped-def]
    for text, together in zip(TEXTS[1:2], batch[1:2], strict=True):
        alone = tts.synthesize(text, voice=str(ref_tts.voice_path()), temperature=0.0)
        np.testing.assert_array_equal(alone.tokens, together.tokens)
        assert _rel_err(alone.pcm, together.pcm) < 1e-5
        assert alone.words == together.words


def test_fewer_codebooks_match_reference(ref_tts: ReferenceTts, tts) -> None:  # type: ignore[no-untyped-def]
    """``n_q`` below ``dep_q``: the reference sets ``lm.dep_q = n_q`` and feeds ``-1`` for the
    other codebooks as inputs; dsm's generator takes ``dep_q=n_q`` and does the same."""
    from dsm.tts.model import TextToSpeech

    voice = ref_tts.voice_path()
    for n_q in (1, 4):
        ref = reference_synthesize(ref_tts, [[TEXTS[0]]], [[voice]], n_q=n_q)
        small = TextToSpeech(tts.lm, tts.codec, tts.tokenizer, tts.config, n_q=n_q)
        speech = small.synthesize(TEXTS[0], voice=str(voice), temperature=0.0)
        T = speech.tokens.shape[1]
        assert speech.tokens.shape[0] == 1 + n_q
        np.testing.assert_array_equal(speech.tokens, ref.frames[0][:, :T].numpy())
        assert _rel_err(speech.pcm, ref.pcm[0]) < 1e-4
