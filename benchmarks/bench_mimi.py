"""Mimi streaming speed, dsm next to the reference (moshi 0.2.13), per 80 ms frame.

Both models get the same random weights (the reference is built, saved in the published layout
and loaded by dsm). Each measured call is one frame for every slot: encode takes
``[B, 1, 1920]`` samples, decode ``[B, 32, 1]`` codes. The figure is the median wall time of
``--frames`` calls after ``--warmup`` calls, in ms per frame.

    python benchmarks/bench_mimi.py --threads 2 --batch 1 8 --frames 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dsm.mimi import FRAME_SIZE, load_mimi
from tests.helpers.reference_mimi import (
    build_reference_mimi,
    save_reference_mimi,
    speech_like,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    steps: list[Callable[[int], object]], frames: int, warmup: int, device: torch.device
) -> list[float]:
    """Median wall time (ms) of each ``steps[j](i)`` over ``frames`` calls after ``warmup``.

    The steps are interleaved frame by frame, so a drift in machine speed hits all of them.
    """
    for i in range(warmup):
        for step in steps:
            step(i)
    sync(device)
    times: list[list[float]] = [[] for _ in steps]
    for i in range(frames):
        for j, step in enumerate(steps):
            start = time.perf_counter()
            step(warmup + i)
            sync(device)
            times[j].append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


Step = Callable[[torch.Tensor], torch.Tensor]


def steps(ref: Step, dsm: Step, inputs: list[torch.Tensor]) -> list[Callable[[int], object]]:
    """Frame-indexed calls of the reference and dsm on the same inputs."""
    return [lambda i: ref(inputs[i]), lambda i: dsm(inputs[i])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--frames", type=int, default=40, help="timed frames per point")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    device = torch.device(args.device)

    reference = build_reference_mimi().to(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_reference_mimi(reference, Path(tmp) / "mimi.safetensors")
        codec = load_mimi(path, device=device)

    total = args.warmup + args.frames
    rows = []
    for B in args.batch:
        pcm = speech_like(total * FRAME_SIZE / 24000, seed=1, batch=B).to(device)
        chunks = list(pcm.split(FRAME_SIZE, dim=-1))
        gen = torch.Generator().manual_seed(2)
        codes = torch.randint(0, 2048, (B, 32, total), generator=gen).to(device)
        frames = list(codes.split(1, dim=-1))
        with reference.streaming(B), codec.streaming(B) as stream:
            ref_enc, dsm_enc = median_ms(
                steps(reference.encode, stream.encode, chunks), args.frames, args.warmup, device
            )
            ref_dec, dsm_dec = median_ms(
                steps(reference.decode, stream.decode, frames), args.frames, args.warmup, device
            )
        rows.append(("encode", B, ref_enc, dsm_enc))
        rows.append(("decode", B, ref_dec, dsm_dec))

    where = device.type if device.type != "cpu" else f"cpu, {args.threads} thread(s)"
    print(f"\nMimi streaming, ms per 80 ms frame ({where}; median of {args.frames} frames)")
    print("| op | batch | reference | dsm | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for op, B, ref_ms, dsm_ms in rows:
        print(f"| {op} | {B} | {ref_ms:.2f} | {dsm_ms:.2f} | {ref_ms / dsm_ms:.2f}x |")


if __name__ == "__main__":
    main()
