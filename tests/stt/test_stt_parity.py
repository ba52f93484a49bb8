"""dsm's transcripts equal the reference pipeline's on the same weights and audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dsm
from tests.helpers.cpu_kernels import CpuMatmul
from tests.helpers.reference_mimi import speech_like
from tests.helpers.reference_stt import ReferenceStt, reference_transcribe


def _audio(seconds: float, seed: int) -> np.ndarray:
    return speech_like(seconds, seed=seed)[0, 0].numpy().astype(np.float32)


@pytest.fixture(scope="module")
def stt(stt_dir: Path) -> dsm.SpeechToText:
    return dsm.load_stt(stt_dir, device="cpu")


def test_single_input_equals_reference(
    stt: dsm.SpeechToText, ref_stt: ReferenceStt, cpu_matmul: CpuMatmul
) -> None:
    cpu_matmul(stt.lm, stt.codec.model)
    pcm = _audio(2.0, seed=1)  # 25 frames + 1.5 s of padding: well past the 12-step context
    ref_text, ref_tokens = reference_transcribe(ref_stt, pcm)
    result = stt.transcribe(pcm, sample_rate=24000)
    # Same text, made from the tokens by one rule (words joined), as the reference's tokens.
    assert result.text == ref_text.strip()
    assert len(ref_tokens) > 2 * ref_stt.config["context"]
    # And the same text tokens, independently of that rule: the reference's tokens above the
    # padding id, decoded by its tokenizer, equal those of a dsm session on the same audio.
    with stt.stream() as session:
        session.push(pcm)
        session.flush()
    ours = stt.tokenizer.decode([t for t in session.tokens if t > 3]).strip()
    assert ours == ref_stt.tokenizer.decode([t for t in ref_tokens if t > 3]).strip()
    print(f"reference tokens: {len(ref_tokens)}, text: {ref_text!r}")


def test_batch_equals_single(
    stt: dsm.SpeechToText, ref_stt: ReferenceStt, cpu_matmul: CpuMatmul
) -> None:
    cpu_matmul(stt.lm, stt.codec.model)
    inputs = [_audio(s, seed=i) for i, s in enumerate((1.2, 2.6, 0.5, 1.9, 0.9))]
    singles = [stt.transcribe(x, sample_rate=24000).text for x in inputs]
    batched = stt.transcribe_many(inputs, batch_size=2, sample_rate=24000, progress=False)
    assert [r.text for r in batched] == singles  # type: ignore[union-attr]
    refs = [reference_transcribe(ref_stt, x)[0].strip() for x in inputs]
    assert singles == refs


def test_words_and_vad(stt: dsm.SpeechToText) -> None:
    pcm = _audio(2.0, seed=3)
    result = stt.transcribe(pcm, sample_rate=24000, vad=True)
    assert result.pause is not None and result.pause.shape[1] == 4
    assert result.pause_times is not None and len(result.pause_times) == result.pause.shape[0]
    assert np.all((result.pause >= 0) & (result.pause <= 1))
    for word in result.words:
        assert 0.0 <= word.start <= word.end
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    d = result.to_dict(vad=True)
    assert set(d) >= {"text", "words", "vad"}


def test_streaming_session_equals_offline(stt: dsm.SpeechToText) -> None:
    pcm = _audio(2.0, seed=4)
    offline = stt.transcribe(pcm, sample_rate=24000)
    with stt.stream() as session:
        events = []
        rng = np.random.default_rng(0)
        pos = 0
        while pos < pcm.shape[0]:
            n = int(rng.integers(100, 5000))
            events += session.push(pcm[pos : pos + n])
            pos += n
        events += session.flush()
    texts = [e.text for e in events if isinstance(e, dsm.stt.word_stream.WordStart)]
    assert texts == [w.text for w in offline.words]
    assert " ".join(texts) == offline.text  # joining the words gives the text


def test_bad_inputs_fail_cleanly(stt: dsm.SpeechToText, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        stt.transcribe(np.zeros(24000, dtype=np.float32))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    good = _audio(0.5, seed=0)
    results = stt.transcribe_many(
        [bad, good, tmp_path / "missing.mp3"], batch_size=2, sample_rate=24000, progress=False
    )
    assert isinstance(results[1], dsm.Transcript)
    assert isinstance(results[0], dsm.stt.transcript.TranscriptionFailure)
    assert isinstance(results[2], dsm.stt.transcript.TranscriptionFailure)
    assert "missing.mp3" in str(results[2])


def test_vad_without_heads_names_the_checkpoint(stt: dsm.SpeechToText) -> None:
    stt.vad_heads, saved = 0, stt.vad_heads
    try:
        with pytest.raises(dsm.DsmError, match="stt-1b-en_fr-candle"):
            stt.transcribe(np.zeros(1920, dtype=np.float32), sample_rate=24000, vad=True)
    finally:
        stt.vad_heads = saved


def test_silent_input_warns(stt: dsm.SpeechToText) -> None:
    result = stt.transcribe(np.zeros(24000, dtype=np.float32), sample_rate=24000)
    assert any("silent" in w for w in result.warnings)
    torch.manual_seed(0)


def test_end_of_turn_events(stt: dsm.SpeechToText) -> None:
    from dsm.stt.session import EndOfTurn, PauseUpdate
    from dsm.stt.vad import VadOptions
    from dsm.stt.word_stream import WordStart

    pcm = _audio(2.0, seed=5)
    # Threshold 0: the turn ends at the first step after each word (a detector that must fire).
    options = VadOptions(head=1, threshold=0.0, smoothing=0.5)
    with stt.stream(vad=options) as session:
        events = session.push(pcm) + session.flush()
    pauses = [e for e in events if isinstance(e, PauseUpdate)]
    turns = [e for e in events if isinstance(e, EndOfTurn)]
    words = [e for e in events if isinstance(e, WordStart)]
    assert pauses and all(len(p.probabilities) == 4 for p in pauses)
    # With threshold 0 the detector fires at the first pause update after each word.
    expected, armed = [], False
    for event in events:
        if isinstance(event, WordStart):
            armed = True
        elif isinstance(event, PauseUpdate) and armed:
            expected.append(event.time)
            armed = False
    assert [t.time for t in turns] == expected
    assert len(turns) <= len(words)
    offline = stt.transcribe(pcm, sample_rate=24000, vad=options)
    assert offline.end_of_turns == [t.time for t in turns]
    with pytest.raises(ValueError, match="head 7"):
        stt.transcribe(pcm, sample_rate=24000, vad=VadOptions(head=7))


def _continuations(tokens: list[int], tokenizer: object) -> int:
    """Pieces without a word-start marker right after padding or a marker, with pieces before
    them: the pieces that continue an already emitted word."""
    piece = tokenizer.id_to_piece  # type: ignore[attr-defined]
    count, seen = 0, False
    for before, token in zip([3, *tokens], tokens, strict=False):
        if token > 3:
            if seen and before <= 3 and not piece(token).startswith("▁"):
                count += 1
            seen = True
    return count


@pytest.fixture(scope="module")
def ref_stt_26b(tmp_path_factory: pytest.TempPathFactory) -> ReferenceStt:
    """An stt-2.6b-like checkpoint: a silence prefix and a longer delay (model-spec §4.2)."""
    from tests.helpers.reference_stt import make_reference_stt_dir, stt_config

    config = stt_config(context=12, delay=1.0, prefix=1.0)
    return make_reference_stt_dir(tmp_path_factory.mktemp("stt26"), config, seed=0)


@pytest.mark.parametrize("like", ["1b", "2.6b"])
def test_words_continued_after_padding_equal_reference(
    like: str,
    stt: dsm.SpeechToText,
    ref_stt: ReferenceStt,
    ref_stt_26b: ReferenceStt,
    cpu_matmul: CpuMatmul,
) -> None:
    """Inputs on which the model emits pieces without a word-start marker after padding: the
    words and text (single, batched, live) are the reference's decode split on whitespace."""
    ref = ref_stt if like == "1b" else ref_stt_26b
    model = stt if like == "1b" else dsm.load_stt(ref.directory, device="cpu")
    cpu_matmul(model.lm, model.codec.model)
    inputs = [_audio(3.0, seed=s) for s in range(3)]
    refs = [reference_transcribe(ref, x) for x in inputs]
    continued = sum(_continuations(tokens, ref.tokenizer) for _, tokens in refs)
    assert continued > 0, "no continuation piece: the test checks nothing"
    batched = model.transcribe_many(inputs, batch_size=2, sample_rate=24000, progress=False)
    for (ref_text, _), x, result in zip(refs, inputs, batched, strict=True):
        single = model.transcribe(x, sample_rate=24000)
        assert single.text == ref_text
        assert [w.text for w in single.words] == ref_text.split()
        assert isinstance(result, dsm.Transcript) and result.to_dict() == single.to_dict()
        with model.stream() as session:
            events = session.push(x) + session.flush()
        live: list[str] = []
        for event in events:
            if isinstance(event, dsm.stt.word_stream.WordStart):
                live.append(event.text)
            elif isinstance(event, dsm.stt.word_stream.WordContinued):
                live[event.index] += event.suffix
        assert live == ref_text.split()
    print(f"stt-{like}-like: {continued} continuation pieces, texts equal the reference")
