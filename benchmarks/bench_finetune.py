"""Fine-tuning throughput and peak memory of the tiny test STT model on CPU.

Runs ``dsm finetune stt`` (in this process, so the figures are this process's) on the synthetic
tone dataset of the tests (``tests/train/synthetic.py``: 6 utterances of 2.2 s) for a full and a
LoRA fine-tune, and prints one row each: optimizer steps, audio seconds trained per wall second
(the loop's own clock, after the Mimi codes are cached) and the peak resident memory of the
process (``ru_maxrss``, which includes Python, torch and the random Mimi of published size).

    python benchmarks/bench_finetune.py --steps 100 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from dsm.cli import main
from tests.helpers.reference_stt import make_reference_stt_dir, stt_config
from tests.train.synthetic import write_dataset


def _run(mode: list[str], root: Path, model: Path, manifest: Path, steps: int, batch: int) -> dict:
    out = root / f"run-{len(list(root.iterdir()))}"
    args = ["finetune", "stt", "--model", str(model), "--train", str(manifest), "--out", str(out),
            "--steps", str(steps), "--batch-size", str(batch), "--device", "cpu", "-q",
            "--cache-dir", str(root / "cache"), *mode]  # fmt: skip
    start = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()) as text:
        code = main(args)
    if code != 0:
        raise SystemExit(f"dsm finetune failed ({code})")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "loss" in r][-1]
    return {
        "wall": time.monotonic() - start,
        "speed": last["audio_s_per_s"],
        "loss": last["loss"],
        "summary": text.getvalue().strip().splitlines()[0],
    }


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref = make_reference_stt_dir(root / "ckpt", stt_config(context=12, delay=0.5, prefix=1.0))
        manifest = write_dataset(root / "data")
        runs = root / "runs"
        runs.mkdir()
        rows = []
        for name, mode in (
            ("full", ["--full", "--lr", "3e-3"]),
            ("lora r=16", ["--lora-rank", "16"]),
        ):
            result = _run(mode, runs, ref.directory, manifest, args.steps, args.batch)
            rows.append((name, result))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"tiny STT (dim 32, 32 codebooks), {args.steps} steps x {args.batch} utterances "
          f"of 2.2 s, {args.threads} thread(s)")  # fmt: skip
    print(f"{'mode':<10} {'audio s/s':>10} {'wall s':>8} {'final loss':>11}")
    for name, r in rows:
        print(f"{name:<10} {r['speed']:>10.1f} {r['wall']:>8.1f} {r['loss']:>11.4f}")
    print(f"peak resident memory of the process: {peak:.0f} MiB")


if __name__ == "__main__":
    main_()
