"""Manifests: both layouts read; every bad line is a clear error naming file:line, raised before
anything is written to the output directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsm.cli import main
from dsm.stt.words import Word
from dsm.train.manifest import ManifestError, read_manifest
from tests.train.synthetic import SECONDS, utterance

GOOD_WORDS = [
    {"text": "the", "start": 0.31, "end": 0.71},
    {"text": "fox", "start": 0.97, "end": 1.37},
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    from dsm.audio.encode import write_wav

    pcm, _ = utterance(["the", "fox"], [0.31, 0.97], SECONDS)
    write_wav(tmp_path / "a.wav", pcm)
    return tmp_path


def _manifest(directory: Path, *lines: object) -> Path:
    path = directory / "m.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_dsm_layout(data: Path) -> None:
    path = _manifest(
        data,
        {"audio": "a.wav", "text": "The fox.", "words": GOOD_WORDS},
        "",
        {"audio": str(data / "a.wav"), "words": GOOD_WORDS},
        {"audio": "a.wav", "text": "the fox"},
    )
    items = read_manifest(path)
    assert len(items) == 3
    assert items[0].text == "The fox." and items[0].words == (
        Word("the", 0.31, 0.71),
        Word("fox", 0.97, 1.37),
    )
    assert items[1].text == "the fox"  # from the words
    assert items[2].words is None  # to be aligned
    assert items[0].duration == pytest.approx(SECONDS, abs=1e-3)
    assert items[2].where == f"{path}:4"


def test_moshi_finetune_layout(data: Path) -> None:
    (data / "a.json").write_text(json.dumps({"alignments": [
        ["the", [0.31, 0.71], "SPEAKER_MAIN"], ["fox", [0.97, 1.37], "SPEAKER_MAIN"],
    ]}))  # fmt: skip
    items = read_manifest(_manifest(data, {"path": "a.wav", "duration": SECONDS}))
    assert items[0].text == "the fox"
    assert items[0].words == (Word("the", 0.31, 0.71), Word("fox", 0.97, 1.37))


BAD = [
    ('{"audio": "a.wav", "text": "x"', "not valid JSON"),
    ({"audio": "missing.wav", "text": "x"}, "missing.wav does not exist"),
    ({"audio": "a.wav", "text": "  "}, "empty transcript"),
    ({"audio": "a.wav", "words": []}, "empty transcript"),
    ({"audio": "a.wav", "words": GOOD_WORDS[::-1]}, "in time order"),
    ({"audio": "a.wav", "words": [{"text": "the", "start": 0.5, "end": 0.2}]}, "start <= end"),
    ({"audio": "a.wav", "words": [{"text": "the", "start": 2.0, "end": 9.0}]}, "beyond the audio"),
    ({"audio": "a.wav", "words": [{"text": "the", "start": "0"}]}, "numeric start"),
    ({"path": "a.wav", "duration": 1.0}, "no transcript"),
    ({"text": "x"}, '"audio"'),
    ([1, 2], "JSON object"),
]


@pytest.mark.parametrize(("line", "message"), BAD)
def test_bad_line_names_its_line(data: Path, line: object, message: str) -> None:
    path = _manifest(data, {"audio": "a.wav", "words": GOOD_WORDS}, line)
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path)
    assert f"{path}:2" in str(info.value)


def test_cli_bad_input_writes_nothing(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _manifest(data, {"audio": "a.wav", "words": GOOD_WORDS}, "not json")
    out = data / "run"
    code = main(["finetune", "stt", "--model", str(data / "no-model"), "--train", str(path),
                 "--out", str(out), "--steps", "1"])  # fmt: skip
    assert code == 1
    assert f"{path}:2: not valid JSON" in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_a_used_output_directory(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _manifest(data, {"audio": "a.wav", "words": GOOD_WORDS})
    (data / "run").mkdir()
    (data / "run" / "keep.txt").write_text("mine")
    code = main(["finetune", "stt", "--train", str(path), "--out", str(data / "run")])
    assert code == 1 and "not empty" in capsys.readouterr().err
    assert [p.name for p in (data / "run").iterdir()] == ["keep.txt"]


class FakeAligner:
    """Stands for ``SpeechToText.align_many`` (the ``dsm align`` engine): evenly spaced words,
    or a failure for the text "fail"."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def align_many(self, items: list[tuple[str, str]]) -> list[object]:
        from dsm.stt.transcript import Transcript, TranscriptionFailure

        self.calls.append(items)
        out: list[object] = []
        for audio, text in items:
            if text == "fail":
                out.append(TranscriptionFailure(audio, "the transcript does not fit"))
                continue
            words = [Word(w, 0.5 * i, 0.5 * i + 0.4) for i, w in enumerate(text.split())]
            out.append(Transcript(text, words, SECONDS))
        return out


def test_lines_without_word_times_are_aligned(data: Path) -> None:
    from dsm.train.stt_task import align_missing

    items = read_manifest(_manifest(data, {"audio": "a.wav", "words": GOOD_WORDS},
                                    {"audio": "a.wav", "text": "the fox"}))  # fmt: skip
    aligner = FakeAligner()
    aligned = align_missing(aligner, items)  # type: ignore[arg-type]
    assert aligner.calls == [[(str(data / "a.wav"), "the fox")]]  # only the line without times
    assert aligned[0] is items[0]
    assert aligned[1].words == (Word("the", 0.0, 0.4), Word("fox", 0.5, 0.9))
    failing = read_manifest(_manifest(data, {"audio": "a.wav", "text": "fail"}))
    with pytest.raises(ManifestError, match=r"m.jsonl:1: forced alignment failed"):
        align_missing(aligner, failing)  # type: ignore[arg-type]


def test_real_aligner_when_present(prefixed_stt: object, data: Path) -> None:
    """With ``SpeechToText.align_many`` (``dsm align``), a line without times gets one timed
    word per word of its text, within the audio."""
    import dsm
    from dsm.stt.model import SpeechToText
    from dsm.train.stt_task import align_missing

    if not hasattr(SpeechToText, "align_many"):
        pytest.skip("this dsm has no forced aligner (SpeechToText.align_many)")
    stt = dsm.load_stt(prefixed_stt.directory, device="cpu")  # type: ignore[attr-defined]
    items = read_manifest(_manifest(data, {"audio": "a.wav", "text": "the fox"}))
    (aligned,) = align_missing(stt, items)
    assert aligned.words is not None
    assert [w.text for w in aligned.words] == ["the", "fox"]
    assert all(0.0 <= w.start <= w.end <= SECONDS + 0.05 for w in aligned.words)
