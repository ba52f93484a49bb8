"""TTS speed, dsm next to the reference ``TTSModel`` (moshi 0.2.13), whole pipeline on CPU.

Both sides speak the same text with the same random weights: the tts-1.6b-en_fr shape
(model-spec §1.4; the main transformer scaled to ``--layers`` layers, the depformer keeps its 4
layers and 32 codebooks), a random Mimi of the published architecture, a tokenizer trained at
start-up, a random voice embedding ``[1, 512, 125]``, cfg 2.0 (CFG-distilled: one LUT value),
temperature 0.6, top-k 250/25. One run = the whole text given at once, for ``B`` slots:

* reference: ``TTSModel.generate`` with an ``on_frame`` callback that decodes every frame with
  no ``-1`` by streaming Mimi, as ``tts_pytorch.py``'s streaming output does;
* dsm: :class:`dsm.tts.engine.TtsEngine` (state machine, LM, depformer, streaming Mimi).

Figures (per run):

* ``first audio``: seconds from the call to the first audio frame kept in the output. Both
  drop the first two decoded ("click") frames as the reference's ``simple_generate`` does, so
  this is the third decoded frame on both sides;
* ``RTF``: seconds of audio produced (all slots) per second of wall time (> 1: faster than
  real time).

``x16`` columns extrapolate to the real 16 main layers: the main transformer's time, measured
inside the same run with forward hooks, is scaled by ``16 / layers`` (everything else is not).

    python benchmarks/bench_tts.py --batch 1 4 --layers 2 --threads 2 [--dtype bfloat16]
    python benchmarks/bench_tts.py --batch 1 4 --layers 16 --quantize int8 int4

``--quantize``: dsm also runs with its LM quantized (the same weights,
``dsm.models.lm_loading.quantize_lm``; Mimi stays float), one row per mode next to the same
reference runs; the gain columns compare each with the reference float32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("NO_TORCH_COMPILE", "1")

from benchmarks.bench_lm import Timer, dsm_from_reference
from dsm.checkpoint.config import parse_config
from dsm.mimi import load_mimi
from dsm.models.lm_loading import quantize_lm
from dsm.tokenizer import TextTokenizer
from dsm.tts.engine import CLICK_FRAMES
from dsm.tts.model import TextToSpeech
from tests.helpers.published_configs import tts_1p6b_en_fr
from tests.helpers.reference_lm import make_reference_lm
from tests.helpers.reference_mimi import build_reference_mimi, save_reference_mimi
from tests.helpers.reference_tts import save_voice, train_tts_tokenizer

REAL_LAYERS = 16
FRAME_SECONDS = 0.08
TEXT = "In the heart of an ancient forest, there lived a peculiar rabbit named Luna."


class Setup:
    """Reference and dsm models sharing one set of random weights."""

    def __init__(
        self,
        layers: int,
        workdir: Path,
        text: str = TEXT,
        dtype: torch.dtype = torch.float32,
        quantize: tuple[str, ...] = (),
    ) -> None:
        import sentencepiece
        from moshi.models.tts import StateMachine, TokenIds, TTSModel

        raw = tts_1p6b_en_fr()
        raw["num_layers"] = layers
        self.raw = raw
        self.layers = layers
        self.text = text
        ref_lm = make_reference_lm(raw, seed=0)
        self.dtype = dtype
        with torch.no_grad():
            ref_mimi = build_reference_mimi(seed=0)
        mimi_path = save_reference_mimi(ref_mimi, workdir / "mimi.safetensors")
        tok_path = train_tts_tokenizer(workdir / "tok", vocab_size=64, name="tok.model")
        sp = sentencepiece.SentencePieceProcessor()
        sp.Load(str(tok_path))
        voice = torch.randn(1, 512, 125, generator=torch.Generator().manual_seed(1))
        sig, epoch = raw["model_id"]["sig"], raw["model_id"]["epoch"]
        self.voice_path = save_voice(
            workdir / f"v.wav.{sig}@{epoch}.safetensors", voice, sig, epoch
        )
        delay_steps = int(raw["tts_config"]["audio_delay"] * ref_mimi.frame_rate)
        machine = StateMachine(TokenIds(ref_lm.text_card + 1), 2, max_padding=8, initial_padding=2)
        ref_mimi.set_num_codebooks(32)
        self.ref = TTSModel(
            lm=ref_lm, mimi=ref_mimi, tokenizer=sp, voice_suffix=f".{sig}@{epoch}.safetensors",
            voice_repo=str(workdir), machine=machine, delay_steps=delay_steps, n_q=32, temp=0.6,
        )  # fmt: skip
        lm = dsm_from_reference(ref_lm, raw, dtype)
        ref_lm.to(dtype)
        if ref_lm.condition_provider is not None:  # it takes float32 voice tensors, casts outputs
            ref_lm.condition_provider.float()
        codec = load_mimi(mimi_path)
        tokenizer = TextTokenizer(tok_path)
        self.dsm = TextToSpeech(lm, codec, tokenizer, parse_config(raw))
        # dsm with quantized LMs (the same weights), by mode.
        self.quantized: dict[str, TextToSpeech] = {}
        for mode in quantize:
            qlm = quantize_lm(dsm_from_reference(ref_lm, raw, dtype), mode)
            self.quantized[mode] = TextToSpeech(qlm, codec, tokenizer, parse_config(raw))

    def run_reference(self, B: int) -> dict[str, float]:
        model = self.ref
        entries = [model.prepare_script([self.text], padding_between=1) for _ in range(B)]
        attributes = [model.make_condition_attributes([self.voice_path], cfg_coef=2.0)] * B
        timer = Timer(model.lm.transformer)
        first: list[tuple[float, float]] = []
        frames = 0
        start = time.perf_counter()

        def on_frame(frame: torch.Tensor) -> None:
            nonlocal frames
            if (frame != -1).all():
                pcm = model.mimi.decode(frame[:, 1:, :])
                pcm.clip_(-1, 1)
                frames += 1
                if frames == CLICK_FRAMES + 1:
                    first.append((time.perf_counter() - start, timer.total))

        torch.manual_seed(0)
        with torch.no_grad(), model.mimi.streaming(B):
            model.generate(entries, attributes, on_frame=on_frame)
        total = time.perf_counter() - start
        timer.remove()
        return self._figures(first[0], total, timer.total, (frames - CLICK_FRAMES) * B)

    def run_dsm(self, B: int, mode: str | None = None) -> dict[str, float]:
        tts = self.dsm if mode is None else self.quantized[mode]
        entries = [tts.entries([self.text]) for _ in range(B)]
        rows = tts.conditions([self.voice_path], 2.0)
        timer = Timer(tts.lm.transformer)
        first: list[tuple[float, float]] = []
        frames = 0
        start = time.perf_counter()
        conditions = tts.batch_conditions([rows] * B)
        steps = 0
        with tts.make_engine(B, conditions, temperature=0.6, seed=0) as engine:
            depformer = _timed(engine.gen._phase_depformer, "fn")
            mimi = _timed(engine.stream, "decode")
            for b in range(B):
                engine.start_slot(b, entries=entries[b], complete=True)
            while engine.busy:
                steps += 1
                for out in engine.step():
                    if out.pcm is not None:
                        frames += 1
                        if not first:
                            first.append((time.perf_counter() - start, timer.total))
        total = time.perf_counter() - start
        timer.remove()
        figures = self._figures(first[0], total, timer.total, frames)
        # Milliseconds per LM step, split (main transformer scaled to 16 layers like "x16").
        ms = 1e3 / steps
        main16 = timer.total * REAL_LAYERS / self.layers
        figures.update(
            ms_main16=main16 * ms,
            ms_dep=depformer[0] * ms,
            ms_mimi=mimi[0] * ms,
            ms_host=(total - timer.total - depformer[0] - mimi[0]) * ms,
            ms_total16=(total - timer.total + main16) * ms,
        )
        return figures

    def _figures(
        self, first: tuple[float, float], total: float, transformer: float, frames: int
    ) -> dict[str, float]:
        scale = REAL_LAYERS / self.layers - 1
        audio = frames * FRAME_SECONDS
        return {
            "first": first[0],
            "first16": first[0] + scale * first[1],
            "rtf": audio / total,
            "rtf16": audio / (total + scale * transformer),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--layers", type=int, default=2, help="main transformer layers")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--reps", type=int, default=2, help="timed runs per side (best kept)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side first")
    parser.add_argument("--text", default=TEXT, help="what to say")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--quantize", nargs="+", default=[], choices=["int8", "int4"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        dtype = getattr(torch, args.dtype)
        setup = Setup(args.layers, Path(tmp), args.text, dtype, tuple(args.quantize))
        print(
            f"tts-1.6b-en_fr shape, main layers {args.layers} (x16: extrapolated to 16), "
            f"CPU threads {args.threads}, LM {args.dtype} (Mimi float32), temp 0.6, cfg 2.0, "
            f"best of {args.reps} "
            f"after {args.warmup} warm-up run(s) per side"
        )
        header = (
            f"{'B':>2} {'dsm LM':>12} | {'first audio s':>22} {'x16':>22} | "
            f"{'RTF':>20} {'x16':>20}\n"
            f"{'':>2} {'':>12} | {'ref':>7} {'dsm':>7} {'gain':>6} {'ref':>7} {'dsm':>7} "
            f"{'gain':>6} | {'ref':>6} {'dsm':>6} {'gain':>6} {'ref':>6} {'dsm':>6} {'gain':>6}"
        )
        print(header)
        print("-" * 109)
        modes: list[str | None] = [None, *args.quantize]
        splits: dict[int, dict[str | None, dict[str, float]]] = {}
        for B in args.batch:
            refs: list[dict[str, float]] = []
            dsms: dict[str | None, list[dict[str, float]]] = {m: [] for m in modes}
            for _ in range(args.warmup):
                setup.run_reference(B)
                for mode in modes:
                    setup.run_dsm(B, mode)
            for _ in range(args.reps):
                refs.append(setup.run_reference(B))
                for mode in modes:
                    dsms[mode].append(setup.run_dsm(B, mode))
            r = best(refs)
            splits[B] = {mode: best(dsms[mode]) for mode in modes}
            for mode in modes:
                d = best(dsms[mode])
                name = f"{args.dtype[:4]}+{mode}" if mode else args.dtype
                print(
                    f"{B:>2} {name:>12} | {r['first']:7.2f} {d['first']:7.2f} "
                    f"{r['first'] / d['first']:5.2f}x {r['first16']:7.2f} {d['first16']:7.2f} "
                    f"{r['first16'] / d['first16']:5.2f}x | {r['rtf']:6.3f} {d['rtf']:6.3f} "
                    f"{d['rtf'] / r['rtf']:5.2f}x {r['rtf16']:6.3f} {d['rtf16']:6.3f} "
                    f"{d['rtf16'] / r['rtf16']:5.2f}x",
                    flush=True,
                )
        print(
            "\ndsm milliseconds per LM step (main transformer scaled to 16 layers; host = the "
            "rest: state machine, embeddings, text sampling, delays, output)"
        )
        print(f"{'B':>2} {'dsm LM':>12} | {'main x16':>9} {'depformer':>9} {'Mimi':>7} "
              f"{'host':>7} | {'total x16':>9}")  # fmt: skip
        for B, by_mode in splits.items():
            for mode, d in by_mode.items():
                name = f"{args.dtype[:4]}+{mode}" if mode else args.dtype
                print(
                    f"{B:>2} {name:>12} | {d['ms_main16']:9.1f} {d['ms_dep']:9.1f} "
                    f"{d['ms_mimi']:7.1f} {d['ms_host']:7.1f} | {d['ms_total16']:9.1f}"
                )


def _timed(obj: object, name: str) -> list[float]:
    """Wrap the method ``obj.name`` (an instance attribute from now on) to add its wall time
    to the returned one-element list."""
    total = [0.0]
    inner = getattr(obj, name)

    def timed(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - start

    setattr(obj, name, timed)
    return total


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The best of each figure over runs (the lowest first-audio time and milliseconds, the
    highest RTF)."""
    pick = {k: min if ("first" in k or k.startswith("ms_")) else max for k in runs[0]}
    return {k: pick[k](x[k] for x in runs) for k in runs[0]}


if __name__ == "__main__":
    main()
