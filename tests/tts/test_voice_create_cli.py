"""``dsm voices create``: recordings with timed words or plain transcripts (aligned by the STT
model) become a voice file that dsm loads; bad input is refused with a clear error and no
file is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsm.cli import main
from dsm.frames import SAMPLE_RATE
from dsm.tts.voices import load_voice_embedding
from tests.helpers.reference_tts import ReferenceTts, write_test_wav
from tests.helpers.threads import one_thread  # noqa: F401 - autouse fixture

LINES = ["the fox jumps over the dog", "hello world what a day"]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("recordings")
    return [write_test_wav(root / f"r{i}.wav", seconds=3.0, seed=i) for i in range(2)]


def _timed(line: str, seconds: float = 3.0) -> dict[str, object]:
    words = line.split()
    step = (seconds - 0.6) / len(words)
    return {
        "words": [
            {"text": w, "start": 0.3 + i * step, "end": 0.3 + (i + 1) * step}
            for i, w in enumerate(words)
        ]
    }


def _create(ref_tts: ReferenceTts, recordings: list[Path], out: Path, *extra: str) -> int:
    args = ["voices", "create", *map(str, recordings), "--out", str(out)]
    return main([*args, "--model", str(ref_tts.directory), "--quiet", *extra])


def test_timed_words_make_a_voice_dsm_loads(
    ref_tts: ReferenceTts, recordings, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    words = tmp_path / "words.json"
    words.write_text(json.dumps([_timed(line) for line in LINES]))
    out = tmp_path / "mine.safetensors"
    assert _create(ref_tts, recordings, out, "--transcripts", str(words), "--steps", "2") == 0
    assert "loss" in capsys.readouterr().err
    from dsm.checkpoint.config import ModelId

    emb = load_voice_embedding(out, model_id=ModelId(**ref_tts.config["model_id"]), dim=16)
    assert emb.shape == (1, 16, 125) and bool(emb.abs().sum() > 0)


def test_plain_transcripts_are_aligned(
    ref_tts: ReferenceTts, stt_dir, recordings, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(LINES) + "\n")
    out = tmp_path / "aligned.safetensors"
    extra = ("--transcripts", str(lines), "--stt-model", str(stt_dir), "--steps", "1")
    assert _create(ref_tts, recordings, out, *extra) == 0
    assert out.is_file()


def test_transcript_that_does_not_fit_is_refused(
    ref_tts: ReferenceTts, stt_dir, recordings, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    lines = tmp_path / "lines.txt"
    lines.write_text(" ".join(["fox"] * 80) + "\n" + LINES[1] + "\n")
    out = tmp_path / "bad.safetensors"
    extra = ("--transcripts", str(lines), "--stt-model", str(stt_dir), "--steps", "1")
    assert _create(ref_tts, recordings, out, *extra) != 0
    err = capsys.readouterr().err
    assert "does not match the audio" in err and "r0.wav" in err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_too_little_audio_is_refused(ref_tts: ReferenceTts, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    short = [write_test_wav(tmp_path / "short.wav", seconds=2.0)]
    out = tmp_path / "short.safetensors"
    assert _create(ref_tts, short, out) != 0
    assert "at least 5 s" in capsys.readouterr().err
    assert not out.exists()


def test_silent_audio_is_refused(ref_tts: ReferenceTts, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from dsm.audio.encode import write_wav

    silent = tmp_path / "silent.wav"
    write_wav(silent, np.zeros(8 * SAMPLE_RATE, dtype=np.float32))
    out = tmp_path / "silent.safetensors"
    assert _create(ref_tts, [silent], out) != 0
    assert "silent.wav is silent" in capsys.readouterr().err
    assert not out.exists()
