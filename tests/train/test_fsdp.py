"""``--fsdp`` (FSDP2 over two gloo processes on CPU) gives the loss curve of one process with the
same global batch, and writes the same adapter and merged checkpoint (LoRA) or checkpoint
(``--full``), gathered to rank 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from dsm.cli import main
from dsm.train.export import LM_FILE
from dsm.train.loop import TrainConfig
from tests.cli.run import SRC
from tests.helpers.reference_stt import ReferenceStt
from tests.train.test_ddp import _losses

# Measured: 7e-8 worst relative difference over 4 AdamW steps (float32 sums in another order,
# reduce-scattered over the processes); two orders of magnitude of margin.
CURVE_RTOL = 1e-5
# Measured: 1e-7 worst absolute difference of a saved weight (adapter and merged checkpoint,
# lr 1e-2, 4 steps; --full: 2.4e-6 outside the embeddings); about two orders of margin.
WEIGHT_ATOL = 1e-5
# --full only: AdamW divides by the root of the second moment, so an embedding row that gets a
# near-zero gradient (float noise of the summation order) moves by a step of either sign. Measured
# (one process against two): 26 of 2.1M weights differ by more than WEIGHT_ATOL, at most by
# 1.1e-4 under FSDP and 1.3e-4 under DDP alike. Allowed: a thousandth of the weights, by 1e-3.
OUTLIER_FRACTION, OUTLIER_ATOL = 1e-3, 1e-3


def _common(model: ReferenceStt, manifest: Path, tmp_path: Path, mode: list[str]) -> list[str]:
    return [
        "finetune", "stt", "--model", str(model.directory), "--train", str(manifest), *mode,
        "--steps", "4", "--lr", "1e-2", "--batch-size", "4", "--grad-accum", "2", "--device",
        "cpu", "--cache-dir", str(tmp_path / "cache"), "-q",
    ]  # fmt: skip


LORA = ["--lora-rank", "4", "--merge"]
FULL = ["--full", "--gradient-checkpointing"]


def _differences(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> torch.Tensor:
    assert sorted(one) == sorted(two)
    return torch.cat([(one[k].float() - two[k].float()).abs().flatten() for k in one])


@pytest.mark.parametrize("mode", [LORA, FULL], ids=["lora", "full"])
def test_fsdp_two_gloo_processes_match_one(
    prefixed_stt: ReferenceStt, synthetic_manifest: Path, tmp_path: Path, mode: list[str]
) -> None:
    common = _common(prefixed_stt, synthetic_manifest, tmp_path, mode)
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "dsm", *common, "--fsdp", "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shard = re.search(r"FSDP over 2 processes: rank 0 holds ([\d,]+) of the ([\d,]+) weights",
                      done.stderr)  # fmt: skip
    assert shard is not None, done.stderr[-3000:]
    held, total = (int(x.replace(",", "")) for x in shard.groups())
    assert held < 0.6 * total, "the weights were not sharded"
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert one[0] != one[-1], "the loss did not move: the test is void"
    worst = max(abs(a - b) / abs(a) for a, b in zip(one, two, strict=True))
    print(f"one process {[round(x, 5) for x in one]}, FSDP two {[round(x, 5) for x in two]}: "
          f"worst relative difference {worst:.1e}")  # fmt: skip
    assert worst < CURVE_RTOL
    # Rank 0 alone wrote the full artefacts, equal to one process's.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    files = (
        ["adapter.safetensors", f"merged/{LM_FILE}"] if mode is LORA else [f"checkpoint/{LM_FILE}"]
    )
    for name in files:
        diff = _differences(*(load_file(tmp_path / d / name) for d in ("one", "two")))
        worst, outliers = float(diff.max()), int((diff > WEIGHT_ATOL).sum())
        print(f"{name}: worst weight difference {worst:.1e}, {outliers} of {diff.numel()} "
              f"weights differ by more than {WEIGHT_ATOL:.0e}")  # fmt: skip
        if mode is LORA:
            assert worst < WEIGHT_ATOL, name
        else:
            assert worst < OUTLIER_ATOL and outliers < OUTLIER_FRACTION * diff.numel(), name


def test_fsdp_needs_several_processes(
    prefixed_stt: ReferenceStt,
    synthetic_manifest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = _common(prefixed_stt, synthetic_manifest, tmp_path, LORA)
    assert main([*common, "--fsdp", "--out", str(tmp_path / "one")]) == 1
    assert "launch with 'torchrun --nproc-per-node N" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"resume": True}, "--resume and --save-every are not supported with --fsdp"),
        ({"save_every": 2}, "--resume and --save-every are not supported with --fsdp"),
        ({"eval_every": 2}, "--eval-every is not supported with --fsdp"),
    ],
)
def test_fsdp_refuses_what_it_does_not_support(settings: dict[str, Any], message: str) -> None:
    config = TrainConfig(out_dir=Path("unused"), batch_size=4, fsdp=True, **settings)
    with pytest.raises(ValueError, match=message):
        config.check(world_size=2)
