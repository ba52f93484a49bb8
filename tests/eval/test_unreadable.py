"""``dsm eval`` holds up like ``transcribe``: unreadable items are skipped, reported and
counted; a malformed manifest line is a ``dsm: error:`` naming it; progress in audio seconds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jiwer")
pytest.importorskip("whisper_normalizer")

from dsm.cli import main
from dsm.eval.datasets import read_manifest
from dsm.eval.runner import evaluate
from tests.audio.synth import tone, write_audio


def _manifest(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _echo(audios: list[np.ndarray]) -> list[str]:
    return ["hello world" for _ in audios]


def test_unreadable_items_are_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_audio(tmp_path / "a.wav", tone(300.0, 1.0, 16000), 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    rows = [
        {"audio": "a.wav", "text": "hello world", "id": "a"},
        {"audio": "missing.wav", "text": "hello world", "id": "gone"},
        {"audio": "broken.wav", "text": "hello world", "id": "broken"},
        {"audio": "a.wav", "text": "hello there", "id": "a2"},
    ]
    log = io.StringIO()
    summary = evaluate(
        read_manifest(_manifest(tmp_path, rows)), _echo, batch_size=3,
        out_dir=tmp_path / "out", log=log, progress=True,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert summary.n_utterances == 2 and summary.n_unreadable == 2
    assert "skipped gone" in err and "skipped broken" in err
    assert "2.0 s audio" in err and "real time" in err  # the progress bar, in audio seconds
    assert "unreadable    2" in log.getvalue()
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["n_unreadable"] == 2
    results = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in results] == ["a", "a2"]


@pytest.mark.parametrize(
    ("line", "why"),
    [("{not json", "not valid JSON"), ('["a"]', "expected a JSON object"),
     ('{"audio": "a.wav"}', "needs 'audio'")],
)  # fmt: skip
def test_malformed_manifest_line_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, why: str
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "text": "hi"}) + "\n" + line + "\n")
    # The model is never loaded: the manifest is checked first.
    code = main(["eval", str(manifest), "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"dsm: error: {manifest}:2: ") and why in err
    assert "Traceback" not in err
