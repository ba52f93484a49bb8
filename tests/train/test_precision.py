"""Gradient checkpointing changes nothing but memory (same fp32 loss curve); bf16 autocast
trains with finite losses close to fp32's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsm.cli import main
from tests.helpers.reference_stt import ReferenceStt

BF16_RTOL = 5e-2  # bfloat16 has 8 bits of mantissa


def _curve(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_checkpointing_and_bf16(
    prefixed_stt: ReferenceStt, synthetic_manifest: Path, tmp_path: Path
) -> None:
    common = [
        "finetune", "stt", "--model", str(prefixed_stt.directory), "--train",
        str(synthetic_manifest), "--full", "--steps", "3", "--lr", "3e-3", "--batch-size", "2",
        "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "-q",
    ]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "ckpt"), "--gradient-checkpointing"]) == 0
    assert main([*common, "--out", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    plain, ckpt, bf16 = (_curve(tmp_path / name) for name in ("plain", "ckpt", "bf16"))
    assert len(set(plain)) == 3, "the loss did not move: the test is void"
    assert ckpt == pytest.approx(plain, rel=1e-6)
    worst = max(abs(a - b) / a for a, b in zip(plain, bf16, strict=True))
    print(f"fp32 {plain}, bf16 {bf16}: worst relative difference {worst:.1e}")
    assert worst < BF16_RTOL


def test_cli_resume_continues_the_run(
    prefixed_stt: ReferenceStt, synthetic_manifest: Path, tmp_path: Path
) -> None:
    common = [
        "finetune", "stt", "--model", str(prefixed_stt.directory), "--train",
        str(synthetic_manifest), "--lora-rank", "4", "--lr", "1e-2", "--batch-size", "2",
        "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "-q", "--out",
        str(tmp_path / "run"), "--save-every", "2",
    ]  # fmt: skip
    assert main([*common, "--steps", "2"]) == 0
    first = (tmp_path / "run" / "adapter.safetensors").read_bytes()
    assert main([*common, "--steps", "4", "--resume"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "adapter.safetensors").read_bytes() != first
    assert main([*common, "--steps", "4"]) == 1  # without --resume the directory is refused
