"""LM step speed, dsm's StreamingGenerator next to the reference LMGen (moshi 0.2.13).

One measured call is one generation step for every slot: ``forward_text`` + text sampling, plus
the 32-codebook depformer with sampling for TTS. Shapes are the published ones
(kyutai/stt-1b-en_fr and kyutai/tts-1.6b-en_fr, model-spec §1.4) except that the main
transformer has ``--layers`` layers instead of 16 (the depformer keeps all its layers). Both
sides share the same random weights: the reference is built and randomized, and dsm loads its
state dict (tensors are shared where no fusing is needed, so memory is not doubled).

The figure is the median wall time of ``--steps`` steps after ``--warmup`` steps, in ms; the
reference and dsm step in turn, so both see the same machine load. The
``x16`` columns extrapolate to the 16 main layers of the real models:
``step + (16 / layers - 1) * main_transformer_time``, where the main transformer's time is
measured inside the same steps with forward hooks (embeddings, text head, sampling, depformer
and bookkeeping are not scaled). STT is greedy (temp 0, as the STT configs); TTS samples with
temp 0.6, top-k 250 (audio) / 25 (text) and the speaker + cfg conditions (625 cross positions).

    python benchmarks/bench_lm.py --batch 1 4 16 --dtype float32 bfloat16   # all cores
    python benchmarks/bench_lm.py --threads 1                                # one core
    python benchmarks/bench_lm.py --profile tts --batch 4   # torch.profiler table of one dsm step
    python benchmarks/bench_lm.py --models stt --batch 1 --dtype float32 --quantize int8 int4

With ``--quantize``, the quantized LMs (``dsm.models.lm_loading.quantize_lm``, the same random
weights) step in the same rounds as the reference and dsm float32, and a second table gives
each LM's weight bytes (parameters, buffers and packed copies; x16 as above).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dsm.checkpoint.config import parse_config
from dsm.generate import StreamingGenerator
from dsm.models.lm import LMModel
from dsm.models.lm_loading import load_lm_state, quantize_lm
from dsm.nn.linear import packed_weight_bytes
from dsm.nn.quantized import QuantizedLinear
from tests.helpers.published_configs import stt_1b_en_fr, tts_1p6b_en_fr
from tests.helpers.reference_lm import (
    STT_LIKE,
    TTS_LIKE,
    make_reference_lm,
    reference_condition_tensors,
)

REAL_LAYERS = 16
SPEAKER_POSITIONS = 625  # 5 speaker slots x 125 frames


class Timer:
    """Accumulates the wall time of a module's forward calls (forward hooks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.total = 0.0
        self._start = 0.0
        self._handles = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post),
        ]

    def _pre(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def _post(self, *args: Any) -> None:
        self.total += time.perf_counter() - self._start

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    steps_by_name: dict[str, tuple[Callable[[], object], Timer]],
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict[str, tuple[float, float]]:
    """Median (step ms, main-transformer ms) of each named step function.

    The functions are called in turn (one step of each, ``steps`` rounds after ``warmup``
    rounds), so that both sides see the same machine load. On CUDA the transformer time is not
    meaningful (asynchronous kernels, CUDA graphs)."""
    for _ in range(warmup):
        for step, _timer in steps_by_name.values():
            step()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    inner: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, (step, timer) in steps_by_name.items():
            timer.total = 0.0
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
            inner[name].append(timer.total)
    return {
        name: (1000 * statistics.median(times[name]), 1000 * statistics.median(inner[name]))
        for name in steps_by_name
    }


def raw_config(kind: str, layers: int, shape: str) -> dict[str, Any]:
    if shape == "small":
        raw = dict(STT_LIKE if kind == "stt" else TTS_LIKE)
    else:
        raw = stt_1b_en_fr() if kind == "stt" else tts_1p6b_en_fr()
    raw["num_layers"] = layers
    return raw


def tts_inputs(lm: LMModel, B: int, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """cfg 2.0 + control, and a speaker tensor over 625 positions (10 for the small shape)."""
    gen = torch.Generator().manual_seed(0)
    text = {"cfg": ["2.0"] * B, "control": ["ok"] * B}
    dim = _speaker_dim(lm)
    positions = SPEAKER_POSITIONS if dim == 512 else 10
    speaker = torch.randn(B, positions, dim, generator=gen).to(device)
    mask = torch.ones(B, positions, dtype=torch.bool, device=device)
    return text, {"speaker_wavs": (speaker, mask)}


def _speaker_dim(lm: LMModel) -> int:
    assert lm.condition_provider is not None
    conditioner: Any = lm.condition_provider.conditioners["speaker_wavs"]
    return int(conditioner.dim)


def build(kind: str, layers: int, shape: str) -> tuple[Any, dict[str, Any]]:
    raw = raw_config(kind, layers, shape)
    return make_reference_lm(raw, seed=0), raw


def dsm_from_reference(ref: Any, raw: dict[str, Any], dtype: torch.dtype) -> LMModel:
    model = LMModel(parse_config(raw).lm, device="meta", dtype=dtype)
    device = next(iter(ref.parameters())).device
    return load_lm_state(model, ref.state_dict(), device=device, dtype=dtype).eval()


def bench_point(
    kind: str, ref: Any, lms: dict[str, LMModel], B: int, steps: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """Median (step ms, main-transformer ms) of the reference and of each LM of ``lms``."""
    from moshi.models.lm import LMGen

    lm = next(iter(lms.values()))
    device = lm.device
    if kind == "stt":
        sampling: dict[str, Any] = dict(temp=0.0, temp_text=0.0)
        inputs = torch.randint(0, lm.card, (B, lm.n_q, 1), device=device)
        cond_ref = cond_dsm = None
    else:
        sampling = dict(temp=0.6, temp_text=0.6, top_k=250, top_k_text=25)
        inputs = torch.zeros(B, 0, 1, dtype=torch.long, device=device)
        text, tensors = tts_inputs(lm, B, device)
        cond_ref = reference_condition_tensors(ref, text, tensors, B)
        cond_dsm = lm.make_conditions(text, tensors, B)

    ref_gen = LMGen(ref, condition_tensors=cond_ref, **sampling)
    gens = {
        name: StreamingGenerator(model, B, conditions=cond_dsm, **sampling)
        for name, model in lms.items()
    }
    timers = {"ref": Timer(ref.transformer)}
    timers.update({name: Timer(model.transformer) for name, model in lms.items()})
    steppers: dict[str, tuple[Callable[[], object], Timer]] = {
        "ref": (lambda: ref_gen.step(inputs), timers["ref"])
    }
    for name, gen in gens.items():
        steppers[name] = (lambda g=gen: g.step(inputs), timers[name])  # type: ignore[misc]
    try:
        with ref_gen.streaming(B), contextlib.ExitStack() as stack:
            for gen in gens.values():
                stack.enter_context(gen)
            return measure(steppers, steps, warmup, device)
    finally:
        for timer in timers.values():
            timer.remove()


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct tensor storages of ``module`` plus its packed weight copies."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    packs = packed_weight_bytes(module)
    packs += sum(m.packed_bytes() for m in module.modules() if isinstance(m, QuantizedLinear))
    return sum(seen.values()) + packs


def bench_quantized(args: argparse.Namespace, scale: float) -> None:
    """Reference, dsm float32 and each ``--quantize`` mode side by side (CPU, float32)."""
    modes = list(args.quantize)
    names = ["dsm", *modes]
    header = " ".join(f"{n + ' ms':>9}" for n in ["ref", *names])
    header16 = " ".join(f"{n + ' x16':>9}" for n in ["ref", *names])
    print(f"{'model':5} {'B':>3} | {header} | {header16} | ref/int8 x16")
    sizes: list[str] = []
    for kind in args.models:
        ref, raw = build(kind, args.layers, args.shape)
        ref = ref.to(device=args.device, dtype=torch.float32)
        lms = {"dsm": dsm_from_reference(ref, raw, torch.float32)}
        for mode in modes:
            lms[mode] = quantize_lm(
                dsm_from_reference(ref, raw, torch.float32), mode, group_size=args.group_size
            )
        for B in args.batch:
            r = bench_point(kind, ref, lms, B, args.steps, args.warmup)
            plain = " ".join(f"{r[n][0]:9.1f}" for n in ["ref", *names])
            x16 = {n: r[n][0] + scale * r[n][1] for n in ["ref", *names]}
            ext = " ".join(f"{x16[n]:9.1f}" for n in ["ref", *names])
            ratio = " ".join(f"{x16['ref'] / x16[m]:.2f}x" for m in modes)
            print(f"{kind:5} {B:>3} | {plain} | {ext} | {ratio}", flush=True)
        for name, lm in lms.items():
            total, main = weight_bytes(lm), weight_bytes(lm.transformer)
            full = (total + scale * main) / 1e9
            sizes.append(f"{kind:5} {name:5} {total / 1e9:8.3f} GB  x16: {full:6.2f} GB")
        del lms, ref
    print("\nLM weight bytes (parameters, buffers, packed copies after the steps above):")
    print("\n".join(sizes))


def profile(kind: str, layers: int, shape: str, B: int, dtype: torch.dtype) -> None:
    ref, raw = build(kind, layers, shape)
    ref = ref.to(dtype)
    lm = dsm_from_reference(ref, raw, dtype)
    cond = lm.make_conditions(*tts_inputs(lm, B, lm.device), B) if kind == "tts" else None
    temp = 0.6 if kind == "tts" else 0.0
    sampling: dict[str, Any] = dict(temp=temp, temp_text=temp)
    inputs = torch.randint(0, lm.card, (B, lm.n_q, 1)) if kind == "stt" else None
    gen = StreamingGenerator(lm, B, conditions=cond, **sampling)
    with gen:
        for _ in range(3):
            gen.step(inputs)
        with torch.profiler.profile() as prof:
            for _ in range(5):
                gen.step(inputs)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)"
    )
    parser.add_argument("--models", nargs="+", default=["stt", "tts"], choices=["stt", "tts"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, default=2, help="main transformer layers")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per point")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", choices=["stt", "tts"], help="profile one dsm config")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--quantize", nargs="+", choices=["int8", "int4"], help="also step quantized LMs"
    )
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size")
    parser.add_argument(
        "--shape",
        choices=["real", "small"],
        default="real",
        help="published shapes, or the tiny test models (dim 64: framework overhead)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    torch.set_grad_enabled(False)
    import os

    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    if args.profile:
        profile(args.profile, args.layers, args.shape, args.batch[0], getattr(torch, args.dtype[0]))
        return

    scale = REAL_LAYERS / args.layers - 1
    if args.quantize:
        print(
            f"shape={args.shape} device={args.device} threads={args.threads} "
            f"layers={args.layers} float32 (x16: extrapolated to 16 main layers)"
        )
        bench_quantized(args, scale)
        return
    header = (
        f"{'model':5} {'dtype':9} {'B':>3} | {'ref ms':>8} {'dsm ms':>8} {'speedup':>7} | "
        f"{'ref x16':>8} {'dsm x16':>8} {'speedup':>7}"
    )
    print(
        f"shape={args.shape} device={args.device} threads={args.threads} layers={args.layers} "
        "(x16: extrapolated to 16 main layers; CPU only)"
    )
    print(header)
    print("-" * len(header))
    for kind in args.models:
        ref, raw = build(kind, args.layers, args.shape)
        for dtype_name in args.dtype:
            dtype = getattr(torch, dtype_name)
            ref = ref.to(device=args.device, dtype=dtype)
            if ref.condition_provider is not None:
                ref.condition_provider.float()
            lm = dsm_from_reference(ref, raw, dtype)
            for B in args.batch:
                r = bench_point(kind, ref, {"dsm": lm}, B, args.steps, args.warmup)
                (ref_ms, ref_tr), (dsm_ms, dsm_tr) = r["ref"], r["dsm"]
                ref16, dsm16 = ref_ms + scale * ref_tr, dsm_ms + scale * dsm_tr
                print(
                    f"{kind:5} {dtype_name:9} {B:>3} | {ref_ms:8.1f} {dsm_ms:8.1f} "
                    f"{ref_ms / dsm_ms:6.2f}x | {ref16:8.1f} {dsm16:8.1f} {ref16 / dsm16:6.2f}x",
                    flush=True,
                )
            del lm


if __name__ == "__main__":
    main()
