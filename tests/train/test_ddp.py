"""Two processes (``torchrun``, gloo backend, CPU) give the same loss curve as one process with
the same global batch: the loop splits each step's items over the processes and divides the
gradients by the target count of the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dsm.cli import main
from tests.cli.run import SRC
from tests.helpers.reference_stt import ReferenceStt

# float32 sums in another order (per process, then all-reduced), through 4 AdamW steps.
CURVE_RTOL = 1e-4


def _losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_two_gloo_processes_match_one(
    prefixed_stt: ReferenceStt, synthetic_manifest: Path, tmp_path: Path
) -> None:
    common = [
        "finetune", "stt", "--model", str(prefixed_stt.directory), "--train",
        str(synthetic_manifest), "--lora-rank", "4", "--steps", "4", "--lr", "1e-2",
        "--batch-size", "4", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "-q",
    ]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "dsm", *common, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert one[0] != one[-1], "the loss did not move: the test is void"
    worst = max(abs(a - b) / abs(a) for a, b in zip(one, two, strict=True))
    print(f"one process {[round(x, 5) for x in one]}, two {[round(x, 5) for x in two]}: "
          f"worst relative difference {worst:.1e}")  # fmt: skip
    assert worst < CURVE_RTOL
    # Both wrote one adapter; the two processes did not each write their own.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
