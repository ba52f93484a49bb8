"""``dsm align AUDIO TRANSCRIPT``: outputs like ``transcribe``; bad input is an error with exit
status 1 and no file written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from dsm.cli import main
from tests.audio.synth import write_audio
from tests.helpers.reference_mimi import speech_like


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pcm = speech_like(1.5, seed=7)[0, 0].numpy().astype(np.float32)
    return write_audio(tmp_path_factory.mktemp("audio") / "speech.wav", pcm, 24000, kind="wav")


def test_json_srt_vtt_files_and_stdout(
    stt_dir: Path, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "script.txt"
    script.write_text("the quick\nbrown fox\n", encoding="utf-8")
    out = tmp_path / "out"
    base = ["align", "--model", str(stt_dir), "--device", "cpu", str(wav)]
    assert main([*base, str(script), "-f", "all", "-o", str(out)]) == 0
    data = json.loads((out / "speech.json").read_text())
    assert data["text"] == "the quick brown fox"
    assert [w["text"] for w in data["words"]] == ["the", "quick", "brown", "fox"]
    starts = [w["start"] for w in data["words"]]
    assert starts == sorted(starts) and all(0.0 <= s <= 1.5 for s in starts)
    assert (out / "speech.srt").read_text().count("-->") >= 1
    assert (out / "speech.vtt").read_text().startswith("WEBVTT")
    capsys.readouterr()
    assert main([*base, "--text", "the quick brown fox", "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == data


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing audio", "audio file not found"),
        ("empty transcript", "transcript is empty"),
        ("empty stdin", "transcript is empty"),
        ("too long", "leaves room for"),
        ("no transcript", "give the transcript"),
    ],
)
def test_errors_write_nothing(
    stt_dir: Path, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, case: str, message: str,
) -> None:  # fmt: skip
    audio = str(tmp_path / "absent.wav") if case == "missing audio" else str(wav)
    script = tmp_path / "script.txt"
    script.write_text({"empty transcript": " \n", "too long": "the " * 400}.get(case, "the"))
    transcript = [] if case == "no transcript" else [str(script)]
    if case == "empty stdin":
        monkeypatch.setattr("sys.stdin", io.StringIO(" \n\t"))
        transcript = ["-"]
    out = tmp_path / "out"
    args = ["align", "--model", str(stt_dir), "--device", "cpu", audio, *transcript]
    assert main([*args, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists() or not any(out.iterdir())
