"""The evaluation runner with a fake transcriber on a tiny manifest."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jiwer")
pytest.importorskip("whisper_normalizer")

from dsm.eval.datasets import EvalItem, read_manifest
from dsm.eval.runner import add_eval_arguments, evaluate, run_eval_cli
from tests.audio.synth import tone, write_audio

TEXTS = {
    "a": ("The quick brown fox.", "the quick brown fox"),
    "b": ("Jumps over the lazy dog!", "jumps over a lazy dog"),
    "c": ("Hello world", "hello"),
    "d": ("ignore time segment in scoring", "whatever"),
    "e": ("", "noise"),
}


def _manifest(tmp_path: Path) -> Path:
    lines = []
    for i, (name, (ref, _)) in enumerate(TEXTS.items()):
        write_audio(tmp_path / f"{name}.wav", tone(300.0, 0.5 + 0.5 * i, 16000), 16000)
        lines.append(json.dumps({"audio": f"{name}.wav", "text": ref, "id": name}))
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


class FakeTranscriber:
    """Answers by audio length, records batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        by_len = {round(0.5 + 0.5 * i, 1): TEXTS[k][1] for i, k in enumerate(TEXTS)}
        self.by_len = by_len

    def __call__(self, audios: list[np.ndarray]) -> list[str]:
        self.batches.append(len(audios))
        for a in audios:
            assert a.dtype == np.float32 and a.ndim == 1
        return [self.by_len[round(a.shape[0] / 24000, 1)] for a in audios]


def test_evaluate_writes_results_and_summary(tmp_path: Path) -> None:
    fake = FakeTranscriber()
    log = io.StringIO()
    summary = evaluate(
        read_manifest(_manifest(tmp_path)), fake, batch_size=2, out_dir=tmp_path / "out", log=log
    )
    assert fake.batches == [2, 1]
    assert summary.n_utterances == 3 and summary.n_skipped == 2
    # a: 0/4, b: 1 sub / 5, c: 1 del / 2.
    assert summary.mean_wer == pytest.approx((0 + 1 / 5 + 1 / 2) / 3)
    assert summary.corpus_wer == pytest.approx(2 / 11)
    assert summary.audio_seconds == pytest.approx(0.5 + 1.0 + 1.5)
    assert summary.rtf is not None and summary.rtf > 0

    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert set(rows[0]) >= {"id", "ref", "hyp", "wer", "cer", "duration"}
    assert rows[2]["hyp"] == "hello" and rows[2]["wer"] == 0.5 and rows[2]["duration"] == 1.5
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["n_utterances"] == 3
    assert saved["audio_hours"] == pytest.approx(3.0 / 3600)
    assert saved["corpus_wer"] == pytest.approx(2 / 11)
    table = log.getvalue()
    assert "corpus WER" in table and "18.18 %" in table and "RTF" in table


def test_limit_and_empty_run(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    summary = evaluate(read_manifest(manifest), FakeTranscriber(), limit=1, quiet=True)
    assert summary.n_utterances == 1 and summary.mean_wer == 0.0
    empty = evaluate([], FakeTranscriber(), quiet=True)
    assert empty.n_utterances == 0 and empty.rtf is None
    assert empty.to_dict()["mean_wer"] is None


def test_bad_transcriber_output(tmp_path: Path) -> None:
    item = EvalItem("x", "hello", np.zeros(2400, np.float32), sample_rate=24000)
    with pytest.raises(RuntimeError, match="one string per input"):
        evaluate([item], lambda audios: [], quiet=True)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate([item], lambda audios: ["x"], batch_size=0, quiet=True)


def test_cli_glue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    manifest = _manifest(tmp_path)
    args = parser.parse_args([str(manifest), "--batch-size", "4", "--out-dir", str(tmp_path / "o")])
    seen: list[argparse.Namespace] = []

    def factory(ns: argparse.Namespace) -> FakeTranscriber:
        seen.append(ns)
        return FakeTranscriber()

    assert run_eval_cli(args, factory) == 0
    assert seen and (tmp_path / "o" / "summary.json").is_file()
    assert "mean WER" in capsys.readouterr().out
