"""Voices given as an audio prefix (checkpoints without a speaker conditioner, like
``kyutai/tts-0.75b-en-public``), against the reference ``TTSModel`` on a tiny checkpoint.

The reference encodes the voice wav with ``get_prefix`` and generates with ``prefixes=``, with
direct CFG (``cfg_coef`` 2, the prefix masked in the null branch) as ``simple_generate`` does.
Greedy decoding (temperature 0): the frames, prefix included, are equal token for token; the
audio cut after the prefix like ``simple_generate`` is within 1e-4 relative error (measured: 0,
the same codes through the same float32 Mimi); word times count from the end of the prefix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dsm.errors import DsmError
from dsm.tts.engine import CLICK_FRAMES
from dsm.tts.voices import VoiceError
from tests.helpers.reference_tts import (
    OTHER_VOICE_NAME,
    VOICE_NAME,
    ReferenceTts,
    make_reference_tts_dir,
    prefix_tts_config,
    reference_synthesize,
    write_test_wav,
)

TEXTS = ["Hello world, a test.", 'The fox <break time="0.3s"/> jumps.']


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def ref_prefix(tmp_path_factory: pytest.TempPathFactory) -> ReferenceTts:
    return make_reference_tts_dir(tmp_path_factory.mktemp("tts_prefix"), prefix_tts_config())


@pytest.fixture(scope="module")
def tts_prefix(ref_prefix: ReferenceTts):  # type: ignore[no-untyped-def]
    from dsm.tts.model import load_tts

    return load_tts(ref_prefix.directory, voice_repo=ref_prefix.voice_dir, device="cpu")


@pytest.fixture(scope="module")
def voices(ref_prefix: ReferenceTts) -> list[Path]:
    # 2.0 s and 1.5 s: prefixes of 23 and 17 frames, one longer than the 16-step audio delay.
    return [ref_prefix.voice_path(VOICE_NAME), ref_prefix.voice_path(OTHER_VOICE_NAME)]


@pytest.fixture(scope="module")
def reference(ref_prefix: ReferenceTts, voices: list[Path]):  # type: ignore[no-untyped-def]
    return reference_synthesize(ref_prefix, [[t] for t in TEXTS], [[v] for v in voices], cfg=2.0)


@pytest.fixture(scope="module")
def batch(tts_prefix, voices: list[Path]):  # type: ignore[no-untyped-def]
    return tts_prefix.synthesize(TEXTS, voice=[str(v) for v in voices], temperature=0.0)


def test_checkpoint_is_prefix_conditioned(tts_prefix, reference, voices) -> None:  # type: ignore[no-untyped-def]
    assert tts_prefix.uses_prefix and not tts_prefix.multi_speaker
    assert tts_prefix.cfg_values == ()
    assert reference.prefix_frames == [23, 17]
    for voice, P in zip(voices, reference.prefix_frames, strict=True):
        assert tuple(tts_prefix.voice_prefix(str(voice)).shape) == (tts_prefix.lm.n_q, P)
    assert all(end is not None for end in reference.end_steps)


def test_prefix_codes_match_reference(ref_prefix: ReferenceTts, tts_prefix, voices) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers.reference_tts import reference_model

    model = reference_model(ref_prefix)
    for voice in voices:
        expected = model.get_prefix(voice)  # [1 + n_q, P], text row -1
        assert (expected[0] == -1).all()
        np.testing.assert_array_equal(tts_prefix.voice_prefix(voice).numpy(), expected[1:].numpy())


def test_frames_match_reference(batch, reference) -> None:  # type: ignore[no-untyped-def]
    for speech, frames, end, P in zip(
        batch, reference.frames, reference.end_steps, reference.prefix_frames, strict=True
    ):
        T = speech.tokens.shape[1]
        assert end + 16 + 4 - 2 == T
        np.testing.assert_array_equal(speech.tokens, frames[:, :T].numpy())
        # The prefix steps fed -1 text; the state machine started after them.
        assert (speech.tokens[0, :P] == -1).all() and (speech.tokens[0, P:] != -1).all()


def test_audio_matches_reference(batch, reference) -> None:  # type: ignore[no-untyped-def]
    for speech, pcm in zip(batch, reference.pcm, strict=True):
        assert speech.pcm.shape == pcm.shape and speech.pcm.shape[0] > 0
        assert _rel_err(speech.pcm, pcm) < 1e-4


def test_word_times_start_after_the_prefix(batch, reference) -> None:  # type: ignore[no-untyped-def]
    for speech, transcript, end, P in zip(
        batch, reference.transcripts, reference.end_steps, reference.prefix_frames, strict=True
    ):
        assert [w.text for w in speech.words] == [word for word, _ in transcript]
        starts = [(step - CLICK_FRAMES - P) / 12.5 for _, step in transcript]
        assert [w.start for w in speech.words] == pytest.approx(starts)
        assert speech.words[-1].end == pytest.approx((end - CLICK_FRAMES - P) / 12.5)
        assert speech.words[-1].end <= speech.duration + 1e-9


def test_without_cfg_matches_reference(ref_prefix: ReferenceTts, tts_prefix, voices) -> None:  # type: ignore[no-untyped-def]
    ref = reference_synthesize(ref_prefix, [[TEXTS[0]]], [[voices[1]]], cfg=1.0)
    speech = tts_prefix.synthesize(TEXTS[0], voice=voices[1], cfg=1.0, temperature=0.0)
    T = speech.tokens.shape[1]
    np.testing.assert_array_equal(speech.tokens, ref.frames[0][:, :T].numpy())
    assert _rel_err(speech.pcm, ref.pcm[0]) < 1e-4


def test_slots_with_and_without_prefix(tts_prefix, voices, batch) -> None:  # type: ignore[no-untyped-def]
    """Per slot: a batch mixing a prefixed slot and one without a voice equals each alone."""
    mixed = tts_prefix.synthesize(TEXTS, voice=[None, str(voices[1])], temperature=0.0)
    np.testing.assert_array_equal(mixed[1].tokens, batch[1].tokens)
    alone = tts_prefix.synthesize(TEXTS[0], temperature=0.0)
    np.testing.assert_array_equal(mixed[0].tokens, alone.tokens)
    assert (alone.tokens[0] != -1).all()  # no prefix: the state machine runs from step 0


def test_streaming_with_prefix_equals_whole(tts_prefix, voices, batch) -> None:  # type: ignore[no-untyped-def]
    from dsm.tts.session import AudioChunk

    with tts_prefix.stream(voice=voices[0], temperature=0.0) as session:
        events = []
        for piece in ["Hel", "lo world", ", a te", "st."]:
            events += session.push(piece)
        events += session.end()
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    words = [e for e in events if not isinstance(e, AudioChunk)]
    assert _rel_err(pcm, batch[0].pcm) < 1e-5
    assert words == batch[0].words


def test_voice_repo_names_and_resampled_files(
    ref_prefix: ReferenceTts, tts_prefix, voices, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    by_name = tts_prefix.voice_prefix(VOICE_NAME)
    assert torch.equal(by_name, tts_prefix.voice_prefix(voices[0]))
    assert torch.equal(by_name, tts_prefix.voice_prefix(f"file://{voices[0]}"))
    assert tts_prefix.voices() == sorted([VOICE_NAME, OTHER_VOICE_NAME])
    # Any rate is resampled to 24 kHz: 1.5 s at 16 kHz is 19 encoded frames, 17 kept.
    other_rate = write_test_wav(tmp_path / "v16k.wav", seconds=1.5, sample_rate=16000)
    assert tts_prefix.voice_prefix(other_rate).shape[1] == 17


def test_voice_errors(
    ref_prefix: ReferenceTts, tts_prefix, tts, ref_tts: ReferenceTts, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    wav = ref_prefix.voice_path(VOICE_NAME)
    # A recording for a checkpoint with speaker embeddings.
    with pytest.raises(VoiceError, match="not a voice embedding"):
        tts.synthesize("Hello.", voice=wav)
    with pytest.raises(VoiceError, match="not a voice embedding"):
        tts.synthesize("Hello.", voice=str(wav))
    # An embedding for a checkpoint conditioned on an audio prefix.
    with pytest.raises(VoiceError, match="is a speaker embedding"):
        tts_prefix.synthesize("Hello.", voice=str(ref_tts.voice_path()))
    with pytest.raises(DsmError, match="speaker turns"):
        tts_prefix.synthesize_dialog(["Hi.", "Hello."], voices=[wav, wav])
    # Unreadable, missing, too short.
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    with pytest.raises(VoiceError, match="could not be read as audio"):
        tts_prefix.synthesize("Hello.", voice=garbage)
    with pytest.raises(VoiceError, match="not found"):
        tts_prefix.synthesize("Hello.", voice=tmp_path / "missing.wav")
    short = write_test_wav(tmp_path / "short.wav", seconds=0.1)
    with pytest.raises(VoiceError, match="too short"):
        tts_prefix.synthesize("Hello.", voice=short)
    # All codebooks are needed, as in the reference.
    from dsm.tts.model import TextToSpeech

    small = TextToSpeech(
        tts_prefix.lm, tts_prefix.codec, tts_prefix.tokenizer, tts_prefix.config, n_q=4
    )
    with pytest.raises(VoiceError, match="all 8 codebooks"):
        small.synthesize("Hello.", voice=wav)
