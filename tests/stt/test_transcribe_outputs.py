"""``dsm transcribe`` outputs: distinct names, argument order, -f all, --language, progress in
audio seconds, --quiet and --verbose."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dsm.cli import main
from dsm.commands.outputs import InOrder, output_names
from dsm.progress import AudioProgress
from tests.audio.synth import write_audio
from tests.helpers.reference_mimi import speech_like


def _write(path: Path, seconds: float, seed: int, kind: str = "wav") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = speech_like(seconds, seed=seed)[0, 0].numpy().astype(np.float32)
    write_audio(path, pcm, 24000, kind=kind)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inputs")
    return _write(root / "a" / "x.wav", 3.0, 1), _write(root / "b" / "x.flac", 0.6, 2, "flac")


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["transcribe", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_output_names_rule() -> None:
    assert output_names(["a/x.mp3", "b/x.wav", "x.json", "c/X.ogg", "x-2.wav"]) == [
        "x", "x-2", "x-3", "X-4", "x-2-2"
    ]  # fmt: skip


def test_in_order() -> None:
    got: list[tuple[int, str]] = []
    order = InOrder[str](lambda i, item: got.append((i, item)))
    for i in (2, 0, 3, 1):
        order.put(i, f"r{i}")
    assert got == [(0, "r0"), (1, "r1"), (2, "r2"), (3, "r3")]


def test_same_names_never_clobber(
    stt_dir: Path, inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["--model", str(stt_dir), "--device", "cpu"]
    out = tmp_path / "out"
    code, _, _ = _run(capsys, *map(str, inputs), "-o", str(out), "-f", "json", *model)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["x-2.json", "x.json"]
    for path, name in zip(inputs, ("x.json", "x-2.json"), strict=True):
        _, single, _ = _run(capsys, str(path), "-f", "json", *model)
        assert json.loads((out / name).read_text()) == json.loads(single)


def test_stdout_in_argument_order_and_all_formats(
    stt_dir: Path, inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["--model", str(stt_dir), "--device", "cpu", "--batch-size", "2"]
    long, short = inputs  # the short one finishes first
    code, out, _ = _run(capsys, str(long), str(short), "-f", "json", *model)
    assert code == 0
    assert [json.loads(line)["file"] for line in out.splitlines()] == [str(long), str(short)]
    code, _, err = _run(capsys, str(long), "-f", "all", *model)
    assert code == 1 and "-o" in err
    code, _, _ = _run(capsys, str(long), "-f", "all", "--output-dir", str(tmp_path), *model)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.srt", "x.txt", "x.vtt"]
    words = json.loads((tmp_path / "x.json").read_text())["words"]
    assert (tmp_path / "x.txt").read_text() == " ".join(w["text"] for w in words) + "\n"


def test_language_verbose_quiet_and_progress(
    stt_dir: Path, inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    model = ["--model", str(stt_dir), "--device", "cpu"]
    path = str(inputs[0])
    _, plain, _ = _run(capsys, path, "-f", "json", *model)
    code, out, err = _run(capsys, path, "-f", "json", "--language", "en", "--verbose", *model)
    assert code == 0 and out == plain
    words = [w["text"] for w in json.loads(plain)["words"]]
    assert words, "the tiny model said nothing: nothing to check"
    assert [line.split("] ", 1)[1] for line in err.splitlines()] == words
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = _run(capsys, path, "-f", "json", *model)
    assert code == 0 and out == plain
    assert "s audio" in err and "real time" in err and "3.0/3.0" in err
    code, out, err = _run(capsys, path, "-f", "json", "--quiet", *model)
    assert code == 0 and out == plain and err == ""


def test_audio_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    bar = AudioProgress(["a.wav", "b.wav"], [2.0, None], enabled=True, desc="t")
    bar.advance(0, 1.0)
    bar.advance(0, 5.0)  # past the end (the model's delay): held to the duration
    bar.finish(0)
    bar.advance(1, 0.5)
    bar.finish(1, 1.5)
    bar.close()
    err = capsys.readouterr().err
    assert "a.wav: 2.0 s of audio" in err and "b.wav: 1.5 s of audio" in err
    assert "3.5 s audio" in err and "real time" in err
    quiet = AudioProgress(["a.wav"], [2.0], enabled=False, desc="t")
    quiet.advance(0, 1.0)
    quiet.finish(0)
    quiet.close()
    assert capsys.readouterr().err == ""
