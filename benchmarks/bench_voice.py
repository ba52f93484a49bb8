"""Time to learn a voice (``dsm voices create``) on CPU, tts-1.6b-en_fr shape, random weights.

One optimizer step of voice learning is a teacher-forced forward and a backward through the
frozen LM for ``--batch`` segments of ``--segment`` seconds (the recordings are cut into such
segments; :mod:`dsm.train.voice`), with the gradient reaching only the ``[1, 512, 125]``
embedding. Its time does not depend on how much audio there is: more audio means more segments
to draw from, not longer steps. One segment is measured (``B = 1``, which keeps memory
modest) and a step of ``--batch`` segments counted as ``--batch`` times that (the work is
linear in the batch on CPU). The model is built with 1 main layer (the depformer keeps its 4
layers and 32 codebooks); the main transformer's forward and backward is also timed alone and
counted 15 more times for the real 16 layers.

The table gives, for each ``--codebooks`` value (the audio loss on the first codebooks only: the
depformer, most of the time, runs that many steps), the time of one segment and one step, and
for 1 and 5 minutes of audio the time of ``--steps`` steps (the same: a step's cost does not
depend on the amount of audio) with the passes over the segments they make. Mimi encoding of
the recordings, seconds at most, is not counted.

    python benchmarks/bench_voice.py --threads 2 [--steps 150 --batch 4 --segment 20]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("NO_TORCH_COMPILE", "1")

from dsm.checkpoint.config import parse_config
from dsm.frames import FRAME_RATE
from dsm.models.lm import LMModel
from dsm.train.tts_target import IGNORE, freeze, training_conditions, tts_loss
from dsm.train.voice import VOICE_FRAMES
from dsm.tts.entries import NEW_WORD_TOKEN, PAD_TOKEN
from dsm.tts.model import TextToSpeech
from tests.helpers.published_configs import tts_1p6b_en_fr

REAL_LAYERS = 16


def build(layers: int) -> TextToSpeech:
    raw = tts_1p6b_en_fr()
    raw["num_layers"] = layers
    config = parse_config(raw)
    torch.manual_seed(0)
    lm = LMModel(config.lm)
    with torch.no_grad():
        for param in lm.parameters():  # keep activations in range: N(0, 1/fan_in)
            if param.dim() >= 2:
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[-1]))
    # The codec and tokenizer play no part in a training step.
    codec: Any = None
    tokenizer: Any = None
    return freeze(TextToSpeech(lm, codec, tokenizer, config))


def batch(tts: TextToSpeech, B: int, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    T = round(seconds * FRAME_RATE) + tts.delay_steps
    codes = torch.randint(0, tts.lm.card, (B, 1 + tts.lm.n_q, T), generator=gen)
    codes[:, 0] = torch.randint(4, tts.lm.text_card, (B, T), generator=gen)
    codes[:, 1:, : tts.delay_steps] = -1
    text = torch.full((B, T), IGNORE)
    free = torch.rand(B, T, generator=gen) < 0.3
    text[free] = PAD_TOKEN
    text[free & (torch.rand(B, T, generator=gen) < 0.3)] = NEW_WORD_TOKEN
    return codes, text


def _median(run: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    kept = sorted(times[1:])  # the first (warm-up) dropped
    return kept[len(kept) // 2]


def step_seconds(
    tts: TextToSpeech, B: int, seconds: float, repeats: int, codebooks: int | None
) -> float:
    """One voice-learning step: forward, backward, Adam on the embedding."""
    codes, text = batch(tts, B, seconds)
    voice = torch.randn(1, 512, VOICE_FRAMES).requires_grad_(True)
    optimizer = torch.optim.Adam([voice], lr=0.05)

    def run() -> None:
        optimizer.zero_grad()
        conditions = training_conditions(tts, voice, B)
        loss = tts_loss(tts, codes, text, conditions, codebooks=codebooks)
        loss.total.backward()
        optimizer.step()

    return _median(run, repeats)


def main_transformer_seconds(tts: TextToSpeech, B: int, seconds: float, repeats: int) -> float:
    """Forward and backward of the main transformer alone (its input needing a gradient, as
    the voice's path through the cross-attention makes it)."""
    T = round(seconds * FRAME_RATE) + tts.delay_steps
    x = torch.randn(B, T, tts.lm.dim, requires_grad=True)
    cross = torch.randn(B, tts.max_speakers * VOICE_FRAMES, tts.lm.dim, requires_grad=True)

    def run() -> None:
        tts.lm.transformer(x, cross_src=cross).sum().backward()

    return _median(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150, help="dsm voices create --steps")
    parser.add_argument("--batch", type=int, default=4, help="segments per step")
    parser.add_argument("--segment", type=float, default=20.0, help="segment seconds")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--codebooks", type=int, nargs="+", default=[32, 8, 1], help="--codebooks values"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tts = build(1)
    layer = main_transformer_seconds(tts, 1, args.segment, args.repeats)
    print(
        f"one {args.segment:g} s segment, forward + backward, {args.threads} threads; the main "
        f"transformer layer alone {layer:.2f} s; counted 16 layers; {args.steps} steps of "
        f"{args.batch} segments"
    )
    heads = ("codebooks", "segment", "step", "1 min (passes)", "5 min (passes)")
    print(f"{heads[0]:>9} {heads[1]:>8} {heads[2]:>7} {heads[3]:>16} {heads[4]:>16}")
    for codebooks in args.codebooks:
        t1 = step_seconds(tts, 1, args.segment, args.repeats, codebooks)
        step = args.batch * (t1 + (REAL_LAYERS - 1) * layer)
        cells = []
        for minutes in (1, 5):
            passes = args.steps * args.batch / math.ceil(minutes * 60 / args.segment)
            cells.append(f"{args.steps * step / 60:.0f} min ({passes:.0f})")
        print(
            f"{codebooks:>9} {t1 + (REAL_LAYERS - 1) * layer:>7.1f}s {step:>6.1f}s "
            f"{cells[0]:>16} {cells[1]:>16}"
        )


if __name__ == "__main__":
    main()
