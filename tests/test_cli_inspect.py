"""``dsm inspect`` on a local checkpoint directory and the offline hub cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dsm.cli import main
from tests.helpers.hub_cache import put_in_hub_cache
from tests.helpers.published_configs import stt_1b_en_fr


def _make_dir(tmp_path: Path) -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cfg = stt_1b_en_fr(vad_heads=True)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    save_file(
        {
            "transformer.layers.0.self_attn.in_proj_weight": torch.zeros(6, 2),
            "emb.0.weight": torch.zeros(3, 2),
            "extra_heads.0.weight": torch.zeros(6, 2),
        },
        str(ckpt / "model.safetensors"),
    )
    save_file(
        {"encoder.model.0.conv.conv.weight": torch.zeros(4, 1, 7)}, str(ckpt / cfg["mimi_name"])
    )
    (ckpt / cfg["tokenizer_name"]).write_bytes(b"spm")
    return ckpt


def test_inspect_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _make_dir(tmp_path)
    assert main(["inspect", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "model type: stt" in out and "extra_heads_num_heads: 4" in out
    assert "transformer: 12" in out and "heads: 12" in out and "embeddings: 6" in out
    assert str(ckpt / "model.safetensors") in out
    assert main(["inspect", str(ckpt), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["lm"]["context"] == 750
    assert report["parameters"]["mimi"] == {"encoder": 28}


def test_inspect_reports_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _make_dir(tmp_path)
    (ckpt / "model.safetensors").unlink()
    assert main(["inspect", str(ckpt)]) == 1
    assert "lm: MISSING" in capsys.readouterr().out


def test_inspect_single_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _make_dir(tmp_path)
    assert main(["inspect", str(ckpt / "model.safetensors")]) == 0
    assert "parameters (weights): 30" in capsys.readouterr().out


def test_inspect_bad_source_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "./does/not/exist"]) == 1
    assert "dsm: error:" in capsys.readouterr().err


def test_python_m_dsm_offline_hub_cache(tmp_path: Path) -> None:
    """The real entry point, resolving a repo id from the hub cache with HF_HUB_OFFLINE=1."""
    ckpt = _make_dir(tmp_path)
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "kyutai/stt-1b-en_fr", {p.name: p for p in ckpt.iterdir()})
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "dsm", "inspect", "kyutai/stt-1b-en_fr"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(cache) in result.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "dsm", "inspect", "kyutai/stt-2.6b-en"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "HF_HUB_OFFLINE" in missing.stderr and "local" in missing.stderr
