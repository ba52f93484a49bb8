"""STT throughput on CPU: dsm's engine next to the reference pipeline, Mimi included.

Both sides run the same random weights in the published kyutai/stt-1b-en_fr shape (dim 2048,
16 layers, 32 codebooks, text vocabulary 8000, context 750; ``--layers`` may reduce the depth and
the table then says so) and the published Mimi. One step = encode one 80 ms frame per slot
with streaming Mimi + one LM step with greedy decoding (the reference: ``mimi.encode`` +
``LMGen.step``, frame by frame as its scripts do; dsm live: ``SttEngine.step``, which also moves
the tokens to the host). dsm files is the path of ``dsm transcribe``: the audio is known ahead,
so Mimi encodes ``--chunk`` frames per call (``SttEngine.encode_frames``) and the LM takes them
one per step (``SttEngine.step_codes``); its time is per frame. The real-time factor counts
audio seconds processed per wall second over all slots: ``RTF = batch * 0.08 s / step time``
(higher is faster); the speed-up column compares dsm files with the reference.

    python benchmarks/bench_stt.py --batch 1 8 --dtype float32 --steps 20
    python benchmarks/bench_stt.py --batch 1 --layers 4 --quantize int8 int4

``--quantize``: dsm also runs with the LM's projections quantized (the same weights,
``dsm.models.lm_loading.quantize_lm``), in the same run as the float rows; Mimi stays float.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dsm.checkpoint.config import parse_config
from dsm.mimi import FRAME_SIZE, MimiCodec
from dsm.models.lm import LMModel
from dsm.models.lm_loading import load_lm_state, quantize_lm
from dsm.models.mimi import MimiModel
from dsm.stt.engine import SttEngine
from tests.helpers.hub_layout import to_hub_layout
from tests.helpers.published_configs import stt_1b_en_fr
from tests.helpers.reference_lm import make_reference_lm
from tests.helpers.reference_mimi import build_reference_mimi, speech_like


def dsm_lm(ref_lm: Any, raw: dict[str, Any], dtype: torch.dtype) -> LMModel:
    """dsm's LM on the reference's tensors (shared where no fusing is needed)."""
    lm = LMModel(parse_config(raw).lm, device="meta", dtype=dtype)
    load_lm_state(lm, to_hub_layout(ref_lm.state_dict()), dtype=dtype, device=torch.device("cpu"))
    return lm.eval()


def build(layers: int, dtype: torch.dtype) -> tuple[Any, Any, LMModel, MimiCodec]:
    raw = stt_1b_en_fr()
    raw["num_layers"] = layers
    ref_lm = make_reference_lm(raw, seed=0).to(dtype)
    lm = dsm_lm(ref_lm, raw, dtype)
    with torch.no_grad():
        ref_mimi = build_reference_mimi(seed=0)
    mimi = MimiModel()
    mimi.load_state_dict(to_hub_layout(ref_mimi.state_dict()), strict=True)
    mimi.set_num_codebooks(32)
    codec = MimiCodec(mimi.eval(), check_finite=False)
    return ref_lm, ref_mimi, lm, codec


@torch.no_grad()
def time_reference(ref_lm: Any, ref_mimi: Any, pcm: torch.Tensor, warmup: int, steps: int) -> float:
    from moshi.models.lm import LMGen

    B = pcm.shape[0]
    gen = LMGen(ref_lm, temp=0.0, temp_text=0.0)
    times = []
    with ref_mimi.streaming(B), gen.streaming(B):
        for i in range(warmup + steps):
            chunk = pcm[:, None, i * FRAME_SIZE : (i + 1) * FRAME_SIZE]
            start = time.perf_counter()
            codes = ref_mimi.encode(chunk)
            out = gen.step(codes)
            if out is not None:
                out.cpu()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def time_dsm(lm: LMModel, codec: MimiCodec, pcm: torch.Tensor, warmup: int, steps: int) -> float:
    B = pcm.shape[0]
    active = torch.ones(B, dtype=torch.bool)
    times = []
    with SttEngine(codec, lm, B) as engine:
        engine.start_slot(list(range(B)))
        for i in range(warmup + steps):
            frame = pcm[:, i * FRAME_SIZE : (i + 1) * FRAME_SIZE]
            start = time.perf_counter()
            engine.step(frame, active, active)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def time_dsm_files(
    lm: LMModel, codec: MimiCodec, pcm: torch.Tensor, warmup: int, steps: int, chunk: int
) -> float:
    """Per-frame time of the offline path: chunked encode, then one LM step per frame."""
    B = pcm.shape[0]
    active = torch.ones(B, dtype=torch.bool)
    chunks = pcm.shape[1] // (chunk * FRAME_SIZE)
    warm_chunks = max(1, -(-warmup // chunk))
    times = []
    with SttEngine(codec, lm, B) as engine:
        engine.start_slot(list(range(B)))
        engine.step_codes(torch.zeros(B, engine.n_q, dtype=torch.long), active)  # step 0
        for c in range(chunks):
            start = time.perf_counter()
            span = slice(c * chunk * FRAME_SIZE, (c + 1) * chunk * FRAME_SIZE)
            codes = engine.encode_frames(pcm[:, span], active)
            for j in range(chunk):
                engine.step_codes(codes[:, :, j], active)
            if c >= warm_chunks:
                times.append((time.perf_counter() - start) / chunk)
    return statistics.mean(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, default=16, help="main transformer depth (real: 16)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chunk", type=int, default=16, help="frames per Mimi call (files)")
    parser.add_argument("--quantize", nargs="+", default=[], choices=["int8", "int4"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warm_chunks = max(1, -(-args.warmup // args.chunk))
    timed_chunks = -(-args.steps // args.chunk)
    frames = max(args.warmup + args.steps, (warm_chunks + timed_chunks) * args.chunk)
    rows = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        ref_lm, ref_mimi, lm, codec = build(args.layers, dtype)
        for B in args.batch:
            pcm = speech_like(frames * FRAME_SIZE / 24000, seed=1, batch=B)[:, 0].float()
            ref = time_reference(ref_lm, ref_mimi, pcm, args.warmup, args.steps)
            live = time_dsm(lm, codec, pcm, args.warmup, args.steps)
            files = time_dsm_files(lm, codec, pcm, args.warmup, args.steps, args.chunk)
            rows.append((dtype_name, B, ref, live, files))
            for mode in args.quantize:
                raw = stt_1b_en_fr()
                raw["num_layers"] = args.layers
                quantized = quantize_lm(dsm_lm(ref_lm, raw, dtype), mode)
                live = time_dsm(quantized, codec, pcm, args.warmup, args.steps)
                files = time_dsm_files(quantized, codec, pcm, args.warmup, args.steps, args.chunk)
                rows.append((f"{dtype_name}+{mode}", B, ref, live, files))
                del quantized
        del ref_lm, ref_mimi, lm, codec
    print(f"\nSTT step (Mimi encode + LM, stt-1b shape, {args.layers} layers, "
          f"{torch.get_num_threads()} threads), median of {args.steps} steps")  # fmt: skip
    print(f"dsm files: Mimi encodes {args.chunk} frames per call; ms are per 80 ms frame")
    print("| dtype | batch | reference ms | dsm live ms | dsm files ms | reference RTF "
          "| dsm live RTF | dsm files RTF | speed-up (live) | speed-up (files) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype_name, B, ref, live, files in rows:
        print(
            f"| {dtype_name} | {B} | {ref * 1e3:.1f} | {live * 1e3:.1f} | {files * 1e3:.1f} | "
            f"{B * 0.08 / ref:.2f} | {B * 0.08 / live:.2f} | {B * 0.08 / files:.2f} | "
            f"{ref / live:.2f}x | {ref / files:.2f}x |"
        )


if __name__ == "__main__":
    main()
