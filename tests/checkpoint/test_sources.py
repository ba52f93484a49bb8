"""Model sources: local directories, the hub cache in offline mode, explicit files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dsm.checkpoint import HubLocation, open_checkpoint, parse_source, resolve_mimi_file
from dsm.checkpoint.weights import count_parameters_by_part, read_shapes
from dsm.errors import CheckpointError
from tests.helpers.hub_cache import put_in_hub_cache
from tests.helpers.published_configs import stt_2p6b_en

REPO = "kyutai/stt-2.6b-en"


@pytest.fixture()
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache used by huggingface_hub, with hub access switched off."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _weights(path: Path) -> Path:
    save_file({"a.weight": torch.zeros(2, 3), "transformer.b": torch.zeros(4)}, str(path))
    return path


def _checkpoint_files(tmp_path: Path) -> dict[str, Path | str]:
    cfg = stt_2p6b_en()
    return {
        "config.json": json.dumps(cfg),
        "model.safetensors": _weights(tmp_path / "lm.safetensors"),
        cfg["mimi_name"]: _weights(tmp_path / "mimi.safetensors"),
        cfg["tokenizer_name"]: "not really a tokenizer",
    }


def test_parse_source_kinds(tmp_path: Path) -> None:
    assert parse_source("kyutai/stt-1b-en_fr") == HubLocation("kyutai/stt-1b-en_fr")
    assert parse_source("kyutai/stt-1b-en_fr@v2") == HubLocation("kyutai/stt-1b-en_fr", "v2")
    assert parse_source("hf://kyutai/tts-voices/expresso/a.wav.safetensors") == HubLocation(
        "kyutai/tts-voices", None, "expresso/a.wav.safetensors"
    )
    assert parse_source(str(tmp_path)) == tmp_path
    assert parse_source(f"file://{tmp_path}") == tmp_path
    with pytest.raises(CheckpointError, match="neither an existing file"):
        parse_source("./no/such/dir/here")
    with pytest.raises(CheckpointError, match="malformed"):
        parse_source("hf://kyutai/only-repo")


def test_local_directory(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    for name, content in _checkpoint_files(tmp_path).items():
        target = ckpt_dir / name
        target.write_bytes(content.read_bytes() if isinstance(content, Path) else content.encode())
    ckpt = open_checkpoint(ckpt_dir)
    assert ckpt.config.lm.num_layers == 48
    assert ckpt.lm_file() == ckpt_dir / "model.safetensors"
    assert ckpt.mimi_file().name == "mimi-pytorch-e351c8d8@125.safetensors"
    assert ckpt.tokenizer_file().name == "tokenizer_en_audio_4000.model"
    assert resolve_mimi_file(ckpt_dir) == ckpt.mimi_file()
    (ckpt_dir / "model.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors.*not found in checkpoint directory"
    ):
        open_checkpoint(ckpt_dir).lm_file()


def test_explicit_file_overrides(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "config.json").write_text(json.dumps(stt_2p6b_en()))
    other = _weights(tmp_path / "finetuned.safetensors")
    ckpt = open_checkpoint(ckpt_dir, lm_weights=other, tokenizer=f"file://{other}")
    assert ckpt.lm_file() == other
    assert ckpt.tokenizer_file() == other
    with pytest.raises(CheckpointError, match="Mimi weights file"):
        ckpt.mimi_file()
    with pytest.raises(CheckpointError, match="not found"):
        open_checkpoint(ckpt_dir, lm_weights=tmp_path / "missing.safetensors").lm_file()


def test_hub_cache_offline(tmp_path: Path, offline_cache: Path) -> None:
    put_in_hub_cache(offline_cache, REPO, _checkpoint_files(tmp_path))
    ckpt = open_checkpoint(REPO)
    assert ckpt.config.model_type == "stt"
    assert ckpt.lm_file().is_file() and str(offline_cache) in str(ckpt.lm_file())
    assert resolve_mimi_file(REPO) == ckpt.mimi_file()
    # A file of another repo, named hf://owner/repo/file.
    put_in_hub_cache(offline_cache, "kyutai/other", {"x.safetensors": _weights(tmp_path / "x")})
    assert resolve_mimi_file("hf://kyutai/other/x.safetensors").is_file()


def test_hub_missing_offline_says_how_to_use_local(offline_cache: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        open_checkpoint("kyutai/stt-1b-en_fr")
    message = str(info.value)
    assert "config.json" in message and "kyutai/stt-1b-en_fr" in message
    assert "local" in message and "HF_HUB_OFFLINE" in message


def test_hub_missing_file_in_cached_repo(tmp_path: Path, offline_cache: Path) -> None:
    files = _checkpoint_files(tmp_path)
    files.pop("model.safetensors")
    put_in_hub_cache(offline_cache, REPO, files)
    ckpt = open_checkpoint(REPO)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        ckpt.lm_file()


def test_source_must_be_repo_or_dir(tmp_path: Path) -> None:
    weights = _weights(tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="is a file"):
        open_checkpoint(weights)
    assert resolve_mimi_file(weights) == weights
    with pytest.raises(CheckpointError, match="no Mimi weights"):
        resolve_mimi_file(tmp_path)


def test_read_shapes_and_counts(tmp_path: Path) -> None:
    weights = _weights(tmp_path / "w.safetensors")
    assert read_shapes(weights)["a.weight"] == ((2, 3), "F32")
    assert dict(count_parameters_by_part(weights)) == {"a": 6, "transformer": 4}
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_shapes(corrupt)
