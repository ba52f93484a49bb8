"""``dsm transcribe`` end to end: files in several formats, output formats, prompts, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dsm
from dsm.cli import main
from tests.audio.synth import write_audio
from tests.helpers.reference_mimi import speech_like
from tests.helpers.reference_stt import ReferenceStt, reference_transcribe


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    pcm = speech_like(1.5, seed=7)[0, 0].numpy().astype(np.float32)
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    write_audio(path, pcm, 24000, kind="wav")
    return path, pcm


def test_txt_to_stdout_equals_reference(
    stt_dir: Path, ref_stt: ReferenceStt, wav: tuple[Path, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path, _pcm = wav
    assert main(["transcribe", str(path), "--model", str(stt_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    decoded = dsm.audio.load_audio(path)  # what the file holds (16-bit wav)
    ref_text, _ = reference_transcribe(ref_stt, decoded)
    assert out == ref_text.strip() + "\n"


def test_json_srt_vtt_and_output_dir(
    stt_dir: Path, wav: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = wav
    base = ["transcribe", str(path), "--model", str(stt_dir), "--device", "cpu"]
    assert main([*base, "--format", "json", "--vad"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"text", "words", "vad"}
    assert all(set(w) == {"text", "start", "end"} for w in data["words"])
    assert len(data["vad"]["pause_probabilities"][0]) == 4
    other = tmp_path / "copy.flac"
    write_audio(other, dsm.audio.load_audio(path), 24000, kind="flac")
    out_dir = tmp_path / "out"
    args = ["transcribe", str(path), str(other), "--model", str(stt_dir), "--device", "cpu"]
    assert main([*args, "-f", "srt", "-o", str(out_dir)]) == 0
    assert main([*args, "-f", "vtt", "-o", str(out_dir)]) == 0
    srt_text = (out_dir / "speech.srt").read_text()
    vtt_text = (out_dir / "copy.vtt").read_text()
    assert vtt_text.startswith("WEBVTT")
    if data["words"]:
        assert "-->" in srt_text and "-->" in vtt_text


def test_several_files_one_bad(
    stt_dir: Path, wav: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = wav
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"\x00" * 100)
    code = main(["transcribe", str(bad), str(path), "--model", str(stt_dir), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.mp3" in captured.err
    assert f"# {path}" in captured.out  # the good file was still transcribed


def test_text_prompt_equals_reference(
    stt: dsm.SpeechToText, ref_stt: ReferenceStt, wav: tuple[Path, np.ndarray]
) -> None:
    path, _ = wav
    pcm = dsm.audio.load_audio(path)
    prompt_text = "hello world"
    ref_text, _ = reference_transcribe(ref_stt, pcm, prompt_text=prompt_text)
    kept = stt.transcribe(path, prompt_text=prompt_text, cut_prompt=False)
    assert kept.text == ref_text.strip()
    plain_ref, _ = reference_transcribe(ref_stt, pcm)
    assert ref_text != plain_ref  # the prompt changed the model's output
    cut = stt.transcribe(path, prompt_text=prompt_text)
    assert len(cut.text) <= len(kept.text)
    with_audio = stt.transcribe(path, prompt_audio=path)
    assert isinstance(with_audio.text, str)


def test_missing_model_says_how_to_use_local(
    tmp_path: Path, wav: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, _ = wav
    assert main(["transcribe", str(path)]) == 1
    err = capsys.readouterr().err
    assert "--model DIR" in err and "kyutai/stt-1b-en_fr" in err


@pytest.fixture(scope="module")
def stt(stt_dir: Path) -> dsm.SpeechToText:
    return dsm.load_stt(stt_dir, device="cpu")


def test_eval_on_a_local_manifest(
    stt_dir: Path, wav: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("jiwer")
    pytest.importorskip("whisper_normalizer")
    path, _ = wav
    manifest = tmp_path / "set.jsonl"
    lines = [{"audio": str(path), "text": "hello world"}, {"audio": str(path), "text": "a b c"}]
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out_dir = tmp_path / "eval"
    code = main(["eval", str(manifest), "--model", str(stt_dir), "--device", "cpu",
                 "--out-dir", str(out_dir), "--batch-size", "2"])  # fmt: skip
    assert code == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = [json.loads(x) for x in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("wer" in r and "hyp" in r for r in rows)
    assert rows[0]["hyp"] == rows[1]["hyp"]  # same audio, same transcript
    assert summary["n_utterances"] == 2 and summary["corpus_wer"] > 0
    assert "WER" in capsys.readouterr().out.upper()


def test_no_pack_weights_turns_packing_off(
    stt_dir: Path,
    wav: tuple[Path, np.ndarray],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dsm.models import lm_loading
    from dsm.nn import linear as lin

    loaded: list[tuple[torch.nn.Module, lin.CpuKernels]] = []

    def record(model: torch.nn.Module) -> lin.CpuKernels:
        loaded.append((model, lin.set_cpu_kernels(model)))
        return loaded[-1][1]

    monkeypatch.setattr(lm_loading, "set_cpu_kernels", record)
    path, _ = wav
    base = ["transcribe", str(path), "--model", str(stt_dir), "--device", "cpu"]
    monkeypatch.setenv("DSM_CPU_PACK", "1")
    assert main(base) == 0
    packed = capsys.readouterr().out
    model, kernels = loaded[-1]
    assert kernels.pack
    assert main([*base, "--no-pack-weights"]) == 0
    model, kernels = loaded[-1]
    assert not kernels.pack
    assert lin.packed_weight_bytes(model) == 0
    assert capsys.readouterr().out == packed
