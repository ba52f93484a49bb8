"""Dataset aliases, transcript column choice and local manifests (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsm.audio import SAMPLE_RATE
from dsm.eval.datasets import (
    DATASETS,
    EvalItem,
    HubDataset,
    iter_hub_dataset,
    load_items,
    read_manifest,
    resolve_dataset,
    transcript_column,
)
from tests.audio.synth import tone, write_audio


def test_alias_table() -> None:
    assert resolve_dataset("librispeech.clean") == HubDataset(
        "hf-audio/esb-datasets-test-only-sorted", "librispeech", "test.clean"
    )
    assert resolve_dataset("librispeech.other").split == "test.other"
    assert resolve_dataset("tedlium-short").config == "tedlium"
    assert resolve_dataset("earnings22-short").config == "earnings22"
    assert resolve_dataset("rev16") == HubDataset("distil-whisper/rev16", "whisper_subset", "test")
    assert resolve_dataset("earnings21").config == "full"
    assert resolve_dataset("meanwhile").path == "distil-whisper/meanwhile"
    assert resolve_dataset("tedlium").path == "distil-whisper/tedlium-long-form"
    for short in ("ami", "voxpopuli", "spgispeech", "gigaspeech"):
        assert DATASETS[short] == HubDataset(
            "hf-audio/esb-datasets-test-only-sorted", short, "test"
        )
    assert len(DATASETS) == 13
    assert resolve_dataset("me/data:cfg:dev") == HubDataset("me/data", "cfg", "dev")
    assert resolve_dataset("me/data") == HubDataset("me/data", None, "test")
    with pytest.raises(ValueError, match=r"librispeech\.clean"):
        resolve_dataset("nonsense")


def test_transcript_column_order() -> None:
    assert transcript_column(["audio", "transcription", "text"]) == "text"
    assert transcript_column(["audio", "transcription", "sentence"]) == "sentence"
    assert transcript_column(["normalized_text", "transcript"]) == "normalized_text"
    assert transcript_column(["transcription", "transcript"]) == "transcript"
    with pytest.raises(ValueError, match="no transcript column"):
        transcript_column(["audio", "label"])


def test_in_memory_hub_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    wav = write_audio(tmp_path / "a.wav", tone(440.0, 0.5, 16000), 16000)
    ds = datasets.Dataset.from_dict(
        {
            "audio": [str(wav), str(wav)],
            "sentence": ["first", "second"],
            "transcription": ["x", "y"],
            "id": ["u1", "u2"],
        }
    ).cast_column("audio", datasets.Audio())
    items = list(iter_hub_dataset(ds))
    assert [(i.id, i.text) for i in items] == [("u1", "first"), ("u2", "second")]
    audio = items[0].load()
    assert audio.dtype == np.float32 and audio.shape == (SAMPLE_RATE // 2,)


def test_array_rows() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"audio": [{"array": tone(200.0, 1.0, 8000), "sampling_rate": 8000}], "text": ["hi"]}
    )
    (item,) = iter_hub_dataset(ds)
    assert item.sample_rate == 8000 and item.load().shape == (SAMPLE_RATE,)


def test_manifest(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    write_audio(tmp_path / "clips" / "a.wav", tone(440.0, 0.25, 16000), 16000)
    lines = [
        {"audio": "clips/a.wav", "text": "hello", "id": "first"},
        {"audio_filepath": "clips/a.wav", "text": "world", "duration": 0.25},
    ]
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    items = list(read_manifest(manifest))
    assert [i.id for i in items] == ["first", "clips/a.wav"]
    assert items[1].duration == 0.25 and items[0].duration is None
    assert items[0].load().shape == (6000,)
    assert [i.text for i in load_items(str(manifest))] == ["hello", "world"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "x.wav", "text": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'audio'"):
        list(read_manifest(bad))
    bad.write_text("{oops\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        list(read_manifest(bad))
    with pytest.raises(FileNotFoundError):
        list(read_manifest(tmp_path / "missing.jsonl"))


def test_item_from_array() -> None:
    item = EvalItem("x", "text", tone(100.0, 1.0, 16000), sample_rate=16000)
    assert item.load().shape == (SAMPLE_RATE,)
