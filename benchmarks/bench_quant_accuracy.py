"""Accuracy of the quantized LMs on random models of the published widths (not a timing).

stt-1b and tts-1.6b shapes (model-spec §1.4) with ``--layers`` main layers (the depformer keeps
all of its layers), weights ``N(0, 1/fan_in)`` (tests.helpers.reference_lm.randomize_), random
codes over ``--steps`` teacher-forced steps. For each mode: relative error of the text and
audio logits against float32, and greedy agreement: the text token for STT, the audio codes for
TTS (argmax at every step and codebook, the same context for both). The row ``tables`` has
only the embedding tables quantized (int8 rows, as every quantized LM has them), the
projections float: their share of each mode's error.

    python benchmarks/bench_quant_accuracy.py --layers 2 --steps 200 --groups 32 64 128
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dsm.checkpoint.config import parse_config
from dsm.models.lm import LMModel
from dsm.models.lm_loading import quantize_lm, quantize_tables
from tests.helpers.published_configs import stt_1b_en_fr, tts_1p6b_en_fr
from tests.helpers.reference_lm import randomize_


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    valid = ~(a.isnan() | b.isnan())
    return float((a[valid] - b[valid]).norm() / b[valid].norm())


def _model(kind: str, layers: int) -> LMModel:
    raw = stt_1b_en_fr() if kind == "stt" else tts_1p6b_en_fr()
    raw["num_layers"] = layers
    lm = LMModel(parse_config(raw).lm)
    randomize_(lm, seed=0)
    return lm.eval()


def _inputs(lm: LMModel, steps: int) -> tuple[torch.Tensor, Any]:
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, lm.card, (1, lm.num_codebooks, steps), generator=gen)
    codes[:, 0] = torch.randint(0, lm.text_card, (1, steps), generator=gen)
    if lm.condition_provider is None:
        return codes, None
    speaker = torch.randn(1, 125, 512, generator=gen)
    conditions = lm.make_conditions(
        {"cfg": ["2.0"], "control": ["ok"]},
        {"speaker_wavs": (speaker, torch.ones(1, 125, dtype=torch.bool))},
        1,
    )
    return codes, conditions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["stt", "tts"], choices=["stt", "tts"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--groups", type=int, nargs="+", default=[64], help="int4 group sizes")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    print(f"random weights, {args.layers} main layers, {args.steps} teacher-forced steps")
    print(f"{'model':5} {'mode':10} | {'text rel':>8} {'audio rel':>9} | {'greedy agree':>12}")
    for kind in args.models:
        lm = _model(kind, args.layers)
        codes, conditions = _inputs(lm, args.steps)
        ref = lm(codes, conditions)
        variants = [("tables", 0), ("int8", 0)] + [("int4", g) for g in args.groups]
        for mode, group in variants:
            if mode == "tables":
                quantized = quantize_tables(copy.deepcopy(lm))
            else:
                quantized = quantize_lm(copy.deepcopy(lm), mode, group_size=group or 64)
            out = quantized(codes, conditions)
            text = _rel(out.text_logits, ref.text_logits)
            if kind == "stt":
                same = out.text_logits.argmax(-1) == ref.text_logits.argmax(-1)
                agree = float(same[ref.text_mask].float().mean())
                audio = "-"
            else:
                assert out.audio_logits is not None and ref.audio_logits is not None
                assert ref.audio_mask is not None
                audio = f"{_rel(out.audio_logits, ref.audio_logits):.4f}"
                same = out.audio_logits.argmax(-1) == ref.audio_logits.argmax(-1)
                agree = float(same[ref.audio_mask].float().mean())
            name = mode if not group else f"{mode}/g{group}"
            print(f"{kind:5} {name:10} | {text:8.4f} {audio:>9} | {agree:12.3f}", flush=True)
            del quantized
        del lm


if __name__ == "__main__":
    main()
