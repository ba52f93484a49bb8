"""Batch transcription on Ray Data (``dsm transcribe --ray``): throughput of 1 vs N actors.

Writes ``--files`` speech-like wav files of ``--seconds`` each, then transcribes them with
:func:`dsm.commands.ray_transcribe.run_batch` on a local Ray of ``--cpus`` CPUs, once per actor
count (a fresh output folder each time, so every run does all the work). The model is
``--model`` (any STT checkpoint), or by default the tests' tiny checkpoint (built by the
reference, which must be installed: the dev environment has it). Columns: wall time of the run
(actor start and model load included), the actors' model load, the audio transcribed per wall
second, and files per second.

    python benchmarks/bench_ray.py --files 16 --seconds 4 --actors 1 2 --cpus 2
    python benchmarks/bench_ray.py --model kyutai/stt-1b-en_fr --files 200 --actors 1 2 4

Numbers from a shared machine are noisy: compare rows measured in one run.

Measured on the 2-core development machine (shared, load average ~10; tiny model, CPU actors,
``--files 32 --seconds 4 --actors 1 2 1 2 --batch-size 4``), audio seconds per wall second:
1 actor 2.7 and 3.8, 2 actors 2.8 and 2.8 (an earlier run: 3.5 vs 3.1). Two actors do not help
on two cores: one actor's torch already uses both (2 threads; two actors get 1 each), and a
second actor adds its own model load (~5 s here). Actors pay off with more cores or one GPU
each, which is what the pool is for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dsm.commands.ray_transcribe import BatchOptions, run_batch


def _tiny_model(folder: Path) -> str:
    from tests.helpers.reference_stt import make_reference_stt_dir, stt_config

    return str(make_reference_stt_dir(folder, stt_config(context=12)).directory)


def _inputs(folder: Path, files: int, seconds: float) -> list[str]:
    from dsm.audio.encode import write_wav
    from tests.helpers.reference_mimi import speech_like

    out = []
    for i in range(files):
        pcm = speech_like(seconds, seed=i)[0, 0].numpy().astype(np.float32)
        path = folder / f"clip{i:04d}.wav"
        write_wav(path, pcm)
        out.append(str(path))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="STT checkpoint (default: the tiny one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=4, help="streams batched per actor")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    args = parser.parse_args()

    import ray

    root = Path(tempfile.mkdtemp(prefix="dsm-bench-ray-"))
    model = args.model or _tiny_model(root / "model")
    (root / "audio").mkdir()
    inputs = _inputs(root / "audio", args.files, args.seconds)
    src = str(Path(__file__).resolve().parents[1] / "src")
    ray.init(
        num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": src, "NO_TORCH_COMPILE": "1"}},
    )  # fmt: skip
    options = {"model": model, "device": args.device}
    audio = args.files * args.seconds
    print(f"{args.files} files x {args.seconds:.1f} s = {audio:.0f} s of audio, "
          f"local Ray of {args.cpus} CPUs, batch size {args.batch_size} per actor")  # fmt: skip
    print("| actors | wall s | model load s | audio s / wall s | files / s | failed |")
    print("|---|---|---|---|---|---|")
    try:
        for run, actors in enumerate(args.actors):
            out = root / f"out-{run}"  # a fresh folder: every run does all the work
            summary = run_batch(
                BatchOptions(
                    inputs=inputs, out_dir=out, model=options, actors=actors,
                    batch_size=args.batch_size, progress=False,
                )
            )  # fmt: skip
            rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
            load = max(r["timings"]["load_seconds"] for r in rows)
            wall = summary.wall_seconds
            print(f"| {actors} | {wall:.1f} | {load:.1f} | {summary.audio_seconds / wall:.1f} | "
                  f"{summary.done / wall:.2f} | {summary.failed} |")  # fmt: skip
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
