"""Voices (names, files, hub cache, wrong checkpoint), bad input, dialogs and the CLI."""

from __future__ import annotations

import io
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from dsm.errors import DsmError
from dsm.tts.entries import TextError
from dsm.tts.voices import VoiceError, list_voices, resolve_voice
from tests.helpers.hub_cache import put_in_hub_cache
from tests.helpers.reference_tts import (
    OTHER_VOICE_NAME,
    VOICE_NAME,
    ReferenceTts,
    reference_synthesize,
    save_voice,
)


def test_voice_names_resolve_in_a_directory(ref_tts: ReferenceTts) -> None:
    path = ref_tts.voice_path()
    assert resolve_voice(VOICE_NAME, repo=ref_tts.voice_dir, suffix=ref_tts.suffix) == path
    # The ".wav" of the name may be left out.
    assert resolve_voice("test/voice_a", repo=ref_tts.voice_dir, suffix=ref_tts.suffix) == path
    assert list_voices(ref_tts.voice_dir, ref_tts.suffix) == [VOICE_NAME, OTHER_VOICE_NAME]


def test_unknown_voice_lists_close_matches(ref_tts: ReferenceTts, tts) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(VoiceError, match=r"test/voice_a\.wav") as info:
        tts.synthesize("Hello.", voice="test/voice_c.wav")
    assert "unknown voice 'test/voice_c.wav'" in str(info.value)
    with pytest.raises(VoiceError, match="not found"):
        tts.synthesize("Hello.", voice="/nowhere/voice.safetensors")


def test_voices_from_the_hub_cache(
    ref_tts: ReferenceTts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = put_in_hub_cache(
        cache,
        "kyutai/tts-voices",
        {VOICE_NAME + ref_tts.suffix: ref_tts.voice_path(), "other/x.wav.0@0.safetensors": b""},
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert list_voices("kyutai/tts-voices", ref_tts.suffix) == [VOICE_NAME]
    found = resolve_voice(VOICE_NAME, repo="kyutai/tts-voices", suffix=ref_tts.suffix)
    assert found == snapshot / (VOICE_NAME + ref_tts.suffix)
    with pytest.raises(VoiceError, match=r"close matches: test/voice_a\.wav"):
        resolve_voice("test/voice_b.wav", repo="kyutai/tts-voices", suffix=ref_tts.suffix)


def test_voice_of_another_checkpoint_is_refused(ref_tts: ReferenceTts, tts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    emb = torch.zeros(1, 16, 10)
    other = save_voice(tmp_path / "v.wav.deadbeef@3.safetensors", emb, "deadbeef", 3)
    with pytest.raises(VoiceError, match="made for checkpoint deadbeef@3"):
        tts.synthesize("Hello.", voice=str(other))


def test_bad_input(ref_tts: ReferenceTts, tts) -> None:  # type: ignore[no-untyped-def]
    voice = str(ref_tts.voice_path())
    with pytest.raises(TextError, match="empty"):
        tts.synthesize("   ", voice=voice)
    with pytest.raises(TextError, match="empty"):
        tts.synthesize('<break time="1s"/>', voice=voice)
    with pytest.raises(TextError, match="unsupported characters"):
        tts.synthesize("Hello ☃", voice=voice)
    with pytest.raises(DsmError, match=r"cfg 5 is not supported.*1, 1\.5, 2"):
        tts.synthesize("Hello.", voice=voice, cfg=5.0)


def test_dialog_matches_reference(ref_tts: ReferenceTts, tts) -> None:  # type: ignore[no-untyped-def]
    turns = ["Hello world.", "Yes, of course."]
    voices = [ref_tts.voice_path(VOICE_NAME), ref_tts.voice_path(OTHER_VOICE_NAME)]
    ref = reference_synthesize(ref_tts, [turns], [voices], cfg=3.0)
    speech = tts.synthesize_dialog(turns, voices=[str(v) for v in voices], cfg=3.0, temperature=0)
    T = speech.tokens.shape[1]
    np.testing.assert_array_equal(speech.tokens, ref.frames[0][:, :T].numpy())
    assert speech.pcm.shape == ref.pcm[0].shape
    np.testing.assert_allclose(speech.pcm, ref.pcm[0], rtol=0, atol=1e-4 * np.abs(ref.pcm[0]).max())
    # Turn starts carry the speaker tokens (1 = main, 2 = other) in front of the first word.
    entries = tts.entries(turns)
    assert entries[0].tokens[0] == 1 and entries[2].tokens[0] == 2


def _cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, stdin: str = "") -> tuple[int, bytes]:
    from dsm.cli import main

    out = io.BytesIO()

    class _Stdout(io.TextIOWrapper):
        def isatty(self) -> bool:
            return False

    wrapper = _Stdout(out, encoding="utf-8", write_through=True)
    monkeypatch.setattr(sys, "stdout", wrapper)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    wrapper.flush()
    return code, out.getvalue()


def test_cli_writes_wav_and_streams_to_a_pipe(
    ref_tts: ReferenceTts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ["--model", str(ref_tts.directory), "--voice-repo", str(ref_tts.voice_dir)]
    model += ["--voice", VOICE_NAME, "--temperature", "0", "--device", "cpu"]
    target = tmp_path / "out.wav"
    words = tmp_path / "words.json"
    code, _ = _cli(
        ["synthesize", "Hello world.", "-o", str(target), "--words", str(words), *model],
        monkeypatch,
    )
    assert code == 0
    with wave.open(str(target)) as handle:
        assert (handle.getnchannels(), handle.getsampwidth(), handle.getframerate()) == (
            1,
            2,
            24000,
        )
        frames = handle.getnframes()
        data = np.frombuffer(handle.readframes(frames), dtype="<i2")
    assert frames > 0 and frames % 1920 == 0
    assert '"text": "Hello"' in words.read_text()

    # "-o -" into a pipe writes raw s16le: the same samples as the wav file.
    code, raw = _cli(["synthesize", "Hello world.", "-o", "-", *model], monkeypatch)
    assert code == 0
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<i2"), data)
    # --stream: each stdin line is one utterance, spoken when its newline arrives.
    code, raw = _cli(["synthesize", "--stream", "-o", "-", *model], monkeypatch, "Hello\nworld.\n")
    assert code == 0
    one = [_cli(["synthesize", t, "-o", "-", *model], monkeypatch)[1] for t in ("Hello", "world.")]
    assert raw == one[0] + one[1]

    code, listing = _cli(
        ["voices", "--model", str(ref_tts.directory), "--voice-repo", str(ref_tts.voice_dir)],
        monkeypatch,
    )
    assert code == 0 and listing.decode().split() == [VOICE_NAME, OTHER_VOICE_NAME]
