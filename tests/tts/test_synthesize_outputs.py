"""``dsm synthesize``: the file type follows the output's suffix, unknown suffixes are refused,
and ``--stream`` speaks a stdin line as soon as its newline arrives (through a real pipe)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dsm.audio import load_audio
from tests.cli.run import SRC
from tests.helpers.reference_tts import VOICE_NAME, ReferenceTts


def _model(ref_tts: ReferenceTts) -> list[str]:
    return ["--model", str(ref_tts.directory), "--voice-repo", str(ref_tts.voice_dir),
            "--voice", VOICE_NAME, "--temperature", "0", "--device", "cpu"]  # fmt: skip


def test_output_type_follows_suffix(ref_tts: ReferenceTts, tmp_path: Path) -> None:
    from dsm.cli import main

    wav, mp3, flac = tmp_path / "a.wav", tmp_path / "a.mp3", tmp_path / "a.flac"
    for target in (wav, mp3, flac):
        assert main(["synthesize", "Hello world.", "-o", str(target), *_model(ref_tts)]) == 0
    assert wav.read_bytes()[:4] == b"RIFF"
    assert flac.read_bytes()[:4] == b"fLaC"
    head = mp3.read_bytes()[:2]
    assert head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # an MPEG audio frame, not a RIFF header
    reference = load_audio(wav)
    np.testing.assert_allclose(load_audio(flac), reference, atol=1e-4)  # lossless
    assert abs(load_audio(mp3).shape[0] - reference.shape[0]) < 24000 * 0.1


def test_unknown_suffix_refused_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dsm.cli import main

    target = tmp_path / "a.xyz"
    assert main(["synthesize", "hi", "-o", str(target), "--model", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "a.xyz" in err and ".mp3" in err and "suffix" in err
    assert not target.exists()


def _read_some(stream: object, seconds: float) -> bytes:
    fd = stream.fileno()  # type: ignore[attr-defined]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            return os.read(fd, 1 << 16)
    return b""


def test_stream_speaks_each_line_at_its_newline(ref_tts: ReferenceTts) -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsm", "synthesize", "--stream", "-o", "-", *_model(ref_tts)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"Hello world.\n")
        proc.stdin.flush()
        # stdin stays open: the line's audio must come without a next line or end of input.
        first = _read_some(proc.stdout, 240)
        assert first, "no audio for a complete line while stdin is still open"
        proc.stdin.close()
        rest = proc.stdout.read()
        assert proc.wait(timeout=240) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(first + rest) % 2 == 0 and len(first + rest) >= 2 * 1920


def test_one_shot_equals_library_and_shows_progress_on_a_terminal(
    ref_tts: ReferenceTts,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command streams the audio to its file as it is made (same samples as
    ``TextToSpeech.synthesize``) with a progress bar in seconds of audio on a terminal."""
    import dsm
    from dsm.cli import main

    text = 'Hello world. <break time="0.5s"/> hello.'
    target = tmp_path / "a.wav"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["synthesize", text, "-o", str(target), *_model(ref_tts)]) == 0
    err = capsys.readouterr().err
    assert "synthesizing" in err and "s audio" in err
    tts = dsm.load_tts(str(ref_tts.directory), voice_repo=str(ref_tts.voice_dir), device="cpu")
    expected = tts.synthesize(text, voice=VOICE_NAME, temperature=0.0).pcm
    written = load_audio(target)
    assert written.shape[0] == expected.shape[0]
    np.testing.assert_allclose(written, expected, atol=1.0 / 32767 + 1e-6)  # 16-bit wav
    assert main(["synthesize", text, "-q", "-o", str(target), *_model(ref_tts)]) == 0
    assert "synthesizing" not in capsys.readouterr().err
