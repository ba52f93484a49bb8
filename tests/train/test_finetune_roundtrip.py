"""Round trip of the STT conventions: fine-tune a random tiny model (full) on synthetic
utterances with known word times until it transcribes them; ``dsm transcribe`` then returns the
same words with start times within one frame (80 ms) of the training alignment. The checkpoint
has a 1 s silence prefix (12.5 frames) and a 0.5 s delay, so a wrong delay, prefix, marker
position or step offset moves the times by at least a frame."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsm.cli import main
from tests.helpers.reference_stt import ReferenceStt

FRAME_SECONDS = 0.08


def test_full_finetune_round_trip(
    prefixed_stt: ReferenceStt,
    synthetic_manifest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    code = main([
        "finetune", "stt", "--model", str(prefixed_stt.directory), "--train",
        str(synthetic_manifest), "--out", str(out), "--full", "--steps", "150", "--lr", "3e-3",
        "--batch-size", "6", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "-q",
        "--val", str(synthetic_manifest), "--eval-every", "75", "--normalizer", "none",
    ])  # fmt: skip
    assert code == 0
    summary = capsys.readouterr().out
    print(summary)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert losses[-1] < 0.1 * losses[0], losses
    # Validation WER (dsm eval's scoring) at step 75 and at the end; the end transcribes all.
    wers = [(row["step"], row["val_wer"]) for row in rows if "val_wer" in row]
    assert [step for step, _ in wers] == [75, 150]
    assert wers[-1][1] == 0.0

    lines = [json.loads(x) for x in synthetic_manifest.read_text().splitlines()]
    files = [str(synthetic_manifest.parent / x["audio"]) for x in lines]
    texts = tmp_path / "texts"
    code = main(["transcribe", "--model", str(out / "checkpoint"), "--format", "json",
                 "--device", "cpu", "-q", "-o", str(texts), *files])  # fmt: skip
    assert code == 0
    results = [json.loads((texts / f"{Path(f).stem}.json").read_text()) for f in files]
    assert len(results) == len(lines)
    worst = 0.0
    for line, result in zip(lines, results, strict=True):
        assert [w["text"] for w in result["words"]] == [w["text"] for w in line["words"]]
        for given, got in zip(line["words"], result["words"], strict=True):
            error = given["start"] - got["start"]
            worst = max(worst, abs(error))
            assert -1e-3 <= error < FRAME_SECONDS + 1e-3, (line["audio"], given, got)
    print(f"worst start-time error: {worst * 1000:.0f} ms")
